"""The state's schema, version by version: the SQL each version adds (version 2's indexed columns and address
rows, version 3's counts kept by triggers) and the steps that migrate an older state in place.

Apart from the store because a released version is never rewritten, only followed by the next: this file is the
history a state file is read through, not the store's logic.
"""

from __future__ import annotations

import sqlite3
from typing import Callable

from ..core.inventory import Resource, VNet
from ..core.rows import COUNTED_BY
from .rows import from_doc, write_resource

# Schema migrations: the steps of MIGRATIONS[i] take the schema from version i to i + 1: SQL scripts, and
# functions of the open transaction where rows must be rewritten.
SCHEMA_1 = """
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
    """
# Version 2: what an operation asks of the rows, as columns with indexes (the document stays the row's whole
# truth; the columns repeat parts of it), and one row per address: its owner, and what the daemon's table needs of
# it, so that compiling the table is one pass over this one table (`judged`: what the verdict depends on, as
# core.verdicts.Judged encodes it; `bound`: where the packets may come from, when anything binds them).
SCHEMA_2 = """
    ALTER TABLE resources ADD COLUMN subscription TEXT;
    ALTER TABLE resources ADD COLUMN kind TEXT;
    ALTER TABLE resources ADD COLUMN state TEXT;
    ALTER TABLE resources ADD COLUMN vnet TEXT;
    ALTER TABLE resources ADD COLUMN subnet TEXT;
    ALTER TABLE resources ADD COLUMN egress TEXT;
    ALTER TABLE resources ADD COLUMN pulled TEXT;
    ALTER TABLE vnets ADD COLUMN subscription TEXT;
    CREATE TABLE addresses (address TEXT PRIMARY KEY, resource TEXT NOT NULL, prefix_len INTEGER,
                            judged TEXT NOT NULL, bound TEXT) WITHOUT ROWID;
    CREATE INDEX addresses_prefixes ON addresses (prefix_len) WHERE prefix_len IS NOT NULL;
    CREATE INDEX resources_running ON resources (subscription, state, pulled, vnet, subnet, name);
    CREATE INDEX resources_judged ON resources (state, subscription, kind, egress, pulled);
    CREATE INDEX resources_by_vnet ON resources (vnet) WHERE vnet IS NOT NULL;
    CREATE INDEX resources_by_egress ON resources (egress) WHERE egress IS NOT NULL;
    CREATE INDEX vnets_by_subscription ON vnets (subscription);
    """


def _fill_columns(cx: sqlite3.Connection) -> None:
    """Version 2's columns and address rows for the rows a version 1 state holds."""
    for (doc,) in cx.execute("SELECT doc FROM vnets").fetchall():
        vnet = from_doc("vnets", doc)
        assert isinstance(vnet, VNet)
        cx.execute("UPDATE vnets SET subscription = ? WHERE name = ?", (vnet.subscription, vnet.name))
    for (doc,) in cx.execute("SELECT doc FROM resources").fetchall():
        r = from_doc("resources", doc)
        assert isinstance(r, Resource)
        write_resource(cx, r, doc, None)


# Version 3: how many resources each group of alike ones holds (a group: equal state and COUNTED_BY columns),
# kept by triggers in the transaction that writes the resource, so that a count (`enforcer status`, diagnose's
# pending restarts) reads one row a group, not the resources. `grp` is the group's columns as one key: a primary
# key of nullable columns would not match NULL to NULL.
GROUPED_BY = ("state", *COUNTED_BY)
GROUP_COLUMNS = ", ".join(GROUPED_BY)


def _group_key(row: str) -> str:
    return f"json_array({', '.join(f'{row}.{column}' for column in GROUPED_BY)})"


def _counted(row: str, step: int) -> str:
    """The statements that count `row` (new or old) in or out of its group; a group counted down to 0 goes."""
    if step > 0:
        values = ", ".join(f"{row}.{column}" for column in GROUPED_BY)
        return (f"INSERT INTO resource_counts SELECT {_group_key(row)}, {values}, 1 WHERE true "
                f"ON CONFLICT (grp) DO UPDATE SET n = n + 1;")
    return (f"UPDATE resource_counts SET n = n - 1 WHERE grp = {_group_key(row)};\n"
            f"DELETE FROM resource_counts WHERE grp = {_group_key(row)} AND n <= 0;")


SCHEMA_3 = f"""
    CREATE TABLE resource_counts (grp TEXT PRIMARY KEY, {', '.join(f'{c} TEXT' for c in GROUPED_BY)},
                                  n INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO resource_counts SELECT {_group_key('resources')}, {GROUP_COLUMNS}, count(*)
        FROM resources GROUP BY 1;
    CREATE TRIGGER resources_counted_in AFTER INSERT ON resources BEGIN
        {_counted('new', 1)}
    END;
    CREATE TRIGGER resources_counted_out AFTER DELETE ON resources BEGIN
        {_counted('old', -1)}
    END;
    CREATE TRIGGER resources_counted_moved AFTER UPDATE OF {GROUP_COLUMNS} ON resources BEGIN
        {_counted('old', -1)}
        {_counted('new', 1)}
    END;
    """

MIGRATIONS: list[list[str | Callable[[sqlite3.Connection], None]]] = [
    [SCHEMA_1], [SCHEMA_2, _fill_columns], [SCHEMA_3]]
SCHEMA_VERSION = len(MIGRATIONS)
