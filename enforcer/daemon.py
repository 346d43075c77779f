"""`enforcer run`: bind the queues, install the rules, follow the state, answer the CLI, and clean up.

Order matters: the queues are bound before the rules go in (so no SYN meets a rule with nobody behind it
because of us), READY=1 is sent only after both, and a clean stop removes exactly our rules.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .control import ControlServer, ask
from .errors import UserError
from .inventory import Inventory, validate
from .policy import verdict_for
from .profile import Profile, load_profile
from .rules import RuleSpec, choose_backend
from .store import Store
from .table import VerdictTable, compile_table
from .worker import Judge, serve_queue

log = logging.getLogger("enforcer")
CAP_NET_ADMIN = 12


@dataclass
class Options:
    state: str
    backend: str = "auto"
    queue: int = 25
    queues: int = 1
    when_down: str = "block"        # block: the rule drops when no worker is bound; allow: --queue-bypass
    queue_full: str = "drop"        # drop, or accept (the kernel's fail-open flag)
    max_len: int = 4096             # packets the kernel keeps waiting per queue
    sock_len: int = 4 * 1024 * 1024  # the netlink socket's receive buffer, bytes
    socket_path: str = "/run/enforcer/control.sock"
    socket_group: str | None = None
    metrics: str | None = None      # ADDRESS:PORT for Prometheus
    check_interval: float = 2.0     # how often the rules are checked (and put back if someone deleted them)
    poll_interval: float = 0.2      # how often the state's generation is read


def notify(message: str) -> None:
    """sd_notify(3): tell systemd about readiness, stopping and liveness; a no-op outside systemd."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    if target.startswith("@"):
        target = "\0" + target[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(message.encode(), target)
        except OSError as e:
            log.warning("sd_notify failed: %s", e)


def has_net_admin() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << CAP_NET_ADMIN))
    return os.geteuid() == 0


def queue_drops() -> dict[int, dict[str, int]]:
    """Per queue: packets the kernel dropped because the queue was full, and because sending to us failed."""
    out = {}
    try:
        for line in Path("/proc/net/netfilter/nfnetlink_queue").read_text().splitlines():
            f = line.split()
            out[int(f[0])] = {"waiting": int(f[2]), "queue_dropped": int(f[5]), "user_dropped": int(f[6])}
    except (OSError, IndexError, ValueError):
        pass
    return out


def internal_prefixes(inv: Inventory) -> tuple[str, ...]:
    return tuple(sorted({p for v in inv.vnets.values() for p in v.prefixes} | set(inv.internal_prefixes)))


class Snapshot:
    """What a worker knows of the state: the inventory (for drop-log reasons) and the compiled table."""

    def __init__(self, store: Store):
        self.store = store
        self.inv, self.profile, self.table = self._load()

    def _load(self) -> tuple[Inventory, Profile, VerdictTable]:
        inv, generation = self.store.read()
        profile = load_profile(inv.profile)
        validate(inv, profile)
        return inv, profile, compile_table(inv, profile, generation)

    def reload(self, generation: int):
        """A new table, or None when `generation` is the one we run (-1 forces a recompile)."""
        if generation == self.table.generation:
            return None
        inv, profile, table = self._load()   # all or nothing: a failure keeps the old three together
        self.inv, self.profile, self.table = inv, profile, table
        return table

    def explain(self, resource: str | None) -> str:
        r = self.inv.resources.get(resource) if resource else None
        if r is None:
            return "the source address belongs to no registered resource"
        return verdict_for(self.inv, self.profile, r).reason


