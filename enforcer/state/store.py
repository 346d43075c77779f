"""Durable state: the inventory in SQLite (WAL), a versioned schema, and an append-only audit log.

Every change runs in one IMMEDIATE transaction: read the inventory, apply a pure operation, write the
difference and its audit rows, bump the generation. Concurrent CLI processes serialise on the write lock,
so none loses another's change. A file that is not our database, or is damaged, is never touched; a disk that
is full or read-only is told as such.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager, suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from ..core.inventory import Inventory, Pulled, Resource, Subnet, Subscription, VNet
from ..errors import UserError
from .trust import SQLITE_MAGIC, StateFile, new_file_mode, size_fault

APPLICATION_ID = 0x50323545  # "P25E": marks the file as ours
T = TypeVar("T")

# Schema migrations: MIGRATIONS[i] takes the schema from version i to i + 1.
MIGRATIONS = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE subscriptions (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
    CREATE TABLE vnets (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
    CREATE TABLE resources (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL, uid INTEGER NOT NULL, command TEXT NOT NULL,
        kind TEXT NOT NULL, name TEXT NOT NULL, before TEXT, after TEXT);
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    INSERT INTO meta VALUES ('generation', '0'), ('profile', '"azure"'), ('internal_prefixes', '[]');
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

TABLES = {"subscriptions": Subscription, "vnets": VNet, "resources": Resource}


Entity = Subscription | VNet | Resource


# Fields added after the first schema (an account's attributes, and what a resource pulled of them): a stored
# document leaves them out while they hold their default, so that a state that does not use them is stored as
# before, and an older port25-enforcer still reads it. Reading fills them in from the dataclasses' defaults.
LATER_FIELDS: dict[str, object] = {"created": None, "verified": False, "first_invoice_paid": False, "flagged": False}


def _lean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not (k in LATER_FIELDS and v == LATER_FIELDS[k])}


def to_doc(entity: Entity) -> str:
    d = _lean(asdict(entity))
    if isinstance(d.get("pulled"), dict):
        d["pulled"] = _lean(d["pulled"])
    return json.dumps(d, separators=(",", ":"), sort_keys=True)


def from_doc(table: str, text: str) -> Entity:
    d = json.loads(text)
    if table == "vnets":
        return VNet(d["name"], d["subscription"], tuple(d["prefixes"]), tuple(Subnet(**s) for s in d["subnets"]),
                    d.get("interface"))
    if table == "resources":
        pulled = Pulled(**d.pop("pulled")) if d.get("pulled") else None
        d.pop("pulled", None)
        return Resource(**{**d, "addresses": tuple(d["addresses"]), "pulled": pulled})
    return Subscription(**d)








class Store:
    def __init__(self, path: str | os.PathLike[str], create: bool = False):
        self.path = Path(path)
        self.file = StateFile(self.path)
        self._cx: sqlite3.Connection | None = None
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
            self._quick_check(cx, ("meta", *TABLES) if current else ())
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
            for step in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[step]):
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
        rows = {}
        for name, doc in self._db.execute(f"SELECT name, doc FROM {table} ORDER BY name"):
            try:
                rows[name] = from_doc(table, doc)
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                raise self.file.damaged(f"{table} row {name!r} does not parse: {type(e).__name__}: {e}") from None
        return rows

    def _load(self) -> Inventory:
        with self._reading():
            parts: dict[str, Any] = {table: self._rows(table) for table in TABLES}
            return Inventory(profile=self._meta("profile"),
                             internal_prefixes=tuple(self._meta("internal_prefixes")), **parts)

    def read(self) -> tuple[Inventory, int]:
        """A consistent snapshot: (inventory, generation). A state that does not exist yet reads as empty."""
        if self._cx is None:
            return Inventory(), 0
        with self._reading():
            self._cx.execute("BEGIN")
            try:
                inv, generation = self._load(), int(self._meta("generation"))
            finally:
                self._rollback()  # a read transaction: ending it keeps nothing either way
        return inv, generation

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

    # ------------------------------------------------------------ changing

    def change(self, command: str, operation: Callable[[Inventory], tuple[Inventory, T]]) -> T:
        """Run `operation` on the current inventory in one transaction and store what it changed.
        If it raises, nothing is written."""
        if self._cx is None:
            self._create()
        cx = self._db
        try:
            cx.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise self.file.trouble(e) from None
        try:
            self._quick_check(cx)  # the whole file, the audit log and the free list too: this writes into them
            old = self._load()
            new, result = operation(old)
            if self._write_difference(old, new, command):
                cx.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            cx.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            raise self.file.trouble(e) from None
        except BaseException:
            self._rollback()
            raise
        return result

    def _write_difference(self, old: Inventory, new: Inventory, command: str) -> int:
        at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        uid = os.getuid()
        rows = []
        for table in TABLES:
            before, after = getattr(old, table), getattr(new, table)
            for name in sorted(before.keys() | after.keys()):
                b, a = before.get(name), after.get(name)
                if b == a:
                    continue
                bdoc, adoc = (to_doc(b) if b else None), (to_doc(a) if a else None)
                if a is None:
                    self._db.execute(f"DELETE FROM {table} WHERE name = ?", (name,))
                else:
                    self._db.execute(f"INSERT OR REPLACE INTO {table} (name, doc) VALUES (?, ?)", (name, adoc))
                rows.append((at, uid, command, table[:-1], name, bdoc, adoc))
        for key in ("profile", "internal_prefixes"):
            b, a = getattr(old, key), getattr(new, key)
            if b != a:
                doc = json.dumps(list(a) if isinstance(a, tuple) else a)
                self._db.execute("UPDATE meta SET value = ? WHERE key = ?", (doc, key))
                rows.append((at, uid, command, "setting", key, json.dumps(b if isinstance(b, str) else list(b)),
                             doc))
        self._db.executemany("INSERT INTO audit (at, uid, command, kind, name, before, after) "
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
