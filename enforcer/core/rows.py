"""Where an inventory's rows come from, and what an operation changes on top of them.

An Inventory reads its rows from a Source: MemorySource (dicts: tests, the lab, a document being converged) or the
store's (the state in SQLite, read row by row as an operation asks for it). What operations change is kept apart,
in Changes, so that the store writes exactly that. Every question an operation asks a source is by name or by an
indexed column (a subscription's resources, a VNet's, an appliance's dependents, an address's owner, the running
resources of a subscription grouped by the policy they pulled), so a change costs what it touches, not the size
of the inventory. Pure: no I/O here; the store's source lives with the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

TABLES = ("subscriptions", "vnets", "resources")
# The columns a source answers `where` for: (table, column) pairs it keeps an index of.
INDEXED = {("resources", "subscription"), ("resources", "vnet"), ("resources", "egress"),
           ("vnets", "subscription")}

Row = Any  # a Subscription, VNet or Resource (inventory.py): this module needs only their names and fields


# The columns running resources can be counted by (Source.running): one value a column, a tuple a group.
COUNTED_BY = ("subscription", "kind", "egress", "pulled", "vnet", "subnet")
Counts = dict[tuple[Any, ...], int]


class Source(Protocol):
    def row(self, table: str, name: str) -> Row | None: ...
    def names(self, table: str) -> Iterable[str]: ...
    def rows(self, table: str) -> Iterable[Row]: ...
    def count(self, table: str) -> int: ...
    def where(self, table: str, column: str, value: str) -> Iterable[Row]: ...
    def owner(self, address: str) -> str | None: ...
    def prefixed(self) -> Iterable[Row]: ...
    def running(self, by: tuple[str, ...], subscription: str | None = None) -> Counts: ...
    def running_names(self, subscription: str, where: dict[str, Any], limit: int | None) -> list[str]: ...


def group_of(r: Row, by: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(getattr(r, column) for column in by)


def count_running(rows: Iterable[Row], by: tuple[str, ...]) -> Counts:
    """How many of `rows` run, per group of the columns `by` (a source that holds its rows answers running())."""
    counts: Counts = {}
    for r in rows:
        if r.state == "running":
            key = group_of(r, by)
            counts[key] = counts.get(key, 0) + 1
    return counts


def running_named(rows: Iterable[Row], where: dict[str, Any], limit: int | None) -> list[str]:
    """The names of the running `rows` whose columns hold `where`'s values, sorted, at most `limit`."""
    key = tuple(where.values())
    return sorted(r.name for r in rows if r.state == "running" and group_of(r, tuple(where)) == key)[:limit]


class MemorySource:
    """Rows held in dicts. Its indexes are built on the first question that needs them (the rows never change:
    changes go to Changes), so a question costs a lookup after one pass."""

    def __init__(self, subscriptions: dict[str, Row], vnets: dict[str, Row], resources: dict[str, Row]):
        self.tables: dict[str, dict[str, Row]] = {"subscriptions": subscriptions, "vnets": vnets,
                                                  "resources": resources}
        self._indexes: dict[tuple[str, str], dict[str, list[Row]]] = {}
        self._owners: dict[str, str] | None = None

    def row(self, table: str, name: str) -> Row | None:
        return self.tables[table].get(name)

    def names(self, table: str) -> Iterable[str]:
        return self.tables[table].keys()

    def rows(self, table: str) -> Iterable[Row]:
        return self.tables[table].values()

    def count(self, table: str) -> int:
        return len(self.tables[table])

    def where(self, table: str, column: str, value: str) -> Iterable[Row]:
        index = self._indexes.get((table, column))
        if index is None:
            index = self._indexes[(table, column)] = {}
            for row in self.tables[table].values():
                key = getattr(row, column)
                if key is not None:
                    index.setdefault(key, []).append(row)
        return index.get(value, ())

    def owner(self, address: str) -> str | None:
        if self._owners is None:
            self._owners = {a: r.name for r in self.tables["resources"].values() for a in r.addresses}
        return self._owners.get(address)

    def prefixed(self) -> Iterable[Row]:
        return [r for r in self.tables["resources"].values() if any("/" in a for a in r.addresses)]

    def running(self, by: tuple[str, ...], subscription: str | None = None) -> Counts:
        rows = self.tables["resources"].values() if subscription is None else \
            self.where("resources", "subscription", subscription)
        return count_running(rows, by)

    def running_names(self, subscription: str, where: dict[str, Any], limit: int | None) -> list[str]:
        return running_named(self.where("resources", "subscription", subscription), where, limit)


class Changes:
    """What operations changed: per table, name -> the new row, or None for a removed one; and which changed
    resource now holds each address (so that an address's owner is known without asking for every row)."""

    __slots__ = ("tables", "holders")

    def __init__(self, tables: dict[str, dict[str, Row | None]] | None = None,
                 holders: dict[str, str] | None = None):
        self.tables = tables or {t: {} for t in TABLES}
        self.holders = holders if holders is not None else {}

    def copy(self) -> Changes:
        return Changes({t: dict(rows) for t, rows in self.tables.items()}, dict(self.holders))

    def set(self, table: str, name: str, row: Row | None, source: Source) -> None:
        """In place: only on a Changes nobody else holds (a copy, or a convergence's own)."""
        rows = self.tables[table]
        if table == "resources":
            before = rows[name] if name in rows else source.row(table, name)
            for a in before.addresses if before is not None else ():
                if self.holders.get(a) == name:
                    del self.holders[a]
            for a in row.addresses if row is not None else ():
                self.holders[a] = name
        rows[name] = row

    def __bool__(self) -> bool:
        return any(self.tables.values())


class Rows(Mapping[str, Row]):
    """One table of an inventory, read-only: the source's rows with the changes on top. Iterating it reads the
    whole table (listings do); everything else reads one row."""

    __slots__ = ("source", "table", "changed")

    def __init__(self, source: Source, table: str, changed: dict[str, Row | None]):
        self.source, self.table, self.changed = source, table, changed

    def __getitem__(self, name: str) -> Row:
        row = self.changed[name] if name in self.changed else self.source.row(self.table, name)
        if row is None:
            raise KeyError(name)
        return row

    def get(self, name: str, default: Any = None) -> Any:
        row = self.changed[name] if name in self.changed else self.source.row(self.table, name)
        return default if row is None else row

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        changed = self.changed
        for name in self.source.names(self.table):
            if name not in changed or changed[name] is not None:
                yield name
        for name, row in changed.items():
            if row is not None and self.source.row(self.table, name) is None:
                yield name

    def values(self) -> Iterator[Row]:  # type: ignore[override]  # a stream of rows, not a view
        changed = self.changed
        for row in self.source.rows(self.table):
            if row.name not in changed:
                yield row
            elif changed[row.name] is not None:
                yield changed[row.name]  # in its place, as a dict keeps a replaced key's
        for name, row in changed.items():
            if row is not None and self.source.row(self.table, name) is None:
                yield row

    def items(self) -> Iterator[tuple[str, Row]]:  # type: ignore[override]
        return ((row.name, row) for row in self.values())

    def __len__(self) -> int:
        n = self.source.count(self.table)
        for name, row in self.changed.items():
            n += (row is not None) - (self.source.row(self.table, name) is not None)
        return n

    def __repr__(self) -> str:
        return f"Rows({self.table}, {len(self.changed)} changed)"
