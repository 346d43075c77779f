"""The state behind one interface, two backends: a path is the SQLite store (state/store.py), an etcd:// location
the etcd one (state/etcd_store.py). What the CLI asks of a state is StateBackend; open_state() chooses.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Protocol, TypeVar

from ..core.inventory import Inventory
from ..core.profile import Profile
from ..core.rows import TABLES
from ..errors import UserError
from .etcd_client import EtcdOptions, is_etcd, parse_url

T = TypeVar("T")


class StateBackend(Protocol):
    @property
    def path(self) -> str | os.PathLike[str]: ...
    @property
    def exists(self) -> bool: ...
    def read(self) -> tuple[Inventory, int]: ...
    def snapshot(self, profiles: Callable[[str], Profile] | None = None) -> Inventory: ...
    def end_snapshot(self) -> None: ...
    def change(self, command: str, operation: Callable[[Inventory], tuple[Inventory, T]],
               profiles: Callable[[str], Profile] | None = None) -> T: ...
    def generation(self) -> int: ...
    def audit(self, limit: int = 50) -> list[dict[str, Any]]: ...
    def names(self, table: str, prefix: str = "", limit: int = 100) -> list[str]: ...
    def verify(self, profiles: Callable[[str], Profile]) -> dict[str, int]: ...
    def close(self) -> None: ...


def open_state(location: str, etcd: EtcdOptions | None = None) -> StateBackend:
    """The state at `location`: etcd://HOST:PORT[,HOST:PORT...]/PREFIX, or a path to an SQLite file."""
    if is_etcd(location):
        from .etcd_store import EtcdStore
        return EtcdStore(parse_url(location), etcd)
    from .store import Store
    return Store(location)


def copy_rows(source: Inventory, replace: bool, where: str) -> Callable[[Inventory], tuple[Inventory, dict[str, int]]]:
    """An operation making a state hold exactly `source`'s rows and settings (enforcer state copy), refused on a
    state that holds any row unless `replace`. Pure: it runs in either backend's change()."""
    def copy(target: Inventory) -> tuple[Inventory, dict[str, int]]:
        held = {table: list(getattr(target, table)) for table in TABLES}
        if any(held.values()) and not replace:
            counts = ", ".join(f"{len(names)} {table}" for table, names in held.items())
            raise UserError(f"{where} already holds a state ({counts}); give --replace to overwrite it")
        new = target.with_(profile=source.profile, internal_prefixes=source.internal_prefixes).grown()
        for table in TABLES:
            for name in held[table]:
                if name not in getattr(source, table):
                    new.changes.set(table, name, None, new.source)  # in place: `new` is ours alone (grown())
            for row in getattr(source, table).values():
                if getattr(target, table).get(row.name) != row:
                    new.grow(row)
        return new, {table: len(getattr(source, table)) for table in TABLES}
    return copy
