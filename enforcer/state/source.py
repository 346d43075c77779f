"""The store's source of rows: StoreSource answers an Inventory's questions (core.rows.Source) from an open
transaction, a row at a time, each through an index; over() turns an inventory built apart into changes over it.

Apart from the store because this is what an operation reads through while a change runs, not how the file is
opened, checked, migrated or written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any, Callable, Iterator

from ..core.inventory import Inventory
from ..core.rows import COUNTED_BY, INDEXED, TABLES as TABLE_NAMES, Changes, Counts
from ..core.verdicts import pulled_of, pulled_text
from .rows import Entity, from_doc
from .trust import StateFile


class StoreSource:
    """The rows of an open transaction, as an Inventory's source: each read as it is asked for (and kept for the
    transaction's length), each question answered by an index. A row that does not parse is damage; `check`
    (table, row) refuses a row the state's profile cannot judge."""

    def __init__(self, cx: sqlite3.Connection, file: StateFile,
                 check: Callable[[str, Entity], None] | None = None):
        self.cx, self.file, self.check = cx, file, check
        self.cache: dict[str, dict[str, Entity | None]] = {t: {} for t in TABLE_NAMES}

    def _parse(self, table: str, name: str, doc: str, keep: bool = True) -> Entity:
        cached = self.cache[table].get(name)
        if cached is not None:
            return cached
        try:
            row = from_doc(table, doc)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise self.file.damaged(f"{table} row {name!r} does not parse: {type(e).__name__}: {e}") from None
        if self.check is not None:
            self.check(table, row)
        if keep:
            self.cache[table][name] = row
        return row

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self.cx.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise self.file.trouble(e) from None

    def _stream(self, sql: str) -> Iterator[Any]:
        """A whole table's rows as they come (a listing), not gathered first."""
        try:
            yield from self.cx.execute(sql)
        except sqlite3.Error as e:
            raise self.file.trouble(e) from None

    def row(self, table: str, name: str) -> Entity | None:
        rows = self.cache[table]
        if name in rows:
            return rows[name]
        found = self._all(f"SELECT doc FROM {table} WHERE name = ?", (name,))
        if not found:
            rows[name] = None
            return None
        return self._parse(table, name, found[0][0])

    def names(self, table: str) -> Iterable[str]:
        return (name for (name,) in self._stream(f"SELECT name FROM {table} ORDER BY name"))

    def rows(self, table: str) -> Iterable[Entity]:
        for name, doc in self._stream(f"SELECT name, doc FROM {table} ORDER BY name"):
            yield self._parse(table, name, doc, keep=False)  # a listing of the whole table must not hold it twice

    def count(self, table: str) -> int:
        sql = "SELECT coalesce(sum(n), 0) FROM resource_counts" if table == "resources" else \
            f"SELECT count(*) FROM {table}"
        try:
            return int(self._all(sql)[0][0])
        except (ValueError, TypeError) as e:
            raise self.file.damaged(f"a count of {table} does not parse: {e}") from None

    def where(self, table: str, column: str, value: str) -> Iterable[Entity]:
        if (table, column) not in INDEXED:
            raise ValueError(f"{table}.{column} has no index")
        return [self._parse(table, name, doc)
                for name, doc in self._all(f"SELECT name, doc FROM {table} WHERE {column} = ? ORDER BY name",
                                           (value,))]

    def owner(self, address: str) -> str | None:
        found = self._all("SELECT resource FROM addresses WHERE address = ?", (address,))
        return str(found[0][0]) if found else None

    def prefixed(self) -> Iterable[Entity]:
        names = [n for (n,) in self._all("SELECT DISTINCT resource FROM addresses WHERE prefix_len IS NOT NULL")]
        return [row for row in (self.row("resources", n) for n in names) if row is not None]

    def running(self, by: tuple[str, ...], subscription: str | None = None) -> Counts:
        if not set(by) <= set(COUNTED_BY):
            raise ValueError(f"running resources are not counted by {by}")
        columns = ", ".join(by)
        where, args = ("AND subscription = ?", (subscription,)) if subscription is not None else ("", ())
        rows = self._all(f"SELECT {columns}, sum(n) FROM resource_counts WHERE state = 'running' {where} "
                         f"GROUP BY {columns}", args)
        pulled = by.index("pulled") if "pulled" in by else -1
        try:
            return {tuple(pulled_of(v) if i == pulled else v for i, v in enumerate(row[:-1])): int(row[-1])
                    for row in rows}
        except (ValueError, TypeError) as e:
            raise self.file.damaged(f"a count of running resources does not parse: {e}") from None

    def running_names(self, subscription: str, where: dict[str, Any], limit: int | None) -> list[str]:
        if not set(where) <= set(COUNTED_BY):
            raise ValueError(f"running resources are not found by {list(where)}")
        values = [pulled_text(v) if column == "pulled" else v for column, v in where.items()]
        condition = "".join(f" AND {column} IS ?" for column in where)
        return [n for (n,) in self._all(f"SELECT name FROM resources WHERE subscription = ? AND state = 'running'"
                                        f"{condition} ORDER BY name LIMIT ?",
                                        (subscription, *values, -1 if limit is None else limit))]


def over(old: Inventory, new: Inventory) -> Inventory:
    """An inventory built apart from `old` (a whole one, handed in), as changes over old's rows: row by row, so
    O(the state); an operation that derives its inventory from the one it is given costs what it changed."""
    changes = Changes()
    for table in TABLE_NAMES:
        before, after = getattr(old, table), getattr(new, table)
        for name in sorted(set(before) | set(after)):
            if before.get(name) != after.get(name):
                changes.set(table, name, after.get(name), old.source)
    return Inventory(new.profile, internal_prefixes=new.internal_prefixes, source=old.source, changes=changes)
