"""Lab files: a YAML inventory (vagrant/lab.yml is the example) whose `lab` section adds the hosts around it
(the internet host's addresses) and what the spec expects of each resource."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..state.documents import read_document

# The checkout's, where there is one (so an edit to it shows at once); else the one an install put beside the
# profiles (pyproject.toml's data-files), as state/profiles.py finds those.
CHECKOUT_LAB = Path(__file__).resolve().parents[2] / "vagrant" / "lab.yml"
INSTALLED_LAB = Path(sys.prefix) / "share" / "port25-enforcer" / "vagrant" / "lab.yml"
DEFAULT_LAB = CHECKOUT_LAB if CHECKOUT_LAB.is_file() else INSTALLED_LAB
LAB_DIR = Path("/run/enforcer-lab")  # where `enforcer lab up` keeps its state, logs and record
SMTP_PORTS = (25, 465, 587)          # the internet host's SMTP server listens on each; the demo tries each


def read_lab(lab_file: Path | None) -> tuple[str, dict[str, Any], list[str], dict[str, str]]:
    """(path, document, internet addresses, what the spec expects per resource) of a lab file."""
    path = str(lab_file or DEFAULT_LAB)
    if not Path(path).exists():
        raise UserError(f"no lab file at {path}; pass one: --lab FILE (see vagrant/lab.yml)")
    doc = read_document(path)
    lab = doc.get("lab") or {}
    try:
        internet = [str(a) for a in lab["internet"]["addresses"]]
        expect = {str(k): str(v) for k, v in (lab.get("expect") or {}).items()}
    except (KeyError, TypeError, AttributeError):
        raise UserError(f"{path}: the lab needs lab.internet.addresses; see vagrant/lab.yml") from None
    return path, doc, internet, expect


def resources_of(doc: dict[str, Any]) -> dict[str, list[str]]:
    """Each resource's addresses, as the lab file lists them."""
    return {str(r["name"]): [str(a) for a in (r["addresses"] if isinstance(r["addresses"], list)
                                               else [r["addresses"]])] for r in doc.get("resources") or []}
