"""Faults, with nothing lost (issue 21, item 5): real etcd processes (a 3-member cluster), real namespaces, real SYNs,
no mock of etcd. A member killed and started again; the leader stopped past its election timeout, and killed; a
transaction whose answer was lost; the space quota reached; wrong credentials, a wrong CA, an expired certificate;
a gateway cut off from every member past its lease while the state is compacted; 4 writers on 2 hosts at once.

Two clusters serve the module: one on this host (on a link a second host, a namespace, reaches too) for the CLI's
cases, one inside the example lab's gateway namespace for the daemon's.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from enforcer.core.lifecycle import add_subscription
from enforcer.lab.etcd_cluster import EtcdCluster, Member
from enforcer.lab.netns import can_build_namespaces, own_module
from enforcer.state.etcd_client import RETRY_BUDGET, TIMEOUT, EtcdClient, Unanswered, parse_url
from enforcer.state.etcd_store import EtcdStore
from enforcer.state.profiles import load_profile
from support.cli import Cli
from support.etcd import Etcd, Pki, SecondHost, fill_quota, free_port, running_cluster, second_host
from support.netlab import NetLab, example_lab, wait_for
from support.paths import LAB, ROOT

WHY_NOT = can_build_namespaces()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


def kvs(cluster: EtcdCluster, key: str, member: Member | None = None, prefix: bool = False) -> list[dict[str, Any]]:
    """etcdctl get KEY (--prefix): its keys and values decoded, mod revisions; against `member` alone with a
    serializable read (what that member holds itself, not asking the leader)."""
    args = ["get", key, "-w", "json", *(["--prefix"] if prefix else []),
            *(["--consistency", "s"] if member is not None else [])]
    rows = json.loads(cluster.ctl(*args, member=member)).get("kvs", [])
    return [{"key": base64.b64decode(r["key"]).decode(), "value": base64.b64decode(r.get("value", "")).decode(),
             "mod": int(r["mod_revision"])} for r in rows]


def say(capsys: Any, text: str) -> None:
    """A measurement shown with -s, past the capture the in-process CLI's output goes to."""
    with capsys.disabled():
        print(text)


def entries(cli: Cli) -> dict[int, list[dict[str, Any]]]:
    """The audit log as changes (its rows grouped by the change that wrote them), oldest first."""
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in cli.json("audit", "--limit", "100000"):
        out[row["id"]].append(row)
    return dict(sorted(out.items()))


# ------------------------------------------------------------ a cluster on this host, a second host beside it

@pytest.fixture(scope="module")
def hosts():
    with second_host() as host:
        yield host


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, hosts: SecondHost):
    with running_cluster(tmp_path_factory.mktemp("cluster"), 3, host=hosts.address) as members:
        yield members


@pytest.fixture
def url(cluster: EtcdCluster) -> str:
    return cluster.url(f"t/{uuid.uuid4().hex[:12]}")


def test_a_member_killed_and_started_again_catches_up_on_its_data(cluster, url, capsys):
    cli = Cli(url, capsys)  # type: ignore[arg-type]
    cli("apply", str(LAB))
    leader = wait_for(cluster.leader, timeout=10)
    victim = next(m for m in cluster.members if m is not leader)
    cluster.kill(victim)
    try:
        for args in (("diagnose", "devtest-lab"), ("vm", "restart", "devtest-vm"), ("vm", "remove", "ea-vm"),
                     ("vm", "add", "extra-vm", "--subscription", "payg-shop", "--address", "198.18.2.77")):
            cli(*args)  # committed by the two others: a majority
    finally:
        cluster.start_member(victim)
    cluster.wait_healthy(members=[victim])
    name = url.split("/", 3)[3]
    other = next(m for m in cluster.members if m is not victim)
    assert wait_for(lambda: kvs(cluster, f"/{name}/", victim, prefix=True) == kvs(cluster, f"/{name}/", other,
                                                                                  prefix=True), timeout=10)
    alone = Cli(cluster.url(name, [victim]), capsys)  # type: ignore[arg-type]  # the restarted member alone
    assert alone.json("vm", "list") == cli.json("vm", "list")
    assert "extra-vm" in {r["name"] for r in alone.json("vm", "list")}
    assert "ok (" in alone("state", "check")


