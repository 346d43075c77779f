"""The gateways that follow a state in etcd, as their records under /PREFIX/gateways/ tell them (pure): alive or
not, what each holds, who is behind a generation; and a change's commit time, from its audit key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .etcd_layout import SEEN, json_record


def commit_time(audit_key: bytes | str) -> float | None:
    """The wall-clock time (Unix seconds, the committing CLI's clock) a change's audit key was made at, just before
    its transaction: the key begins with time.time_ns(). None for a key not of that form."""
    name = (audit_key.decode(errors="replace") if isinstance(audit_key, bytes) else audit_key).rpartition("/")[2]
    digits = name.partition("-")[0]
    return int(digits) / 1e9 if len(digits) == 20 and digits.isdigit() else None


@dataclass(frozen=True)
class Gateway:
    """One gateway as its records under gateways/ tell it (pure)."""
    name: str
    alive: bool             # its leased key is there: it kept its lease alive within the TTL
    revision: int           # the state's generation its table holds (the revision of the change it last applied)
    applied_revision: int   # the etcd revision its table is current to
    at: str                 # when it last wrote its record, its own clock (ISO 8601)
    seen: float | None      # the same in Unix seconds (None from a record that does not say)
    pid: int | None
    version: str

    def lag(self, generation: int) -> int:
        """Revisions between the state's generation and what this gateway holds (0: it has the last change)."""
        return max(0, generation - self.revision)


def gateways_of(keys: Mapping[str, bytes]) -> list[Gateway]:
    """The gateways from the keys under gateways/ (named relative to it: NAME leased, NAME/seen not), by name. A
    gateway is alive while its leased key is there; a gateway writes both records in one transaction, so either
    tells its figures (the leased one alone: a gateway of an earlier version)."""
    out = []
    for name in sorted({k.removesuffix(SEEN) for k in keys if "/" not in k.removesuffix(SEEN)}):
        doc = json_record(keys.get(name)) or json_record(keys.get(name + SEEN))
        out.append(Gateway(name, name in keys, _number(doc, "revision") or 0, _number(doc, "applied_revision") or 0,
                           str(doc.get("at", "?")), _number(doc, "at_unix", float), _number(doc, "pid"),
                           str(doc.get("version", "?"))))
    return out


def _number(doc: dict[str, Any], key: str, kind: type = int) -> Any:
    """A record's number, None for one missing or not a number (a record another program wrote)."""
    value = doc.get(key)
    return kind(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def behind(gateways: Iterable[Gateway], generation: int) -> list[str]:
    """The live gateways whose table does not hold generation `generation` yet, by name (what --wait waits for)."""
    return sorted(g.name for g in gateways if g.alive and g.revision < generation)
