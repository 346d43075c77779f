"""`enforcer run`: bind the queues, compile the table, install the rules, follow the state, answer the CLI, and
clean up.

Order matters: the workers are started and their queues bound before the table is compiled (so that they are
small: the table is not theirs to copy), the first table is handed to them before the rules go in (so no SYN meets
a rule with nobody, or no table, behind it because of us), READY=1 is sent only after both, and a clean stop
removes exactly our rules. After a change the daemon patches its table from the audit log, once, and hands the
workers the new image (Keeper); a worker only maps it.
"""

from __future__ import annotations

import ipaddress
import logging
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from multiprocessing.reduction import send_handle
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..core.inventory import Inventory
from ..core.policy import internal_destinations
from ..core.profile import Profile
from ..errors import UserError
from ..state.profiles import load_profile
from ..state.settings import Settings, WhenDown
from .control import ControlServer, ask
from .notify import notify
from .queue import kernel_queue_stats
from .kernelcache import KernelCache
from .rules.base import CacheError
from .rules import RuleBackend, RuleSpec, choose_backend
from .rules.base import CacheSpec
from .follow import Follower, follower_for
from .keeper import Keeper
from .worker import Explainer, worker_main

if TYPE_CHECKING:  # for annotations only: nothing more to import at run time
    from ..state.etcd_client import EtcdOptions
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

log = logging.getLogger("enforcer")
CAP_NET_ADMIN = 12
POLL_INTERVAL = 0.05  # seconds between reads of the state's generation: a change reaches the workers within it


def has_net_admin() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << CAP_NET_ADMIN))
    return os.geteuid() == 0