def timed(cli: Cli, *args: str) -> float:
    started = time.monotonic()
    cli(*args)
    return time.monotonic() - started


def test_the_leader_stopped_or_killed_a_change_still_commits_once(cluster, url, capsys):
    """Before the retry, both failed at once: `no etcd member answered (leader changed)`, exit 1."""
    Cli(url, capsys)("subscription", "add", "one", "--type", "payg")  # type: ignore[arg-type]
    name = url.split("/", 3)[3]
    took = {}
    for fault in ("stopped", "killed"):
        leader = wait_for(cluster.leader, timeout=10)
        assert leader is not None
        first = Cli(cluster.url(name, [leader, *(m for m in cluster.members if m is not leader)]),
                    capsys)  # type: ignore[arg-type]  # the leader first in the URL: the client tries it first
        if fault == "stopped":
            cluster.pause(leader)   # SIGSTOP: its connections stay open, it answers nothing; an election follows
        else:
            cluster.kill(leader)
        try:
            took[fault] = timed(first, "vm", "add", f"vm-{fault}", "--subscription", "one", "--address",
                                f"198.18.2.{len(took) + 1}")
        finally:
            if fault == "stopped":
                cluster.resume(leader)
            else:
                cluster.start_member(leader)
        cluster.wait_healthy()
    took["held"] = a_change_on_a_connection_held_by_a_stopped_leader(cluster, name)
    say(capsys, "\na change with the leader " + ", ".join(f"{k}: {v:.1f} s" for k, v in took.items()))
    cli = Cli(url, capsys)  # type: ignore[arg-type]
    audit = entries(cli)
    assert [[r["name"] for r in rows] for rows in audit.values()] == \
        [["one"], ["vm-stopped"], ["vm-killed"], ["held"]]
    assert {r["name"] for r in cli.json("vm", "list")} == {"vm-stopped", "vm-killed"}


def a_change_on_a_connection_held_by_a_stopped_leader(cluster: EtcdCluster, name: str) -> float:
    """A client connected to the leader (a long-lived one: its channel open), the leader stopped: the call waits
    out its deadline (2 s here, 10 s by default), then the next member takes the change. Returns how long it took."""
    leader = wait_for(cluster.leader, timeout=10)
    assert leader is not None
    store = EtcdStore(parse_url(cluster.url(name, [leader, *(m for m in cluster.members if m is not leader)])))
    try:
        store.client.timeout = deadline = 2.0
        store.snapshot()  # connected, to the first member of the URL: the leader
        profile = load_profile("azure")
        cluster.pause(leader)
        try:
            started = time.monotonic()
            store.change("subscription add held", lambda inv: add_subscription(inv, profile, "held", "payg"))
            took = time.monotonic() - started
        finally:
            cluster.resume(leader)
    finally:
        store.close()
    cluster.wait_healthy()
    assert deadline <= took < deadline + RETRY_BUDGET, took  # the held call waited it out
    return took


def test_a_change_no_member_answers_gives_up_after_its_budget_in_one_line(capsys):
    cli = Cli(f"etcd://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/x", capsys)  # type: ignore[arg-type]
    started = time.monotonic()
    err = cli("subscription", "add", "one", "--type", "payg", expect=1)
    took = time.monotonic() - started
    assert err.count("\n") == 1 and "no etcd member answered" in err and f"tried for {RETRY_BUDGET:.0f} s" in err
    assert RETRY_BUDGET <= took < RETRY_BUDGET + TIMEOUT, took  # bounded: the budget, and one call at most past it


