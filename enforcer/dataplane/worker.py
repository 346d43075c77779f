"""A worker process: one NFQUEUE, judged by the C callback (`_fastpath.Judge`) in the main thread, over the table
image the daemon hands it; a control thread takes new images (swapped between two packets), answers for the
counters, and writes the drop log, off the packet path.

The worker holds no inventory: the table is the daemon's image, mapped read-only and shared by every worker. What
a drop-log line says of a blocked source (its resource, why) is read from the state when the line is written,
once per source and table generation.

A source bound to an interface is bound to its name, and the Judge keeps the names of the interface indexes it
has seen: a link thread (LinkWatcher) has it forget them on every link event of the namespace (a link added,
renamed, removed), so that a rename cannot leave a stale match; see LinkWatcher for what remains.

With --kernel-cache the Judge also notes each source it judged (an unbound allowed one, or a blocked one) and a
thread of the worker puts them into the kernel's sets (KernelCache), so that their later SYNs are judged in the
kernel. No verdict of an old table may reach the sets after the daemon has told the kernel what the new table
changed: the filler and the swap hold one lock, and the swap discards what the old table noted.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import logging
import os
import signal
import socket
import sys
import threading
from multiprocessing.reduction import recv_handle
from typing import TYPE_CHECKING, Any, Callable

from ..core.policy import find_source, verdict_for
from ..core.verdicts import Verdict
from ..errors import Failure, UserError
from ..state.profiles import load_profile
from ..state.settings import QueueFull, Settings
from ..state.backend import StateBackend, open_state
from ..state.etcd_client import EtcdOptions, is_etcd
from ..state.etcd_store import EtcdStore
from ._fastpath import Judge, Table, View
from .control import ask
from .counters import Counters
from .droplog import DropLog, Explain
from .keeper import mapped
from .kernelcache import KernelCache
from .rules.base import CacheError
from .queue import bind_queue, run_until_signalled

if TYPE_CHECKING:  # for annotations only: nothing more to import at run time
    from multiprocessing.connection import Connection

    from ._fastpath import Drop

log = logging.getLogger("enforcer.worker")
PR_SET_PDEATHSIG = 1
RTMGRP_LINK = 1  # rtnetlink's multicast group of link events: RTM_NEWLINK (added, renamed, changed), RTM_DELLINK
EMPTY = Table().image(0)  # what a worker judges with before its first table: every source unknown, dropped


def die_with_parent(parent_pid: int | None = None) -> None:
    """A child must not outlive its parent (killed with SIGKILL, say): a worker would go on judging with a stale
    table, and --when-down would never apply."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(0)  # the parent died before the request took effect


# How long the thread holding the GIL keeps it while another waits. Under a flood the main thread judges without
# pause, and the control thread (a new table, a status) waits up to this long at each of the dozen calls that
# release the GIL on its way: 5 ms (Python's default) made a hand-over take 4x as long under a flood.
SWITCH_INTERVAL = 0.0005
EXPLAIN_TIMEOUT = 1.0  # seconds the drop log waits for an etcd state to explain a blocked source
DRAIN_PAUSE = 0.05  # seconds between two drains of the drop log while drops keep coming


def worker_main(queue_num: int, conn: Connection, settings: Settings, backend: str, parent_pid: int,
                etcd: EtcdOptions | None = None) -> None:
    die_with_parent(parent_pid)
    sys.setswitchinterval(SWITCH_INTERVAL)
    drops: collections.deque[Drop] = collections.deque(maxlen=4096)  # for the drop log, drained by the control
    filler = CacheFiller(KernelCache(backend, settings.kernel_cache_timeout)) if settings.kernel_cache else None
    judge = Judge(View(EMPTY), default_allow=False, drops=drops, remember=filler.noted if filler else None)
    links = LinkWatcher(judge.forget_interfaces)  # listening before the first packet: no event can be missed
    threading.Thread(target=links.serve, name=f"queue-{queue_num}-links", daemon=True).start()
    try:
        nfq = bind_queue(queue_num, judge, settings.queue_length, settings.socket_buffer,
                         settings.queue_full == QueueFull.ACCEPT)
    except OSError as e:
        conn.send(("error", str(e)))
        return
    conn.send(("bound", queue_num))
    control = WorkerControl(queue_num, judge, drops, conn, explainer_for(settings, etcd), filler)
    threading.Thread(target=control.serve, name=f"queue-{queue_num}-control", daemon=True).start()
    if filler is not None:
        threading.Thread(target=filler.serve, args=(control.stop,), name=f"queue-{queue_num}-cache",
                         daemon=True).start()
    try:
        run_until_signalled(nfq)
    finally:
        control.stop.set()
        control.droplog.drain(drops, budget=None)
        control.droplog.summarise()


