"""Following a state in etcd: the table compiled at revision R, then a watch of the prefix from R+1 whose events
become the Changed rows Keeper.patch takes (the incremental path SQLite's audit feed takes), a relist after a
compaction, the last table kept while etcd cannot be reached, and this gateway's applied revision published under
a lease (docs/architecture.md, "Every gateway follows the policy by watch"), with a second record that outlives the
lease, and the delay from each change's commit to its table measured ("Several gateways").

Threads: the watch thread reads the bidirectional Watch stream (grpcio, aetcd's compiled stubs over the channel
state/etcd_client.py opens: TLS and authentication as the CLI's) and queues what it saw, one item per revision;
the lease thread keeps /PREFIX/gateways/NAME alive and /PREFIX/gateways/NAME/seen current. The daemon's loop
applies the queued items (newest(), patch()): all reads of the state and all writes to the table happen there, as
with SQLite.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from .. import __version__
from ..errors import Failure, UserError
from ..state.etcd_client import Compacted, EtcdClient, EtcdOptions, parse_url
from ..state.etcd_gateways import commit_time
from ..state.etcd_layout import end_of
from ..state.etcd_store import EtcdStore
from ..state.profiles import load_profile
from ..state.store import Changed, _audited
from .follow import SpecOf
from .keeper import PATCH_LIMIT, Keeper, Patch
from .rules import RuleSpec

if TYPE_CHECKING:
    from ..state.settings import Settings

log = logging.getLogger("enforcer")
PROGRESS_EVERY = 1.0   # seconds between progress requests on the watch: each answer says we are current
CURRENT_FOR = 3.0      # a watch silent this long (no event, no progress answer) is taken as lost
BACKOFF = (0.2, 2.0)   # seconds between attempts to reach etcd again: doubling from the first to the second
# (at most 2 s: a healed gateway is back within 2 s; a try every 2 s per gateway is nothing to etcd)
LEASE_TTL = 10         # seconds the gateway key outlives this daemon
KEEPALIVE_EVERY = 3.0  # seconds between the lease's keepalives
STILL_LOST_EVERY = 30.0  # seconds between log lines while etcd stays unreachable
SEEN_EVERY = 30.0      # seconds between writes of the gateway's records while nothing changes: its "last seen"
# seconds from a change's commit to this gateway's table holding it (enforcer_state_apply_delay_seconds)
DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
ROWS = ("subscriptions/", "vnets/", "resources/", "meta/profile", "meta/internal_prefixes")


@dataclass
class Item:
    """What the watch saw at one revision: `changes` (the audit entry's rows), `unaudited` (a row written with no
    audit entry: only a whole compile can follow it), `relist` (a compaction passed us: catch up at this
    revision), or nothing of the state (another gateway's key, a progress answer): the table is current to it."""
    revision: int
    changes: list[Changed] = field(default_factory=list)
    unaudited: bool = False
    relist: bool = False
    at: float = field(default_factory=time.monotonic)

    @property
    def of_state(self) -> bool:
        return bool(self.changes) or self.unaudited or self.relist


class Delays:
    """The delay from each change's commit to the table that holds it being handed to the workers, as a
    histogram (pure). The commit time is the writer's clock (the audit key's), the hand-over ours: hosts of a
    fleet keep their clocks in step (NTP), else the figure is off by their skew. A commit time ahead of our clock
    (the writer's clock is ahead: the true delay is unknown) is measured from when our watch received the change
    instead, a lower bound, and counted as skewed."""

    def __init__(self) -> None:
        self.buckets = [0] * len(DELAY_BUCKETS)  # not cumulative: each observation counts in its first bucket
        self.count = self.skewed = 0
        self.sum = 0.0
        self.last: float | None = None

    def observe(self, committed: float | None, received: float, applied: float, now_mono: float) -> float:
        """`committed`, `applied`: wall clock (Unix s); `received`, `now_mono`: monotonic. Returns the delay."""
        delay = applied - committed if committed is not None else -1.0
        if delay < 0:
            if committed is not None:
                self.skewed += 1
            delay = max(0.0, now_mono - received)
        for i, bound in enumerate(DELAY_BUCKETS):
            if delay <= bound:
                self.buckets[i] += 1
                break
        self.count += 1
        self.sum += delay
        self.last = delay
        return delay

    def view(self) -> dict[str, Any]:
        cumulative, total = [], 0
        for bound, n in zip(DELAY_BUCKETS, self.buckets, strict=True):
            total += n
            cumulative.append([bound, total])
        return {"buckets": cumulative, "count": self.count, "sum": round(self.sum, 6), "last": self.last,
                "skewed": self.skewed}


class _AddressRows:
    """What Keeper.compile reads: every address row, at one revision."""

    def __init__(self, store: EtcdStore, revision: int):
        self.store, self.revision = store, revision

    def address_rows(self) -> Iterator[tuple[str, str, int | None, str, str | None]]:
        return self.store.address_rows_at(self.revision)


class EtcdFollower:
    def __init__(self, settings: Settings, options: EtcdOptions | None = None):
        self.url = parse_url(settings.state)
        self.where = str(self.url)
        self.options = options or EtcdOptions()
        self.name = settings.gateway_name or socket.gethostname()
        self.store = EtcdStore(self.url, self.options)
        self.keys = self.store.keys
        self.root = self.keys.everything()
        self.gateway_key, self.seen_key = self.keys.gateway(self.name), self.keys.gateway_seen(self.name)
        self.lock = threading.Lock()
        self.items: collections.deque[Item] = collections.deque()
        self.stopping = threading.Event()
        self.publish_wanted = threading.Event()
        self.threads: list[threading.Thread] = []
        self.stream: Any = None
        self.next_revision = 0   # where the watch (re)starts
        self.applied = 0         # the revision the table is current to
        self.generation = 0      # the revision of the last change of the state the table holds
        self.streaming = False   # the watch stream is open
        self.last_reply = 0.0    # monotonic time of the watch's last answer
        self.current_at = time.monotonic()  # when we last knew the table was current
        self.lost_at: float | None = None
        self.counts = {"compiles": 0, "patches": 0, "relists": 0, "reconnects": 0}
        self.lease_error: str | None = None
        self.published_revision: int | None = None
        self.delays = Delays()
        # changes seen by the watch, not yet handed over: (revision, commit time, monotonic time received)
        self.unapplied: collections.deque[tuple[int, float | None, float]] = collections.deque(maxlen=100_000)

    # ------------------------------------------------------------ start

    def _client(self) -> EtcdClient:
        if self.store._client is None:
            self.store._client = EtcdClient(self.url, self.options, keepalive=True)
        return self.store._client

    def check(self) -> None:
        if len(self.name) > 253 or "/" in self.name or not self.name.isprintable() or not self.name:
            raise UserError(f"--gateway-name {self.name!r}: a name without '/' of at most 253 printable characters")
        self._client()
        if not self.store.exists:
            raise UserError(f"no state at {self.where}; create it first: enforcer --state {self.where} apply FILE")

    def profile_name(self) -> str:
        return self.store.snapshot().profile

    def before_fork(self) -> None:
        self.store.close()  # no gRPC channel across the fork: reopened after it

    def after_fork(self) -> None:
        self._client()

    def close(self) -> None:
        self.stopping.set()
        stream = self.stream
        if stream is not None:
            stream.cancel()
        self.publish_wanted.set()  # wakes the lease thread: it revokes the lease, so that our key goes at once
        for t in self.threads:
            t.join(5)
        self.store.close()

    # ------------------------------------------------------------ the table

    def _reading(self, read: Any) -> Any:
        """read(), its etcd errors as one line the daemon logs; once more after a fresh token (a simple token
        expires when unused)."""
        for attempt in (1, 2):
            try:
                return read()
            except (UserError, Failure) as e:
                if attempt == 2 or self.options.user is None:
                    raise UserError(str(e)) from None
                try:
                    self._client().authenticate()
                except (UserError, Failure):
                    raise UserError(str(e)) from None
        raise AssertionError("unreachable")

    def compile(self, spec_of: SpecOf) -> tuple[Keeper, RuleSpec]:
        """The whole table at the current revision; the watch then goes on from the next one."""
        def read() -> tuple[Keeper, RuleSpec, int]:
            while True:
                revision, generation = self.store.head()
                try:
                    inv = self.store.snapshot_at(revision, load_profile)
                    keeper = Keeper(load_profile(inv.profile))
                    keeper.compile(_AddressRows(self.store, revision), inv)
                    keeper.generation = generation
                    return keeper, spec_of(inv, keeper.profile), revision
                except Compacted:  # compacted while we read: again at the newer head
                    continue
        keeper, spec, revision = self._reading(read)
        self.applied = max(self.applied, revision)
        self.generation = keeper.generation
        self.counts["compiles"] += 1
        if not self.threads:
            self.next_revision = revision + 1
            self.last_reply = self.current_at = time.monotonic()
            self._start_threads()
        return keeper, spec

    def _pending(self) -> list[Item]:
        with self.lock:
            while self.items and self.items[0].revision <= self.applied:
                self.items.popleft()
            return list(self.items)

    def newest(self) -> int:
        """The revision of the newest change queued (the table's generation when none is): what the loop
        compares with the table's. Items that hold nothing of the state only move the applied revision."""
        pending = self._pending()
        state = [i for i in pending if i.of_state]
        if not state and pending:
            self.applied = max(self.applied, pending[-1].revision)
        now = time.monotonic()
        if not state and self.connected(now):
            self.current_at = now
        return state[-1].revision if state else self.generation

    def patch(self, keeper: Keeper, spec_of: SpecOf) -> tuple[Patch, RuleSpec | None]:
        """The queued events since the table's revision, as Changed rows, patched into the table at the revision
        of the newest (read there: one snapshot); after a compaction the audit entries since the table's
        revision, read at the head the watch resumed from."""
        pending = self._pending()
        if not pending:
            return Patch(), None
        target = pending[-1].revision
        relists = [i for i, item in enumerate(pending) if item.relist]
        after = pending[relists[-1]:] if relists else pending

        def read() -> tuple[Patch, RuleSpec | None, int]:
            try:
                return self._patch_at(keeper, spec_of, target, after, bool(relists))
            except Compacted:  # compacted while we read (a row the patch asked for lazily, at `target`): the
                return Patch(full=True), None, 0  # table compiled whole at the head (the patch reads before it writes)

        patch, spec, generation = self._reading(read)
        if relists:
            self.counts["relists"] += 1
            log.info("etcd: caught up after a compaction: the audit entries since revision %d, read at %d",
                     self.applied, after[0].revision)
        if not patch.full:
            keeper.generation = generation
            self.generation, self.applied = generation, max(self.applied, target)
            self.counts["patches"] += 1
        return patch, spec

    def _patch_at(self, keeper: Keeper, spec_of: SpecOf, target: int, after: list[Item],
                  relisted: bool) -> tuple[Patch, RuleSpec | None, int]:
        """patch()'s reading: the changes of `after` (after a relist, the audit entries since the table's revision
        first), patched into the table in the snapshot at `target`; Patch(full=True) when they do not suffice."""
        changes: list[Changed] = []
        if relisted:
            head = after[0].revision
            caught = self.store.changed_between(self.applied, head, PATCH_LIMIT)
            if caught is None:
                return Patch(full=True), None, 0
            audited = {(c.kind, c.name) for c in caught}
            if not self.store.written_between(self.applied, head) <= audited:  # a write past the audit log
                return Patch(full=True), None, 0
            changes += caught
        for item in after:
            if item.unaudited:
                return Patch(full=True), None, 0
            changes += item.changes
        if len(changes) > PATCH_LIMIT:
            return Patch(full=True), None, 0
        inv = self.store.snapshot_at(target, lambda _: keeper.profile)
        _, generation = self.store.head_at(target)
        patch = keeper.patch(inv, changes)
        spec = spec_of(inv, keeper.profile) if patch.rules and not patch.full else None
        return patch, spec, generation

    def handed_over(self, generation: int, whole: bool) -> None:
        now, now_mono = time.time(), time.monotonic()
        with self.lock:
            while self.unapplied and self.unapplied[0][0] <= generation:
                _, committed, received = self.unapplied.popleft()
                self.delays.observe(committed, received, now, now_mono)
        if generation != self.published_revision:
            self.publish_wanted.set()

    # ------------------------------------------------------------ the live view

    def connected(self, now: float | None = None) -> bool:
        return self.streaming and (now or time.monotonic()) - self.last_reply < CURRENT_FOR

    def live(self) -> dict[str, Any]:
        now = time.monotonic()
        with self.lock:  # one histogram: its buckets and count of the same observations
            delays = self.delays.view()
        return {"state_backend": "etcd", "gateway_name": self.name, "connected": self.connected(now),
                "applied_revision": self.applied, "stale_seconds": round(max(0.0, now - self.current_at), 1),
                "published_revision": self.published_revision, "publish_error": self.lease_error,
                "apply_delay": delays, **self.counts}

    # ------------------------------------------------------------ the watch thread

    def _start_threads(self) -> None:
        for target, name in ((self._watch, "enforcer-etcd-watch"), (self._lease, "enforcer-etcd-lease")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self.threads.append(t)

    def _requests(self, start: int, done: threading.Event) -> Iterator[Any]:
        rpc = self._client().rpc
        yield rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=self.root, range_end=end_of(self.root), start_revision=start, progress_notify=True))
        while not done.wait(PROGRESS_EVERY):
            yield rpc.WatchRequest(progress_request=rpc.WatchProgressRequest())

    def _watch(self) -> None:
        """Watch until stopped: each lost stream tried again with backoff, the table kept meanwhile."""
        backoff = BACKOFF[0]
        last_said = 0.0
        while not self.stopping.is_set():
            why = self._stream()
            if self.stopping.is_set():
                break
            if why is None:  # a compaction: the watch goes on at once from the head
                backoff = BACKOFF[0]
                continue
            now = time.monotonic()
            if self.streaming or self.lost_at is None:
                backoff = BACKOFF[0]
            self.streaming = False
            if self.lost_at is None:
                self.lost_at = last_said = now
                log.warning("etcd: connected=false (%s); still judging with the table of generation %d (applied "
                            "revision %d); trying again with backoff", why, self.generation, self.applied)
            elif now - last_said >= STILL_LOST_EVERY:
                last_said = now
                log.warning("etcd: connected=false for %.0f s (%s); stale for %.1f s, applied revision %d",
                            now - self.lost_at, why, now - self.current_at, self.applied)
            self.stopping.wait(backoff)
            backoff = min(backoff * 2, BACKOFF[1])

    def _stream(self) -> str | None:
        """One Watch stream from self.next_revision, read until it ends: why it ended (None: a compaction)."""
        import grpc
        from aetcd.rpc import rpc_pb2_grpc
        done = threading.Event()
        try:
            client = self._client()
            if self.lost_at is not None:
                client.authenticate()  # a fresh token: the old one may have expired meanwhile
            self.stream = rpc_pb2_grpc.WatchStub(client.channel).Watch(
                self._requests(self.next_revision, done), metadata=client.metadata)
            for reply in self.stream:
                if reply.compact_revision:
                    self._compacted(reply.compact_revision)
                    return None
                if reply.canceled:
                    return f"the watch was cancelled: {reply.cancel_reason or 'no reason given'}"
                self._take(reply)
                if not self.streaming:
                    self._found()
                self.streaming = True
            return "the watch stream ended"
        except grpc.RpcError as e:
            return str(self._client().trouble(e.code(), e.details() or ""))
        except (UserError, Failure) as e:
            return str(e)
        finally:
            done.set()
            if self.stream is not None:
                self.stream.cancel()

    def _found(self) -> None:
        if self.lost_at is not None:
            self.counts["reconnects"] += 1
            log.info("etcd: connected=true again after %.1f s; watching from revision %d (stale for %.1f s)",
                     time.monotonic() - self.lost_at, self.next_revision, time.monotonic() - self.current_at)
        self.lost_at = None

    def _compacted(self, compacted: int) -> None:
        """The revision we watch from is compacted away: catch up at the head (the daemon reads the audit entries
        since its revision there) and watch on from the next."""
        head, _ = self.store.head()
        log.warning("etcd: revision %d is compacted (up to %d); relisting at revision %d", self.next_revision,
                    compacted, head)
        with self.lock:
            self.items.append(Item(head, relist=True))
        self.next_revision = head + 1
        self.last_reply = time.monotonic()

    def _take(self, reply: Any) -> None:
        """One watch answer: its events, a revision at a time, as items; a progress answer as a revision reached."""
        self.last_reply = time.monotonic()
        items: list[Item] = []
        for event in reply.events:
            kv = event.kv
            revision = int(kv.mod_revision)
            if not items or items[-1].revision != revision:
                items.append(Item(revision))
            item = items[-1]
            key = bytes(kv.key)[len(self.root):].decode(errors="replace")
            if key.startswith("audit/") and event.type == 0:  # PUT
                with self.lock:
                    self.unapplied.append((revision, commit_time(key), self.last_reply))
                try:
                    item.changes += [Changed(kind, name, _audited(kind, before), _audited(kind, after))
                                     for kind, name, before, after in json.loads(kv.value)["rows"]]
                except (ValueError, TypeError, KeyError):
                    item.unaudited = True  # an entry we cannot read: the whole table at that revision
            elif key.startswith(ROWS):
                item.unaudited = True  # cleared below when the same revision holds its audit entry
        for item in items:
            item.unaudited = item.unaudited and not item.changes
        if not items and not reply.created:  # a progress answer: nothing more up to its revision
            items.append(Item(int(reply.header.revision)))
        if items:
            self.next_revision = max(self.next_revision, items[-1].revision + 1)
            with self.lock:
                self.items.extend(items)

    # ------------------------------------------------------------ the lease thread

    def _publish(self, client: EtcdClient, lease: int) -> None:
        """/PREFIX/gateways/NAME under the lease and /PREFIX/gateways/NAME/seen without it, in one transaction."""
        generation = self.generation
        value = json.dumps({"revision": generation, "applied_revision": self.applied, "pid": os.getpid(),
                            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "at_unix": round(time.time(), 3),
                            "version": __version__}, separators=(",", ":")).encode()
        client.txn([], [client.put(self.gateway_key, value, lease), client.put(self.seen_key, value)])
        self.published_revision = generation

    def _lease(self) -> None:
        """/PREFIX/gateways/NAME = {revision, applied_revision, at, ...} under a lease kept alive; revoked on a
        clean stop (the key goes at once), expired LEASE_TTL seconds after a crash. Written again after each new
        table and every SEEN_EVERY seconds (with NAME/seen, which stays: when the gateway was last seen)."""
        lease = 0
        backoff = BACKOFF[0]
        published_at = 0.0
        while not self.stopping.is_set():
            client = self._client()
            try:
                if lease == 0:
                    lease = client.lease(LEASE_TTL)
                    self.publish_wanted.set()
                if self.publish_wanted.is_set() or time.monotonic() - published_at >= SEEN_EVERY:
                    self.publish_wanted.clear()
                    self._publish(client, lease)
                    published_at = time.monotonic()
                if client.keep_alive(lease, timeout=5) <= 0:
                    lease = 0  # expired while we could not reach etcd: a new lease, the key again
                    continue
                if self.lease_error is not None:
                    log.info("etcd: publishing %s again", self.gateway_key.decode())
                self.lease_error, backoff = None, BACKOFF[0]
                self.publish_wanted.wait(KEEPALIVE_EVERY)
            except (UserError, Failure) as e:
                why = str(e)
                if why != self.lease_error:
                    log.warning("etcd: cannot publish %s: %s", self.gateway_key.decode(), why)
                self.lease_error = why or "no answer"
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF[1])
        if lease:
            try:
                self._client().revoke(lease, timeout=2)
            except (UserError, Failure):
                pass  # it expires by itself