def die_with_parent(parent_pid: int) -> None:
    """A worker must not outlive its daemon (killed with SIGKILL, say): it would go on judging with a stale
    table, and --when-down would never apply."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        os._exit(0)


def _worker_main(queue_num: int, conn, opts: Options, snapshot: Snapshot, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    # a fresh connection: SQLite handles must not cross fork()
    snapshot.store = Store(opts.state)
    judge = Judge(snapshot.table)
    serve_queue(queue_num, judge, conn, opts.max_len, opts.sock_len, opts.queue_full == "accept",
                snapshot.reload, snapshot.explain)


class WorkerHandle:
    """The daemon's end of one worker's pipe. Requests carry a sequence number, so that a reply that comes
    after its request timed out is recognised and dropped instead of answering the next request."""

    def __init__(self, queue: int, proc, conn, generation: int):
        self.queue, self.proc, self.conn = queue, proc, conn
        self.lock = threading.Lock()
        self.seq = 0
        self.generation = generation  # of the table it last reported

    def send(self, command: str, arg=None) -> int:
        self.seq += 1
        self.conn.send((self.seq, command, arg))
        return self.seq

    def receive(self, seq: int, command: str, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.conn.poll(left):
                raise TimeoutError(f"{self.proc.name} did not answer {command} within {timeout} s")
            got, value = self.conn.recv()
            if got == seq:
                return value

    def ask(self, command: str, arg=None, timeout: float = 10.0):
        with self.lock:
            return self.receive(self.send(command, arg), command, timeout)


def ask_all(workers: list[WorkerHandle], command: str, arg=None, timeout: float = 120.0) -> list:
    """Ask every worker at once (they work in parallel), then collect the answers."""
    for w in workers:
        w.lock.acquire()
    try:
        sent = [(w, w.send(command, arg)) for w in workers]
        return [w.receive(seq, command, timeout) for w, seq in sent]
    finally:
        for w in workers:
            w.lock.release()


class Daemon:
    def __init__(self, opts: Options):
        self.opts = opts
        self.started = time.monotonic()
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.reload_requested = False
        self.workers: list[WorkerHandle] = []
        self.rule_repairs = 0
        self.control = ControlServer(opts.socket_path, self.handle, opts.socket_group)

    # ------------------------------------------------------------ start

    def preflight(self) -> None:
        if not has_net_admin():
            raise UserError("enforcer run needs root or CAP_NET_ADMIN (it binds NFQUEUE and installs rules); "
                            "run it as root or through systemd/enforcer.service")
        self.backend = choose_backend(self.opts.backend)
        self.control.check_path()
        if ask(self.opts.socket_path, {"cmd": "status"}, timeout=2) is not None:
            raise UserError(f"another enforcer daemon answers on {self.opts.socket_path}; stop it or pass "
                            "--socket PATH")
        store = Store(self.opts.state)
        if not store.exists:
            raise UserError(f"no state at {self.opts.state}; create it first: enforcer --state {self.opts.state} "
                            "apply FILE")
        self.store = store
        self.snapshot = Snapshot(store)
        self.generation = self.snapshot.table.generation
        self.spec = self._spec(self.snapshot.inv, self.snapshot.profile)

    def _spec(self, inv: Inventory, profile: Profile) -> RuleSpec:
        return RuleSpec(self.opts.queue, self.opts.queues, tuple(sorted(profile.restricted_ports)),
                        internal_prefixes(inv), self.opts.when_down == "allow")

    def start_workers(self) -> None:
        ctx = multiprocessing.get_context("fork")
        self.store.close()  # reopened after the fork, in parent and children alike
        for q in range(self.opts.queue, self.opts.queue + self.opts.queues):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(q, child, self.opts, self.snapshot, os.getpid()),
                               name=f"enforcer-queue-{q}", daemon=True)
            proc.start()
            if not parent.poll(15):
                raise UserError(f"the worker for queue {q} did not start within 15 s")
            status, detail = parent.recv()
            if status == "error":
                raise UserError(f"{detail}; pick another --queue or stop the other consumer")
            self.workers.append(WorkerHandle(q, proc, parent, self.generation))
        self.snapshot = None  # the workers have their copies; the daemon itself needs no table
        self.store = Store(self.opts.state)

    # ------------------------------------------------------------ the loop

    def reload(self) -> None:
        generation = self.store.generation()
        if generation == self.generation and not self.reload_requested:
            return
        forced, self.reload_requested = self.reload_requested, False
        inv, generation = self.store.read()
        profile = load_profile(inv.profile)  # a forced reload (SIGHUP) may follow an edited profile
        # all workers compile at once; a forced reload recompiles even the same generation
        answers = ask_all(self.workers, "reload", -1 if forced else generation)
        for w, answer in zip(self.workers, answers):
            w.generation = answer
        spec = self._spec(inv, profile)
        if spec != self.spec:
            self.backend.install(spec)
            self.spec = spec
        if any(a != generation for a in answers):
            # a worker kept its table (its log says why): try again at the next round
            self.reload_requested = forced
            raise UserError(f"not every worker could load generation {generation} (they run {answers})")
        log.info("loaded state generation %d (%d resources)", generation, len(inv.resources))
        self.generation = generation

    def check_rules(self) -> None:
        if not self.backend.installed(self.spec):
            log.warning("our %s rules were removed while running; putting them back", self.backend.name)
            self.backend.install(self.spec)
            self.rule_repairs += 1

    def run(self) -> int:
        self.preflight()
        self.start_workers()
        try:
            self.backend.install(self.spec)
            self.control.start()
            if self.opts.metrics:
                from .metrics import serve_metrics
                serve_metrics(self.opts.metrics, self)
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
            signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
            notify("READY=1\nSTATUS=judging port 25 SYNs")
            log.info("port25-enforcer %s: %s backend, queue(s) %s, generation %d, when down: %s",
                     __version__, self.backend.name, self.queue_list(), self.generation, self.opts.when_down)
            watchdog = int(os.environ.get("WATCHDOG_USEC", "0")) / 2e6
            next_check = next_ping = 0.0
            while not self.stopping.is_set():
                self.wake.wait(self.opts.poll_interval)
                self.wake.clear()
                now = time.monotonic()
                try:
                    self.reload()
                    if now >= next_check:
                        self.check_rules()
                        next_check = now + self.opts.check_interval
                except (UserError, sqlite3.Error, OSError, TimeoutError) as e:
                    # keep judging with the table we have; the next round tries again
                    log.error("%s", e)
                dead = [w.proc.name for w in self.workers if not w.proc.is_alive()]
                if dead:
                    log.error("worker %s died; stopping so that the service manager restarts us", ", ".join(dead))
                    return 1
                if watchdog and now >= next_ping:
                    notify("WATCHDOG=1")
                    next_ping = now + watchdog
            return 0
        finally:
            notify("STOPPING=1")
            self.shutdown()

    def request_reload(self) -> None:
        self.reload_requested = True
        self.wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def shutdown(self) -> None:
        """Stop the workers. Our rules go only on a requested stop: after a failure they stay, so that
        --when-down decides what port 25 SYNs meet until the service manager has restarted us."""
        if self.stopping.is_set():
            try:
                self.backend.remove()
            except UserError as e:
                log.error("could not remove our rules: %s", e)
        else:
            log.error("stopping after a failure; our rules stay in place (--when-down %s)", self.opts.when_down)
        for w in self.workers:
            if w.proc.is_alive():
                w.proc.terminate()
        for w in self.workers:
            w.proc.join(5)
            if w.proc.is_alive():
                w.proc.kill()
        self.control.stop()

    # ------------------------------------------------------------ the live view

    def queue_list(self) -> list[int]:
        return list(range(self.opts.queue, self.opts.queue + self.opts.queues))

    def stats(self) -> dict:
        totals: dict[tuple, int] = {}
        malformed = errors = 0
        for w in self.workers:
            s = w.ask("stats")
            malformed += s["malformed"]
            errors += s["errors"]
            for sub, code, verdict, n in s["by"]:
                totals[(sub, code, verdict)] = totals.get((sub, code, verdict), 0) + n
        drops = queue_drops()
        return {
            "backend": self.backend.name, "queues": self.queue_list(), "generation": self.generation,
            "uptime_s": round(time.monotonic() - self.started, 1), "when_down": self.opts.when_down,
            "queue_full": self.opts.queue_full, "rule_repairs": self.rule_repairs,
            "worker_generations": [w.generation for w in self.workers],
            "verdicts": [{"subscription": s, "code": c, "verdict": v, "count": n}
                         for (s, c, v), n in sorted(totals.items())],
            "malformed": malformed, "callback_errors": errors,
            "kernel_queues": {str(q): drops.get(q, {}) for q in self.queue_list()},
        }

    def handle(self, request: dict) -> dict:
        command = request.get("cmd")
        if command == "status":
            return {"ok": True, **self.stats()}
        if command == "reload":
            self.request_reload()
            return {"ok": True}
        return {"ok": False, "error": f"unknown command {command!r}"}