class LinkWatcher:
    """Calls `forget` (the Judge's forget_interfaces) on every link event of this network namespace.

    What remains: the kernel queues the event on this socket before `ip link set ... name` returns, but this
    thread needs the GIL to act on it, and the packet thread holds it while it judges (Python hands it over after
    at most SWITCH_INTERVAL, 0.5 ms, plus scheduling). A SYN judged in between can still match the old name.
    The Judge bounds that itself: it reads a matching name again once it is name_ttl_ns (10 ms) old, event or
    not. Closing it entirely would mean reading the name for every bound SYN (name_ttl_ns = 0: one ioctl, 0.7-1.1
    us a bound SYN on the development machine, against ~5.5 us a SYN at the queue; see BENCHMARKS.md)."""

    def __init__(self, forget: Callable[[], None]):
        self.forget = forget
        self.events = 0  # datagrams of link events received (each forgets once)
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        self.sock.bind((0, RTMGRP_LINK))

    def serve(self) -> None:
        while True:
            try:
                self.sock.recv(65536)
            except OSError as e:
                if e.errno != errno.ENOBUFS:  # closed: the worker is going
                    return
                # the kernel dropped events (our buffer overflowed): which links changed is unknown, so forget
            self.forget()
            self.events += 1


def address_of(key: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(key) == 16 else socket.AF_INET, key)


class Explainer:
    """Names the resource behind a blocked source and says why, from the state: read when a drop-log line is
    written (the drop log keeps the answer until the next table)."""

    def __init__(self, state: str, etcd: EtcdOptions | None = None):
        self.state, self.etcd = state, etcd
        self.store: StateBackend | None = None

    def __call__(self, key: bytes) -> tuple[str | None, str]:
        return self.explain(address_of(key))

    def explain(self, address: str) -> tuple[str | None, str]:
        try:
            if self.store is None:
                self.store = open_state(self.state, self.etcd)
                if isinstance(self.store, EtcdStore):  # the drop log waits for no partitioned etcd
                    self.store.client.timeout = EXPLAIN_TIMEOUT
            inv = self.store.snapshot(load_profile)
            try:
                r = find_source(inv, address)
                if r is None:
                    return None, "the source address belongs to no registered resource"
                return r.name, verdict_for(inv, load_profile(inv.profile), r).reason
            finally:
                self.store.end_snapshot()
        except (UserError, Failure) as e:
            return None, f"(the state could not be read: {e})"


class AskTheDaemon:
    """A worker's explainer on an etcd state: the daemon reads the state for it (`explain` on the control socket).
    A worker never opens a gRPC channel of its own: it was forked from a process whose gRPC threads were running,
    and a channel opened there could deadlock in gRPC's initialisation holding the GIL (the worker then judged
    nothing more: seen in the fleet lab and the fleet benchmark)."""

    def __init__(self, socket_path: str):
        self.socket_path = socket_path

    def __call__(self, key: bytes) -> tuple[str | None, str]:
        answer = ask(self.socket_path, {"cmd": "explain", "address": address_of(key)}, timeout=EXPLAIN_TIMEOUT)
        if not answer or not answer.get("ok"):
            why = (answer or {}).get("error") or "the daemon did not answer"
            return None, f"(the state could not be read: {why})"
        return answer.get("resource"), str(answer.get("reason"))


