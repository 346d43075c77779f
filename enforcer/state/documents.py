"""Reading a YAML document (an inventory or a lab file) into plain data, with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..core.converge import TOP_KEYS
from ..errors import UserError


def read_document(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read it: {e.strerror}; check the path") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}; fix the syntax") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a mapping with keys {', '.join(sorted(TOP_KEYS))}")
    return doc
