"""Which labs are up, and where: the directories `enforcer lab up` was given, noted in one small file, so that a
command can find a lab made with --dir (and a `vm restart` the lab host whose processes a reboot would end)
without loading the lab's own modules. Standard library only: the CLI reads it on every lifecycle command."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

INDEX = Path("/run/enforcer-labs.json")
ETCD = "etcd://"


def record_path(directory: Path) -> Path:
    return directory / "lab.json"


def note(directory: Path, up: bool) -> None:
    """Note (or forget) a lab's directory among the labs that are up."""
    labs = set(_read())
    labs = (labs | {str(directory.resolve())}) if up else (labs - {str(directory.resolve())})
    with contextlib.suppress(OSError):
        INDEX.write_text(json.dumps(sorted(labs)))


def labs_up() -> list[str]:
    """The directories of the labs that are up (their record still there)."""
    return [d for d in _read() if record_path(Path(d)).exists()]


def lab_of_state(state: str) -> dict[str, Any] | None:
    """The record of the lab that is up over this state: its SQLite file, or (a fleet lab) its etcd prefix on a
    member it has."""
    for d in labs_up():
        with contextlib.suppress(OSError, ValueError):
            record: dict[str, Any] = json.loads(record_path(Path(d)).read_text())
            if same_state(record["state"], state):
                return record
    return None


def same_state(ours: str, given: str) -> bool:
    """Whether `given` names the state at `ours`: the same file, or the same prefix in etcd with a member in
    common (`etcd://HOST:PORT[,...]/PREFIX`; any member of a cluster reaches it)."""
    if ours.startswith(ETCD) or given.startswith(ETCD):
        def split(location: str) -> tuple[set[str], str]:
            members, _, prefix = location[len(ETCD):].partition("/")
            return set(members.split(",")), prefix.strip("/")
        (a, pa), (b, pb) = split(ours), split(given)
        return ours.startswith(ETCD) and given.startswith(ETCD) and pa == pb and bool(a & b)
    return Path(ours).resolve() == Path(given).resolve()


def _read() -> list[str]:
    try:
        labs = json.loads(INDEX.read_text())
    except (OSError, ValueError):
        return []
    return [d for d in labs if isinstance(d, str)] if isinstance(labs, list) else []