def test_a_change_whose_answer_was_lost_is_found_and_not_made_twice(cluster, url, capsys, monkeypatch):
    """The transaction is sent and its answer lost (its call's deadline passes before the answer comes: a real
    etcd, a real commit, a real lost answer). The retry must find that it did commit (its audit key) and say it
    succeeded, not add the VM again nor say "already exists"; one that did not commit is made once."""
    cli = Cli(url, capsys)  # type: ignore[arg-type]
    cli("subscription", "add", "one", "--type", "payg")
    real, lost, now = EtcdClient.txn, [], {"name": "", "deadline": TIMEOUT}

    def answer_lost(self: EtcdClient, compares: list[Any], ops: list[Any]) -> Any:
        name = now["name"]
        if lost and lost[-1][0] == name:  # the retry: as it is
            return real(self, compares, ops)
        self.timeout = now["deadline"]
        try:
            return real(self, compares, ops)
        except Unanswered:
            lost.append((name, ops[-3].request_put.key.decode()))  # the audit key this transaction would write
            raise
        finally:
            self.timeout = TIMEOUT
    monkeypatch.setattr(EtcdClient, "txn", answer_lost)
    committed, made = 0, []
    deadlines = (0.0001, 0.0005, 0.001, 0.002)  # some answered in time, some lost before sending, some after
    while committed < 3 and len(made) < 60:     # until 3 were lost after they committed (bounded)
        now.update(name=(name := f"vm-{len(made)}"), deadline=deadlines[len(made) % len(deadlines)])
        assert "added virtual machine" in cli("vm", "add", name, "--subscription", "one", "--address",
                                              f"198.18.2.{len(made) + 1}")
        made.append(name)
        if lost and lost[-1][0] == name:
            committed += bool(kvs(cluster, lost[-1][1]))
    monkeypatch.undo()
    say(capsys, f"\n{len(made)} changes, answers lost: {len(lost)}, of which committed all the same: {committed}")
    assert committed >= 1, "no transaction committed after its answer was lost: shorten the deadlines"
    audit = entries(cli)
    assert [[r["name"] for r in rows] for rows in audit.values()] == [["one"]] + [[name] for name in made]
    assert sorted(r["name"] for r in cli.json("vm", "list")) == sorted(made)
    assert "ok (" in cli("state", "check")


def test_the_space_quota_reached_is_one_line_and_changes_nothing(tmp_path, capsys):
    with running_cluster(tmp_path, 1, options=("--quota-backend-bytes", str(4 << 20))) as small:
        url = small.url("q")
        cli = Cli(url, capsys)  # type: ignore[arg-type]
        cli("apply", str(LAB))
        fill_quota(small)
        assert "NOSPACE" in small.ctl("alarm", "list")
        before = kvs(small, "/q/", prefix=True)
        err = cli("vm", "stop", "devtest-vm", expect=1)
        assert err.count("\n") == 1 and "space quota is reached" in err and "nothing was changed" in err, err
        assert kvs(small, "/q/", prefix=True) == before
        assert len(entries(cli)) == 1  # the apply's, alone


# ------------------------------------------------------------ 4 writers on 2 hosts

WRITER = Path(__file__).with_name("etcd_fault_writer.py")


