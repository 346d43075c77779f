"""Durable state: the inventory in SQLite (WAL), a versioned schema, and an append-only audit log.

Every change runs in one IMMEDIATE transaction: the pure operation reads the rows it asks for (StoreSource: by
name, or through an index), the rows it changed are written with their audit rows, the generation goes up. So a
change costs what it touches, not the size of the state. Concurrent CLI processes serialise on the write lock,
so none loses another's change. A file that is not our database, or is damaged, is never touched; a disk that
is full or read-only is told as such.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, TypeVar

from ..core.inventory import Inventory, Resource, Subscription, VNet
from ..core.profile import Profile
from ..core.validate import check_row, validate
from ..errors import UserError
from .rows import Entity, drop_addresses, from_doc, to_doc, write_resource
from .schema import GROUP_COLUMNS, MIGRATIONS, SCHEMA_VERSION
from .source import StoreSource, over
from .trust import SQLITE_MAGIC, StateFile, new_file_mode, size_fault

APPLICATION_ID = 0x50323545  # "P25E": marks the file as ours
# A state up to this size is checked whole (PRAGMA quick_check) before every change, and its inventory's tables at
# every open: about 1 ms per MiB here. Past it (a state of ~100,000 resources and more) a command relies on the
# checks SQLite makes of every page it reads and ours of every row it parses, so that it costs what it touches;
# `enforcer state check` checks the whole file on demand, and the daemon reads every address row when it starts.
CHECKED_WHOLE_UP_TO = 16 << 20
T = TypeVar("T")

TABLES = {"subscriptions": Subscription, "vnets": VNet, "resources": Resource}


class Changed(NamedTuple):
    """One change the audit log holds: a row of `kind` (subscription, vnet, resource; or setting) before and
    after (None where it did not exist)."""
    kind: str
    name: str
    before: Any
    after: Any


def _audited(kind: str, doc: str | None) -> Any:
    if doc is None:
        return None
    return json.loads(doc) if kind == "setting" else from_doc(kind + "s", doc)


class Store:
    def __init__(self, path: str | os.PathLike[str], create: bool = False):
        self.path = Path(path)
        self.file = StateFile(self.path)
        self._cx: sqlite3.Connection | None = None
        self.checks_whole_file = True
        if self._size() > 0:
            self._open_existing()
        elif create:
            self._create()

    # ------------------------------------------------------------ opening

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return 0
        except OSError as e:
            raise self.file.os_trouble(e, "read") from None

    def _connect(self) -> sqlite3.Connection:
        # the daemon reads from a thread other than the one that opened it, never from two at once
        try:
            cx = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
            cx.execute("PRAGMA busy_timeout = 30000")
        except sqlite3.Error as e:
            raise self.file.trouble(e) from None
        return cx

    def _open_existing(self) -> None:
        header, size, journal_live = self.file.read_header()
        if not header.startswith(SQLITE_MAGIC):
            raise self.file.refuse("is not an enforcer state database (not SQLite)")
        self.file.check_owner()  # before SQLite opens it: opening replays a -wal or a hot -journal
        fault = size_fault(header, size, journal_live)
        if fault:
            raise self.file.damaged(fault)
        self.checks_whole_file = size <= CHECKED_WHOLE_UP_TO
        cx = self._connect()
        try:
            stale = self._admit(cx)
        except BaseException:
            cx.close()
            raise
        self._cx = cx
        if stale:
            self._migrate()

    def _admit(self, cx: sqlite3.Connection) -> bool:
        """Refuse what is not our database or is damaged; True if it needs migrating (or is new to us).

        PRAGMA quick_check reads every page it checks: 20-30 ms for a state of 100,000 resources (24 MiB, warm
        cache; read() takes 900 ms there). But the append-only audit log grows without end (the whole file takes
        120-160 ms once it also holds 300,000 rows), so an open checks the tables the inventory is read from
        (as quick whatever the log holds) and change() checks the whole file before it writes into it."""
        try:
            app_id: int = cx.execute("PRAGMA application_id").fetchone()[0]
            version: int = cx.execute("PRAGMA user_version").fetchone()[0]
            tables: int = cx.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id != APPLICATION_ID and tables:
                raise self.file.refuse("is an SQLite database of some other program")
            if app_id == APPLICATION_ID and version > SCHEMA_VERSION:
                raise self.file.refuse(f"was written by a newer port25-enforcer (schema {version}, this one knows "
                                   f"{SCHEMA_VERSION}); upgrade port25-enforcer")
            current = app_id == APPLICATION_ID and version == SCHEMA_VERSION
            if not current:  # a migration is coming: the whole file first
                self._quick_check(cx)
            else:
                counts = ("meta", "resource_counts")  # what a summary reads: small whatever the state holds
                self._quick_check(cx, (*counts, *TABLES) if self.checks_whole_file else counts)
        except sqlite3.Error as e:
            raise self.file.trouble(e) from None
        return not current

    def _quick_check(self, cx: sqlite3.Connection, tables: tuple[str, ...] = ()) -> None:
        """Refuse a file whose pages are damaged: those of `tables`, or all of them (with the free list)."""
        pragmas = [f"PRAGMA quick_check({table})" for table in tables] or ["PRAGMA quick_check"]
        problems = [line for pragma in pragmas for (row,) in cx.execute(pragma) for line in str(row).splitlines()
                    if line != "ok" and not line.startswith("*** in database")]
        if problems:
            more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
            raise self.file.damaged(f"PRAGMA quick_check: {problems[0]}{more}")

    def _create(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            self.file.check_owner()  # the directory, and an empty file: ours to fill only if nobody else can write it
            if not self.path.exists():
                mode = new_file_mode(self.path.parent)
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
                os.fchmod(fd, mode)  # whatever the umask: SQLite gives its -wal and -shm the state's mode
                os.close(fd)
        except OSError as e:
            raise self.file.os_trouble(e, "create") from None
        self._cx = self._connect()
        self._migrate()

    def _migrate(self) -> None:
        cx = self._db
        try:
            cx.execute("PRAGMA journal_mode = WAL")
            cx.execute("BEGIN IMMEDIATE")
            version = cx.execute("PRAGMA user_version").fetchone()[0]
            for steps in MIGRATIONS[version:]:
                for step in steps:
                    if callable(step):
                        step(cx)
                        continue
                    for statement in _statements(step):
                        cx.execute(statement)
            cx.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            cx.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            cx.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            raise self.file.trouble(e) from None

    # ------------------------------------------------------------ what went wrong, as a person can fix it

    @property
    def _db(self) -> sqlite3.Connection:
        """The open connection; only called where the state is known to exist."""
        if self._cx is None:
            raise UserError(f"no state at {self.path}")
        return self._cx

    @property
    def exists(self) -> bool:
        return self._cx is not None

    def close(self) -> None:
        if self._cx is not None:
            self._cx.close()
            self._cx = None

    def _rollback(self) -> None:
        # SQLite rolls back by itself after some failures (a COMMIT on a full disk): a ROLLBACK would then
        # raise "no transaction is active". A ROLLBACK that fails leaves the first error the one to tell.
        if self._cx is not None and self._cx.in_transaction:
            with suppress(sqlite3.Error):
                self._cx.execute("ROLLBACK")

    # ------------------------------------------------------------ reading

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """SQLite's errors told as what they are; a stored value that does not parse is damage SQLite's own
        checks cannot see (bytes changed inside a row)."""
        try:
            yield
        except sqlite3.Error as e:
            raise self.file.trouble(e) from None
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise self.file.damaged(f"a stored value does not parse: {type(e).__name__}: {e}") from None

    def _meta(self, key: str) -> Any:
        return json.loads(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    def _rows(self, table: str) -> dict[str, Entity]:
        return {row.name: row for row in StoreSource(self._db, self.file).rows(table)}

    def _load(self) -> Inventory:
        with self._reading():
            parts: dict[str, Any] = {table: self._rows(table) for table in TABLES}
            return Inventory(profile=self._meta("profile"),
                             internal_prefixes=tuple(self._meta("internal_prefixes")), **parts)

    def _lazy(self, profiles: Callable[[str], Profile] | None) -> Inventory:
        """The inventory of the open transaction, read row by row as it is asked (StoreSource); every row read is
        checked against the state's profile, when `profiles` loads it."""
        with self._reading():
            profile_id = self._meta("profile")
            check = None
            if profiles is not None:
                profile = profiles(profile_id)
                check = lambda table, row: check_row(profile, table, row)  # noqa: E731
            return Inventory(profile_id, internal_prefixes=tuple(self._meta("internal_prefixes")),
                             source=StoreSource(self._db, self.file, check))

    def read(self) -> tuple[Inventory, int]:
        """A consistent snapshot held whole in memory: (inventory, generation). A state that does not exist yet
        reads as empty. O(the state): for what needs every row; a command takes snapshot()."""
        if self._cx is None:
            return Inventory(), 0
        self.end_snapshot()
        with self._reading():
            self._cx.execute("BEGIN")
            try:
                inv, generation = self._load(), int(self._meta("generation"))
            finally:
                self._rollback()  # a read transaction: ending it keeps nothing either way
        return inv, generation

    def snapshot(self, profiles: Callable[[str], Profile] | None = None) -> Inventory:
        """The state as one consistent snapshot, read lazily: a read transaction that lasts until close() (or
        end_snapshot()). A state that does not exist yet reads as empty."""
        if self._cx is None:
            return Inventory()
        self.end_snapshot()
        with self._reading():
            self._cx.execute("BEGIN")
        return self._lazy(profiles)

    def end_snapshot(self) -> None:
        self._rollback()

    def verify(self, profiles: Callable[[str], Profile]) -> dict[str, int]:
        """The whole state checked, whatever its size: every page (PRAGMA quick_check), every row parsed and the
        inventory validated against its profile, the address rows against the resources. Counts of what it holds."""
        if self._cx is None:
            raise UserError(f"no state at {self.path}")
        with self._reading():
            self._quick_check(self._db)
        inv, _ = self.read()
        validate(inv, profiles(inv.profile))
        with self._reading():
            held = int(self._db.execute("SELECT count(*) FROM addresses").fetchone()[0])
            audit = int(self._db.execute("SELECT count(*) FROM audit").fetchone()[0])
        named = sum(len(r.addresses) for r in inv.resources.values())
        if held != named:
            raise self.file.damaged(f"the resources name {named} addresses, the address rows hold {held}")
        with self._reading():
            counted = self._db.execute(f"SELECT {GROUP_COLUMNS}, n FROM resource_counts").fetchall()
            grouped = self._db.execute(f"SELECT {GROUP_COLUMNS}, count(*) FROM resources "
                                       f"GROUP BY {GROUP_COLUMNS}").fetchall()
        if sorted(counted, key=repr) != sorted(grouped, key=repr):
            raise self.file.damaged("the counts of resources (table resource_counts) do not match the resources")
        return {"subscriptions": len(inv.subscriptions), "vnets": len(inv.vnets), "resources": len(inv.resources),
                "addresses": held, "audit rows": audit}

    def names(self, table: str, prefix: str = "", limit: int = 100) -> list[str]:
        """The names in `table` (subscriptions, vnets, resources) that begin with `prefix`, in order, at most
        `limit`: one range of the primary key, as quick for a million resources as for ten (shell completion)."""
        if table not in ("subscriptions", "vnets", "resources"):
            raise ValueError(f"no names table {table!r}")
        if self._cx is None:
            return []
        # every name that begins with the prefix sorts between it and it followed by the highest code point
        with self._reading():
            rows = self._cx.execute(f"SELECT name FROM {table} WHERE name >= ? AND name < ? ORDER BY name LIMIT ?",
                                    (prefix, prefix + "\U0010ffff", limit)).fetchall()
        return [name for (name,) in rows]

    def generation(self) -> int:
        if self._cx is None:
            return 0
        with self._reading():
            return int(self._meta("generation"))

    def audit(self, limit: int = 50) -> list[dict[str, Any]]:
        if self._cx is None:
            return []
        keys = ("id", "at", "uid", "command", "kind", "name", "before", "after")
        out = []
        with self._reading():
            rows = self._cx.execute("SELECT id, at, uid, command, kind, name, before, after FROM audit "
                                    "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
            for row in reversed(rows):
                d = dict(zip(keys, row, strict=True))
                d["before"] = json.loads(d["before"]) if d["before"] else None
                d["after"] = json.loads(d["after"]) if d["after"] else None
                out.append(d)
        return out

    def address_rows(self) -> Iterator[tuple[str, str, int | None, str, str | None]]:
        """Every address with what the table needs of its resource, in one pass (a full compile): (address,
        resource, prefix length or None, judged, bound), as write_resource() writes them. Read it in a snapshot."""
        with self._reading():
            yield from self._db.execute("SELECT address, resource, prefix_len, judged, bound FROM addresses")

    def audit_position(self) -> int:
        """The newest audit row's id (0 for none): where changed_since() goes on from."""
        if self._cx is None:
            return 0
        with self._reading():
            return int(self._cx.execute("SELECT ifnull(max(id), 0) FROM audit").fetchone()[0])

    def changed_since(self, position: int, limit: int) -> list[Changed] | None:
        """What changed after audit row `position`, in order (the rows before and after each change), or None when
        more than `limit` rows did (then reading it all costs more than reading the state afresh). Read it in the
        snapshot the rows it names are read from, so that both are of one generation."""
        if self._cx is None:
            return []
        with self._reading():
            rows = self._cx.execute("SELECT kind, name, before, after FROM audit WHERE id > ? ORDER BY id LIMIT ?",
                                    (position, limit + 1)).fetchall()
            if len(rows) > limit:
                return None
            return [Changed(kind, name, _audited(kind, before), _audited(kind, after))
                    for kind, name, before, after in rows]

    # ------------------------------------------------------------ changing

    def change(self, command: str, operation: Callable[[Inventory], tuple[Inventory, T]],
               profiles: Callable[[str], Profile] | None = None) -> T:
        """Run `operation` on the current inventory in one transaction and store what it changed. If it raises,
        nothing is written. `profiles` (profile id -> Profile) checks every row the operation reads."""
        if self._cx is None:
            self._create()
        self.end_snapshot()
        cx = self._db
        try:
            cx.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise self.file.trouble(e) from None
        try:
            if self.checks_whole_file:
                self._quick_check(cx)  # the whole file, the audit log and the free list too: this writes into them
            old = self._lazy(profiles)
            new, result = operation(old)
            if new.source is not old.source:
                new = over(old, new)
            with self._reading():
                if self._write_changes(old, new, command):
                    cx.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            cx.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            raise self.file.trouble(e) from None
        except BaseException:
            self._rollback()
            raise
        return result

    def _write_changes(self, old: Inventory, new: Inventory, command: str) -> int:
        """Write the rows `new` changed over its source, and one audit row each; the number of audit rows."""
        at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        uid = os.getuid()
        cx = self._db
        rows = []
        for table in TABLES:
            for name, after in sorted(new.changes.tables[table].items()):
                before = new.source.row(table, name)
                if before == after:
                    continue
                bdoc, adoc = (to_doc(before) if before else None), (to_doc(after) if after else None)
                if after is None:
                    cx.execute(f"DELETE FROM {table} WHERE name = ?", (name,))
                    if isinstance(before, Resource):
                        drop_addresses(cx, before, keep=set())
                elif isinstance(after, Resource):
                    assert adoc is not None and (before is None or isinstance(before, Resource))
                    write_resource(cx, after, adoc, before)
                elif isinstance(after, VNet):
                    cx.execute("INSERT OR REPLACE INTO vnets (name, doc, subscription) VALUES (?, ?, ?)",
                               (name, adoc, after.subscription))
                else:
                    cx.execute(f"INSERT OR REPLACE INTO {table} (name, doc) VALUES (?, ?)", (name, adoc))
                rows.append((at, uid, command, table[:-1], name, bdoc, adoc))
        for key in ("profile", "internal_prefixes"):
            b, a = getattr(old, key), getattr(new, key)
            if b != a:
                doc = json.dumps(list(a) if isinstance(a, tuple) else a)
                cx.execute("UPDATE meta SET value = ? WHERE key = ?", (doc, key))
                rows.append((at, uid, command, "setting", key, json.dumps(b if isinstance(b, str) else list(b)),
                             doc))
        cx.executemany("INSERT INTO audit (at, uid, command, kind, name, before, after) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        return len(rows)


def _statements(script: str) -> list[str]:
    """Split a migration script into statements, keeping trigger bodies whole."""
    out, buf = [], ""
    for line in script.strip().splitlines():
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    return out
