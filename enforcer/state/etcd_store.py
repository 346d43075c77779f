"""The state in etcd v3: the same rows as the SQLite store, one key each under a prefix (etcd_layout.py), and a
change as one etcd transaction that holds only if nothing the operation read has changed since (optimistic
concurrency).

Every read of a change is at one revision R (etcd's MVCC: a consistent snapshot, as SQLite's transaction is). The
source records each key it read with its mod_revision (0: absent) and each index range it listed; the
transaction then compares them all (a key created in a listed range since R fails its range's compare), and the
keys it writes too. A conflict reruns the pure operation on a fresh snapshot. An operation that read a whole table
compares meta/changed instead, which every change writes: it then holds only if no change at all came between.
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any, Callable, Generator, Iterable, Iterator, TypeVar

from ..core.inventory import Inventory
from ..core.profile import Profile
from ..core.rows import COUNTED_BY, INDEXED, TABLES, Counts
from ..core.validate import check_row, validate
from ..errors import Failure, UserError
from .etcd_client import Compacted, EtcdClient, EtcdOptions, EtcdUrl, Unanswered
from .rows import Entity, from_doc
from .source import over
from .store import Changed, _audited
from .etcd_gateways import Gateway, gateways_of
from .etcd_layout import (CLAIM, FORMAT, RUNNING_GROUPS, Keys, audit_entry, claim_gone, claimed_by, count_holds,
                          count_of, group_values, members_of, other_layout, parse_address_value, planned, end_of,
                          row_keys)

T = TypeVar("T")


ATTEMPTS = 50      # a change rerun this often on conflicts gives up (one line, exit 1)


MAX_COMPARES = 96  # past this many, one compare of meta/changed stands for them (etcd's default limit is 128)


ROW_BY_ROW = 2_000  # rows an index lists that are read one by one; past it, the whole table a page at a time


Running = tuple[dict[str, Any], str, int, list[str]]  # a group of running resources: values, JSON, count, head


class EtcdSource:
    """An inventory's rows read from etcd at one revision, each as it is asked for; what was read is recorded
    (key -> mod_revision, 0 for absent; ranges listed; whether a whole table was) for the transaction's compares."""

    def __init__(self, client: EtcdClient, keys: Keys, revision: int, where: str,
                 check: Callable[[str, Entity], None] | None = None, absent: bool = False):
        self.client, self.keys, self.revision, self.where_, self.check = client, keys, revision, where, check
        # no state at this revision (no meta/format): no row, whatever keys a copy under way (or one interrupted)
        # has written there so far: they are not a state until its last transaction (etcd_copy.py)
        self.absent = absent
        self.seen: dict[bytes, int] = {}
        self.ranges: list[tuple[bytes, bytes]] = []
        self.whole = False
        self.cache: dict[str, dict[str, Entity | None]] = {t: {} for t in TABLES}
        self.bulk: dict[tuple[str, str, str], list[Entity]] = {}  # where()'s large answers, read whole
        self.groups: dict[str | None, list[Running]] = {}  # the running groups read

    def _range(self, key: bytes, end: bytes | None = None, **kw: Any) -> Any:
        return self.client.range(key, end, revision=self.revision, **kw)

    def get(self, key: bytes) -> bytes | None:
        if self.absent:
            self.seen[key] = 0
            return None
        kvs = self._range(key).kvs
        self.seen[key] = kvs[0].mod_revision if kvs else 0
        return bytes(kvs[0].value) if kvs else None

    def _parse(self, table: str, name: str, doc: bytes, keep: bool = True) -> Entity:
        cached = self.cache[table].get(name)
        if cached is not None:
            return cached
        try:
            row = from_doc(table, doc.decode())
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise UserError(f"{self.where_}: {table} row {name!r} does not parse: {type(e).__name__}: {e}; "
                            "the state is damaged") from None
        if self.check is not None:
            self.check(table, row)
        if keep:
            self.cache[table][name] = row
        return row

    def row(self, table: str, name: str) -> Entity | None:
        rows = self.cache[table]
        if name in rows:
            return rows[name]
        doc = self.get(self.keys.row(table, name))
        if doc is None:
            rows[name] = None
            return None
        return self._parse(table, name, doc)

    def _listed(self, under: bytes) -> list[str]:
        """The names of the keys under `under`, recorded as a range read (a key created there since fails it)."""
        self.ranges.append((under, end_of(under)))
        if self.absent:
            return []
        return [self.keys.name_of(kv.key, under)
                for kv in self.client.pages(under, end_of(under), revision=self.revision, keys_only=True)]

    def names(self, table: str) -> Iterable[str]:
        self.whole = True
        under = self.keys.table(table)
        if self.absent:
            return []
        return [self.keys.name_of(kv.key, under) for kv in self._range(under, end_of(under), keys_only=True).kvs]

    def rows(self, table: str) -> Iterable[Entity]:
        self.whole = True
        under = self.keys.table(table)
        if self.absent:
            return
        for kv in self.client.pages(under, end_of(under), revision=self.revision):
            yield self._parse(table, self.keys.name_of(kv.key, under), kv.value, keep=False)

    def count(self, table: str) -> int:
        self.whole = True
        if table == "resources" and not self.absent:  # the count keys' sum, as SQLite's resource_counts: etcd
            under = self.keys.counts()                    # counts a range key by key
            return sum(count_of(kv.value, bytes(kv.key))[0] for kv in self.client.pages(under, end_of(under),
                                                                                        revision=self.revision))
        under = self.keys.table(table)
        return 0 if self.absent else int(self._range(under, end_of(under), count_only=True).count)

    def where(self, table: str, column: str, value: str) -> Iterable[Entity]:
        if (table, column) not in INDEXED:
            raise ValueError(f"{table}.{column} has no index")
        names = self._listed(self.keys.index(table, column, value))
        if len(names) > ROW_BY_ROW:  # a read per row would be a round trip each: the table's pages, filtered
            key = (table, column, value)  # once per snapshot: an operation may ask again (diagnose: 3 times)
            if key not in self.bulk:
                self.bulk[key] = [row for row in self.rows(table) if getattr(row, column) == value]
            return self.bulk[key]
        self._read_ahead(table, names)
        rows = (self.row(table, name) for name in names)
        return [row for row in rows if row is not None]

    def _read_ahead(self, table: str, names: list[str]) -> None:
        """The rows of `names` not read yet, asked for at once (recorded as get() records them)."""
        rows = self.cache[table]
        wanted = [name for name in dict.fromkeys(names) if name not in rows]
        if self.absent or len(wanted) < 2:
            return
        keys = [self.keys.row(table, name) for name in wanted]
        for name, key, reply in zip(wanted, keys, self.client.ranges(keys, revision=self.revision), strict=True):
            self.seen[key] = reply.kvs[0].mod_revision if reply.kvs else 0
            if reply.kvs:
                self._parse(table, name, reply.kvs[0].value)
            else:
                rows[name] = None

    def owner(self, address: str) -> str | None:
        value = self.get(self.keys.address(address))
        if value is None:
            return None
        try:
            return parse_address_value(value)[0]
        except ValueError as e:
            raise UserError(f"{self.where_}: the address row of {address} does not parse ({e}); the state is "
                            "damaged") from None

    def prefixed(self) -> Iterable[Entity]:
        names = self._listed(self.keys.prefixed())
        self._read_ahead("resources", names)
        rows = (self.row("resources", name) for name in names)
        return [row for row in rows if row is not None]

    def _running_groups(self, subscription: str | None) -> list[Running]:
        """(values, JSON, count, head) of each group of running resources (of one subscription, or all), from the count
        keys: one small range, recorded as a range read (a group counted from 0 since fails it) and each key as a
        key read (a group counted up, down, or away since fails it). Kept for the snapshot."""
        if subscription not in self.groups:
            start = self.keys.counts(subscription) + (b"" if subscription is None else RUNNING_GROUPS)
            self.ranges.append((start, end_of(start)))
            under, found = self.keys.counts(), []
            for kv in () if self.absent else self._range(start, end_of(start)).kvs:  # a key a group: one answer
                key = bytes(kv.key)
                sub, _, group = self.keys.name_of(key, under).partition("/")
                if group.encode().startswith(RUNNING_GROUPS):
                    self.seen[key] = kv.mod_revision
                    try:
                        values = group_values(sub, group)
                    except (ValueError, TypeError, KeyError) as e:
                        raise UserError(f"{self.where_}: the count key {key.decode(errors='replace')} does not parse "
                                        f"({type(e).__name__}: {e}); the state is damaged") from None
                    found.append((values, group, *count_of(kv.value, key)))
            self.groups[subscription] = found
        return self.groups[subscription]

    def running(self, by: tuple[str, ...], subscription: str | None = None) -> Counts:
        if not set(by) <= set(COUNTED_BY):
            raise ValueError(f"running resources are not counted by {by}")
        counts: Counts = {}
        for values, _, n, _ in self._running_groups(subscription):
            key = tuple(values[column] for column in by)
            counts[key] = counts.get(key, 0) + n
        return counts

    def running_names(self, subscription: str, where: dict[str, Any], limit: int | None) -> list[str]:
        """The first `limit` names of each matching group, merged: from its count key's head where that holds them,
        else the first of its name range (etcd sorts them; etcd 3.4 walks the whole range, even for a few). The
        ranges are read, not recorded for a compare (which would walk up to a subscription's every name in etcd):
        every change to a group's names writes its count key in the same transaction (planned()), and that key
        is compared (read by _running_groups), as is the range of the subscription's count keys (a group made
        since); so a name added to or gone from a group listed here fails the transaction all the same."""
        if not set(where) <= set(COUNTED_BY):
            raise ValueError(f"running resources are not found by {list(where)}")
        names: list[str] = []
        for values, group, n, head in self._running_groups(subscription):
            if all(values[column] == value for column, value in where.items()):
                whole = len(head) == n
                names += head[:limit] if whole or (limit is not None and limit <= len(head)) else \
                    self.first(subscription, group, limit)
        return sorted(names)[:limit]

    def first(self, subscription: str, group: str, limit: int | None) -> list[str]:
        """The first `limit` names (None: all) of a group's name range at this snapshot, not recorded (see
        running_names)."""
        if limit == 0 or self.absent:  # etcd's 0: no limit
            return []
        under = self.keys.group(subscription, group)
        kvs = self.client.pages(under, end_of(under), revision=self.revision, keys_only=True) if limit is None else \
            self._range(under, end_of(under), keys_only=True, limit=limit).kvs
        return [self.keys.name_of(kv.key, under) for kv in kvs]


