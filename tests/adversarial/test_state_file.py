"""The state file damaged, tampered with, or on a bad disk: one line saying what is wrong and what to do (exit 2),
never a traceback, and the file's bytes as they were. Real files, real users, real mounts (a tmpfs in a private
mount namespace, gone when the namespace's process ends)."""

from __future__ import annotations

import gc
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from support.netlab import as_user
from support.paths import LAB, ROOT

from enforcer.cli.main import main
from enforcer.core import lifecycle
from enforcer.state.profiles import load_profile
from enforcer.state.store import Store

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: other users' files, mounts, switching user")
ADD = ("vm", "add", "x1", "--subscription", "payg-shop", "--address", "198.18.9.9")


@pytest.fixture
def lab(lab):
    """The example lab's state as one whole file: the in-process CLI's connections close when collected."""
    gc.collect()
    assert sorted(p.name for p in lab.state.parent.iterdir()) == ["state.db"]
    return lab


def refused(lab, *args: str) -> str:
    err: str = lab(*args, expect=2)
    gc.collect()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------ damaged files

def test_state_cut_short_by_one_byte_is_refused_and_untouched(lab):
    data = lab.state.read_bytes()[:-1]
    lab.state.write_bytes(data)
    for args in (("vm", "list"), ("audit", "--json"), ADD):
        err = refused(lab, *args)
        assert f"{lab.state} is damaged (" in err and "restore it from a backup or move it away" in err, err
    assert lab.state.read_bytes() == data
    assert sorted(p.name for p in lab.state.parent.iterdir()) == ["state.db"]


def test_size_rule_allows_a_live_wal(lab):
    """A guard for the size rule, not an attack (it passes on the code before the rule too, and fails if the rule
    ignores a live -wal): while a -wal holds pages, the file may be longer than its header counts. Made here with
    the daemon's kind of long-lived connection and a reader that holds checkpoints back; every open must still
    succeed, and once the -wal is checkpointed away the count must hold again."""
    profile = load_profile("azure")
    holder = sqlite3.connect(lab.state)  # the daemon: its -wal stays
    holder.execute("SELECT count(*) FROM resources").fetchone()
    reader = sqlite3.connect(lab.state, isolation_level=None)
    seen_longer = 0
    for i in range(600):
        if i % 40 == 20:  # a snapshot that checkpoints cannot pass, taken anew now and then
            if reader.in_transaction:
                reader.execute("COMMIT")
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM resources").fetchone()
        store = Store(lab.state)
        store.change("guard", lambda inv, i=i: lifecycle.add_resource(inv, profile, f"g{i}", "payg-shop", "vm",
                                                                      [f"198.19.{i // 250}.{i % 250 + 1}"]))
        store.close()
        header = lab.state.read_bytes()[:100]
        seen_longer += lab.state.stat().st_size > int.from_bytes(header[28:32], "big") * 4096
        if seen_longer > 20:
            break
    assert seen_longer, "the file never outgrew its header's count: the case this guards was not reached"
    reader.execute("COMMIT")
    holder.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    header = lab.state.read_bytes()[:100]
    assert lab.state.stat().st_size == int.from_bytes(header[28:32], "big") * 4096
    assert len(Store(lab.state).read()[0].resources) == 19 + i + 1
    reader.close()
    holder.close()


def leaf_pages(data: bytes, page: int, size: int) -> list[int]:
    """The leaf pages of the table b-tree rooted at `page` (the SQLite file format, read by hand)."""
    at = (page - 1) * size
    if data[at] == 0x0D:
        return [page]
    cells = int.from_bytes(data[at + 3:at + 5], "big")
    pointers = [int.from_bytes(data[at + 12 + 2 * i:at + 14 + 2 * i], "big") for i in range(cells)]
    children = [int.from_bytes(data[at + p:at + p + 4], "big") for p in pointers]
    children.append(int.from_bytes(data[at + 8:at + 12], "big"))
    return [leaf for child in children for leaf in leaf_pages(data, child, size)]


def table_page(path: Path, table: str = "resources") -> tuple[bytearray, int, int]:
    """The file's bytes, the offset of the first leaf page of `table`, and the page size."""
    cx = sqlite3.connect(path)
    root = cx.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    size = cx.execute("PRAGMA page_size").fetchone()[0]
    cx.close()
    data = bytearray(path.read_bytes())
    return data, (leaf_pages(bytes(data), root, size)[0] - 1) * size, size


