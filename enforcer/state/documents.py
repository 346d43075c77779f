"""Reading a YAML document a person hands us (an inventory or a lab file) into plain data, with one-line errors.

The file's text comes from files.py (which neither blocks nor grows without bound); here the YAML itself is
checked before anything is built: no anchors or aliases (an alias "bomb"), no explicit tags, no nesting deep
enough to exhaust the stack, no key given twice. Each of those is a one-line refusal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from ..core.converge import TOP_KEYS
from ..errors import UserError
from .files import read_text, shown

MAX_DEPTH = 32        # an inventory nests 4 collections deep
# libyaml parses about four times faster; both produce the same events and data
LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = (yaml.CSafeLoader if yaml.__with_libyaml__
                                                           else yaml.SafeLoader)
_TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep; an inventory needs 4"


def read_document(path: str) -> dict[str, Any]:
    text = read_text(path)
    try:
        _check_shape(text)
        doc = yaml.load(text, Loader=LOADER)
    except _Refused as e:
        raise UserError(f"{shown(path)}: line {e.line}: {e.message}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{shown(path)}: not valid YAML{_yaml_problem(e)}") from None
    except (ValueError, OverflowError) as e:  # a plain scalar read as a date or number it cannot be: 2001-13-01
        raise UserError(f"{shown(path)}: not valid YAML: a value cannot be read ({_one_line(e)}); fix it") from None
    if not isinstance(doc, dict):
        raise UserError(f"{shown(path)}: expected a mapping with keys {', '.join(sorted(TOP_KEYS))}")
    return doc


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _yaml_problem(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.reader.ReaderError):
        code = e.character if isinstance(e.character, int) else ord(e.character)
        return f": unacceptable character #x{code:04x} ({e.reason}); remove it"
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark else ""
    return f"{where}: {_one_line(getattr(e, 'problem', None) or e)}; fix the syntax"


class _Refused(Exception):
    def __init__(self, mark: Any, message: str):  # a Mark of the Python or the libyaml parser, or None
        super().__init__(message)
        self.line = mark.line + 1 if mark else 0
        self.message = message


@dataclass
class _Collection:
    mapping: bool
    at_key: bool = True  # in a mapping: the next node is a key
    keys: set[tuple[str, str]] = field(default_factory=set)


def _check_shape(text: str) -> None:
    """Refuse, before anything is built, what an inventory never needs and what makes building it hurt: anchors
    and aliases (a few lines of them expand to billions of values), explicit tags (!!timestamp and friends fail
    in their own ways on bad values), nesting deeper than MAX_DEPTH (the composer recurses), and a key given
    twice in one mapping (YAML would keep the last silently). The parser's events are flat, so this pass itself
    never recurses."""
    loader = LOADER(text)
    stack: list[_Collection] = []
    try:
        while (event := loader.get_event()) is not None:
            _refuse_extras(event)
            if isinstance(event, yaml.CollectionEndEvent):
                stack.pop()
            elif isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)):
                _node(stack, event, loader)
            if isinstance(event, yaml.CollectionStartEvent):
                if len(stack) >= MAX_DEPTH:
                    raise _Refused(event.start_mark, _TOO_DEEP)
                stack.append(_Collection(isinstance(event, yaml.MappingStartEvent)))
    except yaml.MarkedYAMLError as e:
        if "maximum nesting depth" in str(e.problem):  # libyaml's own limit (1000) stops deeper input first
            raise _Refused(e.problem_mark, _TOO_DEEP) from None
        raise
    finally:
        loader.dispose()


def _refuse_extras(event: yaml.Event) -> None:
    if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
        raise _Refused(event.start_mark, "anchors and aliases (&name, *name) are not accepted in these files; "
                                         "write each value out")
    tag = getattr(event, "tag", None)
    if tag not in (None, "!"):
        tag = "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else repr(tag)
        raise _Refused(event.start_mark, f"tags such as {tag} are not accepted in these files; write plain values")


def _node(stack: list[_Collection], event: yaml.Event, loader: Any) -> None:
    """A node inside the innermost collection; in a mapping, every other node is a key."""
    if not stack or not stack[-1].mapping:
        return
    inner = stack[-1]
    if inner.at_key and isinstance(event, yaml.ScalarEvent):  # a collection as a key: the constructor refuses it
        # keyed by the tag the composer resolves the scalar to (no explicit tags are left): 1 and '1' differ
        key = (loader.resolve(yaml.ScalarNode, event.value, event.implicit), event.value)
        if key in inner.keys:
            raise _Refused(event.start_mark, f"key {event.value!r} appears twice in one mapping; keep one")
        inner.keys.add(key)
    inner.at_key = not inner.at_key