class EtcdStore:
    """The state under one prefix of an etcd cluster: what the CLI asks of a state (state/backend.py)."""

    def __init__(self, url: EtcdUrl, options: EtcdOptions | None = None):
        self.url, self.options = url, options or EtcdOptions()
        self.path = str(url)
        self.keys = Keys(url.prefix)
        self._client: EtcdClient | None = None
        self.committed: int | None = None  # the generation (revision) of this store's last committed change

    @property
    def client(self) -> EtcdClient:
        if self._client is None:
            self._client = EtcdClient(self.url, self.options)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def end_snapshot(self) -> None:
        """A snapshot is a revision, not a transaction held open: nothing to end."""

    # ------------------------------------------------------------ reading

    def _meta(self, revision: int = 0) -> tuple[int, dict[str, Any]]:
        """(revision, {name: (value, mod_revision)}) of meta/, read at `revision` (0: now)."""
        under = self.keys.meta("")
        reply = self.client.range(under, end_of(under), revision=revision)
        meta = {self.keys.name_of(kv.key, under): (bytes(kv.value), kv.mod_revision) for kv in reply.kvs}
        return revision or int(reply.header.revision), meta

    def _settings(self, meta: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
        try:
            profile = json.loads(meta["profile"][0]) if "profile" in meta else "azure"
            prefixes = tuple(json.loads(meta["internal_prefixes"][0])) if "internal_prefixes" in meta else ()
        except (ValueError, TypeError) as e:
            raise UserError(f"{self.path}: a setting does not parse ({e}); the state is damaged") from None
        if "format" in meta and meta["format"][0].decode() != FORMAT:
            raise UserError(f"{self.path}: {other_layout(meta['format'][0].decode())}")
        return profile, prefixes

    @property
    def exists(self) -> bool:
        return "format" in self._meta()[1]

    def generation(self) -> int:
        """The revision of the state's last change (0: none yet): etcd's revision numbers, not a count."""
        meta = self._meta()[1]
        return int(meta["changed"][1]) if "changed" in meta else 0

    def _source(self, profiles: Callable[[str], Profile] | None,
                at: int = 0) -> tuple[Inventory, dict[str, Any]]:
        revision, meta = self._meta(at)
        profile, prefixes = self._settings(meta)
        check = None
        if profiles is not None:
            loaded = profiles(profile)
            check = lambda table, row: check_row(loaded, table, row)  # noqa: E731
        source = EtcdSource(self.client, self.keys, revision, self.path, check, absent="format" not in meta)
        for name in ("profile", "internal_prefixes"):  # read by every operation: a concurrent edit is a conflict
            source.seen[self.keys.meta(name)] = int(meta[name][1]) if name in meta else 0
        return Inventory(profile, internal_prefixes=prefixes, source=source), meta

    def snapshot(self, profiles: Callable[[str], Profile] | None = None) -> Inventory:
        """The state as of now (one revision), read as it is asked for."""
        while True:
            try:
                return self._source(profiles)[0]
            except Compacted:  # compacted between our two reads: take the newer revision
                continue

    # ------------------------------------------------------------ what the daemon reads (dataplane/etcd_follow.py)

    def head(self) -> tuple[int, int]:
        """(the current revision, the state's generation at it: the revision of its last change)."""
        return self.head_at(0)

    def head_at(self, revision: int) -> tuple[int, int]:
        """(`revision`, or the current one for 0; the state's generation at it)."""
        revision, meta = self._meta(revision)
        return revision, int(meta["changed"][1]) if "changed" in meta else 0

    def snapshot_at(self, revision: int, profiles: Callable[[str], Profile] | None = None) -> Inventory:
        """The state as of `revision`, read as it is asked for; raises Compacted if etcd no longer has it."""
        return self._source(profiles, revision)[0]

    def address_rows_at(self, revision: int,
                        page: int | None = None) -> Iterator[tuple[str, str, int | None, str, str | None]]:
        """Every address key at `revision` as SQLite's address_rows() gives them (address, resource, prefix
        length, judged, bound), read a page at a time (a million addresses do not fit one gRPC message); none
        at a revision without a state (a copy's keys before its last transaction are none)."""
        if "format" not in self._meta(revision)[1]:
            return
        under = self.keys._k("addresses/")
        start = len(under)
        judged_texts: dict[bytes, str] = {}  # a few distinct ones among a million rows: each decoded once
        for kv in self.client.pages(under, end_of(under), revision=revision, page=page):
            try:  # parse_address_value, inline: this loop is most of a gateway's start
                name, plen, bound, judged = kv.value.split(b"\0", 3)
                plen_ = int(plen) if plen else None
            except ValueError as e:
                raise UserError(f"{self.path}: the address row of {self.keys.name_of(kv.key, under)} does not "
                                f"parse ({e}); the state is damaged") from None
            text = judged_texts.get(judged)
            if text is None:
                text = judged_texts[judged] = judged.decode()
            yield kv.key[start:].decode(), name.decode(), plen_, text, bound.decode() if bound else None

    def changed_between(self, after: int, revision: int, limit: int) -> list[Changed] | None:
        """What the audit log says changed after revision `after` up to `revision` (read at it), oldest first, as
        SQLite's changed_since() gives it; None when more than `limit` rows did. The audit keys outlive a
        compaction (they are never deleted), so that a follower that missed the events catches up from them."""
        under = self.keys.audit()
        # the keys first, then the values of those alone: etcd 3.4 filters by creation after it has read the whole
        # range, and a copied state's audit entry is ~1,000 parts of 256 KiB (a 1M relist moved 256 MB for nothing)
        found = self.client.range_from(under, end_of(under), revision=revision, min_create_revision=after + 1,
                                       oldest_first=True, limit=limit + 1, keys_only=True).kvs
        out: list[Changed] = []
        for reply in self.client.ranges([bytes(kv.key) for kv in found], revision=revision):
            kv = reply.kvs[0]
            try:
                out += [Changed(kind, name, _audited(kind, before), _audited(kind, after_))
                        for kind, name, before, after_ in json.loads(kv.value)["rows"]]
            except (ValueError, TypeError, KeyError) as e:
                raise UserError(f"{self.path}: an audit entry does not parse ({e}); the state is damaged") from None
            if len(out) > limit:
                return None
        return out

    def written_between(self, after: int, revision: int) -> set[tuple[str, str]]:
        """The rows (kind, name) whose key was written after revision `after`, as of `revision`: a follower
        compares them with what the audit log says, to find a write that left no audit entry."""
        out: set[tuple[str, str]] = set()
        for table in TABLES:
            under = self.keys.table(table)
            reply = self.client.range_from(under, end_of(under), revision=revision, min_mod_revision=after + 1,
                                           keys_only=True)
            out |= {(table[:-1], self.keys.name_of(kv.key, under)) for kv in reply.kvs}
        return out

    def read(self) -> tuple[Inventory, int]:
        """The whole state at one revision, in memory: (inventory, generation)."""
        while True:
            try:
                revision, meta = self._meta()
                profile, prefixes = self._settings(meta)
                source = EtcdSource(self.client, self.keys, revision, self.path, absent="format" not in meta)
                tables: dict[str, Any] = {t: {r.name: r for r in source.rows(t)} for t in TABLES}
                generation = int(meta["changed"][1]) if "changed" in meta else 0
                return Inventory(profile, internal_prefixes=prefixes, **tables), generation
            except Compacted:
                continue

    def names(self, table: str, prefix: str = "", limit: int = 100) -> list[str]:
        if table not in TABLES:
            raise ValueError(f"no names table {table!r}")
        under = self.keys.table(table)
        reply = self.client.range(under + prefix.encode(), end_of(under + prefix.encode()) if prefix else end_of(under),
                                  keys_only=True, limit=limit)
        return [self.keys.name_of(kv.key, under) for kv in reply.kvs]

    def audit(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest `limit` audit rows, oldest first, as SQLite's store gives them; `id` is the revision of the
        change that wrote the row (the rows of one change share it)."""
        under = self.keys.audit()
        reply = self.client.range(under, end_of(under), limit=limit, newest_first=True)
        out: list[dict[str, Any]] = []
        for kv in reply.kvs:
            try:
                change = json.loads(kv.value)
                rows = [{"id": kv.create_revision, "at": change["at"], "uid": change["uid"],
                         "command": change["command"], "kind": kind, "name": name,
                         "before": json.loads(before) if before else None,
                         "after": json.loads(after) if after else None}
                        for kind, name, before, after in change["rows"]]
            except (ValueError, TypeError, KeyError) as e:
                raise UserError(f"{self.path}: an audit entry does not parse ({e}); the state is damaged") from None
            out[:0] = rows
            if len(out) >= limit:
                break
        return out[-limit:]

    def verify(self, profiles: Callable[[str], Profile]) -> dict[str, int]:
        """The whole state checked at one revision: every row parsed, the inventory validated against its profile,
        the address, index and count keys against the resources."""
        if not self.exists:
            raise UserError(f"no state at {self.path}")
        inv, _ = self.read()
        validate(inv, profiles(inv.profile))
        expected: dict[bytes, bytes] = {}
        for table in TABLES:
            for row in getattr(inv, table).values():
                expected.update(row_keys(self.keys, table, row))
        revision = self.head()[0]

        def keys_under(under: bytes) -> dict[bytes, bytes]:  # in pages: at 1M VMs index/ holds 2M keys
            return {bytes(kv.key): bytes(kv.value) for kv in self.client.pages(under, end_of(under), revision=revision)}
        held = {**keys_under(self.keys._k("addresses/")), **keys_under(self.keys._k("index/"))}
        wrong = sorted(set(held) ^ {k for k in expected} | {k for k in held if held[k] != expected.get(k)})
        counts = keys_under(self.keys.counts())
        groups = {self.keys.count(*group): sorted(names) for group, names in members_of(inv).items()}
        wrong += sorted(k for k in set(counts) | set(groups) if not count_holds(counts.get(k), groups.get(k, [])))
        if wrong:
            raise UserError(f"{self.path}: {len(wrong)} address, index or count keys do not match the resources "
                            f"(first: {wrong[0].decode()}); the state is damaged")
        under = self.keys.audit()
        audit = int(self.client.range(under, end_of(under), count_only=True).count)
        addresses = sum(1 for k in held if k.startswith(self.keys._k("addresses/")))
        return {"subscriptions": len(inv.subscriptions), "vnets": len(inv.vnets), "resources": len(inv.resources),
                "addresses": addresses, "audit entries": audit}

    # ------------------------------------------------------------ the gateways that follow the state

    def gateway_keys(self) -> tuple[int, dict[str, bytes]]:
        """(the current revision, every key under gateways/ named relative to it, with its value)."""
        under = self.keys.gateways()
        reply = self.client.range(under, end_of(under))
        return int(reply.header.revision), {self.keys.name_of(kv.key, under): bytes(kv.value) for kv in reply.kvs}

    def fleet(self) -> tuple[int, list[Gateway]]:
        """(the state's generation, every gateway that follows it or did), read at one revision."""
        revision, keys = self.gateway_keys()
        _, generation = self.head_at(revision)
        return generation, gateways_of(keys)

    def forget_gateway(self, name: str) -> Gateway:
        """Delete what a gateway that is gone for good left (its record without a lease); refused while it lives
        (it would write it again)."""
        _, keys = self.gateway_keys()
        known = {g.name: g for g in gateways_of(keys)}
        if name not in known:
            listed = ", ".join(known) or "none"
            raise UserError(f"gateway forget: no gateway {name!r} follows {self.path} or did (known: {listed})")
        client = self.client
        live, seen = self.keys.gateway(name), self.keys.gateway_seen(name)
        if not client.txn([client.mod_is(live, 0)], [client.delete(seen)]).succeeded:
            raise UserError(f"gateway forget: {name!r} is alive (its lease holds): stop its daemon first, or wait "
                            "until its lease expires")
        return known[name]

    def gateway_events(self, start: int, until: float) -> Generator[list[tuple[str, bytes | None]], None, None]:
        """What changes under gateways/ from revision `start` on, one batch per watch answer (key relative to
        gateways/, its value, None when deleted: a lease expired or revoked), until the monotonic time `until`.
        Raises Compacted when `start` is compacted away (the caller reads the keys again)."""
        import grpc
        from aetcd.rpc import rpc_pb2_grpc
        client, under = self.client, self.keys.gateways()
        done = threading.Event()

        def requests() -> Iterator[Any]:
            yield client.rpc.WatchRequest(create_request=client.rpc.WatchCreateRequest(
                key=under, range_end=end_of(under), start_revision=start))
            done.wait()  # the stream stays open until we are done with it

        timeout = until - time.monotonic()
        if timeout <= 0:
            return
        stream = rpc_pb2_grpc.WatchStub(client.channel).Watch(requests(), timeout=timeout, metadata=client.metadata)
        try:
            for reply in stream:
                if reply.compact_revision:
                    raise Compacted(f"revision {start} is compacted (up to {reply.compact_revision})")
                if reply.canceled:
                    raise Failure(f"{self.path}: etcd cancelled the watch of the gateways: "
                                  f"{reply.cancel_reason or 'no reason given'}")
                if reply.events:
                    yield [(self.keys.name_of(e.kv.key, under), None if e.type == 1 else bytes(e.kv.value))
                           for e in reply.events]
        except grpc.RpcError as e:
            # our deadline: gRPC's DEADLINE_EXCEEDED, or the member's "context deadline exceeded" when it ends first
            if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED and "deadline exceeded" not in (e.details() or ""):
                raise client.trouble(e.code(), e.details() or "") from None
        finally:
            done.set()
            stream.cancel()

    # ------------------------------------------------------------ changing

    def leftover(self, revision: int = 0) -> list[bytes]:
        """Up to two keys under the prefix that are not a state's, where none exists: what a copy under way has
        written, or one interrupted (its claim, meta/copying, aside; the gateways' records are not the state)."""
        root, gateways = self.keys.everything(), self.keys.gateways()
        found = []
        for start, end in ((root, gateways), (end_of(gateways), end_of(root))):
            reply = self.client.range(start, end, revision=revision, keys_only=True, limit=2)
            found += [bytes(kv.key) for kv in reply.kvs if bytes(kv.key) != self.keys.meta(CLAIM)]
        return found[:2]

    def _no_copy_here(self, revision: int) -> None:
        """A change into a prefix that holds no state: refused while a copy is under way there, or the leftover of
        an interrupted one (its keys would be taken for the new state's)."""
        claim = self.client.range(self.keys.meta(CLAIM), revision=revision).kvs
        if claim and not claim_gone(claim[0].value):
            raise UserError(f"{self.path}: a state copy into it is under way ({claimed_by(claim[0].value)}); wait "
                            "until it is done")
        if claim or self.leftover(revision):
            raise UserError(f"{self.path}: holds the leftover of an interrupted state copy (no state yet): run "
                            f"that copy again, or delete it (etcdctl del --prefix /{self.url.prefix}/)")

    def change(self, command: str, operation: Callable[[Inventory], tuple[Inventory, T]],
               profiles: Callable[[str], Profile] | None = None) -> T:
        """Run `operation` on a snapshot and write what it changed in one transaction that holds only if nothing
        it read has changed since; else run it again on a newer snapshot. If it raises, nothing is written. When no
        member answers (a leader change, a member down), it is tried again on the next member for up to
        etcd_client.RETRY_BUDGET seconds; a transaction whose answer was lost may have committed: each later attempt
        first looks for its audit key (found: that was the change) and otherwise compares it absent."""
        lost: dict[bytes, Any] = {}  # audit key -> result, of the transactions whose answer was lost
        unanswered_since: float | None = None
        attempt = 0
        try:
            while attempt < ATTEMPTS:
                try:
                    outcome = self._attempt(command, operation, profiles, lost)
                except Compacted:
                    outcome = None
                except Unanswered as e:
                    unanswered_since = unanswered_since or time.monotonic()
                    self.client.try_again(e, unanswered_since, sent=bool(lost))
                    continue
                if outcome is not None:
                    return outcome[0]
                attempt += 1
                time.sleep(random.uniform(0, 0.002 * min(attempt, 10)))  # concurrent writers fall out of step
        finally:
            if self._client is not None:
                self._client.deadline = None  # the budget was this change's: the next one has its own
        raise Failure(f"{self.path}: the change conflicted with others {ATTEMPTS} times in a row; nothing was "
                      "changed: try again")

    def _attempt(self, command: str, operation: Callable[[Inventory], tuple[Inventory, T]],
                 profiles: Callable[[str], Profile] | None, lost: dict[bytes, Any]) -> tuple[T] | None:
        """(what the operation returned,) once written; None when the transaction met a conflict."""
        old, meta = self._source(profiles)
        source = old.source
        assert isinstance(source, EtcdSource)
        for key, result in lost.items():  # read: absent, it is compared absent (or meta/changed is), never twice
            if source.get(key) is not None:  # that transaction did commit, at its audit key's revision
                self.committed = source.seen[key]
                return (result,)
        if "format" not in meta:
            self._no_copy_here(source.revision)
        new, result = operation(old)
        if new.source is not old.source:
            new = over(old, new)
        writes, rows = planned(self.keys, old, new, "format" in meta, source.get, source.first)
        if not rows:
            return (result,)
        client = self.client
        for key in writes:  # a key written is one read: its writer must not have raced another (lost updates)
            if key not in source.seen and not key.startswith(self.keys._k("index/")):
                source.get(key)
        changed = self.keys.meta("changed")
        if source.whole or len(source.seen) + len(source.ranges) > MAX_COMPARES:
            compares = [client.mod_is(changed, meta["changed"][1] if "changed" in meta else 0)]
        else:
            compares = [client.mod_is(key, revision) for key, revision in sorted(source.seen.items())]
            compares += [client.untouched_since(start, end, source.revision) for start, end in source.ranges]
        if "format" not in meta:  # the first change: no copy may have begun here since (etcd_copy.py)
            compares.append(client.mod_is(self.keys.meta(CLAIM), 0))
        audit_key = self.keys.new_audit()
        ops = [client.delete(k) if v is None else client.put(k, v) for k, v in sorted(writes.items())]
        ops += [client.put(audit_key, audit_entry(command, rows)),
                client.put(changed, audit_key), client.put(self.keys.meta("format"), FORMAT.encode())]
        try:
            reply = client.txn(compares, ops)
        except Unanswered:
            lost[audit_key] = result
            raise
        if not reply.succeeded:
            return None
        self.committed = int(reply.header.revision)  # meta/changed's mod_revision: the state's new generation
        return (result,)