def in_a_document(data: bytearray, at: int, size: int) -> int:
    return data.index(b'"kind":"vm"', at, at + size)


# (what is damaged, how, whether SQLite's structure checks see it at open)
DAMAGES = [
    ("free-space pointer", lambda d, at, size: d.__setitem__(slice(at + 1, at + 3), b"\x0f\xf0"), True),
    ("cell pointers", lambda d, at, size: d.__setitem__(slice(at + 8, at + 12), b"\xff" * 4), True),
    ("JSON syntax", lambda d, at, size: d.__setitem__(in_a_document(d, at, size) + 6, 0), False),
    ("JSON key", lambda d, at, size: d.__setitem__(in_a_document(d, at, size) + 4, ord("x")), False),
    ("UTF-8", lambda d, at, size: d.__setitem__(slice(in_a_document(d, at, size) + 1,
                                                      in_a_document(d, at, size) + 5), b"\xff\xfe\xff\xfe"), False),
]


@pytest.mark.parametrize("damage, hit, seen_at_open", DAMAGES, ids=[d[0] for d in DAMAGES])
def test_damaged_resources_page_is_refused_and_untouched(lab, damage, hit, seen_at_open):
    """Damage to the file's structure is seen at open (the whole file is checked at this size); damage inside one
    row's document only by a command that reads that row: a change reads the rows it needs, not the state."""
    data, at, size = table_page(lab.state)
    hit(data, at, size)
    lab.state.write_bytes(bytes(data))
    commands = [("vm", "list"), ("vm", "list", "--json")] + [ADD, ("audit", "--json")] * seen_at_open
    for args in commands:
        err = refused(lab, *args)
        assert f"{lab.state} is damaged (" in err and "restore it from a backup" in err, (damage, args, err)
    assert lab.state.read_bytes() == data


def test_damaged_audit_page_is_refused_before_a_change_writes(lab):
    """The audit log is not read by every command (an open checks the inventory's tables), but a change writes
    into it: the whole file is checked first."""
    data, at, size = table_page(lab.state, "audit")
    data[at + 1:at + 3] = b"\x0f\xf0"  # the first free block of the page: out of its bounds
    lab.state.write_bytes(bytes(data))
    err = refused(lab, *ADD)
    assert f"{lab.state} is damaged (PRAGMA quick_check: " in err, err
    assert lab.state.read_bytes() == data
    assert "shop-relay" in {r["name"] for r in lab.json("vm", "list")}  # the inventory itself is whole


# ------------------------------------------------------------ files and directories of other users

def forged_wal(state: Path, work: Path) -> bytes:
    """What another user plants: a -wal made on a copy of the state, in which payg-shop has become EA."""
    work.mkdir()
    shutil.copy(state, work / "state.db")
    cx = sqlite3.connect(work / "state.db", isolation_level=None)
    cx.execute("PRAGMA wal_autocheckpoint = 0")
    doc = json.loads(cx.execute("SELECT doc FROM subscriptions WHERE name = 'payg-shop'").fetchone()[0])
    cx.execute("UPDATE subscriptions SET doc = ? WHERE name = 'payg-shop'", (json.dumps({**doc, "type": "ea"}),))
    wal = (work / "state.db-wal").read_bytes()
    cx.close()
    return wal


CRASH_MID_TRANSACTION = """
import json, os, sqlite3, sys
cx = sqlite3.connect(sys.argv[1], isolation_level=None)
cx.execute("PRAGMA journal_mode = DELETE")
cx.execute("PRAGMA cache_size = 2")
doc = json.loads(cx.execute("SELECT doc FROM subscriptions WHERE name = 'payg-shop'").fetchone()[0])
cx.execute("UPDATE subscriptions SET doc = ? WHERE name = 'payg-shop'", (json.dumps({**doc, "type": "ea"}),))
cx.execute("BEGIN IMMEDIATE")
cx.execute("UPDATE subscriptions SET doc = ? WHERE name = 'payg-shop'", (json.dumps(doc),))
cx.executemany("INSERT INTO meta VALUES (?, ?)", [(f"k{i}", "x" * 500) for i in range(200)])
os._exit(0)
"""


