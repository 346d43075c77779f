"""Benchmark of the control plane: what a CLI command costs at 1,000 / 100,000 / 1,000,000 registered VMs, and how
long a change takes to reach the packet path while the gateway judges a steady SYN stream. A report: it exits 0
once it has run (1 if it breaks, 2 where it cannot run). From the repository root, as root for the second part:

    python -m benchmarks.control [--sizes 1000,100000,1000000] [--quick] [--states DIR] [--cli-only | --reload-only]
                                 [--seconds 60] [--rate 100000] [--period 0.1] [--kernel-cache]

States (benchmarks/states.py): the example lab and N more running VMs, built once per size (1M: about 100 s and
900 MB; --states DIR keeps them for the next run).

1. CLI: each command of COMMANDS run R times on each state, two ways. `own`: in this process, through the CLI's
   own entry point (enforcer.cli.main.main, output discarded), its modules imported once before: what the command
   itself costs. `whole`: the installed `enforcer` as a new process, start-up included. Targets: own p50 <= 50 ms
   at the largest size; whole p50 at the largest size <= 1.3x the same command at the smallest, measured in the
   same run.

2. Reload under load (the largest size): the lab of vagrant/lab.yml in network namespaces with that state, the
   real daemon on the gateway (`enforcer run`, the default queue length, `--queue-full drop` then `accept`). Four
   VMs whose policy never changes (benchmarks.soak.STEADY: two allowed, two blocked) send `--rate` SYNs/s in all
   through AF_PACKET TX rings (benchmarks.senders.RingSender) for `--seconds`; every `--period` the policy of a
   fifth VM (devtest-vm) flips (benchmarks.soak.flip: an exemption granted or revoked, then a restart), the
   benchmark waits until the daemon reports the new generation (its workers run the new table then: the
   commit-to-verdict latency), and devtest-vm sends a short burst, which therefore has one right verdict.
   Counted in the kernel: each steady source's SYNs entering the gateway (raw PREROUTING there) and arriving at
   the internet host (raw PREROUTING there, dropped: no SYN-ACK comes back), and the gateway's queue statistics.
   misjudged = allowed SYNs that entered and did not arrive + blocked SYNs that arrived + devtest-vm's burst SYNs
   that met the wrong verdict. Targets: commit to verdict <= 100 ms (max), >= 100,000 SYN/s offered, 0
   misjudged, 0 kernel queue drops. --kernel-cache runs the daemon with its kernel cache, the five VMs unbound
   first (a bound source is never cached): a source's SYNs after its first are then judged in the kernel, and a
   stale cached verdict after a change would show as misjudged SYNs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from enforcer.cli.main import main as cli_main
from enforcer.lab.files import DEFAULT_LAB, resources_of
from enforcer.lab.namespace_lab import NamespaceLab
from enforcer.lab.netns import can_build_namespaces, run_in

from .soak import STEADY, TOGGLED, Sender, flip, in_namespace, unbind_senders
from .states import lab_state

DEFAULT_SIZES = (1_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 5_000)
TARGET_OWN_MS = 50.0
TARGET_WHOLE_RATIO = 1.3
TARGET_RELOAD_MS = 100.0
TARGET_RATE = 100_000
DEFAULT_RATE = 105_000  # paced a little above the target: the senders keep just under what they are asked
INTERNET = "198.19.25.25"
COUNTER = "p25-ctl"

# label -> the arguments of round i (pairs undo each other, so that every round finds the same state)
COMMANDS: list[tuple[str, Callable[[int], list[str]]]] = [
    ("check", lambda i: ["check", "--from", "shop-web", "--to", INTERNET]),
    ("vm show", lambda i: ["vm", "show", "vm-00042"]),
    ("vm restart", lambda i: ["vm", "restart", "devtest-vm"]),
    ("diagnose", lambda i: ["diagnose", "devtest-lab"]),
    ("exemption revoke", lambda i: ["exemption", "revoke", "devtest-lab"]),
    ("vm add", lambda i: ["vm", "add", f"bench-{i}", "--subscription", "payg-shop", "--address",
                          f"2001:db8:2000::{i + 1:x}"]),
    ("vm remove", lambda i: ["vm", "remove", f"bench-{i}"]),
    # the summary of the whole inventory: it reads the counts the store keeps of each group of alike resources
    ("status", lambda i: ["status"]),
]


# ---------------------------------------------------------------- states


@contextlib.contextmanager
def states(sizes: list[int], keep: str | None) -> Iterator[dict[int, Path]]:
    """A state file per size, built unless `keep` already holds it; removed afterwards unless kept."""
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="enforcer-control-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        paths = {}
        for n in sizes:
            path = root / f"lab-plus-{n}.db"
            if not path.exists():
                started = time.monotonic()
                lab_state(path.with_suffix(".new"), n).close()
                path.with_suffix(".new").rename(path)
                print(f"state: the lab and {n:,} VMs built in {time.monotonic() - started:.0f} s ({path})")
            paths[n] = path
        yield paths
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- 1. the CLI


def own_ms(state: Path | str, args: list[str]) -> float:
    """One command in this process, its output discarded; a failure is the benchmark's error. `state`: a path or
    an etcd:// location (benchmarks.etcd_fleet)."""
    out = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = cli_main(["--state", str(state), *args])
    elapsed = (time.perf_counter() - started) * 1000
    if code:
        raise RuntimeError(f"enforcer {' '.join(args)}: exit {code}: {out.getvalue().strip()}")
    return elapsed


