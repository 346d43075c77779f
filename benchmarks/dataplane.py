"""Benchmark of the data plane: SYN verdicts per second at the NFQUEUE, and the connect() latency it adds.

A report, not a test: it exits 0 once it has run (1 if the lab cannot be built or breaks, or the bound worker
did not accept all its SYNs; 130 on Ctrl-C).
From the repository root, as root:

    python -m benchmarks.dataplane [--seconds S] [--reps R] [--quick] [--fifo P]
    python -m benchmarks.dataplane --remove-stale     # after a run was killed with SIGKILL

It builds one namespace topology with enforcer.lab.netns.Topology (a VM, a gateway that forwards, an internet
host; addresses only from 198.18.0.0/15):

    VM <tag>-0 eth0 198.18.x.y/32 ──── gateway <tag>-gw ──── internet <tag>-inet eth0 198.19.252.25/24

(all tagged p25b<6 hex digits>, removed at the end, also on an error, Ctrl-C or SIGTERM) and, in the same run,
measures:

  1. worker     SYN verdicts/s of the project's packet callback, the C Judge (enforcer/dataplane/_fastpath.c),
                over the daemon's table (enforcer.dataplane.keeper.Keeper) filled from 100,000 registered VMs of
                the synthetic fleet of benchmarks/fleet.py (--vms: up to 1,000,000) and handed over as the daemon
                hands it to a worker (a sealed memfd, mapped read-only), bound with enforcer.dataplane.queue.
                bind_queue as the daemon binds it (the daemon's default queue length 4096, socket buffer 4 MiB,
                queue-full drops; copy range 128) and run by run_until_signalled. The generator's source address
                is one of the registered VMs, one allowed on 25, so every consumer accepts every SYN. The fleet
                registers no interfaces or MACs: no source is bound, and the Judge's spoofing check is skipped.
  2. bound      the same worker, another process with the same table, except that the generator's source is bound
                (put again into the table with an interface and a MAC before the image is handed over) to where
                its SYNs really come from: the gateway's end of the VM's link (Topology's host.link, v0) and the
                VM's eth0 MAC (the one the generator's frames carry). Every SYN then goes through the spoofing
                check (the arrival interface's name, the source MAC) and passes it. The run checks that it did: a
                window where the Judge dropped any SYN as spoofed-source ends the run (exit 1); the summary
                compares the Judge's allowed count with the kernel's verdicts and the gateway's forwarded packets.
  3. accept-all the same for a bare netfilterqueue consumer whose callback does only pkt.accept(), bound the same way
                (bind_queue, same options) on another queue number.
  4. cached     the kernel cache (--kernel-cache): the project's rules with the cache's sets
                (RuleSpec.cache), the generator's source put into the allowed set by enforcer.dataplane.
                kernelcache.KernelCache as a worker puts a source it judged; every SYN is then accepted in the
                kernel, before the queue rule, and the rate is what the gateway forwards.
  5. no queue   the forwarding rate of the same SYNs with no rule of the project at all.
  --queues N    (N >= 2) one more configuration, "worker, --queues": N workers as in 1, on N queues that one rule
                of the project balances (RuleSpec.queues = N, iptables --queue-balance, which hashes the
                addresses), one worker per CPU from the last, at normal priority (on two CPUs the second shares
                its CPU with the generator, which a SCHED_FIFO worker would starve); the generator then sends from
                16 allowed sources in turn. Its rate is the sum of the N queues' verdicts; the target is 1.6x the
                single worker.
  6. latency    p50/p99 of a TCP connect() from the VM to a listener on port 25 in the internet namespace, through
                the gateway, with the worker's queue rule in place vs with no rule: sequential connects at idle, in
                blocks alternating between the two.

The queue rule is the project's own, IptablesBackend().install(RuleSpec(queue, 1, (25,), (), bypass=False)), run
by a small agent process inside the gateway namespace; configurations 1 to 3 differ only in the queue number it
names. Every consumer is a child process (benchmarks/roles.py) started in the gateway namespace with
enforcer.lab.netns.run_in, bound for the whole run (the idle ones wait in recv()), pinned to the last CPU.
Configurations run interleaved, the order rotating each repetition.

The generator, in the VM namespace and pinned to CPU 0, sends prebuilt SYNs to 198.19.252.25:25 from 16,384
source ports (distinct flows) through an AF_PACKET TX ring (one send() hands 256 frames to the kernel), bounded in
count and time (--rate paces it; by default it sends as fast as it can, 1.5-2x what a consumer takes); --sender
raw sends one packet per send() on an IPPROTO_RAW socket instead (about half the rate, not always enough to saturate
a consumer). During the throughput windows the internet namespace drops TCP to port 25 in raw PREROUTING, so no
reply comes back.

Counting: at the start and end of each window the consumer reads, in its namespace, the kernel's counters of its
queue in /proc/net/netfilter/nfnetlink_queue (enforcer.dataplane.queue.kernel_queue_stats): verdicts = packets
handed to the socket (id_sequence) - user_dropped - the change in packets waiting. That costs the callbacks
nothing, so the bare consumer's callback really does only pkt.accept(); the worker's own count (the sum of
the Judge's counts(), unknown, spoofed, malformed and errors), taken at the same moments, is printed alongside
as a cross-check. The rate is that count over the consumer's own wall time between the two reads. Queue drops
(queue full: queue_dropped; socket buffer full: user_dropped) are reported per window.

A shared machine: by default (--fifo 10) the measured consumer runs SCHED_FIFO during its windows, pinned to its
CPU, so that other tasks cannot take that CPU from it (the kernel still keeps 5% of it for them, which shows as
idle time); the connector and the worker also run SCHED_FIFO in the latency phase. The rest of the time they run
at normal priority; --fifo 0 measures at normal priority throughout. Each window also reports the consumer CPU's
time: the consumer's own, softirq, other tasks', idle. A window is clean when the queue overflowed, still held
packets at the end, the generator offered at least 5% more than the consumer took, and neither other tasks nor
idle time took more than their share; summaries use the clean windows (all, if a configuration has none), and up
to --extra repetitions are added while one has fewer than two. "per CPU-s" is verdicts per second of CPU time the
consumer got.

The modules: this one (options, the run, its cleanup), lab.py (the namespaces, the children, one window),
roles.py (the children), senders.py (the generator), kernel.py (counters from /proc), report.py (accounting and
printing), fleet.py (the synthetic fleet, shared with benchmarks.table), params.py (the fixed parameters).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from .fleet import compiled_fleet, pick_sources
from .kernel import busy_note, machine
from .lab import Lab
from .params import INTERNET4, MULTI_SOURCES, NO_CONSUMER, SEED, TAG_PREFIX, VMS, WARMUP
from .report import entry_text, is_clean, print_binding_check, print_latency, print_ratios, print_throughput, \
    print_window, print_window_header

PROG = "python -m benchmarks.dataplane"
CONFIGS = ["worker", "bound", "accept", "cached", "none"]


# ---------------------------------------------------------------- options


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=None, help="length of each saturated window (default 2, "
                    "quick 1)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions of each configuration (default 6, quick 3)")
    ap.add_argument("--connects", type=int, default=None, help="timed connects per configuration (default 400, "
                    "quick 150)")
    ap.add_argument("--extra", type=int, default=None, help="at most this many extra repetitions when windows "
                    "were disturbed by other tasks (default 2, quick 1)")
    ap.add_argument("--fifo", type=int, default=10, help="SCHED_FIFO priority of the measured consumer during "
                    "its windows (default 10), so that other tasks on a shared machine do not take its CPU; 0 for "
                    "normal priority")
    ap.add_argument("--quick", action="store_true", help="shorter windows, fewer repetitions and connects")
    ap.add_argument("--sender", choices=("ring", "raw"), default="ring", help="the generator: ring "
                    "(AF_PACKET TX ring, default) or raw (one send() per packet on an IPPROTO_RAW socket)")
    ap.add_argument("--rate", type=float, default=0, help="pace the ring generator at this many packets/s "
                    "(default 0: as fast as it can)")
    ap.add_argument("--remove-stale", action="store_true", help="remove the namespaces a killed run left behind, "
                    "then exit")
    ap.add_argument("--queues", type=int, default=1, help="also measure N workers on N queues balanced by one rule "
                    "(default 1: not measured)")
    ap.add_argument("--vms", type=int, default=VMS, help=f"registered VMs in the worker's table (default {VMS})")
    ap.add_argument("--seed", type=int, default=SEED, help=f"seed of the synthetic fleet and the SYNs (default {SEED})")
    ap.add_argument("--max-packets", type=int, default=50_000_000, help="at most this many packets per window's "
                    "generator (default 50000000)")
    ap.add_argument("--lifetime", type=float, default=900.0, help="the children end by themselves after at least "
                    "this many seconds (default 900, raised to outlast the run)")
    args = ap.parse_args(argv)
    if not 1 <= args.queues <= 8:
        ap.error(f"--queues {args.queues}: between 1 and 8")
    # the --queues configuration runs beside the single worker, before the configurations with no consumer
    args.configs = CONFIGS[:3] + (["multi"] if args.queues > 1 else []) + CONFIGS[3:]
    args.seconds = args.seconds or (1.0 if args.quick else 2.0)
    args.reps = args.reps or (3 if args.quick else 6)
    args.connects = args.connects or (150 if args.quick else 400)
    args.extra = args.extra if args.extra is not None else (1 if args.quick else 2)
    # the children end by themselves after this long: well past the longest this run can take
    args.lifetime = max(args.lifetime, 300 + 2 * (args.reps + args.extra) * len(args.configs) * (args.seconds + 3)
                        + 0.05 * args.connects)
    return args


# ---------------------------------------------------------------- namespaces a killed run left


def stale_namespaces() -> list[str]:
    """Namespaces left by a run that was killed (SIGKILL: no cleanup could run): this benchmark's tag, and no
    process inside any more (a running benchmark always has some)."""
    from pyroute2 import netns
    out = []
    for name in netns.listnetns():
        if re.fullmatch(TAG_PREFIX + r"[0-9a-f]{6}-(gw|inet|\d+)", name):
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            if not pids:
                out.append(name)
    return out


def remove_stale(stale: list[str]) -> None:
    from pyroute2 import netns
    for name in stale:
        netns.remove(name)
    print(f"removed {len(stale)} stale namespace(s){': ' + ', '.join(stale) if stale else ''}")


# ---------------------------------------------------------------- the run


def print_preamble(args: argparse.Namespace, stale: list[str]) -> None:
    print(f"machine: {machine()}")
    print(f"command: {' '.join([os.path.relpath(sys.executable), *PROG.split()[1:], *sys.argv[1:]])}")
    print(busy_note())
    if stale:
        print(f"note: {len(stale)} namespace(s) left by a killed run ({', '.join(stale)}); --remove-stale removes them")
    print(f"windows of {args.seconds:g} s after {WARMUP:g} s of warm-up; {args.reps} repetitions of "
          f"{', '.join(args.configs)}, order rotating; {args.connects} connects per latency configuration")
    print(f"consumers: {'SCHED_FIFO ' + str(args.fifo) + ' during their windows' if args.fifo else 'normal priority'}; "
          f"generator: {'AF_PACKET TX ring' if args.sender == 'ring' else 'raw socket, one send() per packet'}")
    sys.stdout.flush()


def choose_sources(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The generator's source address, and for --queues its others: VMs of the synthetic fleet the table allows
    (see fleet.pick_sources)."""
    inv, keeper, built = compiled_fleet(args.vms, args.seed)
    picked = pick_sources(inv, keeper, args.seed, MULTI_SOURCES if args.queues > 1 else 1)
    source, vm_name, entry = picked[0]
    print(f"table: {args.vms:,} registered VMs, {len(keeper.table):,} entries, a {keeper.table.nbytes:,}-byte image, "
          f"built and filled in {built:.1f} s; generator source {source} = {vm_name}: {entry_text(entry)}")
    if args.queues > 1:
        print(f"  --queues {args.queues}: the generator sends from {len(picked)} allowed sources in turn (the rule "
              "balances by address)")
    return source, [address for address, _, _ in picked[1:]]