def forged_journal(state: Path, work: Path) -> bytes:
    """A hot rollback journal: a copy of the state in which payg-shop is EA, crashed in the middle of a
    transaction that spilled, so its journal holds the EA pages to "restore"."""
    work.mkdir()
    shutil.copy(state, work / "state.db")
    subprocess.run([sys.executable, "-c", CRASH_MID_TRANSACTION, str(work / "state.db")], check=True)
    return (work / "state.db-journal").read_bytes()


PLANTED = [  # (beside the state, made by, owner, mode, the state's directory mode)
    ("-wal", forged_wal, 65534, 0o600, 0o700),
    ("-wal", forged_wal, 65534, 0o600, 0o777),
    ("-wal", forged_wal, 0, 0o666, 0o700),
    ("-journal", forged_journal, 65534, 0o600, 0o700),
    ("-shm", lambda state, work: bytes(32768), 65534, 0o600, 0o700),
]


@root_only
@pytest.mark.parametrize("suffix, forge, uid, mode, dir_mode", PLANTED,
                         ids=[f"{p[0]}-uid{p[2]}-{p[3]:o}-dir{p[4]:o}" for p in PLANTED])
def test_file_planted_beside_the_state_is_refused_not_replayed(lab, tmp_path, suffix, forge, uid, mode, dir_mode):
    content = forge(lab.state, tmp_path / "forge")
    planted = lab.state.with_name(lab.state.name + suffix)
    planted.write_bytes(content)
    os.chown(planted, uid, uid)
    os.chmod(planted, mode)
    os.chmod(tmp_path, dir_mode)
    before = lab.state.read_bytes()
    try:
        for args in (("subscription", "show", "payg-shop", "--json"), ("vm", "list"), ADD):
            err = refused(lab, *args)
            assert str(planted) in err or (dir_mode & 0o002 and str(tmp_path) in err), err
        assert lab.state.read_bytes() == before and planted.read_bytes() == content  # not replayed, not removed
    finally:
        os.chmod(tmp_path, 0o700)
    planted.unlink()
    assert lab.json("subscription", "show", "payg-shop")["type"] == "payg"


@root_only
@pytest.mark.parametrize("uid, mode", [(0, 0o777), (0, 0o1777), (0, 0o770), (65534, 0o755)])
def test_state_in_a_directory_others_can_write_is_refused(lab, tmp_path, uid, mode):
    before = lab.state.read_bytes()
    os.chown(tmp_path, uid, -1)
    os.chmod(tmp_path, mode)
    try:
        for args in (("vm", "list"), ADD):
            err = refused(lab, *args)
            assert str(tmp_path) in err and "-wal" in err, err
        new = tmp_path / "new.db"
        assert main(["--state", str(new), *ADD]) == 2
        assert not new.exists()
    finally:
        os.chown(tmp_path, 0, -1)
        os.chmod(tmp_path, 0o700)
    assert lab.state.read_bytes() == before
    assert "x1" not in {r["name"] for r in lab.json("vm", "list")}


@root_only
def test_state_the_user_cannot_write_says_permission_denied(capsys):
    shared = Path(tempfile.mkdtemp(prefix="p25-perm-"))  # not under tmp_path: its parents are closed to others
    try:
        os.chmod(shared, 0o755)
        state = shared / "state.db"
        assert main(["--state", str(state), "apply", str(LAB)]) == 0
        os.chmod(state, 0o644)  # readable by all, writable (and its directory) by root alone
        before = state.read_bytes()
        for args in (("vm", "list"), ADD):
            code, output = as_user(65534, lambda args=args: main(["--state", str(state), *args]))
            assert code == 2 and "permission denied" in output and output.count("\n") == 1, output
            assert "corrupt" not in output and "damaged" not in output, output
        assert state.read_bytes() == before
    finally:
        shutil.rmtree(shared)
    capsys.readouterr()


# ------------------------------------------------------------ full and read-only disks

NAMESPACE_PRELUDE = """
import gc, io, json, os, sqlite3, subprocess, sys, traceback
from contextlib import redirect_stderr, redirect_stdout
from enforcer.cli.main import main

mnt, lab_file = sys.argv[1:3]
ADD = ("vm", "add", "x1", "--subscription", "payg-shop", "--address", "198.18.9.9")
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "p25-test", mnt], check=True)
state = os.path.join(mnt, "state.db")
filler = os.path.join(mnt, "filler")
out = {}

def run(*args):
    err, stdout = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(stdout), redirect_stderr(err):
            code = main(["--state", state, *args])
    except BaseException:
        return {"code": "raised", "err": traceback.format_exc()}
    gc.collect()
    return {"code": code, "err": err.getvalue(), "out": stdout.getvalue()}

def fill():
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        pass
    os.close(fd)

def state_bytes():
    with open(state, "rb") as f:
        return f.read()

assert run("apply", lab_file)["code"] == 0
before = state_bytes()
"""


