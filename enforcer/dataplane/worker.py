"""A worker process: one per queue. Its main thread runs the queue (the packet callback); a control thread
answers the daemon's pipe (reloads, counters) and writes the drop log, off the packet path.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from ..core.inventory import Inventory, validate
from ..core.policy import verdict_for
from ..core.profile import Profile
from ..core.table import VerdictTable, compile_table
from ..errors import UserError
from ..state.profiles import load_profile
from ..state.settings import QueueFull, Settings
from ..state.store import Store
from .callback import Counters, DropLog, PacketCallback
from .queue import bind_queue, run_until_signalled

if TYPE_CHECKING:  # for annotations only: nothing more to import at run time
    from multiprocessing.connection import Connection

log = logging.getLogger("enforcer.worker")
PR_SET_PDEATHSIG = 1


class Snapshot:
    """What a worker knows of the state: the inventory (for drop-log reasons) and the compiled table."""

    def __init__(self, store: Store):
        self.store = store
        self.inv, self.profile, self.table = self._load()

    def _load(self) -> tuple[Inventory, Profile, VerdictTable]:
        inv, generation = self.store.read()
        profile = load_profile(inv.profile)
        validate(inv, profile)
        try:
            return inv, profile, compile_table(inv, profile, generation)
        except (ValueError, OSError) as e:  # an address the kernel's format cannot hold (inet_pton)
            raise UserError(f"the state cannot be compiled into a table: {e}; fix the resource it names "
                            "(enforcer vm list)") from None

    def reload(self, generation: int) -> VerdictTable | None:
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


def die_with_parent(parent_pid: int | None = None) -> None:
    """A child must not outlive its parent (killed with SIGKILL, say): a worker would go on judging with a stale
    table, and --when-down would never apply."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(0)  # the parent died before the request took effect


def worker_main(queue_num: int, conn: Connection, settings: Settings, snapshot: Snapshot, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    snapshot.store = Store(settings.state)  # a fresh connection: SQLite handles must not cross fork()
    serve_queue(queue_num, PacketCallback(snapshot.table), conn, settings, snapshot)


def serve_queue(queue_num: int, callback: PacketCallback, conn: Connection, settings: Settings,
                snapshot: Snapshot) -> None:
    """Bind, report, then run the queue; a control thread answers the daemon's pipe."""
    try:
        nfq = bind_queue(queue_num, callback.__call__, settings.queue_length, settings.socket_buffer,
                         settings.queue_full == QueueFull.ACCEPT)
    except OSError as e:
        conn.send(("error", str(e)))
        return
    conn.send(("bound", queue_num))
    control = WorkerControl(queue_num, callback, conn, snapshot)
    thread = threading.Thread(target=control.serve, name=f"queue-{queue_num}-control", daemon=True)
    thread.start()
    try:
        run_until_signalled(nfq)
    finally:
        control.stop.set()
        control.droplog.drain(callback.drops)


class WorkerControl:
    """The worker's control thread: answers the daemon's requests (reload, stats) and writes the drop log."""

    def __init__(self, queue_num: int, callback: PacketCallback, conn: Connection, snapshot: Snapshot):
        self.queue_num, self.callback, self.conn, self.snapshot = queue_num, callback, conn, snapshot
        self.counters = Counters(callback)
        self.droplog = DropLog(snapshot.explain)
        self.stop = threading.Event()

    def reload(self, generation: int) -> int:
        # the packet thread needs the GIL between packets while we compile: switch to it more often
        interval = sys.getswitchinterval()
        sys.setswitchinterval(0.0002)
        try:
            table = self.snapshot.reload(generation)
        except Exception as e:  # noqa: BLE001 - whatever failed, keep judging with the table we have
            log.error("queue %d: reload failed, keeping generation %d: %s", self.queue_num,
                      self.callback.table.generation, e)
            table = None
        finally:
            sys.setswitchinterval(interval)
        if table is not None:
            self.callback.table = table
            self.counters.retire()
        return self.callback.table.generation

    def answer(self, command: str, arg: Any) -> Any:
        if command == "stats":
            return self.counters.snapshot()
        if command == "reload":
            return self.reload(arg)
        return None

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                if self.conn.poll(0.2):
                    seq, command, arg = self.conn.recv()
                    self.conn.send((seq, self.answer(command, arg)))
                self.droplog.drain(self.callback.drops)
            except (EOFError, BrokenPipeError):  # the daemon is gone
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except Exception:  # noqa: BLE001 - a dead control thread would freeze the table unnoticed
                log.exception("queue %d: control thread error", self.queue_num)