def print_lab(lab: Lab, source: str) -> None:
    print(f"lab: tag {lab.tag}; gateway {lab.gw}, internet {lab.inet} ({INTERNET4}), VM {lab.vm} "
          f"({source}); sender on CPU {lab.sender_cpu}, consumers on CPU {lab.consumer_cpu}")
    for kind, r in lab.ready.items():
        t = r.get("table") or {}
        if t:
            print(f"  consumer {kind} (pid {r['pid']}): queue {lab.bound[kind]}, table of {t['entries']:,} entries "
                  f"built in {t['seconds']} s, source judged {tuple(t['source_verdict'])}, {binding_text(t)}")
        else:
            print(f"  consumer {kind} (pid {r['pid']}): queue {lab.bound[kind]}, callback pkt.accept()")
    print()


def binding_text(t: dict) -> str:
    """What the consumer's table binds the source to, as the Judge finds it."""
    if t.get("binding") is None:
        return "source not bound"
    interface, mac = t["binding"]
    return f"source bound to {interface}, MAC {mac}"


def more_windows(rows: list[dict], rep: int, args: argparse.Namespace) -> bool:
    """The repetitions asked for, then extra ones (at most --extra) while a queue configuration has fewer than
    two clean windows."""
    if rep < args.reps:
        return True
    want_clean = min(2, args.reps)
    short = [c for c in args.configs if c not in NO_CONSUMER
             and sum(1 for r in rows if r["config"] == c and is_clean(r)) < want_clean]
    if not short or rep >= args.reps + args.extra:
        return False
    print(f"    (extra repetition: fewer than {want_clean} clean windows of {', '.join(short)})")
    return True


