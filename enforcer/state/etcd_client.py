"""The edge to etcd v3: an etcd:// location, one gRPC channel (TLS, user and password), ranges read at a revision,
transactions; every gRPC error told as one line a person can act on.

aetcd provides the compiled etcd v3 API (its `rpc` module: protobuf messages and gRPC stubs built for today's
protobuf); we call the stubs directly, synchronously, because aetcd's Client connects without TLS and reads at the
current revision only (docs/architecture.md, "Why this etcd client"). Nothing here knows what the state holds.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..errors import Failure, UserError

SCHEME = "etcd://"
DEFAULT_PORT = 2379
TIMEOUT = 10.0  # seconds a call may take: a member that does not answer is told, not waited for
# seconds a change keeps trying after the first call no member answered: a leader election (etcd's takes 1 to 3 s at
# its default timings) or a member killed or stopped is waited out on the next member; then it is told, exit 1
RETRY_BUDGET = 15.0
# gRPC keepalive for a long-lived stream (the daemon's watch): a ping every 6 s (etcd refuses pings more often than
# every 5 s by default: --grpc-keepalive-min-time), the connection dropped when one is unanswered for 3 s
KEEPALIVE = [("grpc.keepalive_time_ms", 6000), ("grpc.keepalive_timeout_ms", 3000),
             ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0),
             # gRPC's own reconnect backoff (1 s growing 1.6 times to 120 s) would hold a healed gateway's watch
             # longer than ours does (0.2 s doubling to 2 s): a fleet benchmark's gateway reconnected 3.9 s after
             # the heal of a 3 s cut
             ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
             ("grpc.max_reconnect_backoff_ms", 1000)]
PREFIX_RE = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
# A whole range (a table, an index, the address rows) is read a page at a time: one answer past gRPC's limit fails.
# Pages are large, because etcd 3.4 counts every key left in the range for each page it answers (1M address rows in
# pages of 10,000: ~19 s, most of it counting; of 100,000: etcd's CPU 3 times that of 250,000); a page of 250,000
# address rows is ~40 MB, hence the larger limit (a page past it is asked for again in halves).
PAGE = 250_000
MAX_MESSAGE = 256 << 20
FIRST_PAGE_PART = 5  # the first page is a fifth of the others: etcd answers it sooner, the reading starts meanwhile
READS_PER_TXN = 100  # single-key reads in one transaction (EtcdClient.ranges): etcd's default --max-txn-ops is 128


def is_etcd(location: str) -> bool:
    return location.startswith(SCHEME)


@dataclass(frozen=True)
class EtcdUrl:
    """etcd://HOST:PORT[,HOST:PORT...]/PREFIX: the members to ask and the prefix the state's keys live under."""
    endpoints: tuple[tuple[str, int], ...]
    prefix: str  # without slashes at either end: "lab" holds its keys under "/lab/"

    def __str__(self) -> str:
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.endpoints)
        return f"{SCHEME}{hosts}/{self.prefix}"


def parse_url(text: str) -> EtcdUrl:
    """Pure: the URL's endpoints (port 2379 unless given) and prefix, or one line saying what is wrong."""
    form = "write etcd://HOST:PORT[,HOST:PORT...]/PREFIX"
    if not is_etcd(text):
        raise UserError(f"{text!r}: not an etcd:// location; {form}")
    hosts, slash, prefix = text[len(SCHEME):].partition("/")
    prefix = prefix.strip("/")
    if not slash or not prefix:
        raise UserError(f"{text!r}: name the prefix the state lives under (etcd://HOST:PORT/enforcer); {form}")
    if not PREFIX_RE.fullmatch(prefix):
        raise UserError(f"{text!r}: the prefix may hold letters, digits, '.', '_', '-' and '/' between them; {form}")
    if not hosts:
        raise UserError(f"{text!r}: no member named; {form}")
    return EtcdUrl(tuple(_endpoint(text, part, form) for part in hosts.split(",")), prefix)