def test_four_writers_on_two_hosts_lose_nothing_and_keep_every_invariant(cluster, url, hosts, capsys):
    sys.path.insert(0, str(WRITER.parent))
    try:
        import etcd_fault_writer
    finally:
        sys.path.remove(str(WRITER.parent))
    cli = Cli(url, capsys)  # type: ignore[arg-type]
    for args in (("subscription", "add", "shared", "--type", "payg"),
                 ("subscription", "add", "doomed", "--type", "payg"),
                 ("subscription", "add", "dt0", "--type", "devtest"),
                 ("subscription", "add", "dt1", "--type", "devtest"),
                 ("vnet", "add", "net", "--subscription", "shared", "--prefix", "198.18.0.0/16")):
        cli(*args)
    for i in range(3):
        cli("vm", "add", f"sv{i}", "--subscription", "shared", "--address", f"198.18.4.{i}")
    setup = len(entries(cli))
    n = 200
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [[sys.executable, str(WRITER), url, str(i), str(n)] for i in range(4)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": env}
    procs = [subprocess.Popen(argv[0], **pipes), subprocess.Popen(argv[1], **pipes),  # type: ignore[call-overload]
             hosts.run(argv[2], **pipes), hosts.run(argv[3], **pipes)]
    try:
        outcomes = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outcomes]
    done = [json.loads(out) for out, _ in outcomes]
    for i, d in enumerate(done):
        assert [c["args"] for c in d["done"]] == etcd_fault_writer.commands(i, n)
    say(capsys, f"\n4 x {n} changes: {sum(c['changed'] for d in done for c in d['done'])} changed the state, "
          f"{sum(c['code'] == 2 for d in done for c in d['done'])} refused, {sum(d['conflicts'] for d in done)} "
          "conflicts rerun")
    assert sum(d["conflicts"] for d in done) > 0  # they did meet

    audit = list(entries(cli).values())[setup:]
    last = audit_complete_in_order_and_chained(audit, done)
    subnets = {s["name"] for s in cli.json("vnet", "list")[0]["subnets"]}
    assert subnets == {c["args"][3] for d in done for c in d["done"] if c["args"][1] == "subnet-add" and c["changed"]}
    vms = {r["name"]: r for r in cli.json("vm", "list")}
    for (kind, name), after in last.items():
        if kind == "resource":
            assert (after is None) == (name not in vms), name
    owners: dict[str, str] = {}
    for r in vms.values():
        for a in r["addresses"]:
            assert a not in owners, f"{a} held by {owners[a]} and {r['name']}"
            owners[a] = r["name"]
    subscriptions = {s["name"] for s in cli.json("subscription", "list")}
    assert all(r["subscription"] in subscriptions for r in vms.values())
    assert "ok (" in cli("state", "check")