def run_windows(lab: Lab, args: argparse.Namespace, source: str) -> list[dict]:
    """The throughput windows, the configurations interleaved, the order rotating each repetition."""
    print_window_header()
    rows: list[dict] = []
    rep = 0
    while more_windows(rows, rep, args):
        configs = args.configs
        shift = rep % len(configs)
        for config in configs[shift:] + configs[:shift]:
            row = lab.throughput_phase(config, source)
            row["rep"] = rep
            rows.append(row)
            print_window(row, args.seconds)
            sys.stdout.flush()
        rep += 1
    return rows


def measure(lab: Lab, args: argparse.Namespace, source: str, more: list[str]) -> tuple[list[dict], dict]:
    lab.up(source, more)
    print_lab(lab, source)
    lab.inet_drop(True)
    rows = run_windows(lab, args, source)
    lab.inet_drop(False)
    lab.rule("none")
    blocks = 8 if args.connects >= 200 else 4
    return rows, lab.latency(blocks, max(1, args.connects // blocks))


def interrupt_on_term(main_pid: int) -> dict:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, as Ctrl-C does, so that the cleanup runs; the handlers they
    replace are returned."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}

    def on_term(signum, frame):
        if os.getpid() != main_pid:
            # a fork of this process (pyroute2's NetNS helper, which it stops with SIGTERM): die as it expects,
            # never run the benchmark's cleanup from there
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            os._exit(1)
        raise KeyboardInterrupt
    for s in previous:
        signal.signal(s, on_term)
    return previous


def leave_if_fork(main_pid: int) -> None:
    """An exception or Ctrl-C that reached a fork of this process: leave the cleanup to the benchmark itself."""
    if os.getpid() != main_pid:
        os._exit(1)


def run(lab: Lab, args: argparse.Namespace, source: str, more: list[str]) -> tuple[int, list[dict], dict | None]:
    """Measure in the lab, and take it down whatever happens: (exit status, the windows' rows, the latencies)."""
    main_pid = os.getpid()
    previous = interrupt_on_term(main_pid)
    completed = False
    try:
        rows, lat = measure(lab, args, source, more)
        completed = True
        return 0, rows, lat
    except KeyboardInterrupt:
        leave_if_fork(main_pid)
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130, [], None
    except (RuntimeError, OSError) as e:
        leave_if_fork(main_pid)
        print(f"\n{PROG}: {e}; cleaning up", file=sys.stderr)
        return 1, [], None
    finally:
        leave_if_fork(main_pid)
        lab.down()
        for s, h in previous.items():
            signal.signal(s, h)
        print_cleanup(lab, completed)


def print_cleanup(lab: Lab, completed: bool) -> None:
    from pyroute2 import netns
    left = [n for n in netns.listnetns() if n.startswith(f"{lab.tag}-")]
    if completed:
        shutil.rmtree(lab.log_dir, ignore_errors=True)
        logs = ""
    else:
        logs = f"; the children's stderr is kept in {lab.log_dir}"
    print(f"\ncleanup: namespaces of {lab.tag} left: {left or 'none'}{logs}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print(f"{PROG}: needs root (network namespaces, iptables, NFQUEUE)", file=sys.stderr)
        return 1
    stale = stale_namespaces()
    if args.remove_stale:
        remove_stale(stale)
        return 0
    print_preamble(args, stale)
    t_all = time.perf_counter()
    source, more = choose_sources(args)
    lab = Lab(args)
    status, rows, lat = run(lab, args, source, more)
    if status != 0:
        return status
    print()
    med, per_cpu = print_throughput(rows, args.configs)
    print_ratios(rows, med, per_cpu)
    accepted = print_binding_check(rows)
    if lat is not None:
        print_latency(lat, args.fifo, lab.sender_cpu, lab.consumer_cpu)
    print(f"\ntotal {time.perf_counter() - t_all:.1f} s")
    return 0 if accepted else 1


if __name__ == "__main__":
    sys.exit(main())
