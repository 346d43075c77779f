"""The fleet is visible (issue 21, item 3): two real gateways (two `enforcer run` daemons, each in a namespace of its
own, with its own rules) follow one real etcd; `enforcer status` lists both with their lag, `--wait` returns once
both hold a change, a stopped gateway makes `--wait=2` exit 3 naming it (the change committed all the same), then
shows as "lease expired" once its lease runs out, comes back current when it resumes; the apply-delay metric on a
daemon's endpoint. No mock: Debian's etcd, the daemons, the CLI as a person runs it.

The cheapest real fleet: namespace A holds etcd (on its loopback and on a veth to B), gateway gw-a and the operator's
CLI; namespace B holds gateway gw-b, which reaches etcd over the veth. One of them serves the module.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from enforcer.cli.main import main
from enforcer.dataplane.control import ask
from enforcer.lab.netns import can_build_namespaces, own_module, remove_tagged
from enforcer.state.store import Store
from support.etcd import ETCD, ETCDCTL, MAX_TXN_OPS, need_etcd
from support.netlab import wait_for
from support.paths import LAB, ROOT

WHY_NOT = can_build_namespaces()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
ETCD_A, ETCD_B = "198.18.251.1", "198.18.251.2"   # the veth between the namespaces
METRICS = "127.0.0.1:9125"
PROMTOOL = shutil.which("promtool")


def in_ns(namespace: str, argv: list[str], **kwargs) -> subprocess.Popen:
    """`ip netns exec`: nothing of ours runs between fork and exec (grpc's fork handlers stay out of it)."""
    return subprocess.Popen(["ip", "netns", "exec", namespace, *argv], **kwargs)


def done(namespace: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    p = in_ns(namespace, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=60)
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def rule_metrics() -> set[str]:
    """The daemon's metrics the shipped alert and recording rules read (a histogram by its _bucket series)."""
    rules = yaml.safe_load((ROOT / "contrib" / "prometheus" / "alerts.yml").read_text())
    return {name for group in rules["groups"] for rule in group["rules"]
            for name in re.findall(r"\benforcer_[a-z0-9_]+", rule["expr"])}


class Fleet:
    def __init__(self, dir: Path):
        self.dir, self.tag = dir, f"p25fs{os.getpid() % 100000}"
        self.a, self.b = f"{self.tag}-a", f"{self.tag}-b"
        self.port, self.peer = random.sample(range(20000, 30000), 2)
        self.daemons: dict[str, subprocess.Popen] = {}
        self.etcd: subprocess.Popen | None = None

    def url(self, host: str = "127.0.0.1") -> str:
        return f"etcd://{host}:{self.port}/fleet"

    def build(self) -> None:
        for argv in (["ip", "netns", "add", self.a], ["ip", "netns", "add", self.b],
                     ["ip", "-n", self.a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", self.b],
                     ["ip", "-n", self.a, "addr", "add", f"{ETCD_A}/30", "dev", "va"],
                     ["ip", "-n", self.b, "addr", "add", f"{ETCD_B}/30", "dev", "vb"],
                     ["ip", "-n", self.a, "link", "set", "va", "up"], ["ip", "-n", self.b, "link", "set", "vb", "up"],
                     ["ip", "-n", self.a, "link", "set", "lo", "up"], ["ip", "-n", self.b, "link", "set", "lo", "up"]):
            subprocess.run(argv, check=True, capture_output=True, timeout=30)
        urls = f"http://127.0.0.1:{self.port},http://{ETCD_A}:{self.port}"
        with open(self.dir / "etcd.log", "ab") as log:
            self.etcd = in_ns(self.a, [str(ETCD), "--name", "f", "--data-dir", str(self.dir / "etcd"),
                                       "--listen-client-urls", urls, "--advertise-client-urls", urls,
                                       "--listen-peer-urls", f"http://127.0.0.1:{self.peer}",
                                       "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer}",
                                       "--initial-cluster", f"f=http://127.0.0.1:{self.peer}",
                                       "--max-txn-ops", str(MAX_TXN_OPS), "--logger", "zap", "--log-level", "warn"],
                              stdout=log, stderr=log)
        assert wait_for(lambda: self.ctl("endpoint", "health").returncode == 0, timeout=20), \
            (self.dir / "etcd.log").read_text()[-2000:]
        applied = self.cli("apply", str(LAB))
        assert applied.returncode == 0, applied.stderr

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return done(self.a, [str(ETCDCTL), "--endpoints", f"127.0.0.1:{self.port}", "--dial-timeout", "2s",
                             "--command-timeout", "5s", *args])

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`enforcer --state etcd://... ARGS`, the operator's, in namespace A."""
        return done(self.a, own_module("enforcer.cli", "--state", self.url(), *args))

    def status(self) -> dict:
        answer = self.cli("status", "--json", "--socket", str(self.dir / "none.sock"))
        assert answer.returncode == 0, answer.stderr
        return json.loads(answer.stdout)

    def gateways(self) -> dict[str, dict]:
        return {g["name"]: g for g in self.status()["gateways"]}

    def socket(self, name: str) -> str:
        return str(self.dir / f"{name}.sock")

    def start(self, name: str, namespace: str, etcd_host: str) -> None:
        log = open(self.dir / f"{name}.log", "a")
        self.daemons[name] = in_ns(namespace, own_module(
            "enforcer.cli", "--state", self.url(etcd_host), "run", "--gateway-name", name, "--socket",
            self.socket(name), "--metrics", METRICS), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def published(self, name: str) -> bool:
        live = ask(self.socket(name), {"cmd": "status"}, timeout=1)
        return bool(live and live.get("ok") and live.get("published_revision") is not None)

    def metrics(self, namespace: str) -> str:
        got = done(namespace, [sys.executable, "-c", "import urllib.request as u; "
                               f"print(u.urlopen('http://{METRICS}/metrics', timeout=5).read().decode())"])
        assert got.returncode == 0, got.stderr
        return got.stdout

    def log(self, name: str) -> str:
        return (self.dir / f"{name}.log").read_text()[-3000:]

    def close(self) -> None:
        for p in [*self.daemons.values(), self.etcd]:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGCONT)  # a stopped daemon must be able to take its SIGTERM
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
        remove_tagged(self.tag)
        shutil.rmtree(self.dir / "etcd", ignore_errors=True)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[Fleet]:
    need_etcd()
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    try:
        f.build()
        f.start("gw-a", f.a, "127.0.0.1")
        f.start("gw-b", f.b, ETCD_A)
        for name in ("gw-a", "gw-b"):
            assert wait_for(lambda n=name: f.published(n), timeout=30, interval=0.1), f.log(name)
        yield f
    finally:
        f.close()
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f.tag)]


def test_status_lists_both_gateways_current_and_wait_returns_once_both_applied(fleet):
    before = fleet.status()["generation"]
    changed = fleet.cli("diagnose", "devtest-lab", "--wait=20")   # grants the exemption: a change
    assert changed.returncode == 0, changed.stderr
    assert "applied by 2 live gateway(s)" in changed.stderr and "exempt" in changed.stdout
    doc = fleet.status()
    assert doc["generation"] > before
    gateways = {g["name"]: g for g in doc["gateways"]}
    assert sorted(gateways) == ["gw-a", "gw-b"]
    for g in gateways.values():
        assert (g["alive"], g["status"], g["lag"], g["current"]) == (True, "alive", 0, True), g
        assert g["revision"] == doc["generation"] <= g["applied_revision"] and g["pid"] and g["last_seen"]

    shown = fleet.cli("status", "--socket", str(fleet.dir / "none.sock"))
    assert shown.returncode == 0, shown.stderr
    lines = [line for line in shown.stdout.splitlines() if line.strip().startswith("gw-")]
    assert len(lines) == 2 and all("alive" in line and "0 (current)" in line for line in lines), shown.stdout

    # commit to apply, measured by each gateway: on its metrics endpoint
    for namespace, name in ((fleet.a, "gw-a"), (fleet.b, "gw-b")):
        metrics = fleet.metrics(namespace)
        assert f'enforcer_gateway_info{{gateway_name="{name}"}} 1.0' in metrics
        samples = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line.startswith("enforcer_state_"))
        assert float(samples["enforcer_state_apply_delay_seconds_count"]) >= 1
        assert 0 <= float(samples["enforcer_state_last_apply_delay_seconds"]) < 5, samples
        assert float(samples['enforcer_state_apply_delay_seconds_bucket{le="+Inf"}']) >= 1
        exported = {line.split("{")[0].split(" ")[0] for line in metrics.splitlines() if not line.startswith("#")}
        read = rule_metrics()   # what the shipped rules read, this daemon exports
        assert {"enforcer_state_stale_seconds", "enforcer_state_apply_delay_seconds_bucket"} <= read
        assert read - exported == set()
        if PROMTOOL is not None:
            lint = subprocess.run([PROMTOOL, "check", "metrics"], input=metrics, capture_output=True, text=True,
                                  timeout=30)
            assert lint.returncode == 0, lint.stdout + lint.stderr