def audit_complete_in_order_and_chained(audit: list[list[dict[str, Any]]],
                                        done: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
    """The writers' audit entries: one for each change a writer was told succeeded, each writer's own (the VMs it
    alone names) in the order it made them, every row's trail a chain; returns each row's last state."""
    changed = [c for d in done for c in d["done"] if c["changed"]]
    assert len(audit) == len(changed)  # the audit log complete: one entry for each change told it succeeded
    # each writer's own changes (named by it alone) there, once, in the order it made them
    position = {}
    for at, rows in enumerate(audit):
        for r in rows:
            key = (r["kind"], r["name"], r["before"] is None, r["after"] is None)
            assert key not in position or r["kind"] != "resource" or not r["name"].startswith(("w", "dw")), key
            position[key] = at
    for i, d in enumerate(done):
        mine = []
        for c in d["done"]:
            args = c["args"]
            if not c["changed"] or args[:2] not in (["vm", "add"], ["vm", "remove"]):
                continue
            mine.append(position[("resource", args[2], args[1] == "add", args[1] == "remove")])
        assert mine == sorted(mine) and len(mine) > 10, (i, mine)
    # no update lost: every row's audit trail is a chain (each change's before is the last one's after)
    last: dict[tuple[str, str], Any] = {}
    for rows in audit:
        for r in rows:
            key = (r["kind"], r["name"])
            if key in last:
                assert r["before"] == last[key], f"{key}: an update lost between two changes"
            last[key] = r["after"]
    return last


# ------------------------------------------------------------ the daemon: a cluster in the lab's gateway namespace

COUNTERS = re.compile(r"\[\d+:\d+\]|counter packets \d+ bytes \d+")  # what traffic changes, not a rule
V4 = yaml.safe_load(LAB.read_text())["lab"]["internet"]["addresses"][0]  # the lab's internet host


class Gateway:
    """The example lab and a 3-member cluster in its gateway namespace: each member with a client port for the
    operator (and etcdctl) and one for the daemon, so that a rule can cut the daemon off from every member."""

    def __init__(self, lab: NetLab, cluster: EtcdCluster):
        self.lab, self.cluster = lab, cluster
        self.namespace = lab.topology.gateway.namespace
        self.sqlite = lab.state  # the lab's own state, applied from vagrant/lab.yml (lab.state may point to etcd)

    def url(self, prefix: str = "lab", port_of: Any = None) -> str:
        ports = [port_of(m) if port_of else m.client_port for m in self.cluster.members]
        return f"etcd://{','.join(f'127.0.0.1:{p}' for p in ports)}/{prefix}"

    @property
    def daemon_url(self) -> str:
        return self.url(port_of=lambda m: m.more_clients[0])

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`enforcer ARGS` in the gateway namespace (the operator's ports unless ARGS give --state)."""
        state = [] if "--state" in args else ["--state", self.url()]
        p = subprocess.Popen(["ip", "netns", "exec", self.namespace, *own_module("enforcer.cli", *state, *args)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, **(env or {})})
        out, err = p.communicate(timeout=120)
        return subprocess.CompletedProcess(args, p.returncode, out, err)

    def ok(self, *args: str) -> str:
        done = self.cli(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def cut(self, on: bool) -> None:
        """The daemon's ports of every member silent (its packets dropped: a partition, not a refusal), or open."""
        for m in self.cluster.members:
            for way in ("--dport", "--sport"):  # both ways: an answer on a connection made before is lost too
                done = self.lab.in_gateway(["iptables", "-I" if on else "-D", "INPUT", "-p", "tcp", way,
                                            str(m.more_clients[0]), "-j", "DROP"])
                assert done.returncode == 0, done.stderr

    def ruleset(self) -> str:
        """Every firewall rule of the gateway namespace (iptables, ip6tables, nft), without dates and counters."""
        out = []
        for argv in (["iptables-save"], ["ip6tables-save"], ["nft", "list", "ruleset"]):
            done = self.lab.in_gateway(argv)
            out += [line for line in done.stdout.splitlines() if not line.startswith("#")]
        return COUNTERS.sub("", "\n".join(out))

    def changed_at(self, prefix: str = "lab") -> int:
        rows = kvs(self.cluster, f"/{prefix}/meta/changed")
        return rows[0]["mod"] if rows else 0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("lab")
    with example_lab(workdir) as lab:
        with running_cluster(workdir / "etcd", 3, namespace=lab.topology.gateway.namespace,
                             more_clients=1) as members:
            gw = Gateway(lab, members)
            gw.ok("state", "copy", str(gw.sqlite), gw.url())
            yield gw


def test_a_gateway_cut_off_past_its_lease_and_a_compaction_keeps_its_table_and_catches_up(gateway):
    lab, cluster = gateway.lab, gateway.cluster
    lab.state = gateway.daemon_url  # type: ignore[assignment]  # start_daemon passes it as --state
    lab.start_daemon("--gateway-name", "gw-cut")
    try:
        assert lab.live()["generation"] == gateway.changed_at()
        assert lab.smtp([("ea-vm", V4, 25), ("shop-web", V4, 25)]) == ["delivered", "timeout"]
        assert kvs(cluster, "/lab/gateways/gw-cut")

        gateway.cut(True)
        try:
            assert wait_for(lambda: lab.live()["connected"] is False, timeout=15, interval=0.2)
            held = lab.live()["generation"]
            gateway.ok("vm", "remove", "ea-vm")                     # allowed until now; unknown (blocked) after
            cluster.ctl("put", "/elsewhere", "x")                    # so that the compaction passes the remove
            assert cluster.compact() > gateway.changed_at() > held   # past the revision the gateway resumes from
            cut_at = time.monotonic()
            # the lease (10 s) runs out: the gateway is no longer listed as alive
            assert wait_for(lambda: not kvs(cluster, "/lab/gateways/gw-cut"), timeout=25, interval=0.5)
            print(f"\nthe gateway key expired {time.monotonic() - cut_at:.1f} s after the change made in the cut")
            live = lab.live()
            assert live["generation"] == held and live["connected"] is False and live["stale_seconds"] > 5, live
            assert lab.smtp([("ea-vm", V4, 25), ("shop-web", V4, 25)]) == ["delivered", "timeout"]  # its last table
        finally:
            gateway.cut(False)
        healed = time.monotonic()
        assert wait_for(lambda: (lab.live()["generation"], lab.live()["connected"]) == (gateway.changed_at(), True),
                        timeout=30, interval=0.1), \
            (lab.live(), lab.daemon_log.read_text()[-3000:])
        print(f"caught up {time.monotonic() - healed:.1f} s after the heal")
        live = lab.live()
        assert live["connected"] is True and live["relists"] == 1 and live["compiles"] == 1, \
            (live, lab.daemon_log.read_text()[-3000:])
        assert lab.smtp([("ea-vm", V4, 25), ("shop-web", V4, 25)]) == ["timeout", "timeout"]
        assert wait_for(lambda: [json.loads(r["value"])["revision"] for r in kvs(cluster, "/lab/gateways/gw-cut")]
                        == [live["generation"]], timeout=15, interval=0.2)
    finally:
        lab.stop_daemon()
    assert "Traceback" not in lab.daemon_log.read_text()


# ------------------------------------------------------------ wrong credentials, wrong CA, an expired certificate

@pytest.fixture(scope="module")
def secure(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory):
    """One TLS member with authentication in the gateway namespace, the fleet's roles, a state under /fleet."""
    workdir = tmp_path_factory.mktemp("secure")
    pki = Pki(workdir / "pki")
    expired = pki.sign("expired", "extendedKeyUsage=clientAuth", days=-1)
    assert subprocess.run(["openssl", "x509", "-checkend", "0", "-noout", "-in", str(expired)],
                          capture_output=True).returncode == 1  # its notAfter is past
    with running_cluster(workdir, 1, pki, namespace=gateway.namespace) as one:
        member = Etcd(workdir, one, pki)
        member.enable_auth("root-secret")
        member.ctl("user", "add", "operator:op-secret")
        member.ctl("role", "add", "enforcer-rw")
        member.ctl("role", "grant-permission", "--prefix=true", "enforcer-rw", "readwrite", "/fleet/")
        member.ctl("user", "grant-role", "operator", "enforcer-rw")
        tls = ["--etcd-cacert", str(pki.ca), "--etcd-cert", str(pki.dir / "client.pem"),
               "--etcd-key", str(pki.dir / "client.key"), "--etcd-user", "operator", "--state", one.url("fleet")]
        done = gateway.cli(*tls, "state", "copy", str(gateway.sqlite), one.url("fleet"),
                           env={"ENFORCER_ETCD_PASSWORD": "op-secret"})
        assert done.returncode == 0, done.stderr
        yield member, tls


@pytest.mark.parametrize("case, says", [
    ("wrong password", "authentication failed"),
    ("wrong CA", "not signed by a CA"),
    ("expired certificate", "refused our client certificate"),
])
def test_wrong_credentials_are_one_line_exit_2_and_touch_nothing(gateway, secure, case, says):
    member, tls = secure
    pki = member.pki
    args, password = list(tls), "op-secret"
    if case == "wrong password":
        password = "nope"
    elif case == "wrong CA":
        args[1] = str(pki.other_ca)
    else:
        args[3], args[5] = str(pki.dir / "expired.pem"), str(pki.dir / "expired.key")
    env = {"ENFORCER_ETCD_PASSWORD": password}
    state = member.ctl("get", "/fleet/", "--prefix", "-w", "json")
    rules = gateway.ruleset()
    for command in (["vm", "stop", "devtest-vm"], ["run", "--socket", str(gateway.lab.workdir / "c.sock")]):
        done = gateway.cli(*args, *command, env=env)
        assert done.returncode == 2, (command, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and says in done.stderr, (command, done.stderr)
        assert "Traceback" not in done.stderr
    assert gateway.ruleset() == rules  # the daemon touched no rule
    after = json.loads(member.ctl("get", "/fleet/", "--prefix", "-w", "json"))
    assert after["kvs"] == json.loads(state)["kvs"] and after["kvs"]  # the state as it was
