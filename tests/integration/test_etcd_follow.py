"""`enforcer run --state etcd://...`: the daemon follows an etcd state by watch (issue 21, item 2). Real etcd (in the
lab's gateway namespace, on its loopback: the daemon's port and the operator's), the real daemon, real SYNs from the
lab's VMs; the daemon cut off from etcd by a rule on its port, etcd killed and started again. No mock of etcd.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from enforcer.lab.netns import can_build_namespaces, own_module
from support.paths import LAB
from support.etcd import ETCD, ETCDCTL, MAX_TXN_OPS, need_etcd
from support.netlab import NetLab, example_lab, wait_for

WHY_NOT = can_build_namespaces()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
V4 = yaml.safe_load(LAB.read_text())["lab"]["internet"]["addresses"][0]


def run_in(namespace: str, argv: list[str], **kwargs) -> subprocess.Popen:
    """`ip netns exec`: no Python code runs between fork and exec (the lab's run_in enters the namespace in a
    preexec function, which gRPC's fork handlers disturb once grpc is loaded in this process)."""
    return subprocess.Popen(["ip", "netns", "exec", namespace, *argv], **kwargs)


class NsEtcd:
    """One etcd member in a namespace: a client port for the daemon, another for the operator (so that a rule can
    cut the daemon off alone), a data directory kept across kill and start."""

    def __init__(self, namespace: str, dir: Path):
        self.namespace, self.dir = namespace, dir
        self.daemon_port, self.cli_port, self.peer = random.sample(range(20000, 30000), 3)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        urls = f"http://127.0.0.1:{self.daemon_port},http://127.0.0.1:{self.cli_port}"
        args = [str(ETCD), "--name", "t", "--data-dir", str(self.dir / "data"), "--listen-client-urls", urls,
                "--advertise-client-urls", urls, "--listen-peer-urls", f"http://127.0.0.1:{self.peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer}",
                "--initial-cluster", f"t=http://127.0.0.1:{self.peer}", "--max-txn-ops", str(MAX_TXN_OPS),
                "--logger", "zap", "--log-level", "warn"]
        with open(self.dir / "etcd.log", "ab") as log:
            self.process = run_in(self.namespace, args, stdout=log, stderr=log)
        assert wait_for(self.healthy, timeout=20), (self.dir / "etcd.log").read_text()[-2000:]

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def ctl(self, *args: str) -> str:
        p = run_in(self.namespace, [str(ETCDCTL), "--endpoints", f"127.0.0.1:{self.cli_port}", "--dial-timeout",
                                    "2s", "--command-timeout", "5s", *args], stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, text=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        out, err = p.communicate(timeout=15)
        if p.returncode:
            raise AssertionError(f"etcdctl {' '.join(args)}: {err.strip()}")
        return out

    def healthy(self) -> bool:
        try:
            self.ctl("endpoint", "health")
        except AssertionError:
            return False
        return True

    def url(self, port: int) -> str:
        return f"etcd://127.0.0.1:{port}/lab"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`enforcer --state etcd://...(operator's port) ARGS` in the namespace."""
        p = run_in(self.namespace, own_module("enforcer.cli", "--state", self.url(self.cli_port), *args),
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = p.communicate(timeout=60)
        return subprocess.CompletedProcess(args, p.returncode, out, err)

    def revision(self, key: str) -> int:
        kvs = json.loads(self.ctl("get", key, "-w", "json")).get("kvs", [])
        return int(kvs[0]["mod_revision"]) if kvs else 0

    def head(self) -> int:
        return int(json.loads(self.ctl("get", "/", "--prefix", "--keys-only", "--limit", "1", "-w",
                                       "json"))["header"]["revision"])

    def get(self, key: str) -> dict | None:
        kvs = json.loads(self.ctl("get", key, "-w", "json")).get("kvs", [])
        import base64
        return json.loads(base64.b64decode(kvs[0]["value"])) if kvs else None


@pytest.fixture
def fleet(tmp_path):
    need_etcd()
    with example_lab(tmp_path) as lab:
        etcd = NsEtcd(lab.topology.gateway.namespace, tmp_path / "etcd")
        etcd.dir.mkdir()
        try:
            etcd.start()
            done = etcd.cli("state", "copy", str(lab.state), etcd.url(etcd.cli_port))
            assert done.returncode == 0, done.stderr
            yield lab, etcd
        finally:
            etcd.kill()
            shutil.rmtree(etcd.dir / "data", ignore_errors=True)


def cut(lab: NetLab, port: int, on: bool) -> None:
    """The daemon's etcd port refused (a reset for every packet to it), or no longer."""
    done = lab.in_gateway(["iptables", "-I" if on else "-D", "INPUT", "-p", "tcp", "--dport", str(port), "-j",
                           "REJECT", "--reject-with", "tcp-reset"])
    assert done.returncode == 0, done.stderr


def synced(lab: NetLab, etcd: NsEtcd, timeout: float = 10.0) -> float:
    """Seconds until the daemon's table holds the state's last change (its generation is that change's revision)."""
    target, started = etcd.revision("/lab/meta/changed"), time.monotonic()
    assert wait_for(lambda: lab.live()["generation"] == target, timeout=timeout, interval=0.01), \
        (lab.live()["generation"], target, lab.daemon_log.read_text()[-3000:])
    return time.monotonic() - started


def test_a_gateway_follows_etcd_by_watch_keeps_its_table_when_cut_off_and_catches_up(fleet):
    lab, etcd = fleet
    lab.state = etcd.url(etcd.daemon_port)  # type: ignore[assignment]  # start_daemon passes it as --state
    lab.start_daemon("--gateway-name", "gw-test", "--metrics", "127.0.0.1:9125")
    live = lab.live()
    assert live["state_backend"] == "etcd" and live["connected"] is True and live["compiles"] == 1
    assert live["generation"] == etcd.revision("/lab/meta/changed") <= live["applied_revision"]
    published = etcd.get("/lab/gateways/gw-test")
    assert published is not None and published["revision"] == live["generation"]
    assert lab.smtp([("devtest-vm", V4, 25), ("ea-vm", V4, 25)]) == ["timeout", "delivered"]

    # (1) a CLI change against etcd reaches the daemon by watch, patched in (no compile)
    lags = []
    for args in (["diagnose", "devtest-lab"], ["vm", "restart", "devtest-vm"]):
        done = etcd.cli(*args)
        assert done.returncode == 0, done.stderr
        lags.append(synced(lab, etcd))
    print(f"\nCLI exit to the daemon's table, through etcd: {', '.join(f'{s * 1000:.0f} ms' for s in lags)}")
    assert max(lags) < 2.0
    assert lab.smtp([("devtest-vm", V4, 25)]) == ["delivered"]
    live = lab.live()
    assert (live["compiles"], live["patches"]) == (1, 2), live
    assert wait_for(lambda: (etcd.get("/lab/gateways/gw-test") or {}).get("revision") == live["generation"])
    metrics = lab.in_gateway([sys.executable, "-c", "import urllib.request as u; "
                              "print(u.urlopen('http://127.0.0.1:9125/metrics').read().decode())"]).stdout
    assert "enforcer_state_connected 1.0" in metrics
    assert f"enforcer_state_applied_revision {float(live['applied_revision'])}" in metrics

    # (2) cut off from etcd: the last table holds; a removal and a compaction pass meanwhile; caught up by relist
    cut(lab, etcd.daemon_port, True)
    try:
        assert wait_for(lambda: lab.live()["connected"] is False, timeout=8)
        assert etcd.cli("vm", "remove", "ea-vm").returncode == 0      # allowed until now; unknown (blocked) after
        etcd.ctl("put", "/elsewhere", "x")                            # so that the compaction passes the remove
        etcd.ctl("compaction", str(etcd.head()))
        assert lab.smtp([("ea-vm", V4, 25), ("shop-web", V4, 25)]) == ["delivered", "timeout"]  # the last table
        live = lab.live()
        assert live["connected"] is False and live["stale_seconds"] >= 1.0, live
        assert "connected=false" in lab.daemon_log.read_text()
    finally:
        cut(lab, etcd.daemon_port, False)
    synced(lab, etcd, timeout=15)
    live = lab.live()
    assert live["connected"] is True and live["relists"] == 1 and live["compiles"] == 1, live
    assert lab.smtp([("ea-vm", V4, 25)]) == ["timeout"]                  # the delete, derived after the relist

    # (3) etcd killed: the table holds (allowed stays allowed, blocked blocked), staleness grows; back: caught up
    etcd.kill()
    assert wait_for(lambda: lab.live()["connected"] is False, timeout=8)
    first = lab.live()["stale_seconds"]
    assert lab.smtp([("devtest-vm", V4, 25), ("shop-web", V4, 25)]) == ["delivered", "timeout"]
    assert lab.live()["stale_seconds"] > first
    cut(lab, etcd.daemon_port, True)   # etcd back, the daemon still cut off: a change it must catch up with
    try:
        etcd.start()
        assert etcd.cli("exemption", "revoke", "devtest-lab").returncode == 0
        assert etcd.cli("vm", "restart", "devtest-vm").returncode == 0
    finally:
        cut(lab, etcd.daemon_port, False)
    synced(lab, etcd, timeout=15)
    assert lab.live()["connected"] is True
    assert lab.smtp([("devtest-vm", V4, 25)]) == ["timeout"]
    assert lab.live()["compiles"] == 1
    log = lab.daemon_log.read_text()
    assert "connected=true again" in log and "Traceback" not in log

    # (4) the gateway key goes with the daemon (a clean stop revokes its lease)
    assert etcd.get("/lab/gateways/gw-test") is not None
    assert lab.stop_daemon() == 0
    assert wait_for(lambda: etcd.get("/lab/gateways/gw-test") is None, timeout=3)


def test_a_gateway_key_outlives_a_killed_daemon_by_its_lease_only(fleet):
    lab, etcd = fleet
    lab.state = etcd.url(etcd.daemon_port)  # type: ignore[assignment]
    lab.start_daemon("--gateway-name", "gw-kill")
    assert etcd.get("/lab/gateways/gw-kill") is not None
    lab.stop_daemon(signal.SIGKILL)
    killed = time.monotonic()
    assert wait_for(lambda: etcd.get("/lab/gateways/gw-kill") is None, timeout=20, interval=0.5)
    assert 5 < time.monotonic() - killed < 16   # the lease's TTL (10 s), not at once


@pytest.mark.parametrize("state, env, code, said", [
    ("etcd://127.0.0.1:99999/lab", {}, 2, "port"),
    ("etcd://127.0.0.1:1/lab", {}, 1, "no etcd member answered"),
    ("etcd://127.0.0.1:{port}/nothing-here", {}, 2, "no state at"),
    ("etcd://127.0.0.1:{port}/lab", {"ENFORCER_ETCD_USER": "nobody"}, 2, "ENFORCER_ETCD_PASSWORD"),
])
def test_a_wrong_etcd_state_is_one_line_and_touches_no_rule(fleet, state, env, code, said):
    lab, etcd = fleet
    p = run_in(lab.topology.gateway.namespace,
               own_module("enforcer.cli", "--state", state.format(port=etcd.cli_port), "run", "--socket",
                          str(lab.workdir / "c.sock")),
               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**__import__("os").environ, **env})
    out, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    assert len(err.strip().splitlines()) == 1 and said in err, err
    assert lab.project_rules() == ""


def test_a_patch_whose_snapshot_is_compacted_while_it_reads_becomes_a_whole_compile(tmp_path, capsys):
    """The follower patches a change in a snapshot read lazily at its revision; a compaction past that revision
    in the middle (before the patch reads the changed rows: a benchmark's daemon died of it, Compacted raised from
    the loop) makes it a whole compile at the head, with the change in it."""
    from enforcer.dataplane.etcd_follow import EtcdFollower
    from enforcer.state.settings import Settings
    from support.cli import Cli
    from support.etcd import running_etcd

    need_etcd()
    with running_etcd(tmp_path / "etcd") as etcd:
        url = etcd.url("f")
        cli = Cli(url, capsys)  # type: ignore[arg-type]
        cli("subscription", "add", "one", "--type", "ea")  # its running VMs may send: a stopped one may not
        cli("vm", "add", "vm-1", "--subscription", "one", "--address", "198.18.2.1")
        vm_1 = bytes([198, 18, 2, 1])
        follower = EtcdFollower(Settings(state=url, gateway_name="t"))
        try:
            follower.check()
            keeper, _ = follower.compile(lambda inv, profile: None)
            assert keeper.verdict(keeper.view(), vm_1).allow
            cli("vm", "stop", "vm-1")
            assert wait_for(lambda: follower.newest() > keeper.generation, 10)  # the watch queued the change
            etcd.ctl("put", "/elsewhere", "x")  # a revision past the change's, outside the state
            head = follower.store.head()[0]
            patch_now = keeper.patch

            def compacted_first(inv, changes):
                etcd.ctl("compaction", str(head))
                return patch_now(inv, changes)
            keeper.patch = compacted_first  # type: ignore[method-assign]
            patch, _ = follower.patch(keeper, lambda inv, profile: None)
            assert patch.full  # the daemon compiles the table whole, as it does for any full patch
            keeper, _ = follower.compile(lambda inv, profile: None)
            assert keeper.verdict(keeper.view(), vm_1) == (False, "one", "not-running")
        finally:
            follower.close()
