"""Durable state: one transaction per change, nothing lost under concurrency, foreign files never touched."""

import os
import sqlite3
import subprocess
import sys

import pytest

from enforcer.core import lifecycle
from enforcer.errors import UserError
from enforcer.state.profiles import load_profile
from enforcer.state.schema import SCHEMA_VERSION
from enforcer.state.store import APPLICATION_ID, Store

PROFILE = load_profile("azure")


def add_sub(name, type_word="payg"):
    return lambda inv: lifecycle.add_subscription(inv, PROFILE, name, type_word)


def test_change_is_stored_with_audit_and_generation(tmp_path):
    path = tmp_path / "state.db"
    store = Store(path, create=True)
    assert store.generation() == 0
    store.change("enforcer subscription add s1", add_sub("s1"))
    store.change("enforcer vm add v1",
                 lambda inv: lifecycle.add_resource(inv, PROFILE, "v1", "s1", "vm", ["198.18.0.1"]))
    reopened = Store(path)
    inv, generation = reopened.read()
    assert generation == 2
    assert inv.subscriptions["s1"].type == "payg"
    assert inv.resources["v1"].pulled.type == "payg"
    rows = reopened.audit()
    assert [(r["kind"], r["name"], r["before"]) for r in rows] == [("subscription", "s1", None),
                                                                    ("resource", "v1", None)]
    assert rows[0]["uid"] == os.getuid() and rows[0]["command"] == "enforcer subscription add s1"
    assert rows[1]["after"]["state"] == "running"
    cx = sqlite3.connect(path)
    assert cx.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert cx.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert cx.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_failed_operation_changes_nothing(tmp_path):
    store = Store(tmp_path / "state.db", create=True)
    store.change("add", add_sub("s1"))

    def half_done(inv):
        inv, _ = lifecycle.add_subscription(inv, PROFILE, "s2", "ea")
        return lifecycle.add_subscription(inv, PROFILE, "s1", "ea")   # exists already: raises
    with pytest.raises(UserError, match="exists already"):
        store.change("bad", half_done)
    inv, generation = store.read()
    assert sorted(inv.subscriptions) == ["s1"] and generation == 1
    assert len(store.audit()) == 1


def test_audit_log_is_append_only(tmp_path):
    path = tmp_path / "state.db"
    Store(path, create=True).change("add", add_sub("s1"))
    cx = sqlite3.connect(path)
    for statement in ("UPDATE audit SET uid = 99", "DELETE FROM audit"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            cx.execute(statement)


def test_missing_state_reads_empty_and_is_not_created(tmp_path):
    path = tmp_path / "nothing-here.db"
    inv, generation = Store(path).read()
    assert not inv.subscriptions and generation == 0
    assert not path.exists()


@pytest.mark.parametrize("content, why", [
    (b"hello, this is a text file\n" * 10, "not SQLite"),
    (b"SQLite format 3\x00" + b"\xff" * 4000, "corrupt"),
])
def test_foreign_or_corrupt_file_is_refused_and_untouched(tmp_path, content, why):
    path = tmp_path / "state.db"
    path.write_bytes(content)
    with pytest.raises(UserError, match=why) as err:
        Store(path, create=True).change("add", add_sub("s1"))
    assert "left untouched" in str(err.value)
    assert path.read_bytes() == content


def test_other_programs_sqlite_database_is_refused(tmp_path):
    path = tmp_path / "state.db"
    cx = sqlite3.connect(path)
    cx.execute("CREATE TABLE songs (title TEXT)")
    cx.commit()
    cx.close()
    before = path.read_bytes()
    with pytest.raises(UserError, match="some other program"):
        Store(path, create=True)
    assert path.read_bytes() == before


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "state.db"
    Store(path, create=True).close()
    cx = sqlite3.connect(path)
    cx.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    cx.commit()
    with pytest.raises(UserError, match="newer port25-enforcer"):
        Store(path)


CONCURRENT_WRITER = """
import sys
from enforcer.core import lifecycle
from enforcer.state.profiles import load_profile
from enforcer.state.store import Store
profile = load_profile("azure")
store = Store(sys.argv[1], create=True)
for i in range(int(sys.argv[3])):
    name = f"{sys.argv[2]}-{i}"
    store.change(f"writer {name}", lambda inv: lifecycle.add_resource(
        inv, profile, name, "shared", "vm", [f"198.18.{int(sys.argv[2][1:])}.{i}"]))
"""


def test_concurrent_processes_lose_nothing(tmp_path):
    path = tmp_path / "state.db"
    Store(path, create=True).change("add", add_sub("shared"))
    writers, each = 4, 25
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITER, str(path), f"w{w}", str(each)])
             for w in range(writers)]
    assert [p.wait(timeout=120) for p in procs] == [0] * writers
    inv, generation = Store(path).read()
    assert len(inv.resources) == writers * each
    assert generation == 1 + writers * each
    assert len(Store(path).audit(limit=1000)) == 1 + writers * each
    # the counts kept by triggers saw every writer's rows too
    assert Store(path).snapshot().running(("subscription",)) == {("shared",): writers * each}
    assert Store(path).verify(load_profile)["resources"] == writers * each


def test_new_state_is_private(tmp_path):
    path = tmp_path / "state.db"
    Store(path, create=True).change("add", add_sub("s1"))
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="the owner check applies to root")
@pytest.mark.parametrize("mode, uid", [(0o666, 0), (0o600, 65534)])
def test_root_refuses_a_state_others_can_write(tmp_path, mode, uid):
    path = tmp_path / "state.db"
    path.touch()
    os.chmod(path, mode)
    os.chown(path, uid, -1)
    with pytest.raises(UserError, match="owned by uid|writable by others"):
        Store(path, create=True).change("add", add_sub("s1"))
    assert path.read_bytes() == b""
