"""A whole state copied into an etcd prefix that holds none (`enforcer state copy FROM etcd://.../PREFIX`), of any
size, in transactions that each stay well within etcd's default request limits; nothing of it exists until its
last transaction (docs/architecture.md, "The state in etcd", "A copy into etcd").

    1. claim the prefix: meta/copying, under a lease kept alive by the copy, put if there is neither a state
       (meta/format) nor another copy's claim there; a change refuses such a prefix meanwhile (and compares the
       claim absent), a claim whose copy was killed expires with its lease (at once if its process on this host is
       gone), and the next copy takes the prefix over;
    2. delete what an interrupted copy left there (the gateways' records aside), in batches;
    3. every key of the state (etcd_layout.state_keys) but meta/format, and the audit entry's parts but the last,
       in batches of BATCH_OPS keys and BATCH_BYTES bytes, IN_FLIGHT transactions at a time, each holding only
       while the claim is ours;
    4. the last transaction: the audit entry's last part, meta/changed naming it, meta/format, the claim deleted;
       it holds only while the claim is ours and no state and no change is there. Readers and gateways see no state
       until then: a source at a revision without meta/format holds no row (etcd_store.EtcdSource).
"""

from __future__ import annotations

import collections
import json
import os
import socket
import threading
import time
from typing import Any, Callable, Iterable, Iterator

from ..core.inventory import Inventory
from ..core.rows import TABLES
from ..errors import Failure, UserError
from .etcd_client import TIMEOUT, Unanswered
from .etcd_layout import CLAIM, FORMAT, audit_entry, claim_gone, claimed_by, end_of, setting_rows, state_keys
from .etcd_store import EtcdStore

BATCH_OPS = 100          # operations in one transaction of a copy: etcd's default --max-txn-ops is 128
BATCH_BYTES = 512 << 10  # and bytes of keys and values: its default --max-request-bytes is 1.5 MiB
OP_BYTES = 16            # what a put adds to its key and value in the request (protobuf framing), counted high
AUDIT_PART = 256 << 10   # bytes of audit rows in one audit key (the last one goes in the last transaction)
CLAIM_TTL = 15           # seconds a claim outlives its copy (killed: the next copy goes on after it)
DELETE_PAGE = 1_000      # an interrupted copy's keys deleted by one transaction (one range: one operation)
IN_FLIGHT = 8            # transactions sent before the first one's answer is waited for (etcd commits them together)


def batches(kvs: Iterable[tuple[bytes, bytes]], ops: int = BATCH_OPS,
            size: int = BATCH_BYTES) -> Iterator[list[tuple[bytes, bytes]]]:
    """The keys in order, in groups of at most `ops` keys and `size` bytes (pure)."""
    batch: list[tuple[bytes, bytes]] = []
    held = 0
    for key, value in kvs:
        n = len(key) + len(value) + OP_BYTES
        if batch and (len(batch) >= ops or held + n > size):
            yield batch
            batch, held = [], 0
        batch.append((key, value))
        held += n
    if batch:
        yield batch


class Claim:
    """This copy's hold on the prefix: meta/copying, holding who copies, under a lease this copy keeps alive."""

    def __init__(self, store: EtcdStore):
        self.store, self.client = store, store.client
        self.key = store.keys.meta(CLAIM)
        self.value = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "id": os.urandom(8).hex()}).encode()
        self.lease = 0
        self.lost: str | None = None  # why the lease could not be kept alive (the keeper thread says)
        self.done = threading.Event()
        self.keeper: threading.Thread | None = None

    def take(self) -> None:
        """Hold the prefix, or one line why not: a state is there, or another copy holds it for longer than its
        lease lasts."""
        client, keys = self.client, self.store.keys
        until = time.monotonic() + CLAIM_TTL + 5  # a killed copy's claim is gone by then
        while True:
            lease = client.lease(CLAIM_TTL)
            if client.txn([client.mod_is(keys.meta("format"), 0), client.mod_is(self.key, 0)],
                          [client.put(self.key, self.value, lease)]).succeeded:
                self.lease = lease
                self.keeper = threading.Thread(target=self._keep, name="copy-claim", daemon=True)
                self.keeper.start()
                return
            client.revoke(lease)
            _, meta = self.store._meta()
            if "format" in meta:
                raise UserError(f"state copy: {self.store.path} holds a state now (made meanwhile); give --replace "
                                "to overwrite it")
            held = meta[CLAIM][0] if CLAIM in meta else None  # None: gone since our transaction
            if held is not None and claim_gone(held):  # its copy was killed on this host: its lease need not end
                client.txn([client.value_is(self.key, held)], [client.delete(self.key)])
                continue
            if time.monotonic() > until:
                raise UserError(f"state copy: another copy into {self.store.path} is under way "
                                f"({claimed_by(held or b'')}); wait until it is done")
            time.sleep(0.5)

    def sent(self, ops: list[Any], compares: list[Any] | None = None) -> Callable[[], Any]:
        """`ops` sent, to be written if the claim is still ours (and `compares` hold; its lease is kept alive by
        _keep): what this returns waits for the answer. A claim lost (another copy took the prefix over after our
        lease expired) is one line, exit 1."""
        client = self.client
        if self.lost is not None:
            raise Failure(f"state copy: {self.store.path}: this copy's claim expired ({self.lost}); nothing exists "
                          "there yet: run the copy again")
        answer = client.txn_sent([client.value_is(self.key, self.value), *(compares or [])], ops)

        def held() -> Any:
            reply = answer()
            if not reply.succeeded:
                raise Failure(f"state copy: {self.store.path}: this copy lost its claim on the prefix (another "
                              "copy took it over, or a state was made there); nothing of this copy exists there")
            return reply
        return held

    def txn(self, ops: list[Any], compares: list[Any] | None = None) -> Any:
        return self.sent(ops, compares)()

    def _keep(self) -> None:
        """The claim's lease kept alive every CLAIM_TTL / 3 seconds, in a thread: whatever the copy is doing
        meanwhile (a million rows' count keys made at once, a slow batch), until released. A keepalive etcd does not
        answer is tried again at the next turn; the lease found expired ends it (the copy then stops, one line)."""
        last = time.monotonic()
        while not self.done.wait(CLAIM_TTL / 3):
            try:
                if self.client.keep_alive(self.lease) <= 0:
                    self.lost = f"etcd last renewed it {time.monotonic() - last:.0f} s before"
                    return
                last = time.monotonic()
            except (UserError, Failure) as e:
                if time.monotonic() - last > CLAIM_TTL:
                    self.lost = f"etcd did not renew it for {CLAIM_TTL} s: {e}"
                    return

    def release(self) -> None:
        self.done.set()
        if self.keeper is not None:
            self.keeper.join(TIMEOUT)
        if self.lease:
            self.client.revoke(self.lease)  # the claim key with it, if still there
            self.lease = 0