def whole_ms(enforcer: str, state: Path, args: list[str]) -> float:
    started = time.perf_counter()
    r = subprocess.run([enforcer, "--state", str(state), *args], capture_output=True, text=True)
    elapsed = (time.perf_counter() - started) * 1000
    if r.returncode:
        raise RuntimeError(f"enforcer {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return elapsed


def cli_latency(paths: dict[int, Path], rounds: int) -> dict[tuple[str, int], tuple[float, float]]:
    """(command, size) -> (own p50 ms, whole p50 ms); rounds alternate the two ways and the sizes."""
    enforcer = str(Path(sys.executable).with_name("enforcer"))
    for path in paths.values():  # the modules imported, the files' pages cached: no first-call costs
        for _, argv in COMMANDS:
            own_ms(path, argv(rounds))
    samples: dict[tuple[str, int], tuple[list[float], list[float]]] = {}
    for i in range(rounds):
        for n, path in paths.items():
            for label, argv in COMMANDS:
                own, whole = samples.setdefault((label, n), ([], []))
                own.append(own_ms(path, argv(i)))
        for n, path in paths.items():
            for label, argv in COMMANDS:
                samples[label, n][1].append(whole_ms(enforcer, path, argv(i)))
    return {key: (statistics.median(own), statistics.median(whole)) for key, (own, whole) in samples.items()}


def report_cli(result: dict[tuple[str, int], tuple[float, float]], sizes: list[int]) -> None:
    small, large = sizes[0], sizes[-1]
    print(f"\nCLI latency, p50 ms (own: in-process; whole: a new process), {small:,} to {large:,} VMs")
    print(f"{'command':18}" + "".join(f"{f'own@{n:,}':>15}" for n in sizes)
          + "".join(f"{f'whole@{n:,}':>17}" for n in sizes) + f"{'whole ratio':>13}")
    worst_own = worst_ratio = 0.0
    for label, _ in COMMANDS:
        own = [result[label, n][0] for n in sizes]
        whole = [result[label, n][1] for n in sizes]
        ratio = whole[-1] / whole[0]
        worst_own, worst_ratio = max(worst_own, own[-1]), max(worst_ratio, ratio)
        print(f"{label:18}" + "".join(f"{x:15.1f}" for x in own) + "".join(f"{x:17.1f}" for x in whole)
              + f"{ratio:13.2f}")
    print(f"target: own p50 <= {TARGET_OWN_MS:.0f} ms at {large:,} VMs: worst {worst_own:.1f} ms "
          f"{'PASS' if worst_own <= TARGET_OWN_MS else 'FAIL'}")
    print(f"target: whole p50 at {large:,} <= {TARGET_WHOLE_RATIO}x at {small:,}: worst {worst_ratio:.2f}x "
          f"{'PASS' if worst_ratio <= TARGET_WHOLE_RATIO else 'FAIL'}")


# ---------------------------------------------------------------- 2. reload under load

RING_SENDER = r"""
import json, sys
from benchmarks.senders import RingSender, ethernet_frames, syn_packets
src, dst, src_mac, dst_mac, seconds, rate, seed = sys.argv[1:8]
sender = RingSender(ethernet_frames(syn_packets(src, dst, 25, 4096, int(seed)), src_mac, dst_mac))
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps(sender.blast(float(seconds), 1 << 62, float(rate))), flush=True)
"""


def link_mac(namespace: str, ifname: str) -> str:
    from pyroute2 import NetNS
    with NetNS(namespace) as ns:
        return str(ns.get_links(ifname=ifname)[0].get_attr("IFLA_ADDRESS"))


def count_syns(namespace: str, sources: list[str], target: list[str]) -> None:
    """A rule per source in the namespace's raw PREROUTING that counts its port 25 SYNs (and does `target`)."""
    for src in sources:
        in_namespace(namespace, "iptables", "-t", "raw", "-A", "PREROUTING", "-s", src, "-p", "tcp", "--dport", "25",
                     "--tcp-flags", "SYN,ACK", "SYN", "-m", "comment", "--comment", f"{COUNTER}-{src}", *target)


def counted(namespace: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in in_namespace(namespace, "iptables-save", "-c", "-t", "raw").splitlines():
        if f"{COUNTER}-" in line:
            out[line.rsplit(f"{COUNTER}-", 1)[1].split()[0].strip("\"")] = int(line[1:].split(":")[0])
    return out


def start_senders(lab: NamespaceLab, seconds: float, rate: float) -> list[tuple[str, subprocess.Popen[str]]]:
    """A paced TX-ring sender per steady VM, `rate` SYNs/s in all, each waiting for a line on stdin to start."""
    procs = []
    for seed, vm in enumerate(STEADY):
        host = lab.topology.vms[vm]
        src_mac = link_mac(host.namespace, "eth0")
        gw_mac = link_mac(lab.topology.gateway.namespace, host.link)
        proc = run_in(host.namespace, [sys.executable, "-c", RING_SENDER, host.addresses[0], lab.internet[0],
                                       src_mac, gw_mac, str(seconds), str(rate / len(STEADY)), str(seed)],
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(Path.cwd()))
        lab.procs.append(proc)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the sender in {vm} did not start")
        procs.append((vm, proc))
    return procs


def reload_under_load(lab: NamespaceLab, seconds: float, rate: float, period: float) -> dict[str, Any]:
    """The daemon runs; see the module's docstring, part 2. Returns what was counted."""
    gw, inet = lab.topology.gateway.namespace, lab.topology.internet.namespace
    sources = [lab.topology.vms[vm].addresses[0] for vm in [*STEADY, TOGGLED]]
    count_syns(gw, sources, [])
    count_syns(inet, sources, ["-j", "DROP"])
    toggled = Sender(lab, TOGGLED, 99)
    senders = start_senders(lab, seconds, rate)
    live = lab.live()
    before, judged_before = live["kernel_queues"], judged_count(live)
    for _, proc in senders:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    reload_ms: list[float] = []
    expected_toggled, allow = 0, False
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        tick = time.monotonic()
        allow = not allow
        flip(lab, allow)
        reload_ms.append(lab.wait_synced(timeout=10, poll=0.002) * 1000)
        toggled.start(20, 20_000)
        burst = toggled.wait()  # every burst, blocked ones too: the next flip waits until this one is sent
        expected_toggled += burst if allow else 0
        time.sleep(max(0.0, period - (time.monotonic() - tick)))
    sent = {vm: json.loads(proc.communicate(timeout=seconds + 60)[0].splitlines()[-1]) for vm, proc in senders}
    time.sleep(0.5)  # the last SYNs on their way
    entered, arrived = counted(gw), counted(inet)
    live = lab.live()
    after = live["kernel_queues"]
    drops = sum(q.get("queue_dropped", 0) + q.get("user_dropped", 0) for q in after.values()) \
        - sum(q.get("queue_dropped", 0) + q.get("user_dropped", 0) for q in before.values())
    rows = []
    for vm in STEADY:
        src = lab.topology.vms[vm].addresses[0]
        expected = entered.get(src, 0) if STEADY[vm] else 0
        rows.append((vm, sent[vm]["sent"], entered.get(src, 0), expected, arrived.get(src, 0)))
    src = lab.topology.vms[TOGGLED].addresses[0]
    rows.append((TOGGLED, toggled.sent, entered.get(src, 0), expected_toggled, arrived.get(src, 0)))
    offered = sum(s["sent"] for s in sent.values()) / max(s["seconds"] for s in sent.values())
    return {"rows": rows, "reload_ms": sorted(reload_ms), "drops": drops, "offered": offered,
            "judged": judged_count(live) - judged_before,
            "misjudged": sum(abs(expected - seen) for _, _, _, expected, seen in rows)}


def judged_count(live: dict[str, Any]) -> int:
    """SYNs the daemon's workers have judged so far (those the kernel cache judged never reach them)."""
    return sum(v["count"] for v in live["verdicts"])


def report_reload(result: dict[str, Any], label: str) -> bool:
    print(f"\nreload under load, {label}")
    print(f"{'source':12} {'sent':>10} {'entered':>10} {'expected':>10} {'arrived':>10}")
    for vm, sent, entered, expected, seen in result["rows"]:
        print(f"{vm:12} {sent:10,} {entered:10,} {expected:10,} {seen:10,}")
    print(f"judged by the workers: {result['judged']:,} of {sum(row[2] for row in result['rows']):,} SYNs that "
          "entered (the rest by the kernel cache, if on)")
    ms = result["reload_ms"]
    worst, p50 = ms[-1], ms[len(ms) // 2]
    checks = [
        (f"commit to verdict <= {TARGET_RELOAD_MS:.0f} ms: {len(ms)} changes, p50 {p50:.0f} ms, "
         f"p99 {ms[int(len(ms) * 0.99)]:.0f} ms, max {worst:.0f} ms", worst <= TARGET_RELOAD_MS),
        (f"offered >= {TARGET_RATE:,} SYN/s: {result['offered']:,.0f}/s", result["offered"] >= TARGET_RATE),
        (f"misjudged SYNs: {result['misjudged']}", result["misjudged"] == 0),
        (f"kernel queue drops: {result['drops']}", result["drops"] == 0),
    ]
    for text, ok in checks:
        print(f"target: {text} {'PASS' if ok else 'FAIL'}")
    return all(ok for _, ok in checks)


@contextlib.contextmanager
def lab_with_state(state: Path) -> Iterator[NamespaceLab]:
    """The lab of vagrant/lab.yml in namespaces over a copy of `state` (no daemon yet); all of it removed after."""
    doc = yaml.safe_load(DEFAULT_LAB.read_text())
    with tempfile.TemporaryDirectory(prefix="enforcer-control-lab-") as tmp:
        lab = NamespaceLab(Path(tmp), [str(a) for a in doc["lab"]["internet"]["addresses"]])
        try:
            shutil.copyfile(state, lab.state)
            lab.up(resources_of(doc))
            yield lab
        finally:
            lab.close()


# ---------------------------------------------------------------- the run


def sizes_of(ap: argparse.ArgumentParser, given: str | None, default: tuple[int, ...]) -> list[int]:
    """--sizes (whole numbers separated by commas) in order, or the default; a bad one is the parser's error."""
    try:
        return sorted(int(x) for x in given.split(",")) if given else list(default)
    except ValueError:
        ap.error(f"--sizes takes whole numbers separated by commas, not {given!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", help="registered VMs beside the lab, comma-separated (default 1000,100000,1000000)")
    ap.add_argument("--quick", action="store_true", help="small sizes, few rounds, 5 s under load")
    ap.add_argument("--states", metavar="DIR", help="keep the state files here (reused when present)")
    ap.add_argument("--rounds", type=int, help="runs of each command per size (default 11; --quick 3)")
    ap.add_argument("--seconds", type=float, help="the reload window (default 60; --quick 5)")
    ap.add_argument("--rate", type=float, help="SYNs/s from the steady VMs in all (default 105000; --quick 10000)")
    ap.add_argument("--period", type=float, default=0.1, help="seconds between policy changes")
    part = ap.add_mutually_exclusive_group()
    part.add_argument("--cli-only", action="store_true")
    part.add_argument("--reload-only", action="store_true")
    ap.add_argument("--kernel-cache", action="store_true", help="the reload part with the daemon's --kernel-cache, "
                    "the sending VMs unbound (a bound source is never cached)")
    args = ap.parse_args(argv)
    sizes = sizes_of(ap, args.sizes, QUICK_SIZES if args.quick else DEFAULT_SIZES)
    rounds = args.rounds or (3 if args.quick else 11)
    seconds = args.seconds or (5.0 if args.quick else 60.0)
    rate = args.rate or (10_000.0 if args.quick else float(DEFAULT_RATE))
    why = None if args.cli_only else can_build_namespaces()
    if why:
        print(f"python -m benchmarks.control: the reload part {why} (--cli-only runs the rest)", file=sys.stderr)
        return 2
    with states(sizes, args.states) as paths:
        if not args.reload_only:
            report_cli(cli_latency(paths, rounds), sizes)
        if not args.cli_only:
            for queue_full in ("drop", "accept"):
                with lab_with_state(paths[sizes[-1]]) as lab:
                    if args.kernel_cache:
                        unbind_senders(lab)
                    lab.start_daemon("--queue-full", queue_full, *(["--kernel-cache"] if args.kernel_cache else []))
                    result = reload_under_load(lab, seconds, rate, args.period)
                cache = ", --kernel-cache" if args.kernel_cache else ""
                report_reload(result, f"{sizes[-1]:,} VMs beside the lab, --queue-full {queue_full}{cache}, "
                                      f"default queue length, a change every {args.period * 1000:.0f} ms for "
                                      f"{seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