def test_a_bad_wait_is_one_line_and_changes_nothing(fleet):
    before = fleet.status()["generation"]
    for value in ("--wait=soon", "--wait=-3"):
        refused = fleet.cli("vm", "restart", "devtest-vm", value)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert fleet.status()["generation"] == before


def test_a_stopped_gateway_fails_the_wait_then_its_lease_expires_and_it_catches_up(fleet):
    """The module's last test of the fleet: it ends with etcd killed."""
    b = fleet.daemons["gw-b"]
    before = fleet.status()["generation"]
    b.send_signal(signal.SIGSTOP)   # its lease runs out 7 to 10 s from now: the wait below ends well before
    try:
        late = fleet.cli("exemption", "revoke", "devtest-lab", "--wait=2")
        assert late.returncode == 3, late.stderr
        said = late.stderr.strip().splitlines()
        assert len(said) == 1 and "gw-b did not apply" in said[0] and "gw-a" not in said[0], said
        assert "the change is committed" in said[0]
        doc = fleet.status()
        assert doc["generation"] > before                                 # committed, and it stays
        gateways = {g["name"]: g for g in doc["gateways"]}
        assert gateways["gw-a"]["current"] and not gateways["gw-b"]["current"]
        assert gateways["gw-b"]["lag"] == doc["generation"] - gateways["gw-b"]["revision"] > 0

        # its lease runs out (10 s after its last keepalive): the record without a lease stays
        assert wait_for(lambda: fleet.ctl("get", "/fleet/gateways/gw-b", "--print-value-only").stdout.strip() == "",
                        timeout=20, interval=0.5)
        gateways = fleet.gateways()
        assert (gateways["gw-b"]["alive"], gateways["gw-b"]["status"]) == (False, "lease expired"), gateways
        assert gateways["gw-b"]["last_seen_unix"] is not None and gateways["gw-a"]["alive"]
        shown = fleet.cli("status", "--socket", str(fleet.dir / "none.sock")).stdout
        assert any("gw-b" in line and "lease expired" in line and "s ago" in line for line in shown.splitlines())
        # only live gateways are waited for
        alone = fleet.cli("vm", "restart", "devtest-vm", "--wait=10")
        assert alone.returncode == 0 and "applied by 1 live gateway(s)" in alone.stderr, alone.stderr
        refused = fleet.cli("gateway", "forget", "gw-nothing")
        assert refused.returncode == 2 and "known: gw-a, gw-b" in refused.stderr, refused.stderr
    finally:
        b.send_signal(signal.SIGCONT)

    # back: a new lease, the changes it missed, current again
    assert wait_for(lambda: (lambda g: g["current"] and g["alive"])(fleet.gateways()["gw-b"]), timeout=30,
                    interval=0.5), fleet.log("gw-b")
    refused = fleet.cli("gateway", "forget", "gw-b")
    assert refused.returncode == 2 and "is alive" in refused.stderr, refused.stderr

    # gone for good: stopped for real, its lease revoked; forgotten by hand
    b.terminate()
    assert b.wait(20) == 0, fleet.log("gw-b")
    assert fleet.gateways()["gw-b"]["status"] == "lease expired"
    forgot = fleet.cli("gateway", "forget", "gw-b")
    assert forgot.returncode == 0 and "forgot gateway 'gw-b'" in forgot.stdout, forgot.stderr
    assert list(fleet.gateways()) == ["gw-a"]
    assert "Traceback" not in fleet.log("gw-a") + fleet.log("gw-b")

    # etcd lost while a change waits (gw-a stopped, its lease still holding): one line, exit 3, committed
    a = fleet.daemons["gw-a"]
    generation = fleet.status()["generation"]
    a.send_signal(signal.SIGSTOP)
    try:
        waiting = in_ns(fleet.a, own_module("enforcer.cli", "--state", fleet.url(), "diagnose", "devtest-lab",
                                            "--wait=60"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert wait_for(lambda: int(json.loads(fleet.ctl("get", "/fleet/meta/changed", "-w", "json").stdout)
                                    ["kvs"][0]["mod_revision"]) > generation, timeout=30, interval=0.2)
        assert fleet.etcd is not None
        fleet.etcd.kill()
        out, err = waiting.communicate(timeout=30)
    finally:
        a.send_signal(signal.SIGCONT)
    assert waiting.returncode == 3, err
    assert err.count("\n") == 1 and "cannot tell whether the gateways applied" in err and "committed" in err, err


def test_wait_on_an_sqlite_state_waits_for_the_lab_daemon_over_it(tmp_path, capsys):
    """An SQLite state's one gateway: the daemon of the namespace lab that is up over it (a small lab: 3 VMs)."""
    doc = yaml.safe_load(LAB.read_text())
    doc["resources"] = [r for r in doc["resources"] if r["name"] in ("ea-vm", "shop-web", "devtest-vm")]
    doc["lab"]["expect"] = {k: v for k, v in doc["lab"]["expect"].items() if k in ("ea-vm", "shop-web", "devtest-vm")}
    (tmp_path / "small.yml").write_text(yaml.safe_dump(doc))
    labdir = tmp_path / "lab"
    try:
        assert main(["lab", "up", "--lab", str(tmp_path / "small.yml"), "--dir", str(labdir)]) == 0
        capsys.readouterr()
        state = str(labdir / "state.db")
        assert main(["--state", state, "diagnose", "devtest-lab", "--wait=10"]) == 0
        out, err = capsys.readouterr()
        generation = Store(state).generation()
        assert err.strip().startswith(f"enforcer: --wait: applied by the daemon on {labdir / 'control.sock'} "
                                      "within") and f"(generation {generation})" in err, err

        gateway = json.loads((labdir / "lab.json").read_text())["gateway"]
        pids = subprocess.run(["ip", "netns", "pids", gateway], capture_output=True, text=True).stdout.split()
        for pid in pids:
            os.kill(int(pid), signal.SIGSTOP)
        try:
            assert main(["--state", state, "exemption", "revoke", "devtest-lab", "--wait=1"]) == 3
        finally:
            for pid in pids:
                os.kill(int(pid), signal.SIGCONT)
        out, err = capsys.readouterr()
        assert err.count("\n") == 1 and f"the daemon on {labdir / 'control.sock'} (no answer" in err, err
        assert f"did not apply generation {generation + 1} within 1 s" in err and "the change is committed" in err
        assert Store(state).generation() == generation + 1
    finally:
        main(["lab", "down", "--dir", str(labdir)])