class WorkerHandle:
    """The daemon's end of one worker's pipe. Requests carry a sequence number, so that a reply that comes
    after its request timed out is recognised and dropped instead of answering the next request."""

    def __init__(self, queue: int, proc: BaseProcess, conn: Connection, generation: int):
        self.queue, self.proc, self.conn = queue, proc, conn
        self.lock = threading.Lock()
        self.seq = 0
        self.generation = generation  # of the table it last reported

    def send(self, command: str, arg: Any = None) -> int:
        self.seq += 1
        self.conn.send((self.seq, command, arg))
        return self.seq

    def receive(self, seq: int, command: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.conn.poll(left):
                raise TimeoutError(f"{self.proc.name} did not answer {command} within {timeout} s")
            got, value = self.conn.recv()
            if got == seq:
                return value

    def ask(self, command: str, arg: Any = None, timeout: float = 10.0) -> Any:
        with self.lock:
            return self.receive(self.send(command, arg), command, timeout)


def hand_table(workers: list[WorkerHandle], fd: int, generation: int, verdicts: list[Any],
               timeout: float = 10.0) -> list[int]:
    """Hand every worker the table image in memfd `fd` (the descriptor itself, over the pipe), then collect the
    generations they judge with."""
    for w in workers:
        w.lock.acquire()
    try:
        sent = []
        for w in workers:
            sent.append((w, w.send("table", (generation, verdicts))))
            send_handle(w.conn, fd, w.proc.pid or 0)
        return [w.receive(seq, "table", timeout) for w, seq in sent]
    finally:
        for w in workers:
            w.lock.release()


class Daemon:
    backend: RuleBackend
    keeper: Keeper   # the table and what its indexes mean
    spec: RuleSpec   # the rules in place (once the first table is handed over)
    spec_wanted: RuleSpec
    changed_keys: set[bytes] | None  # the addresses the last reload touched (None: all of them)

    def __init__(self, settings: Settings, etcd: EtcdOptions | None = None):
        self.settings = settings
        self.etcd = etcd
        self.follower: Follower = follower_for(settings, etcd)  # SQLite's generation polled, or etcd watched
        self.started = time.monotonic()
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.reload_requested = False
        self.workers: list[WorkerHandle] = []
        self.rule_repairs = 0
        self.rules_installed = False
        self.state_error: str | None = None  # why the state's newest generation could not be loaded, if it can't
        self.explainer: Explainer | None = None  # the workers' drop-log explanations on an etcd state, read here
        self.explain_lock = threading.Lock()
        self.control = ControlServer(settings.socket, self.handle, settings.socket_group)
        self.cache: KernelCache | None = None  # --kernel-cache: the daemon's end forgets what a new table changed

    # ------------------------------------------------------------ start

    def preflight(self) -> None:
        """Everything that can be checked before a rule is touched: rights, tools, the socket path, the
        metrics address, another daemon, the state's existence."""
        if not has_net_admin():
            raise UserError("enforcer run needs root or CAP_NET_ADMIN (it binds NFQUEUE and installs rules); "
                            "run it as root or through systemd/enforcer.service")
        self.backend = choose_backend(self.settings.backend)
        if self.settings.kernel_cache:
            self.cache = KernelCache(self.backend.name, self.settings.kernel_cache_timeout)
        self.control.check_path()
        if self.settings.metrics:
            from .metrics import parse_metrics_address
            parse_metrics_address(self.settings.metrics)
        if ask(self.settings.socket, {"cmd": "status"}, timeout=2) is not None:
            raise UserError(f"another enforcer daemon answers on {self.settings.socket}; stop it or pass "
                            "--socket PATH")
        self.follower.check()

    def load_state(self) -> None:
        """The first table, handed to the workers. A state that cannot be compiled stops the daemon, failing
        closed: with --when-down block the rules still go in, and with no worker behind them once we are gone,
        the kernel drops every SYN they would have queued until a good state lets the daemon start."""
        try:
            self.compile()
        except UserError as e:
            if self.settings.when_down != WhenDown.BLOCK:
                raise
            self.install(self._fail_closed_spec())
            raise UserError(f"{e}; until it is fixed, our rules stay with no worker behind them, so every SYN they "
                            "match is dropped (--when-down block)") from None
        self.hand_over()

    def _fail_closed_spec(self) -> RuleSpec:
        try:
            profile = load_profile(self.follower.profile_name())
            ports, dropped = tuple(sorted(profile.restricted_ports)), profile.dropped_protocol_numbers
        except UserError:
            ports, dropped = (25,), ()
        s = self.settings
        return RuleSpec(s.queue, s.queues, ports, (), bypass=False, dropped_protocols=dropped)

    def install(self, spec: RuleSpec) -> None:
        self.backend.install(spec)
        self.rules_installed = True

    def _spec(self, inv: Inventory, profile: Profile) -> RuleSpec:
        s = self.settings
        return RuleSpec(s.queue, s.queues, tuple(sorted(profile.restricted_ports)),
                        internal_destinations(inv, profile),
                        s.when_down == WhenDown.ALLOW, profile.dropped_protocol_numbers,
                        cache=CacheSpec(s.kernel_cache_timeout) if s.kernel_cache else None)

    def start_workers(self) -> None:
        """One process per queue, forked before the table exists (so that no worker holds a copy of it); each
        binds its queue and judges nothing until its first table (an unknown source is dropped)."""
        ctx = multiprocessing.get_context("fork")
        self.follower.before_fork()  # reopened after the fork: SQLite handles, gRPC channels must not cross it
        for q in self.queue_list():
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main,
                               args=(q, child, self.settings, self.backend.name, os.getpid(), self.etcd),
                               name=f"enforcer-queue-{q}", daemon=True)
            proc.start()
            if not parent.poll(15):
                raise UserError(f"the worker for queue {q} did not start within 15 s")
            status, detail = parent.recv()
            if status == "error":
                raise UserError(f"{detail}; pick another --queue or stop the other consumer")
            self.workers.append(WorkerHandle(q, proc, parent, -1))
        self.follower.after_fork()

    # ------------------------------------------------------------ the table

    def compile(self) -> None:
        """The whole table from the state (at start, on SIGHUP, after a change the audit log does not hold)."""
        self.keeper, self.spec_wanted = self.follower.compile(self._spec)
        self.changed_keys = None  # everything may have changed

    def patch(self, generation: int) -> None:
        """What changed since the table's last generation, applied to it (the follower reads it: SQLite's audit
        log, etcd's watch); the whole table compiled afresh when that does not cover the change (a write that
        left no audit row) or holds more than a patch is worth."""
        patch, spec = self.follower.patch(self.keeper, self._spec)
        if patch.full:
            self.compile()
            return
        if spec is not None:
            self.spec_wanted = spec
        self.changed_keys = patch.keys

    def hand_over(self) -> None:
        """The keeper's table to every worker, then the rules it needs."""
        keeper = self.keeper
        fd = keeper.publish()
        try:
            answers = hand_table(self.workers, fd, keeper.generation, keeper.verdicts.entries)
        finally:
            os.close(fd)
        for w, answer in zip(self.workers, answers, strict=True):
            w.generation = answer
        if any(a != keeper.generation for a in answers):
            # a worker kept its table (its log says why): the rules stay as they are, matching that table
            raise UserError(f"not every worker could take it (they run {answers})")
        self.forget_cached()
        if not self.rules_installed:
            self.spec = self.spec_wanted  # run() puts them in
        elif self.spec_wanted != self.spec:
            self.install(self.spec_wanted)
            self.spec = self.spec_wanted
        self.generation = keeper.generation
        self.follower.handed_over(self.generation, self.changed_keys is None)

    # ------------------------------------------------------------ the loop

    def reload(self) -> None:
        generation = self.follower.newest()
        if generation == self.generation and not self.reload_requested:
            return
        forced, self.reload_requested = self.reload_requested, False
        failed_before = self.state_error
        try:
            self.compile() if forced else self.patch(generation)
            self.hand_over()
        except UserError as e:
            self.state_error = f"generation {generation}: {e}"
            if self.state_error != failed_before:  # once per failure, not at every round
                log.error("cannot load state %s; still judging with generation %d", self.state_error,
                          self.generation)
            self.reload_requested = forced
            return
        log.info("loaded state generation %d (%s)", self.generation,
                 "compiled whole" if self.changed_keys is None else f"{len(self.changed_keys)} addresses patched")
        if failed_before:
            log.info("the state loads again")
        self.state_error = None

    def forget_cached(self) -> None:
        """--kernel-cache: once every worker judges with the new table, the kernel forgets what it changed (all of
        it after a whole compile), so that no SYN is judged by a cached verdict of the old one past this point."""
        if self.cache is None or not self.rules_installed:
            return
        try:
            self.cache.flush() if self.changed_keys is None else self.cache.forget(self.changed_keys)
        except (CacheError, OSError) as e:
            # a verdict that may be stale stays cached: put the sets back empty with the rules, or stop
            log.error("kernel cache: %s; emptying it with the rules", e)
            self.install(self.spec)

    def check_rules(self) -> None:
        if not self.backend.installed(self.spec):
            log.warning("our %s rules were removed while running; putting them back", self.backend.name)
            self.install(self.spec)
            self.rule_repairs += 1

    def run(self) -> int:
        self.preflight()
        try:
            self.start_workers()
            self.load_state()
        except BaseException:
            self.stop_workers()
            self.follower.close()
            raise
        try:
            # the control socket and the metrics listener first: if either cannot start, no rule went in
            self.control.start()
            if self.settings.metrics:
                from .metrics import serve_metrics
                serve_metrics(self.settings.metrics, self)
            self.install(self.spec)
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
            signal.signal(signal.SIGHUP, lambda *_: self.request_reload("SIGHUP"))
            notify("READY=1\nSTATUS=judging port 25 SYNs")
            log.info("port25-enforcer %s: %s backend, queue(s) %s, generation %d, when down: %s",
                     __version__, self.backend.name, self.queue_list(), self.generation, self.settings.when_down)
            watchdog = int(os.environ.get("WATCHDOG_USEC", "0")) / 2e6
            next_check = next_ping = 0.0
            while not self.stopping.is_set():
                self.wake.wait(POLL_INTERVAL)
                self.wake.clear()
                now = time.monotonic()
                try:
                    self.reload()
                    if now >= next_check:
                        self.check_rules()
                        next_check = now + self.settings.check_interval
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

    def request_reload(self, why: str = "") -> None:
        if why:
            log.info("recompiling on %s", why)
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
        elif self.rules_installed:
            log.error("stopping after a failure; our rules stay in place (--when-down %s)", self.settings.when_down)
        self.stop_workers()
        self.control.stop()
        self.follower.close()

    def stop_workers(self) -> None:
        for w in self.workers:
            if w.proc.is_alive():
                w.proc.terminate()
        for w in self.workers:
            w.proc.join(5)
            if w.proc.is_alive():
                w.proc.kill()

    # ------------------------------------------------------------ the live view

    def queue_list(self) -> list[int]:
        return list(range(self.settings.queue, self.settings.queue + self.settings.queues))

    def stats(self) -> dict[str, Any]:
        totals: dict[tuple[str, str, str], int] = {}
        malformed = errors = 0
        cached: dict[str, int] | None = {"added": 0, "present": 0, "full": 0} if self.cache is not None else None
        drop_log = {"lines": 0, "summarised": 0}
        for w in self.workers:
            s = w.ask("stats")
            malformed += s["malformed"]
            errors += s["errors"]
            for key in drop_log:
                drop_log[key] += s["drop_log"][key]
            for key, n in (s["kernel_cache"] or {}).items():
                if cached is not None:
                    cached[key] = cached.get(key, 0) + n
            for sub, code, verdict, n in s["by"]:
                totals[(sub, code, verdict)] = totals.get((sub, code, verdict), 0) + n
        kernel = kernel_queue_stats()
        return {
            "backend": self.backend.name, "queues": self.queue_list(), "generation": self.generation,
            "uptime_s": round(time.monotonic() - self.started, 1), "when_down": self.settings.when_down,
            "queue_full": self.settings.queue_full, "rule_repairs": self.rule_repairs,
            "worker_generations": [w.generation for w in self.workers], "state_error": self.state_error,
            "verdicts": [{"subscription": s, "code": c, "verdict": v, "count": n}
                         for (s, c, v), n in sorted(totals.items())],
            "malformed": malformed, "callback_errors": errors, "kernel_cache": cached, "drop_log": drop_log,
            "kernel_queues": {str(q): kernel[q].brief() if q in kernel else {} for q in self.queue_list()},
            **self.follower.live(),
        }

    def explain(self, address: Any) -> dict[str, Any]:
        """The resource behind a source address, and why it is blocked, read from the state here."""
        try:
            if not isinstance(address, str):  # ip_address(7) would be 0.0.0.7
                raise ValueError(address)
            ipaddress.ip_address(address)
        except ValueError:
            return {"ok": False, "error": f"not an address: {str(address)[:64]!r}"}
        with self.explain_lock:  # one control thread per request: the explainer's store is one channel
            if self.explainer is None:
                self.explainer = Explainer(self.settings.state, self.etcd)
            resource, reason = self.explainer.explain(str(address))
        return {"ok": True, "resource": resource, "reason": reason}

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("cmd")
        if command == "status":
            return {"ok": True, **self.stats()}
        if command == "reload":
            self.request_reload()
            return {"ok": True}
        if command == "explain":  # a worker's drop log, on an etcd state (worker.AskTheDaemon)
            return self.explain(request.get("address"))
        return {"ok": False, "error": f"unknown command {command!r}"}
