"""The child processes of the data-plane benchmark, each started by the parent inside a namespace as

    python -m benchmarks.roles ROLE [options]

and spoken to in JSON lines: commands on its stdin, one JSON object per line on its stdout (the first one says
{"ready": true, "pid": ...} or {"error": ...}); its stderr goes to a log the parent keeps when a run fails.
Every child dies with its parent (PR_SET_PDEATHSIG). The roles and their options:

  consumer  --kind worker|accept --queue Q [--vms N --seed N --source ADDR] [--bind-interface IF]
            [--bind-mac MAC] [--cpu C] [--lifetime S]
            (gateway) binds queue Q as the daemon does and gives verdicts: kind worker with the project's
            C Judge over the synthetic fleet's table of N VMs (--source: the address whose entry it
            reports; --bind-interface/--bind-mac: bind that address to where its packets come from, the gateway
            interface they arrive on and their source MAC, so that the callback runs its spoofing check),
            kind accept with a callback that does only pkt.accept(). stdin: "mark" answers
            {"t", "own", "allowed", "spoofed", "q"} (own: the worker's own verdict count, allowed: those that
            accepted, spoofed: the spoofed-source drops, all null for accept; q: the kernel's counters of the
            queue, null when unbound), "quit" or end of input stops it.
  agent     [--lifetime S]
            (gateway, internet) rules in its namespace: "install Q [N]" (the project's queue rule naming queue Q,
            or balancing N queues from Q),
            "install-cached Q ADDR" (the same with the kernel cache's sets, ADDR put into the allowed one),
            "remove", "run ARGV-as-JSON"; answers {"ok", ...} to each. Removes the project's rules at the end.
  sender    --source ADDR[,ADDR...] --dst ADDR [--sender ring|raw] [--src-mac MAC --dst-mac MAC] [--seconds S]
            [--rate R] [--max-packets N] [--seed N] [--cpu C]
            (VM) prebuilt SYNs to ADDR:25 from FLOWS source ports (the sources in turn); starts on "go", stops
            after S seconds or N packets, answers {"sent", "seconds", "errors", "busy"}. The ring sender needs
            both MACs (eth0's, and the gateway's on the other end of the link).
  listener  --address ADDR [--lifetime S]
            (internet) accepts on ADDR:25 and closes at once; ends when its stdin closes.
  connector --dst ADDR --count N [--cpu C] [--fifo P]
            (VM) one untimed connect() to ADDR:25, then N timed ones, sequential; answers {"us", "failures"}.

--cpu pins the process to one CPU (-1: no pinning); --lifetime bounds how long a long-lived child runs even if
the parent never says goodbye; --fifo runs the connector SCHED_FIFO at that priority (0: normal priority).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from enforcer.core.verdicts import Binding, hw_mac, pack
from enforcer.dataplane._fastpath import Judge
from enforcer.dataplane.queue import bind_queue, kernel_queue_stats, run_until_signalled
from enforcer.dataplane.keeper import mapped
from enforcer.dataplane.worker import die_with_parent

from .fleet import compiled_fleet
from .params import CHILD_TIMEOUT, FAIL_OPEN, FLOWS, PORT, QUEUE_LENGTH, SEED, SOCKET_BUFFER, VMS

LIFETIME = 900.0


def say(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def pin(cpu: int) -> None:
    if cpu >= 0 and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass


def wait_go() -> bool:
    ready, _, _ = select.select([sys.stdin], [], [], CHILD_TIMEOUT)
    return bool(ready) and sys.stdin.readline().strip() == "go"


# ---------------------------------------------------------------- consumer


def accept_all(pkt: Any) -> None:
    pkt.accept()


def worker_judge(vms: int, seed: int, source: str, binding: Binding | None) -> tuple[Judge, dict]:
    """The project's packet callback (the C Judge) over the synthetic fleet's table (with `source` bound to
    `binding`, if given), handed over as the daemon hands it to a worker: a sealed memfd mapped read-only."""
    inv, keeper, seconds = compiled_fleet(vms, seed)
    key = pack(source)
    if binding is not None:
        # the fleet registers no interfaces or MACs: bind the one source the generator sends from, as the
        # daemon's table would for a VM registered with its interface and MAC
        verdict, _, _ = keeper.table.get(key) or (None, None, None)
        if verdict is None:
            raise RuntimeError(f"--source {source} is not registered in the fleet")
        keeper.table.put(key, verdict, binding.interface, binding.mac)
    del inv
    fd = keeper.publish()
    try:
        view = mapped(fd)
    finally:
        os.close(fd)
    described = view.entry(key)
    bound = None if described is None or (described[1] is None and described[2] is None) else described
    built = {"seconds": round(seconds, 2), "entries": len(view), "image_bytes": keeper.table.nbytes,
             "source_verdict": list(keeper.verdict(view, key)),
             "binding": None if bound is None else [bound[1], bound[2].hex() if bound[2] else None]}
    return Judge(view), built


def binding_option(args: argparse.Namespace) -> Binding | None:
    """--bind-interface and --bind-mac as a Binding: the MAC as NFQUEUE reports it (6 bytes and two zeros)."""
    if not args.bind_interface and not args.bind_mac:
        return None
    return Binding(args.bind_interface or None, hw_mac(args.bind_mac))


def own_counts(judge: Judge | None) -> dict:
    """The worker's own verdict count, and of it the accepted and the spoofed-source drops (a bound source's
    SYNs must all be accepted, or the window measures drops); all None for the accept-all consumer."""
    if judge is None:
        return {"own": None, "allowed": None, "spoofed": None}
    counts = judge.counts()  # hits per verdict, copied at once under the GIL: the packet thread keeps counting
    view = judge.view
    return {"own": sum(counts) + judge.unknown + judge.spoofed + judge.malformed + judge.errors,
            "allowed": sum(n for verdict, n in enumerate(counts) if view.allows(verdict)), "spoofed": judge.spoofed}


def stop_main_thread() -> None:
    """run_until_signalled stops the queue on SIGTERM; a thread sends it to the main thread. (One sent before
    run_until_signalled has installed its handler ends the process all the same, without the final line.)"""
    ident = threading.main_thread().ident
    assert ident is not None
    signal.pthread_kill(ident, signal.SIGTERM)


def consumer(args: argparse.Namespace) -> int:
    die_with_parent()
    judge: Judge | None = None
    built: dict = {}
    if args.kind == "worker":
        judge, built = worker_judge(args.vms, args.seed, args.source, binding_option(args))
    pin(args.cpu)
    try:
        # the Judge itself, as the daemon's worker binds it
        nfq = bind_queue(args.queue, accept_all if judge is None else judge, QUEUE_LENGTH, SOCKET_BUFFER, FAIL_OPEN)
    except OSError as e:
        say({"error": str(e)})
        return 1

    def mark() -> dict:
        stats = kernel_queue_stats().get(args.queue)
        return {"t": time.monotonic(), **own_counts(judge), "q": None if stats is None else dataclasses.asdict(stats)}

    stopping = threading.Event()

    def control() -> None:
        for line in sys.stdin:
            command = line.strip()
            if command == "mark":
                say(mark())
            elif command == "quit":
                break
        stopping.set()
        stop_main_thread()

    def lifetime() -> None:
        if not stopping.wait(args.lifetime):
            stop_main_thread()

    say({"ready": True, "pid": os.getpid(), "table": built})
    threading.Thread(target=control, daemon=True).start()
    threading.Thread(target=lifetime, daemon=True).start()
    run_until_signalled(nfq)
    say({"final": True, "own": own_counts(judge)["own"], "errors": judge.errors if judge is not None else 0,
         "malformed": judge.malformed if judge is not None else 0})
    return 0


# ---------------------------------------------------------------- agent


def agent_answer(backend: Any, command: str, arg: str) -> dict:
    from enforcer.dataplane.rules import RuleSpec
    if command == "install":  # Q [N]: queue Q, or N queues from Q balanced by the rule
        queue, _, count = arg.partition(" ")
        spec = RuleSpec(int(queue), int(count or 1), (PORT,), (), False)
        backend.install(spec)
        return {"ok": backend.installed(spec)}
    if command == "install-cached":  # the rules with the kernel cache, and a source already judged allowed in it
        from enforcer.dataplane.kernelcache import KernelCache
        from enforcer.dataplane.rules.base import CacheSpec
        queue, source = arg.split()
        spec = RuleSpec(int(queue), 1, (PORT,), (), False, cache=CacheSpec())
        backend.install(spec)
        cache = KernelCache(backend.name, CacheSpec().timeout)
        try:
            added = cache.remember([(pack(source), True)])
        finally:
            cache.close()
        return {"ok": backend.installed(spec) and added == 1}
    if command == "remove":
        backend.remove()
        return {"ok": True}
    if command == "run":
        done = subprocess.run(json.loads(arg), capture_output=True, text=True, timeout=30)
        return {"ok": done.returncode == 0, "out": done.stdout, "err": done.stderr}
    return {"ok": False, "err": f"unknown command {command!r}"}


def agent(args: argparse.Namespace) -> int:
    from enforcer.dataplane.rules import IptablesBackend, RuleError
    die_with_parent()
    backend = IptablesBackend()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent cleans up and closes our stdin
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(0))
    deadline = time.monotonic() + args.lifetime
    try:
        backend.check_tools()
        say({"ready": True, "pid": os.getpid()})
        while time.monotonic() < deadline:
            ready, _, _ = select.select([sys.stdin], [], [], 1.0)
            if not ready:
                continue
            line = sys.stdin.readline()
            if not line:
                break
            command, _, arg = line.strip().partition(" ")
            try:
                say(agent_answer(backend, command, arg))
            except Exception as e:  # noqa: BLE001 - whatever failed, answer: the parent decides
                say({"ok": False, "err": str(e)})
    finally:
        try:
            backend.remove()
        except (RuleError, OSError, subprocess.SubprocessError):
            pass
    return 0


# ---------------------------------------------------------------- sender, listener, connector


def sender(args: argparse.Namespace) -> int:
    from .senders import RawSender, RingSender, ethernet_frames, syn_packets
    die_with_parent()
    pin(args.cpu)
    packets = syn_packets(args.source, args.dst, PORT, FLOWS, args.seed)
    try:
        if args.sender == "ring":
            gen: RingSender | RawSender = RingSender(ethernet_frames(packets, args.src_mac, args.dst_mac))
        else:
            gen = RawSender(packets, args.dst)
    except OSError as e:
        say({"error": f"TX ring: {e}" if args.sender == "ring" else str(e)})
        return 1
    say({"ready": True, "pid": os.getpid(), "sender": gen.name})
    if not wait_go():
        return 0
    try:
        say(gen.blast(args.seconds, args.max_packets, args.rate))
    except OSError as e:
        say({"error": f"{gen.name} sender: {e}"})
        return 1
    return 0


def listener(args: argparse.Namespace) -> int:
    die_with_parent()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.address, PORT))
    srv.listen(1024)
    say({"ready": True, "pid": os.getpid()})
    deadline = time.monotonic() + args.lifetime
    accepted = 0
    while time.monotonic() < deadline:
        ready, _, _ = select.select([srv, sys.stdin], [], [], 1.0)
        if sys.stdin in ready and not sys.stdin.readline():
            break
        if srv in ready:
            c, _ = srv.accept()
            c.close()
            accepted += 1
    say({"accepted": accepted})
    return 0


def connector(args: argparse.Namespace) -> int:
    """SCHED_FIFO (it sleeps in connect() almost all the time) unless --fifo 0, so that other tasks do not
    delay its wake-up."""
    die_with_parent()
    pin(args.cpu)
    if args.fifo:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.fifo))
        except (OSError, AttributeError):
            pass
    times, failures = [], 0
    perf = time.perf_counter
    for i in range(args.count + 1):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.settimeout(3.0)
        try:
            t0 = perf()
            c.connect((args.dst, PORT))
            dt = perf() - t0
            if i:
                times.append(dt * 1e6)
        except OSError:
            failures += 1
        finally:
            c.close()
    say({"us": times, "failures": failures})
    return 0


# ---------------------------------------------------------------- the command line


def add_cpu(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cpu", type=int, default=-1, help="pin to this CPU (default -1: no pinning)")


def add_lifetime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lifetime", type=float, default=LIFETIME,
                   help=f"end after this many seconds at most (default {LIFETIME:g})")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.roles", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    roles = ap.add_subparsers(dest="role", required=True)
    p = roles.add_parser("consumer", help="bind a queue in the gateway and give verdicts")
    p.add_argument("--kind", choices=("worker", "accept"), required=True,
                   help="the project's Judge, or a callback that only accepts")
    p.add_argument("--queue", type=int, required=True, help="the NFQUEUE number to bind")
    p.add_argument("--vms", type=int, default=VMS, help=f"registered VMs in the worker's table (default {VMS})")
    p.add_argument("--seed", type=int, default=SEED, help=f"seed of the synthetic fleet (default {SEED})")
    p.add_argument("--source", default="", help="the address whose table entry to report (kind worker)")
    p.add_argument("--bind-interface", default="", help="bind --source to this gateway interface (kind worker)")
    p.add_argument("--bind-mac", default="", help="bind --source to this source MAC (kind worker)")
    add_cpu(p)
    add_lifetime(p)
    p = roles.add_parser("agent", help="install and remove rules in its namespace")
    add_lifetime(p)
    p = roles.add_parser("sender", help="blast prebuilt SYNs from the VM")
    p.add_argument("--sender", choices=("ring", "raw"), default="ring",
                   help="AF_PACKET TX ring (default) or one send() per packet on an IPPROTO_RAW socket")
    p.add_argument("--source", required=True, help="the SYNs' source address")
    p.add_argument("--dst", required=True, help="the SYNs' destination address (port 25)")
    p.add_argument("--src-mac", default="", help="eth0's MAC (ring sender)")
    p.add_argument("--dst-mac", default="", help="the gateway's MAC on the VM's link (ring sender)")
    p.add_argument("--seconds", type=float, default=10.0, help="stop after this many seconds (default 10)")
    p.add_argument("--rate", type=float, default=0, help="packets/s for the ring sender (default 0: unpaced)")
    p.add_argument("--max-packets", type=int, default=50_000_000, help="stop after this many packets")
    p.add_argument("--seed", type=int, default=SEED, help=f"seed of the SYNs' sequence numbers (default {SEED})")
    add_cpu(p)
    p = roles.add_parser("listener", help="accept on port 25 and close")
    p.add_argument("--address", required=True, help="the address to listen on (port 25)")
    add_lifetime(p)
    p = roles.add_parser("connector", help="timed sequential connect()s to port 25")
    p.add_argument("--dst", required=True, help="the listener's address (port 25)")
    p.add_argument("--count", type=int, required=True, help="timed connect()s, after one untimed")
    add_cpu(p)
    p.add_argument("--fifo", type=int, default=0, help="SCHED_FIFO priority (default 0: normal priority)")
    return ap


ROLES = {"consumer": consumer, "agent": agent, "sender": sender, "listener": listener, "connector": connector}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return ROLES[args.role](args)


if __name__ == "__main__":
    sys.exit(main())
