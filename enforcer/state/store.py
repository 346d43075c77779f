"""Durable state: the inventory in SQLite (WAL), a versioned schema, and an append-only audit log.

Every change runs in one IMMEDIATE transaction: read the inventory, apply a pure operation, write the
difference and its audit rows, bump the generation. Concurrent CLI processes serialise on the write lock,
so none loses another's change. A file that is not our database is never touched.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..core.inventory import Inventory, Pulled, Resource, Subnet, Subscription, VNet
from ..errors import UserError

APPLICATION_ID = 0x50323545  # "P25E": marks the file as ours
SQLITE_MAGIC = b"SQLite format 3\x00"
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


def to_doc(entity: Entity) -> str:
    return json.dumps(asdict(entity), separators=(",", ":"), sort_keys=True)


def from_doc(table: str, text: str) -> Entity:
    d = json.loads(text)
    if table == "vnets":
        return VNet(d["name"], d["subscription"], tuple(d["prefixes"]), tuple(Subnet(**s) for s in d["subnets"]))
    if table == "resources":
        pulled = Pulled(**d.pop("pulled")) if d.get("pulled") else None
        d.pop("pulled", None)
        return Resource(**{**d, "addresses": tuple(d["addresses"]), "pulled": pulled})
    return Subscription(**d)


class Store:
    def __init__(self, path: str | os.PathLike[str], create: bool = False):
        self.path = Path(path)
        self._cx: sqlite3.Connection | None = None
        if self.path.exists() and self.path.stat().st_size > 0:
            self._open_existing()
        elif create:
            self._create()

    # ------------------------------------------------------------ opening

    def _connect(self) -> sqlite3.Connection:
        # the daemon reads from a thread other than the one that opened it, never from two at once
        cx = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
        cx.execute("PRAGMA busy_timeout = 30000")
        return cx

    def _refuse(self, why: str) -> UserError:
        return UserError(f"{self.path} {why}; it was left untouched: move it away or pass --state PATH")

    def _open_existing(self) -> None:
        try:
            with open(self.path, "rb") as f:
                magic = f.read(len(SQLITE_MAGIC))
        except OSError as e:
            raise UserError(f"cannot read the state {self.path}: {e.strerror}; run as root or pass --state PATH") \
                from None
        if magic != SQLITE_MAGIC:
            raise self._refuse("is not an enforcer state database (not SQLite)")
        self._check_owner()
        try:
            cx = self._connect()
            app_id = cx.execute("PRAGMA application_id").fetchone()[0]
            version = cx.execute("PRAGMA user_version").fetchone()[0]
            tables = cx.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise self._refuse(f"is corrupt ({e})") from None
        if app_id != APPLICATION_ID:
            if tables:
                cx.close()
                raise self._refuse("is an SQLite database of some other program")
            self._cx = cx
            self._migrate()
            return
        if version > SCHEMA_VERSION:
            cx.close()
            raise self._refuse(f"was written by a newer port25-enforcer (schema {version}, this one knows "
                               f"{SCHEMA_VERSION}); upgrade port25-enforcer")
        self._cx = cx
        if version < SCHEMA_VERSION:
            self._migrate()

    def _check_owner(self) -> None:
        """As root, refuse a state that another user owns or can write: the daemon would enforce what they
        wrote, and the audit log would not say who."""
        if os.geteuid() != 0:
            return
        st = self.path.stat()
        if st.st_uid != 0 or st.st_mode & 0o022:
            raise self._refuse(f"is owned by uid {st.st_uid} or writable by others (mode {st.st_mode & 0o777:o}); "
                               f"if it is yours: chown root {self.path} && chmod 600 {self.path}")

    def _create(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():  # an empty file: ours to fill only if it passes the owner check
                self._check_owner()
            else:
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            self._cx = self._connect()
        except (OSError, sqlite3.OperationalError) as e:
            raise UserError(f"cannot create the state {self.path}: {getattr(e, 'strerror', None) or e}; "
                            "run as root or pass --state PATH") from None
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
        except sqlite3.DatabaseError as e:
            if cx.in_transaction:
                cx.execute("ROLLBACK")
            raise UserError(f"cannot write the state {self.path}: {e}; check the file's permissions") from None

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

    # ------------------------------------------------------------ reading

    def _meta(self, key: str) -> Any:
        return json.loads(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    def _load(self) -> Inventory:
        parts: dict[str, Any] = {
            table: {name: from_doc(table, doc)
                    for name, doc in self._db.execute(f"SELECT name, doc FROM {table} ORDER BY name")}
            for table in TABLES}
        return Inventory(profile=self._meta("profile"), internal_prefixes=tuple(self._meta("internal_prefixes")),
                         **parts)

    def read(self) -> tuple[Inventory, int]:
        """A consistent snapshot: (inventory, generation). A state that does not exist yet reads as empty."""
        if self._cx is None:
            return Inventory(), 0
        try:
            self._cx.execute("BEGIN")
            try:
                return self._load(), int(self._meta("generation"))
            finally:
                self._db.execute("COMMIT")
        except sqlite3.DatabaseError as e:
            raise self._refuse(f"cannot be read ({e})") from None

    def generation(self) -> int:
        return 0 if self._cx is None else int(self._meta("generation"))

    def audit(self, limit: int = 50) -> list[dict[str, Any]]:
        if self._cx is None:
            return []
        rows = self._cx.execute("SELECT id, at, uid, command, kind, name, before, after FROM audit "
                                "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        keys = ("id", "at", "uid", "command", "kind", "name", "before", "after")
        out = []
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
        except sqlite3.OperationalError as e:
            raise UserError(f"cannot lock the state {self.path}: {e}; is it writable?") from None
        try:
            old = self._load()
            new, result = operation(old)
            if self._write_difference(old, new, command):
                cx.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            cx.execute("COMMIT")
        except BaseException:
            cx.execute("ROLLBACK")
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