def _endpoint(text: str, part: str, form: str) -> tuple[str, int]:
    if part.startswith("["):
        host, _, rest = part[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ("" if not rest else "?")
    elif part.count(":") == 1:
        host, port = part.split(":")
    elif ":" in part:
        raise UserError(f"{text!r}: write an IPv6 member in brackets, [{part}]:{DEFAULT_PORT}; {form}")
    else:
        host, port = part, str(DEFAULT_PORT)
    if not host or not re.fullmatch(r"[A-Za-z0-9.:_-]+", host):
        raise UserError(f"{text!r}: {part!r} is not a HOST:PORT; {form}")
    if not re.fullmatch(r"[0-9]{1,5}", port or str(DEFAULT_PORT)) or not 1 <= int(port or DEFAULT_PORT) <= 65535:
        raise UserError(f"{text!r}: the port of {part!r} must be a number from 1 to 65535")
    return host, int(port or DEFAULT_PORT)


@dataclass(frozen=True)
class EtcdOptions:
    """How to reach the members: TLS files (PEM) and an etcd user (its password from $ENFORCER_ETCD_PASSWORD)."""
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None


def _read_pem(option: str, path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as e:
        raise UserError(f"{option} {path}: cannot read it ({e.strerror}); give a PEM file this user can read") from None


def _target(url: EtcdUrl, first: int = 0) -> str:
    """gRPC's name for the members: one HOST:PORT as is; several as the addresses they resolve to (gRPC's ipv4: or
    ipv6: lists, tried in order: the `first`-th member first), so that the channel moves to the next when one is
    down."""
    if len(url.endpoints) == 1:
        host, port = url.endpoints[0]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    addresses = []
    first %= len(url.endpoints)
    for host, port in url.endpoints[first:] + url.endpoints[:first]:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            try:
                address = ipaddress.ip_address(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0])
            except (OSError, IndexError) as e:
                raise UserError(f"{url}: member {host!r} does not resolve ({e}); fix the name") from None
        addresses.append((address, port))
    families = {a.version for a, _ in addresses}
    if len(families) > 1:
        raise UserError(f"{url}: name the members all by IPv4 or all by IPv6 addresses")
    if families == {4}:
        return "ipv4:" + ",".join(f"{a}:{p}" for a, p in addresses)
    return "ipv6:" + ",".join(f"[{a}]:{p}" for a, p in addresses)


class Compacted(Exception):
    """A read at a revision etcd has compacted away: the reader starts again from the current one."""


class TooLarge(UserError):
    """A request or an answer past etcd's or gRPC's size limit."""


class Unanswered(Failure):
    """No member answered a call (down, stopped, cut off, no leader, a leader change under way, its deadline past):
    worth another try on the next member (EtcdClient.try_again). The outcome of a transaction told so is unknown: it
    may have committed (its answer lost), and whoever tries it again must find out (etcd_store.EtcdStore.change)."""


class EtcdClient:
    """One channel to the members, authenticated once. Synchronous: a command makes a few calls in a row."""

    def __init__(self, url: EtcdUrl, options: EtcdOptions, keepalive: bool = False):
        # gRPC's C core logs handshake failures to stderr itself: we tell each failure in one line instead
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
        try:
            import grpc
            from aetcd import rpc
        except ImportError as e:
            raise UserError(f"an etcd state needs the etcd extra ({e.name} is missing): "
                            "pip install 'port25-enforcer[etcd]', or run scripts/install.sh") from None
        self.url, self.options, self.grpc, self.rpc = url, options, grpc, rpc
        self.timeout = TIMEOUT
        self.deadline: float | None = None  # while trying again (try_again): no call waits past it
        if options.user is not None and options.password is None:
            raise UserError(f"--etcd-user {options.user}: set its password in $ENFORCER_ETCD_PASSWORD")
        self.channel_options: list[tuple[str, Any]] = \
            [("grpc.default_authority", url.endpoints[0][0])] if len(url.endpoints) > 1 else []
        self.channel_options.append(("grpc.max_receive_message_length", MAX_MESSAGE))
        if keepalive:  # a long-lived watch: a member gone silent (a partition) ends the stream within seconds
            self.channel_options += KEEPALIVE
        self.creds = None
        if options.cacert or options.cert or options.key:
            if bool(options.cert) != bool(options.key):
                raise UserError("--etcd-cert and --etcd-key go together: give both, or neither")
            self.creds = grpc.ssl_channel_credentials(_read_pem("--etcd-cacert", options.cacert),
                                                      _read_pem("--etcd-key", options.key),
                                                      _read_pem("--etcd-cert", options.cert))
        self.first = 0  # the member the channel tries first
        self._connect()
        self.metadata: tuple[tuple[str, str], ...] | None = None
        try:
            self.authenticate()
        except Unanswered:
            pass  # no member answered yet (an election?): the first call authenticates, or says so

    def _connect(self) -> None:
        from aetcd.rpc import rpc_pb2_grpc
        target = _target(self.url, self.first)
        if self.creds is not None:
            self.channel = self.grpc.secure_channel(target, self.creds, options=self.channel_options)
        else:
            self.channel = self.grpc.insecure_channel(target, options=self.channel_options)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)

    def try_again(self, trouble: Unanswered, since: float, sent: bool = False) -> None:
        """After `trouble` (no member answered; the first such call at `since`, time.monotonic()): a fresh
        channel that tries the next member of the URL first (a stopped member holds a connection open and answers
        nothing), after a pause; until RETRY_BUDGET seconds have passed since `since`, then `trouble` is raised,
        saying so (and, if a transaction was `sent` whose answer was lost, that it may have committed). Calls made
        meanwhile wait no longer than the budget."""
        now = time.monotonic()
        self.deadline = since + RETRY_BUDGET
        if now >= self.deadline:
            maybe = "; a transaction whose answer was lost may have committed: see `enforcer audit`" if sent else ""
            raise Unanswered(f"{trouble} (tried for {RETRY_BUDGET:.0f} s{maybe})") from None
        time.sleep(min(0.1 * 2 ** min(int(now - since), 3), self.deadline - now))  # 0.1 s, then up to 0.8 s
        self.channel.close()
        self.first += 1
        self._connect()

    def authenticate(self) -> None:
        """A fresh token for --etcd-user (etcd's simple tokens expire when unused); nothing without a user."""
        if self.options.user is not None:
            from aetcd.rpc import rpc_pb2_grpc
            auth = rpc_pb2_grpc.AuthStub(self.channel)
            reply = self._call(auth.Authenticate, self.rpc.AuthenticateRequest(name=self.options.user,
                                                                               password=self.options.password),
                               authenticated=False)
            self.metadata = (("token", reply.token),)

    def close(self) -> None:
        self.channel.close()

    # ------------------------------------------------------------ calls

    def _call(self, method: Any, request: Any, authenticated: bool = True, timeout: float | None = None) -> Any:
        if authenticated and self.metadata is None and self.options.user is not None:
            self.authenticate()
        try:
            timeout = min(timeout or self.timeout, self.timeout)
            timeout = timeout if self.deadline is None else max(0.1, min(timeout, self.deadline - time.monotonic()))
            return method(request, timeout=timeout, metadata=self.metadata)
        except self.grpc.RpcError as e:
            raise self.trouble(e.code(), e.details() or "") from None

    def range(self, key: bytes, end: bytes | None = None, *, revision: int = 0, keys_only: bool = False,
              count_only: bool = False, limit: int = 0, newest_first: bool = False) -> Any:
        """The keys in [key, end) (or `key` alone) as of `revision` (0: now); newest_first sorts by creation."""
        rpc = self.rpc
        request = rpc.RangeRequest(key=key, range_end=end or b"", revision=revision, keys_only=keys_only,
                                   count_only=count_only, limit=limit)
        if newest_first:
            request.sort_target, request.sort_order = rpc.RangeRequest.CREATE, rpc.RangeRequest.DESCEND
        return self._call(self.kv.Range, request)

    def ranges(self, keys: list[bytes], *, revision: int) -> list[Any]:
        """Each of `keys` read at `revision`, their range answers in order: READS_PER_TXN in one read-only
        transaction, not a round trip each (gRPC's Python side costs ~1 ms a call: 1,500 rows one by one, ~1.5 s)."""
        out: list[Any] = []
        for at in range(0, len(keys), READS_PER_TXN):
            ops = [self.rpc.RequestOp(request_range=self.rpc.RangeRequest(key=k, revision=revision))
                   for k in keys[at:at + READS_PER_TXN]]
            out += [r.response_range for r in self.txn([], ops).responses]
        return out

    def pages(self, key: bytes, end: bytes, *, revision: int, keys_only: bool = False,
              page: int | None = None) -> Iterator[Any]:
        """Every key in [key, end) at `revision` (which must be given: the pages are one snapshot), a page at a
        time (PAGE keys by default). The next page is asked for (in a thread) while the caller reads this one:
        etcd serves it meanwhile. A page past gRPC's message limit is asked for again in halves."""
        size = page or PAGE
        with ThreadPoolExecutor(1, thread_name_prefix="etcd-page") as ahead:
            def ask(start: bytes, first: bool = False) -> Future[Any]:
                return ahead.submit(self.range, start, end, revision=revision, keys_only=keys_only,
                                    limit=max(1, size // FIRST_PAGE_PART) if first else size)
            asked = ask(key, first=page is None)  # a smaller first page: the caller starts reading sooner
            while True:
                try:
                    reply = asked.result()
                except TooLarge:
                    if size == 1:
                        raise
                    size //= 2
                    asked = ask(key)
                    continue
                if reply.more and reply.kvs:
                    key = bytes(reply.kvs[-1].key) + b"\0"
                    asked = ask(key)
                yield from reply.kvs
                if not reply.more or not reply.kvs:
                    return

    def range_from(self, key: bytes, end: bytes, *, revision: int, min_create_revision: int = 0,
                   min_mod_revision: int = 0, keys_only: bool = False, oldest_first: bool = False,
                   limit: int = 0) -> Any:
        """The keys in [key, end) at `revision` created (or written) at or after the given revisions."""
        rpc = self.rpc
        request = rpc.RangeRequest(key=key, range_end=end, revision=revision, keys_only=keys_only, limit=limit,
                                   min_create_revision=min_create_revision, min_mod_revision=min_mod_revision)
        if oldest_first:
            request.sort_target, request.sort_order = rpc.RangeRequest.CREATE, rpc.RangeRequest.ASCEND
        return self._call(self.kv.Range, request)

    def put_now(self, key: bytes, value: bytes, lease: int = 0) -> Any:
        """One key written at once (outside a transaction), under a lease if given."""
        return self._call(self.kv.Put, self.rpc.PutRequest(key=key, value=value, lease=lease))

    def txn(self, compares: list[Any], ops: list[Any]) -> Any:
        return self._call(self.kv.Txn, self.rpc.TxnRequest(compare=compares, success=ops))

    def txn_sent(self, compares: list[Any], ops: list[Any]) -> Callable[[], Any]:
        """The transaction sent, its answer not waited for: what this returns waits for it (raising as txn())."""
        if self.metadata is None and self.options.user is not None:
            self.authenticate()
        future = self.kv.Txn.future(self.rpc.TxnRequest(compare=compares, success=ops), timeout=self.timeout,
                                    metadata=self.metadata)

        def answer() -> Any:
            try:
                return future.result()
            except self.grpc.RpcError as e:
                raise self.trouble(e.code(), e.details() or "") from None
        return answer

    def lease(self, ttl: int) -> int:
        """A new lease of `ttl` seconds: its id."""
        from aetcd.rpc import rpc_pb2_grpc
        return int(self._call(rpc_pb2_grpc.LeaseStub(self.channel).LeaseGrant, self.rpc.LeaseGrantRequest(TTL=ttl)).ID)

    def keep_alive(self, lease: int, timeout: float | None = None) -> int:
        """The lease's TTL made whole again: the seconds it now has left (0 or less: it had expired)."""
        from aetcd.rpc import rpc_pb2_grpc
        stub = rpc_pb2_grpc.LeaseStub(self.channel)
        try:
            return int(next(stub.LeaseKeepAlive(iter([self.rpc.LeaseKeepAliveRequest(ID=lease)]),
                                                timeout=timeout or self.timeout, metadata=self.metadata)).TTL)
        except self.grpc.RpcError as e:
            raise self.trouble(e.code(), e.details() or "") from None
        except StopIteration:  # the stream ended with no answer
            raise Unanswered(f"{self.url}: etcd ended the lease's keepalive without an answer") from None

    def revoke(self, lease: int, timeout: float | None = None) -> None:
        """The lease ended now, and the keys under it deleted."""
        from aetcd.rpc import rpc_pb2_grpc
        self._call(rpc_pb2_grpc.LeaseStub(self.channel).LeaseRevoke, self.rpc.LeaseRevokeRequest(ID=lease),
                   timeout=timeout)

    # ------------------------------------------------------------ what a transaction is made of

    def mod_is(self, key: bytes, revision: int) -> Any:
        """True while `key` was last written at `revision` (0: while it does not exist)."""
        rpc = self.rpc
        return rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=revision)

    def value_is(self, key: bytes, value: bytes) -> Any:
        """True while `key` holds `value`."""
        rpc = self.rpc
        return rpc.Compare(key=key, target=rpc.Compare.VALUE, result=rpc.Compare.EQUAL, value=value)

    def untouched_since(self, key: bytes, end: bytes, revision: int) -> Any:
        """True while no key in [key, end) was written after `revision` (a key created there since would be)."""
        rpc = self.rpc
        return rpc.Compare(key=key, range_end=end, target=rpc.Compare.MOD, result=rpc.Compare.LESS,
                           mod_revision=revision + 1)

    def put(self, key: bytes, value: bytes, lease: int = 0) -> Any:
        return self.rpc.RequestOp(request_put=self.rpc.PutRequest(key=key, value=value, lease=lease))

    def delete(self, key: bytes, end: bytes | None = None) -> Any:
        """`key` deleted, or every key in [key, end)."""
        return self.rpc.RequestOp(request_delete_range=self.rpc.DeleteRangeRequest(key=key, range_end=end or b""))

    # ------------------------------------------------------------ what went wrong, as a person can fix it

    def trouble(self, code: Any, details: str) -> Exception:
        name = getattr(code, "name", str(code))
        where, o = str(self.url), self.options
        if name == "OUT_OF_RANGE" and "compacted" in details:
            return Compacted(details)
        if "authentication failed" in details:
            return UserError(f"{where}: etcd user {o.user!r}: authentication failed (wrong user or password; "
                             "the password comes from $ENFORCER_ETCD_PASSWORD)")
        if (name == "PERMISSION_DENIED" or "permission denied" in details) and o.user is None:
            return UserError(f"{where}: permission denied: give --etcd-user NAME (its password in "
                             "$ENFORCER_ETCD_PASSWORD), or a client certificate whose CN is an etcd user with a role "
                             f"under /{self.url.prefix}/")
        if name == "PERMISSION_DENIED" or "permission denied" in details:
            return UserError(f"{where}: etcd user {o.user!r} may not do this under /{self.url.prefix}/ "
                             "(permission denied: a read-only role, such as a gateway's?)")
        if "user name is empty" in details or "invalid auth token" in details or name == "UNAUTHENTICATED":
            return UserError(f"{where}: etcd asks for a user: give --etcd-user NAME and $ENFORCER_ETCD_PASSWORD")
        if "too many operations in txn request" in details:
            return UserError(f"{where}: this change needs more operations in one transaction than the etcd server "
                             "allows: start etcd with a larger --max-txn-ops, or change less at once (state copy "
                             "--replace of an etcd state is one transaction: copy into a new prefix instead)")
        # etcd's own limit, or gRPC's past it (RESOURCE_EXHAUSTED too, but not the quota)
        if "request is too large" in details or "larger than max" in details:
            return TooLarge(f"{where}: one request is larger than the etcd server or this client takes "
                             f"({details}); nothing was changed: start etcd with a larger --max-request-bytes, or "
                             "change less at once (state copy --replace of an etcd state is one transaction: copy "
                             "into a new prefix instead)")
        if name == "RESOURCE_EXHAUSTED" or "space exceeded" in details:
            return Failure(f"{where}: etcd's space quota is reached ({details}); nothing was changed: compact and "
                           "defragment it, or raise --quota-backend-bytes")
        if name == "UNAVAILABLE":
            return self._unavailable(where, details)
        # our deadline passed here, or at the member first (it answers UNKNOWN "context deadline exceeded"; a
        # transaction so told may still commit: its outcome is unknown, as for no answer at all)
        if name == "DEADLINE_EXCEEDED" or "context deadline exceeded" in details:
            return Unanswered(f"{where}: etcd did not answer within {self.timeout:.0f} s")
        return Failure(f"{where}: etcd: {name}: {details}")

    def _unavailable(self, where: str, details: str) -> Exception:
        o = self.options
        if "CERTIFICATE_VERIFY_FAILED" in details or "certificate verify failed" in details:
            given = f"--etcd-cacert {o.cacert}" if o.cacert else "the system's CAs (no --etcd-cacert given)"
            return UserError(f"{where}: TLS: the server's certificate is not signed by a CA of {given}, or has "
                             "expired; give the CA that signed it")
        tls = bool(o.cacert or o.cert)
        if tls and "Handshake read failed" in details:  # the member closed the connection at our ClientHello
            return UserError(f"{where}: TLS: the member does not speak TLS here (a plain http:// member?); leave "
                             "out --etcd-cacert, --etcd-cert and --etcd-key")
        if not tls and details.endswith("Socket closed"):  # a TLS member closes a plain connection at once
            return UserError(f"{where}: the member closed a plain connection: a TLS member? give --etcd-cacert "
                             "(and --etcd-cert, --etcd-key if it asks for a client certificate)")
        if tls and ("handshake" in details.lower() or "TSI_" in details):
            if o.cert is None:
                return UserError(f"{where}: TLS: the member refused the connection; it asks for a client "
                                 "certificate: give --etcd-cert and --etcd-key")
            return UserError(f"{where}: TLS: the member refused our client certificate (--etcd-cert {o.cert}): "
                             "not signed by a CA it trusts, or expired")
        reason = details.rpartition(": ")[2] or details
        return Unanswered(f"{where}: no etcd member answered ({reason})")