def clear(store: EtcdStore, claim: Claim) -> int:
    """Delete what an interrupted copy left under the prefix (all but the claim and the gateways' records), in
    transactions of DELETE_PAGE keys: how many."""
    client, keys = store.client, store.keys
    root, gateways, held = keys.everything(), keys.gateways(), claim.key
    deleted = 0
    for start, end in ((root, gateways), (end_of(gateways), held), (held + b"\0", end_of(root))):
        while True:
            found = client.range(start, end, keys_only=True, limit=DELETE_PAGE).kvs
            if not found:
                break
            claim.txn([client.delete(start, bytes(found[-1].key) + b"\0")])
            deleted += len(found)
    return deleted


def copy_in(store: EtcdStore, inv: Inventory, command: str) -> dict[str, int]:
    """The whole state `inv` written under the store's prefix, which holds none (module docstring): how many rows
    of each table, as `enforcer state copy` says them. Sets store.committed, the new state's generation."""
    client, keys = store.client, store.keys
    form, changed = keys.meta("format"), keys.meta("changed")
    claim = Claim(store)
    claim.take()
    try:
        in_flight: collections.deque[Callable[[], Any]] = collections.deque()
        try:
            clear(store, claim)
            last: list[bytes] = []  # the audit entry's last part, once the rest is written
            for batch in batches(with_audit(store, inv, command, last)):
                if any(k.startswith(keys.audit()) for k, _ in batch):  # the parts in order: all before committed
                    while in_flight:
                        in_flight.popleft()()
                in_flight.append(claim.sent([client.put(k, v) for k, v in batch]))
                if len(in_flight) >= IN_FLIGHT:
                    in_flight.popleft()()
            while in_flight:
                in_flight.popleft()()
        except (UserError, Failure) as e:
            for answer in in_flight:  # none still to land after the clear
                try:
                    answer()
                except (UserError, Failure):
                    pass
            try:
                clear(store, claim)
            except (UserError, Failure):  # etcd gone meanwhile, or the claim lost: the next copy clears them
                raise type(e)(f"{e} (the keys it wrote are no state; the next copy into it clears them)") from None
            raise
        audit_key = keys.new_audit()
        try:
            reply = claim.txn([client.put(audit_key, last[0]), client.put(changed, audit_key),
                               client.put(form, FORMAT.encode()), client.delete(claim.key)],
                              [client.mod_is(form, 0), client.mod_is(changed, 0)])
        except Unanswered as e:  # it may have committed: nothing to clear then
            raise Unanswered(f"{e}; the copy's last transaction may have committed: `enforcer --state "
                             f"{store.path} status` says whether the state exists; if not, run the copy again") \
                from None
        store.committed = int(reply.header.revision)
    finally:
        try:
            claim.release()
        except (UserError, Failure):
            pass  # the lease expires by itself
    return {table: len(getattr(inv, table)) for table in TABLES}


def with_audit(store: EtcdStore, inv: Inventory, command: str, last: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
    """Every key of the state but meta/format (state_keys), and among them the copy's audit entry in parts of
    about AUDIT_PART bytes, its rows as a change making the state writes them (each row created, by table and
    name, then the settings); all parts but the last, whose value is appended to `last` once all is through."""
    keys = store.keys
    tables = [(keys.table(t), t[:-1]) for t in TABLES]
    part: list[list[Any]] = []
    held = 0
    for key, value in state_keys(keys, inv):
        if key == keys.meta("format"):
            continue
        yield key, value
        for under, kind in tables:
            if key.startswith(under):
                part.append([kind, keys.name_of(key, under), None, value.decode()])
                held += len(key) + len(value) + OP_BYTES
        if held > AUDIT_PART:
            yield keys.new_audit(), audit_entry(command, part)
            part, held = [], 0
    last.append(audit_entry(command, part + setting_rows(Inventory(), inv)))
