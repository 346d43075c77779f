"""`enforcer state copy` into etcd of a state larger than one transaction, against an etcd member with etcd's
default request limits (--max-txn-ops 128, --max-request-bytes 1.5 MiB: a stock etcd, not the project's 10,000
operations): written in batches, nothing of it a state until its last transaction, an interrupted copy (a process
SIGKILLed half way) leaving no state and completed by running it again (enforcer/state/etcd_copy.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from enforcer.state.etcd_client import EtcdOptions, parse_url
from enforcer.state.etcd_copy import BATCH_OPS
from enforcer.state.etcd_layout import end_of
from enforcer.state.etcd_store import EtcdStore
from support.cli import Cli
from support.etcd import running_cluster
from support.states import lab_state

EXTRA = 1_500  # VMs beside the lab: ~4,500 keys, ~45 transactions of the copy, its audit entry in several parts
DEFAULTS = ("--max-txn-ops", "128", "--max-request-bytes", str(3 << 19))  # etcd's own defaults, stated


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory):
    with running_cluster(tmp_path_factory.mktemp("etcd"), 1, options=DEFAULTS) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("state") / "big.db"
    lab_state(path, EXTRA).close()
    return path


def url_in(etcd) -> str:  # type: ignore[no-untyped-def]
    return etcd.url(f"c/{uuid.uuid4().hex[:12]}")


def keys_under(url: str, under: str = "") -> int:
    store = EtcdStore(parse_url(url), EtcdOptions())
    try:
        root = store.keys.everything() + under.encode()
        return int(store.client.range(root, end_of(root), count_only=True).count)
    finally:
        store.close()


def what_a_gateway_reads(url: str) -> tuple[bool, list, int]:
    """What a gateway's start reads (dataplane/etcd_follow.py: exists, then the snapshot and every address row at
    the head)."""
    store = EtcdStore(parse_url(url), EtcdOptions())
    try:
        revision, _ = store.head()
        return store.exists, list(store.address_rows_at(revision)), len(store.snapshot_at(revision).resources)
    finally:
        store.close()


def what_a_reader_sees(cli: Cli, listings: tuple[str, ...] = ("vm", "subscription")) -> dict:
    """`status`, and each listing, as JSON (but what differs by design between two states: where, generation).
    (`subscription list` reads each resource of a subscription by its own call on etcd: seconds at 1,500 VMs, so
    the tests after the first leave it out.)"""
    status = cli.json("status")
    return {**{f"{kind} list": cli.json(kind, "list") for kind in listings},
            "status": {k: v for k, v in status.items() if k not in ("state", "generation", "daemon", "gateways")}}


def same_audit(rows: list[dict]) -> list[tuple]:
    return [(r["uid"], r["kind"], r["name"], r["before"], r["after"]) for r in rows]


def test_a_state_past_the_default_limits_copies_to_etcd_and_back(tmp_path, etcd, big, capsys):
    url = url_in(etcd)
    source = Cli(big, capsys)
    out = source("state", "copy", str(big), url)
    assert out.startswith(f"copied {big} to {url} (13 subscriptions, 5 vnets, {EXTRA + 19:,} resources)")
    assert keys_under(url) > 40 * BATCH_OPS  # it took many transactions
    back = Cli(tmp_path / "back.db", capsys)
    back("state", "copy", url, str(back.state))
    there = Cli(url, capsys)  # type: ignore[arg-type]
    seen = what_a_reader_sees(source)
    assert len(seen["vm list"]) == EXTRA + 19
    assert what_a_reader_sees(there) == seen == what_a_reader_sees(back)
    assert "ok (" in there("state", "check") and "ok (" in back("state", "check")
    # the audit log says what a copy in one change says (SQLite's): one row per row, then the settings
    into_sqlite = Cli(tmp_path / "once.db", capsys)
    into_sqlite("state", "copy", str(big), str(into_sqlite.state))
    audit = there.json("audit", "--limit", "100000")
    assert same_audit(audit) == same_audit(into_sqlite.json("audit", "--limit", "100000"))
    assert len(audit) > EXTRA and {r["command"] for r in audit} == {f"enforcer --state {big} state copy {big} {url}"}
    # the state is there and changes as any: one change, followed by generation
    generation = there.json("status")["generation"]
    there("vm", "stop", "vm-00001")
    assert there.json("status")["generation"] > generation
    # --replace is one change: what differs (here one row), in one transaction
    source("state", "copy", "--replace", str(into_sqlite.state), url)
    assert there.json("vm", "show", "vm-00001")["state"] == "running"
    generation = there.json("status")["generation"]
    # past the server's limits (1,500 resources removed): one line naming the setting, and the way round it
    lab_state(tmp_path / "lab.db").close()
    err = source("state", "copy", "--replace", str(tmp_path / "lab.db"), url, expect=2)
    assert err.count("\n") == 1 and "--max-txn-ops" in err and "new prefix" in err
    assert there.json("status")["generation"] == generation


def test_a_killed_copy_leaves_no_state_and_running_it_again_completes_it(etcd, big, capsys):
    url = url_in(etcd)
    there = Cli(url, capsys)  # type: ignore[arg-type]
    copy = subprocess.Popen([sys.executable, "-m", "enforcer.cli", "--state", str(big), "state", "copy", str(big),
                             url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while keys_under(url, "addresses/") < 1 and copy.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(copy.pid, signal.SIGSTOP)  # half way: its first resources written
        assert copy.poll() is None, copy.communicate()  # it had not finished
        half = keys_under(url)
        assert half >= 2 and keys_under(url, "addresses/") >= 1
        assert what_a_gateway_reads(url) == (False, [], 0)
        # meanwhile: no state to read, and no change made into it
        assert what_a_reader_sees(there) == {"vm list": [], "subscription list": [], "status": {
            "exists": False, "profile": "azure", "subscriptions": 0, "vnets": 0, "resources": 0, "running": 0,
            "port25_allowed": 0, "port25_blocked": 0, "pending_restart": [], "internal_prefixes": []}}
        err = there("subscription", "add", "early", "--type", "payg", expect=2)
        assert err.count("\n") == 1 and "a state copy into it is under way" in err and f"pid {copy.pid}" in err
        os.kill(copy.pid, signal.SIGKILL)
        assert copy.wait(30) == -signal.SIGKILL
    finally:
        if copy.poll() is None:
            copy.kill()
        copy.communicate()
    # killed: still no state; a change is refused, saying what to do
    assert keys_under(url) >= half and there.json("status")["exists"] is False
    err = there("subscription", "add", "early", "--type", "payg", expect=2)
    assert err.count("\n") == 1 and "leftover of an interrupted state copy" in err and "run that copy again" in err
    # the same command again: it takes the dead copy's claim over at once (its process is gone), clears what it
    # left, completes
    started = time.monotonic()
    assert "copied" in there("state", "copy", str(big), url)
    assert time.monotonic() - started < 60
    source = Cli(big, capsys)
    assert what_a_reader_sees(there, ("vm",)) == what_a_reader_sees(source, ("vm",))
    assert "ok (" in there("state", "check")
    audit = there.json("audit", "--limit", "100000")  # one copy's rows: the killed one's parts were cleared
    resources = [r["name"] for r in audit if r["kind"] == "resource"]
    assert len(resources) == len(set(resources)) == EXTRA + 19


def test_two_copies_into_one_prefix_never_interleave(tmp_path, etcd, big, capsys):
    """A second copy (another state) started while a first holds the prefix: it waits for the first, then finds a
    state there and is refused in one line; what is there is the first, whole."""
    url = url_in(etcd)
    lab_state(tmp_path / "lab.db").close()

    def copy(source: Path) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "enforcer.cli", "--state", str(source), "state", "copy",
                                 str(source), url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = copy(big)
    try:
        deadline = time.monotonic() + 120
        while keys_under(url, "meta/copying") < 1 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        second = copy(tmp_path / "lab.db")
        out, err = second.communicate(timeout=120)
        assert first.wait(120) == 0, first.communicate()
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()
    assert second.returncode == 2 and err.count("\n") == 1 and "--replace" in err, (out, err)
    there = Cli(url, capsys)  # type: ignore[arg-type]
    assert what_a_reader_sees(there, ("vm",)) == what_a_reader_sees(Cli(big, capsys), ("vm",))
    assert "ok (" in there("state", "check")


def test_a_copy_keeps_its_claim_while_it_pauses_longer_than_the_claims_lease(etcd, big, capsys, monkeypatch):
    """The claim's lease is kept alive by a thread of its own, whatever the copy does meanwhile: a 1M copy lost it
    when its lease was renewed only between two batches (the count keys of a million rows made at once)."""
    import enforcer.state.etcd_copy as etcd_copy

    monkeypatch.setattr(etcd_copy, "CLAIM_TTL", 2)
    whole = etcd_copy.state_keys

    def pausing(keys, inv):  # type: ignore[no-untyped-def]
        for n, kv in enumerate(whole(keys, inv)):
            if n == BATCH_OPS * 3:
                time.sleep(5)  # past the lease's 2 s: only a kept-alive lease still holds the claim
            yield kv
    monkeypatch.setattr(etcd_copy, "state_keys", pausing)
    url = url_in(etcd)
    Cli(big, capsys)("state", "copy", str(big), url)
    assert Cli(url, capsys).json("status")["exists"]  # type: ignore[arg-type]