def in_namespace(tmp_path: Path, body: str) -> dict:
    """Run NAMESPACE_PRELUDE + body as root in a mount namespace of its own, on a 1 MiB tmpfs; its JSON."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = NAMESPACE_PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script,
                           str(mnt), str(LAB)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert not any(mnt.iterdir())  # the tmpfs went with the namespace
    return json.loads(proc.stdout.strip().splitlines()[-1])


def told(result: dict, words: str) -> None:
    assert result["code"] == 2, result
    assert words in result["err"] and result["err"].count("\n") == 1, result
    assert "corrupt" not in result["err"] and "damaged" not in result["err"], result


@root_only
def test_full_disk_is_told_as_such(tmp_path):
    out = in_namespace(tmp_path, """
        fill()
        out["list"], out["add"] = run("vm", "list"), run(*ADD)
        out["unchanged"] = state_bytes() == before
        os.unlink(filler)
        out["after"] = run("vm", "list", "--json")
    """)
    for what in ("list", "add"):
        told(out[what], "no space left on the device holding")
    assert out["unchanged"]
    assert out["after"]["code"] == 0 and "x1" not in {r["name"] for r in json.loads(out["after"]["out"])}


@root_only
def test_failed_commit_on_a_full_disk_changes_nothing(tmp_path):
    out = in_namespace(tmp_path, """
        holder = sqlite3.connect(state)  # as the running daemon does: its -wal and -shm stay
        holder.execute("SELECT count(*) FROM resources").fetchone()
        audit = run("audit", "--json", "--limit", "1000")["out"]
        fill()
        out["add"] = run(*ADD)
        out["unchanged"] = state_bytes() == before
        os.unlink(filler)
        out["audit_unchanged"] = run("audit", "--json", "--limit", "1000")["out"] == audit
        out["list"] = run("vm", "list", "--json")
        out["again"] = run(*ADD)
        holder.close()
    """)
    told(out["add"], "no space left on the device holding")
    assert out["unchanged"] and out["audit_unchanged"]
    assert "x1" not in {r["name"] for r in json.loads(out["list"]["out"])}
    assert out["again"]["code"] == 0, out["again"]


@root_only
def test_read_only_disk_is_told_as_such(tmp_path):
    out = in_namespace(tmp_path, """
        subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
        out["list"], out["add"] = run("vm", "list"), run(*ADD)
        out["unchanged"] = state_bytes() == before
    """)
    for what in ("list", "add"):
        told(out[what], "is on a read-only file system")
    assert out["unchanged"]


SERVICE = (65534, 65534)  # stands in for the system user and group `enforcer service install` makes


@root_only
def test_the_service_accounts_group_shares_the_state_and_nobody_else(lab, tmp_path, monkeypatch):
    """The daemon runs as its own system user: the state's directory and files are its group's (root's commands
    trust that group's write bit, and files its user made beside the state), never another user's."""
    from enforcer.state import trust
    monkeypatch.setattr(trust, "service_account", lambda: SERVICE)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, 0, SERVICE[1])
    os.chmod(shared, 0o2770)
    state = shared / "state.db"
    assert main(["--state", str(state), "apply", str(LAB)]) == 0
    st = state.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, SERVICE[1], 0o660), "shared with the group"
    shm = state.with_name("state.db-shm")
    if shm.exists():
        os.chown(shm, SERVICE[0], SERVICE[1])  # as the daemon makes it when it opens the state first
    assert main(["--state", str(state), "vm", "stop", "ea-vm"]) == 0

    planted = state.with_name("state.db-wal")
    planted.write_bytes(b"")
    os.chown(planted, 65533, SERVICE[1])  # another user, even in the group, is not the service
    assert main(["--state", str(state), "vm", "list"]) == 2
    planted.unlink()
    os.chown(shared, 0, 0)  # group-writable, but not by the service's group
    assert main(["--state", str(state), "vm", "list"]) == 2
    os.chown(shared, 0, SERVICE[1])
    assert main(["--state", str(state), "vm", "start", "ea-vm"]) == 0