def explainer_for(settings: Settings, etcd: EtcdOptions | None) -> Explain:
    return AskTheDaemon(settings.socket) if is_etcd(settings.state) else Explainer(settings.state, etcd)


class CacheFiller:
    """--kernel-cache: puts what the Judge noted into the kernel's sets, in batches, off the packet path."""

    def __init__(self, cache: KernelCache):
        self.cache = cache
        self.noted: collections.deque[tuple[bytes, bool]] = collections.deque(maxlen=65536)
        self.lock = threading.Lock()  # held while a batch goes to the kernel, and while the table is swapped
        self.failed: str | None = None

    def fill(self) -> int:
        with self.lock:
            batch = [self.noted.popleft() for _ in range(min(len(self.noted), 4096))]
            if not batch:
                return 0
            try:
                return self.cache.remember(batch)
            except (CacheError, OSError) as e:  # the sources keep reaching the queue: slower, never wrong
                if str(e) != self.failed:
                    log.error("kernel cache: %s", e)
                self.failed = str(e)
                return 0

    def serve(self, stop: threading.Event) -> None:
        while not stop.wait(0.002 if not self.noted else 0):
            self.fill()

    def swapping(self, swap: Callable[[], None]) -> None:
        """Run the table swap with no batch in flight, and discard what the old table noted."""
        with self.lock:
            swap()
            self.noted.clear()


class WorkerControl:
    """The worker's control thread: takes new tables, answers the daemon's requests, writes the drop log."""

    def __init__(self, queue_num: int, judge: Judge, drops: collections.deque[Drop], conn: Connection,
                 explain: Explain, filler: CacheFiller | None = None):
        self.queue_num, self.judge, self.drops, self.conn = queue_num, judge, drops, conn
        self.filler = filler
        self.meanings: dict[int, list[Verdict]] = {0: []}  # table generation -> what its verdicts mean
        self.counters = Counters(judge, [])
        self.droplog = DropLog(lambda generation: self.meanings.get(generation, []), explain)
        self.stop = threading.Event()

    def take(self, generation: int, verdicts: list[Verdict]) -> int:
        """The image whose descriptor follows on the pipe: mapped, checked, judged with from the next packet."""
        fd = recv_handle(self.conn)
        try:
            view = mapped(fd)
        finally:
            os.close(fd)
        if view.generation != generation:
            raise ValueError(f"the table handed over is of generation {view.generation}, not {generation}")
        self.meanings[generation] = verdicts
        if self.filler is None:
            self.counters.swap(view, verdicts)
        else:
            self.filler.swapping(lambda: self.counters.swap(view, verdicts))
        self.droplog.forget()
        for old in sorted(self.meanings)[:-4]:  # drops still queued may name a few tables back
            del self.meanings[old]
        return generation

    def answer(self, command: str, arg: Any) -> Any:
        if command == "stats":
            cache = self.filler.cache.counts if self.filler is not None else None
            return {**self.counters.snapshot(), "kernel_cache": cache, "drop_log": self.droplog.counts()}
        if command == "table":
            return self.take(*arg)
        return None

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                # with drops waiting, the drop log gets one drain (its budget) a DRAIN_PAUSE at most: a flood
                # must not take the core the Judge needs; what falls off its deque is still counted by the Judge
                if self.conn.poll(DRAIN_PAUSE if self.drops else 0.2):
                    seq, command, arg = self.conn.recv()
                    try:
                        reply = self.answer(command, arg)
                    except (OSError, ValueError) as e:  # a table that cannot be mapped: keep the one we have
                        log.error("queue %d: %s %s failed, keeping generation %d: %s", self.queue_num, command,
                                  arg[0] if command == "table" else "", self.judge.view.generation, e)
                        reply = self.judge.view.generation
                    self.conn.send((seq, reply))
                self.droplog.drain(self.drops)
            except (EOFError, BrokenPipeError):  # the daemon is gone
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except Exception:  # noqa: BLE001 - a dead control thread would freeze the table unnoticed
                log.exception("queue %d: control thread error", self.queue_num)
