"""Benchmark of a fleet of gateways on one policy in etcd (issue 21, item 6), each figure beside the same one with the
SQLite state and one gateway, measured in the same run. A report: it exits 0 once it has run (1 if it breaks, 2
where it cannot run). From the repository root, as root:

    python -m benchmarks.etcd_fleet [--sizes 1000,100000,1000000] [--rounds 20] [--states DIR] [--quick]

For each size N: the example lab and N more VMs (benchmarks/states.py, built once per size; --states DIR keeps
them). The baseline first: a lab in namespaces (only the VMs the benchmark probes: devtest-vm, ea-vm, shop-web)
over a copy of that SQLite state, its daemon started. Then one etcd (Debian's, in a namespace of its own, see
etcd_flags()) loaded with the same state by benchmarks.etcd_roles.load (what `enforcer state copy` does, in
process), and three more labs, each with its gateway in a namespace of its own and
linked to etcd's (198.19.253.0/24), each running `enforcer run --state etcd://... --gateway-name gwI`. Every
change is made by a child in etcd's namespace through the CLI's entry point (`enforcer diagnose`, `vm restart`,
`exemption revoke`: EtcdStore.change, or Store.change for the baseline).

1. Commit to verdict: ea-vm (EA: allowed while running) stopped, every gateway waited for; then `vm start ea-vm`:
   from the moment the command returned, each gateway's lab has ea-vm send SYNs (a new TCP connection every few
   ms, through that gateway's queue, to the internet host's port 25) until one is accepted; the figure is when
   that SYN was sent. The slowest gateway's, p50/p99 over --rounds changes; beside it, the same with SQLite and
   one gateway. Also the time until each daemon's control socket reports the change's generation (the daemon's
   own view, polled every 2 ms). (`vm start`, not an exemption and a restart: `diagnose` and `exemption revoke`
   count a subscription's running VMs, which takes minutes on etcd at 1M, see part 3.)
2. Start to READY: each gateway's `enforcer run` from etcd (whole process, READY=1 by sd_notify), beside the
   baseline daemon's start from the SQLite state of the same size.
3. A command's own work (benchmarks.control.own_ms: in-process through the CLI's entry point) against etcd and
   against the SQLite state, each command of benchmarks.control.COMMANDS but `status` (--own-status adds it).
4. Relist after a compaction: gateway 3 cut off from etcd (a REJECT rule on etcd's port in its namespace) for
   CUT_SECONDS, two changes made meanwhile (devtest-vm stopped and started), etcd compacted past them, the rule
   removed: the time until gateway 3 reports the newest generation again, and within it until it said connected
   again (its watch's backoff); meanwhile ea-vm (allowed) and shop-web (blocked) behind it send a SYN every 20 ms:
   all of ea-vm's must be accepted, none of shop-web's.
5. etcd's size: its data directory (du), the db size etcd reports (`etcdctl endpoint status`), its RSS, after the
   load and again after a compaction and defragmentation; and the daemons' RSS.

Targets (issue 21): 1. slowest gateway's p99 <= 250 ms at 1M; 2. <= 5 s to READY at 1M; 3. own p50 <= 30 ms at
1M; 4. <= 5 s, enforcing throughout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import yaml
from pyroute2 import NetNS, netns

from enforcer.errors import Failure
from enforcer.lab.etcd_cluster import EtcdCluster, Member
from enforcer.lab.files import DEFAULT_LAB, resources_of
from enforcer.lab.fleet import ETCD_OPTIONS
from enforcer.lab.namespace_lab import LabError, NamespaceLab
from enforcer.lab.netns import can_build_namespaces, own_module, remove_tagged, run_in

from .child import Child
from .control import COMMANDS, sizes_of, states
from .report import percentile
from .states import lab_state

DEFAULT_SIZES = (1_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000,)
GATEWAYS = 3
PROBED = ("devtest-vm", "ea-vm", "shop-web")  # the only VMs each lab holds (the same links in every lab)
TOGGLED = "ea-vm"         # stopped (its SYNs blocked) and started (allowed: an EA subscription) in part 1
ETCD_NET = "198.19.253"   # etcd's bridge: .1/24; gateway i joins it as .1+i
ETCD_PORT = 2379
PREFIX = "bench"
TAG = "p25ef"             # the first letters of every namespace the benchmark makes
START_TIMEOUT = 600.0     # seconds a daemon may take to READY: measured, not bounded by the lab's 30 s
CUT_SECONDS = 3.0         # how long gateway 3 stays cut off from etcd (4.)
PROBE_WAIT = 0.003        # seconds a probe waits for its SYN-ACK before it tries a new connection
QUOTA = 8 << 30           # etcd's suggested maximum: the fleet lab's 256 MiB does not hold a million VMs


def etcd_flags() -> list[str]:
    """The etcd the benchmark runs (beside etcd_cluster's --max-txn-ops 10000): the fleet lab's (its compaction, its
    snapshots), with QUOTA for its quota."""
    flags = list(ETCD_OPTIONS)
    at = flags.index("--quota-backend-bytes")
    return [*flags[:at], *flags[at + 2:], "--quota-backend-bytes", str(QUOTA)]


TARGET_VERDICT_MS = 250.0
TARGET_START_S = 5.0
TARGET_OWN_MS = 30.0
TARGET_RELIST_S = 5.0


# ---------------------------------------------------------------- etcd in a namespace of its own


class Etcd:
    """One etcd member (enforcer.lab.etcd_cluster) in a namespace of its own, on a bridge there (ETCD_NET.1/24) that
    each gateway's namespace joins by a link of its own; all of it removed by close()."""

    def __init__(self, workdir: Path, tag: str):
        self.tag = tag
        self.namespace = f"{self.tag}-etcd"
        self.member = Member("bench", f"{ETCD_NET}.1", ETCD_PORT, ETCD_PORT + 1, workdir / "etcd",
                             namespace=self.namespace)
        self.cluster = EtcdCluster([self.member], options=etcd_flags())
        self.links = 0

    @property
    def local(self) -> str:
        return self.cluster.url(PREFIX)

    def start(self) -> None:
        netns.create(self.namespace)
        with NetNS(self.namespace) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            ns.link("add", ifname="br0", kind="bridge")
            bridge = ns.link_lookup(ifname="br0")[0]
            ns.addr("add", index=bridge, address=self.member.host, prefixlen=24)
            ns.link("set", index=bridge, state="up")
        self.cluster.start()

    def link(self, gateway: str) -> str:
        """A link from the gateway's namespace to etcd's bridge: the etcd:// location the gateway reaches it at."""
        self.links += 1
        with NetNS(gateway) as g:
            g.link("add", ifname="etcd", kind="veth", peer={"ifname": f"g{self.links}", "net_ns_fd": self.namespace})
            gi = g.link_lookup(ifname="etcd")[0]
            g.addr("add", index=gi, address=f"{ETCD_NET}.{1 + self.links}", prefixlen=24)
            g.link("set", index=gi, state="up")
        with NetNS(self.namespace) as e:
            ei = e.link_lookup(ifname=f"g{self.links}")[0]
            e.link("set", index=ei, master=e.link_lookup(ifname="br0")[0], state="up")
        return self.local

    def ctl(self, *args: str, timeout: float = 15) -> str:
        """etcdctl (the cluster's), given `timeout` seconds for its command too."""
        return self.cluster.ctl(*args, "--command-timeout", f"{timeout:.0f}s", timeout=timeout + 10)

    def size(self) -> dict[str, Any]:
        """Its data directory on disk, the db size it reports (and in use), its RSS, its revision."""
        status = self.cluster.status(self.member)
        if status is None:
            raise RuntimeError("etcd does not answer `endpoint status`")
        du = int(subprocess.run(["du", "-sb", str(self.member.dir / "data")], capture_output=True, text=True,
                                check=True).stdout.split()[0])
        assert self.member.process is not None
        return {"du": du, "db": int(status["dbSize"]), "db_in_use": int(status.get("dbSizeInUse", 0)),
                "rss": rss(self.member.process.pid), "revision": int(status["header"]["revision"])}

    def close(self) -> None:
        self.cluster.close()
        remove_tagged(self.tag)


def rss(pid: int) -> int:
    """The resident memory of a process and its children (a daemon's workers), bytes."""
    total = 0
    for p in [pid, *children(pid)]:
        with contextlib.suppress(OSError):
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return total


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    out += [int(child), *children(int(child))]
    return out


# ---------------------------------------------------------------- the labs


def probed_vms() -> dict[str, list[str]]:
    doc = yaml.safe_load(DEFAULT_LAB.read_text())
    vms = resources_of(doc)
    return {name: vms[name] for name in PROBED}


def internet() -> list[str]:
    return [str(a) for a in yaml.safe_load(DEFAULT_LAB.read_text())["lab"]["internet"]["addresses"]]


@contextlib.contextmanager
def lab(state: Path, workdir: Path, tag: str) -> Iterator[NamespaceLab]:
    """A lab of the PROBED VMs in namespaces named TAG-..., over a copy of `state`, each VM bound to its link (v0,
    v1, v2 in every lab: the same order), no daemon yet; all of it removed after."""
    workdir.mkdir(parents=True)
    one = NamespaceLab(workdir, internet(), tag=tag)
    try:
        shutil.copyfile(state, one.state)
        one.up(probed_vms())
        yield one
    finally:
        one.close()


class Gateway:
    """A lab whose daemon follows `state` (a path or an etcd:// location), and a prober in each of its VMs."""

    def __init__(self, name: str, one: NamespaceLab, state: str, log_dir: str):
        self.name, self.lab, self.state, self.log_dir = name, one, state, log_dir
        self.probers = {vm: Child(f"{name}-{vm}", one.topology.vms[vm].namespace, "prober", [], log_dir,
                                  module="benchmarks.etcd_roles") for vm in PROBED}
        for p in self.probers.values():
            p.read()
        self.started_s = 0.0
        self.unanswered = 0  # status requests its daemon did not answer in time

    def start(self, *options: str) -> float:
        self.lab.state = self.state  # type: ignore[assignment]  # start_daemon passes it as --state
        started = time.monotonic()
        self.lab.start_daemon(*options, timeout=START_TIMEOUT)
        self.started_s = time.monotonic() - started
        return self.started_s

    def generation(self) -> int:
        """The generation its daemon reports; -1 when it does not answer within the lab's 5 s (counted, said)."""
        try:
            return int(self.lab.live()["generation"])
        except LabError as e:
            self.unanswered += 1
            print(f"  ({self.name}: {e})", flush=True)
            return -1

    def stop(self) -> None:
        for p in self.probers.values():
            p.stop()
        with contextlib.suppress(OSError):
            shutil.copyfile(self.lab.daemon_log, Path(self.log_dir) / f"{self.name}-daemon.log")


class Operator(Child):
    """The child in etcd's namespace that makes the changes (benchmarks.etcd_roles.operator)."""

    def __init__(self, namespace: str, log_dir: str):
        super().__init__("operator", namespace, "operator", [], log_dir, module="benchmarks.etcd_roles")
        self.read()

    def do(self, timeout: float = 600, **ask: Any) -> dict[str, Any]:
        answer = self.ask(json.dumps(ask), timeout)
        if "error" in answer:
            raise RuntimeError(f"operator {ask['do']}: {answer['error']}")
        return answer


def synced(gateways: list[Gateway], generation: int, since: float, timeout: float = 60) -> list[float]:
    """Seconds from `since` until each gateway's daemon reports `generation` (or later), polled every 2 ms."""
    at: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(at) < len(gateways):
        for g in gateways:
            if g.name not in at and g.generation() >= generation:
                at[g.name] = time.monotonic()
        if time.monotonic() > deadline:
            late = [g.name for g in gateways if g.name not in at]
            raise RuntimeError(f"{', '.join(late)} did not report generation {generation} within {timeout:.0f} s")
        time.sleep(0.002)
    return [at[g.name] - since for g in gateways]


def commit_to_verdict(op: Operator, state: str, gateways: list[Gateway], rounds: int) -> dict[str, list[float]]:
    """Part 1 (the module's docstring): per round, each gateway's ms from `vm start ea-vm`'s return to the first
    accepted SYN of ea-vm, and to its daemon's report of the generation."""
    dst = internet()[0]
    syn: list[list[float]] = []
    status: list[list[float]] = []
    stopped = op.do(do="change", state=state, argv=["vm", "stop", TOGGLED])
    synced(gateways, stopped["generation"], stopped["returned"])
    for _ in range(rounds):
        for g in gateways:
            g.probers[TOGGLED].send(json.dumps({"do": "until", "dst": dst, "port": 25, "seconds": 30,
                                                "wait": PROBE_WAIT}))
            g.probers[TOGGLED].read()
        started = op.do(do="change", state=state, argv=["vm", "start", TOGGLED])
        status.append([s * 1000 for s in synced(gateways, started["generation"], started["returned"])])
        accepted = [g.probers[TOGGLED].read(40) for g in gateways]
        if any(a["at"] is None for a in accepted):
            raise RuntimeError(f"{TOGGLED}'s SYNs were not accepted within 30 s: {accepted}")
        if any(a["at"] < started["started"] for a in accepted):
            raise RuntimeError(f"{TOGGLED}'s SYN was accepted before the change: it was allowed already")
        syn.append([(a["at"] - started["returned"]) * 1000 for a in accepted])
        stopped = op.do(do="change", state=state, argv=["vm", "stop", TOGGLED])
        synced(gateways, stopped["generation"], stopped["returned"])
    started = op.do(do="change", state=state, argv=["vm", "start", TOGGLED])
    synced(gateways, started["generation"], started["returned"])
    return {"syn": [max(r) for r in syn], "status": [max(r) for r in status],
            "syn_each": [x for r in syn for x in r]}


def own_work(op: Operator, state: str, rounds: int, with_status: bool) -> dict[str, list[float] | str]:
    """Part 3: each command's own-work times (ms), in benchmarks.control.COMMANDS' order (pairs undo each other);
    a command that fails, its one line instead (it is not run again)."""
    out: dict[str, list[float] | str] = {}
    chosen = [(label, argv) for label, argv in COMMANDS if label != "status" or with_status]
    for i in [rounds, *range(rounds)]:  # first a round not counted: the modules imported, the caches warm
        for label, argv in chosen:
            if isinstance(out.get(label), str):
                continue
            try:
                took = op.do(do="own", state=state, argv=argv(i), rounds=1)["ms"]
            except RuntimeError as e:
                out[label] = str(e).rpartition("enforcer: ")[2] or str(e)
                continue
            if i != rounds:
                out.setdefault(label, []).extend(took)  # type: ignore[union-attr]  # a list: not failed
    return out


def p50(values: list[float] | str) -> str:
    return f"{statistics.median(values):.1f}" if isinstance(values, list) else "failed"


def stop_daemon(one: NamespaceLab) -> None:
    if one.daemon is not None and one.daemon.poll() is None:
        one.daemon.terminate()
        one.daemon.wait(30)


def try_copy(etcd: Etcd, state: Path) -> dict[str, Any]:
    """`enforcer state copy STATE etcd://.../copy` as a person would run it (a whole process, in etcd's namespace):
    its exit code, its last line, how long it took. Its prefix is deleted afterwards."""
    started = time.monotonic()
    p = run_in(etcd.namespace, own_module("enforcer.cli", "--state", str(state), "state", "copy", str(state),
                                          etcd.cluster.url("copy")),
               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=1800)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        err += "(killed after 30 minutes)"
    said = (err.strip() or out.strip()).splitlines()
    etcd.ctl("del", "--prefix", "/copy/")
    return {"code": p.returncode, "seconds": time.monotonic() - started, "said": said[-1] if said else "",
            "lines": len(err.strip().splitlines())}


def cut(g: Gateway, on: bool) -> None:
    """Gateway g's connections to etcd refused (a reset for each packet it sends to etcd's port), or no longer."""
    done = g.lab.in_gateway(["iptables", "-I" if on else "-D", "OUTPUT", "-p", "tcp", "--dport", str(ETCD_PORT),
                             "-j", "REJECT", "--reject-with", "tcp-reset"])
    if done.returncode:
        raise RuntimeError(f"iptables in {g.name}: {done.stderr.strip()}")


def relist(op: Operator, etcd: Etcd, g: Gateway) -> dict[str, Any]:
    """Part 4 (the module's docstring)."""
    dst = internet()[0]
    before = g.lab.live()
    for vm in ("ea-vm", "shop-web"):
        g.probers[vm].send(json.dumps({"do": "steady", "dst": dst, "port": 25, "seconds": 300,
                                       "every": 0.02, "wait": 0.2}))
        g.probers[vm].read()
    cut(g, True)
    try:
        deadline = time.monotonic() + 15
        while g.lab.live()["connected"]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{g.name} still says connected 15 s after the cut")
            time.sleep(0.05)
        cut_at = time.monotonic()
        last = {}
        for argv in (["vm", "stop", "devtest-vm"], ["vm", "start", "devtest-vm"]):
            last = op.do(do="change", state=etcd.local, argv=argv)
        compacted = op.do(do="compact", url=etcd.local)
        time.sleep(max(0.0, CUT_SECONDS - (time.monotonic() - cut_at)))
        stale = g.lab.live()
    finally:
        cut(g, False)
    healed = time.monotonic()
    connected = None
    deadline = healed + 60
    while True:
        live = g.lab.live()
        now = time.monotonic()
        if connected is None and live["connected"]:
            connected = now - healed
        if live["generation"] >= last["generation"]:
            break
        if now > deadline:
            raise RuntimeError(f"{g.name} did not catch up within 60 s: {live}")
        time.sleep(0.002)
    caught = time.monotonic() - healed
    for vm in ("ea-vm", "shop-web"):
        g.probers[vm].send("stop")
    steady = {vm: g.probers[vm].read() for vm in ("ea-vm", "shop-web")}
    return {"caught_s": caught, "connected_s": connected if connected is not None else caught,
            "stale_s": stale["stale_seconds"], "compacted": compacted["revision"], "compact_s": compacted["seconds"],
            "generation": last["generation"],
            "relists": live["relists"] - before["relists"], "compiles": live["compiles"] - before["compiles"],
            "steady": steady}


# ---------------------------------------------------------------- one size


def one_size(n: int, state: Path, args: argparse.Namespace, small: Path, log_dir: str) -> dict[str, Any]:
    r: dict[str, Any] = {"n": n}
    with tempfile.TemporaryDirectory(prefix="enforcer-etcd-fleet-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        # the baseline: the SQLite state, one daemon
        tag = f"{TAG}{uuid.uuid4().hex[:5]}"  # every namespace of this size's run begins with it
        base_lab = stack.enter_context(lab(state, root / "sqlite", f"{tag}s"))
        base = Gateway("sqlite", base_lab, str(base_lab.state), log_dir)
        stack.callback(base.stop)
        r["start_sqlite"] = base.start()
        etcd = Etcd(root, f"{tag}e")
        stack.callback(etcd.close)
        etcd.start()
        op = Operator(etcd.namespace, log_dir)
        stack.callback(op.stop)
        r["load"] = op.do(do="load", sqlite=str(base_lab.state), url=etcd.local, timeout=3600)
        r["size_loaded"] = etcd.size()
        print(f"  {n:,}: SQLite daemon READY in {r['start_sqlite']:.2f} s; etcd loaded with {r['load']['rows']:,} "
              f"rows ({r['load']['keys']:,} keys, as `state copy` writes them) in {r['load']['seconds']:.1f} s",
              flush=True)
        r["verdict_sqlite"] = commit_to_verdict(op, str(base_lab.state), [base], args.rounds)
        print(f"  {n:,}: SQLite commit to verdict {ms(r['verdict_sqlite']['syn'])}", flush=True)
        r["own_sqlite"] = own_work(op, str(base_lab.state), args.own_rounds, args.own_status)
        r["rss_sqlite"] = rss(base_lab.daemon.pid) if base_lab.daemon else 0
        print(f"  {n:,}: SQLite baseline measured", flush=True)
        stop_daemon(base_lab)  # its memory back before the fleet's

        # the fleet: three gateways following etcd
        gateways = []
        for i in range(1, GATEWAYS + 1):
            one = stack.enter_context(lab(small, root / f"gw{i}", f"{tag}g{i}"))
            g = Gateway(f"gw{i}", one, etcd.link(one.topology.gateway.namespace), log_dir)
            stack.callback(g.stop)
            gateways.append(g)
        r["start_etcd"] = [g.start("--gateway-name", g.name) for g in gateways]
        print(f"  {n:,}: gateways READY in " + ", ".join(f"{s:.2f} s" for s in r["start_etcd"]), flush=True)
        r["rows"] = op.do(do="rows", url=etcd.local)
        r["verdict_etcd"] = commit_to_verdict(op, etcd.local, gateways, args.rounds)
        print(f"  {n:,}: etcd commit to verdict, slowest of {GATEWAYS}: {ms(r['verdict_etcd']['syn'])}", flush=True)
        r["own_etcd"] = own_work(op, etcd.local, args.own_rounds, args.own_status)
        print(f"  {n:,}: own work p50 ms, etcd / SQLite: " + ", ".join(
            f"{label} {p50(v)} / {p50(r['own_sqlite'][label])}" for label, v in r["own_etcd"].items()), flush=True)
        r["unanswered"] = {g.name: g.unanswered for g in [base, *gateways]}
        r["rss_gateways"] = [rss(g.lab.daemon.pid) if g.lab.daemon else 0 for g in gateways]
        r["size_changed"] = etcd.size()
        print(f"  {n:,}: the fleet measured; the relist", flush=True)
        r["relist"] = relist(op, etcd, gateways[-1])
        defrag = time.monotonic()
        etcd.ctl("defrag", timeout=600)  # one member: the member stops answering meanwhile
        r["defrag_s"] = time.monotonic() - defrag
        r["size_defragmented"] = etcd.size()
        r["live"] = [g.lab.live() for g in gateways]
        if args.try_copy:
            r["copy"] = try_copy(etcd, base_lab.state)
    return r


# ---------------------------------------------------------------- the report


def ms(values: list[float]) -> str:
    return f"p50 {percentile(values, 0.5):7.1f}  p99 {percentile(values, 0.99):7.1f}  max {max(values):7.1f}"


def mb(b: int) -> str:
    return f"{b / 2**20:,.0f} MiB"


def report(results: list[dict[str, Any]], rounds: int) -> None:
    largest = results[-1]
    for r in results:
        n = r["n"]
        v, b = r["verdict_etcd"], r["verdict_sqlite"]
        print(f"\n== {n:,} VMs beside the lab ({rounds} changes each)")
        print("1. commit (the CLI's return) to verdict, ms")
        print(f"   etcd, slowest of {GATEWAYS}, first accepted SYN   {ms(v['syn'])}")
        print(f"   etcd, each gateway, first accepted SYN    {ms(v['syn_each'])}")
        print(f"   etcd, slowest, daemon reports generation  {ms(v['status'])}")
        print(f"   SQLite, one daemon, first accepted SYN    {ms(b['syn'])}")
        print(f"   SQLite, one daemon, reports generation    {ms(b['status'])}")
        if any(r["unanswered"].values()):
            print("   status requests a daemon did not answer within 5 s: " +
                  ", ".join(f"{name} {k}" for name, k in r["unanswered"].items() if k))
        print(f"   ratio etcd slowest / SQLite: p50 {ratio(v['syn'], b['syn'], 0.5)}, "
              f"p99 {ratio(v['syn'], b['syn'], 0.99)}")
        print("2. start to READY, s: etcd " + ", ".join(f"{s:.2f}" for s in r["start_etcd"])
              + f"; SQLite {r['start_sqlite']:.2f}; ratio (slowest) {max(r['start_etcd']) / r['start_sqlite']:.2f}")
        rows = r["rows"]
        print(f"   of a start from etcd: reading its {rows['rows']:,} address rows alone {rows['seconds']:.2f} s, in "
              f"{rows['pages']} pages of 10,000: the first {rows['first_page'] * 1000:.0f} ms, the last "
              f"{rows['last_page'] * 1000:.0f} ms")
        print("3. own work, p50 ms         etcd   SQLite    ratio")
        for label, values in r["own_etcd"].items():
            base = r["own_sqlite"][label]
            if isinstance(values, str) or isinstance(base, str):
                print(f"   {label:18} {p50(values):>9} {p50(base):>8}: {values if isinstance(values, str) else base}")
                continue
            e, s = statistics.median(values), statistics.median(base)
            print(f"   {label:18} {e:9.1f} {s:8.1f} {e / s:8.1f}")
        rl = r["relist"]
        st = rl["steady"]
        print(f"4. relist after a compaction: caught up {rl['caught_s']:.2f} s after the cut was healed (connected "
              f"again after {rl['connected_s']:.2f} s); stale {rl['stale_s']:.1f} s when healed; relists "
              f"+{rl['relists']}, compiles +{rl['compiles']}; compacted at revision {rl['compacted']} (the call: "
              f"{rl['compact_s'] * 1000:.0f} ms)")
        print(f"   meanwhile behind it: ea-vm (allowed) {st['ea-vm']['accepted']} accepted, {st['ea-vm']['refused']}"
              f" not (longest gap {st['ea-vm']['longest_gap'] * 1000:.0f} ms); shop-web (blocked) "
              f"{st['shop-web']['accepted']} accepted, {st['shop-web']['refused']} not")
        ld, sz, dz = r["load"], r["size_loaded"], r["size_defragmented"]
        print(f"5. etcd: loaded {ld['keys']:,} keys in {ld['seconds']:.0f} s (SQLite read {ld['read_s']:.0f} s); "
              f"after the load: du {mb(sz['du'])}, db {mb(sz['db'])} ({mb(sz['db_in_use'])} in use), RSS "
              f"{mb(sz['rss'])}; after the run: db {mb(r['size_changed']['db'])}; compacted and defragmented "
              f"({r['defrag_s']:.1f} s): du "
              f"{mb(dz['du'])}, db {mb(dz['db'])}, RSS {mb(dz['rss'])}")
        if "copy" in r:
            c = r["copy"]
            print(f"   enforcer state copy SQLite -> etcd: exit {c['code']} after {c['seconds']:.1f} s: {c['said']}")
        print("   daemons' RSS (with their workers): etcd gateways " + ", ".join(mb(x) for x in r["rss_gateways"])
              + f"; SQLite {mb(r['rss_sqlite'])}")
    n = largest["n"]
    own = max(statistics.median(v) if isinstance(v, list) else float("inf") for v in largest["own_etcd"].values())
    rl = largest["relist"]
    enforcing = rl["steady"]["ea-vm"]["refused"] == 0 and rl["steady"]["shop-web"]["accepted"] == 0
    checks = [
        (f"commit to verdict, slowest of {GATEWAYS}, p99 <= {TARGET_VERDICT_MS:.0f} ms at {n:,}: "
         f"{percentile(largest['verdict_etcd']['syn'], 0.99):.0f} ms",
         percentile(largest["verdict_etcd"]["syn"], 0.99) <= TARGET_VERDICT_MS),
        (f"start from etcd to READY <= {TARGET_START_S:.0f} s at {n:,}: {max(largest['start_etcd']):.2f} s",
         max(largest["start_etcd"]) <= TARGET_START_S),
        (f"own work against etcd p50 <= {TARGET_OWN_MS:.0f} ms at {n:,}: worst command "
         f"{'failed' if own == float('inf') else f'{own:.1f} ms'}",
         own <= TARGET_OWN_MS),
        (f"relist after a compaction <= {TARGET_RELIST_S:.0f} s at {n:,}, enforcing throughout: "
         f"{rl['caught_s']:.2f} s, {'enforcing' if enforcing else 'NOT enforcing'}",
         rl["caught_s"] <= TARGET_RELIST_S and enforcing),
    ]
    print()
    for text, ok in checks:
        print(f"target: {text} {'PASS' if ok else 'FAIL'}")


def ratio(a: list[float], b: list[float], q: float) -> str:
    x, y = percentile(a, q), percentile(b, q)
    return f"{x / y:.2f}x" if y > 0 else "-"


# ---------------------------------------------------------------- the run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", help="registered VMs beside the lab, comma-separated (default 1000,100000,1000000)")
    ap.add_argument("--quick", action="store_true", help="1,000 VMs, 3 changes: proves it runs")
    ap.add_argument("--states", metavar="DIR", help="keep the SQLite state files here (reused when present)")
    ap.add_argument("--rounds", type=int, help="measured changes per size (default 20; --quick 3)")
    ap.add_argument("--own-rounds", type=int, help="own-work runs of each command (default 5; --quick 1)")
    ap.add_argument("--try-copy", action="store_true", help="also `enforcer state copy` of each size's state "
                    "into another prefix of etcd as a person runs it: a whole process, timed")
    ap.add_argument("--own-status", action="store_true", help="also `status` in part 3 (it reads every resource "
                    "on etcd)")
    args = ap.parse_args(argv)
    sizes = sizes_of(ap, args.sizes, QUICK_SIZES if args.quick else DEFAULT_SIZES)
    args.rounds = args.rounds or (3 if args.quick else 20)
    args.own_rounds = args.own_rounds or (1 if args.quick else 5)
    why = can_build_namespaces()
    if why or shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        why = why or "needs etcd and etcdctl (apt-get install etcd-server etcd-client)"
        print(f"python -m benchmarks.etcd_fleet: {why}", file=sys.stderr)
        return 2
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_AVPHYS_PAGES') / 2**30:.1f} GiB free; etcd "
          f"{subprocess.run(['etcd', '--version'], capture_output=True, text=True).stdout.split()[2]}; "
          f"etcd flags: {' '.join(etcd_flags())}", flush=True)
    results = []
    broke = False
    log_dir = tempfile.mkdtemp(prefix="enforcer-etcd-fleet-logs-")
    with states(sizes, args.states) as paths, tempfile.TemporaryDirectory(prefix="enforcer-etcd-small-") as tmp:
        small = Path(tmp) / "lab.db"
        lab_state(small).close()
        for n in sizes:
            started = time.monotonic()
            try:
                results.append(one_size(n, paths[n], args, small, log_dir))
            except (RuntimeError, OSError, subprocess.SubprocessError, Failure) as e:  # the others still reported
                print(f"  {n:,}: broke after {time.monotonic() - started:.0f} s: {e}", flush=True)
                broke = True
                break
            print(f"  {n:,}: done in {time.monotonic() - started:.0f} s", flush=True)
    if results:
        report(results, args.rounds)
    if broke:  # what the daemons and the children said, kept for the one who reads why
        print(f"the daemons' logs and the children's: {log_dir}")
        return 1
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
