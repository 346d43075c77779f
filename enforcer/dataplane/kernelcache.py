"""The kernel cache's userspace end (--kernel-cache): the worker puts the sources it has judged into the sets the
rules read (rules/iptables.py, rules/nftables.py), so that their later SYNs are accepted or dropped in the kernel
and only a source's first SYN per table generation reaches the queue.

For the iptables backend the sets are ipsets, written over netlink (NETLINK_NETFILTER, the ipset subsystem): the
messages for a whole batch of sources go in one send() and the kernel's answers come back on the same socket,
so a batch costs one round trip, not one per source (pyroute2.ipset.IPSet answers each message before it sends
the next: about 300 us a source on these machines). The messages carry exactly what pyroute2's ipset_msg
encodes (a unit test compares the bytes). For the nftables backend the sets live in our table and are written
with one `nft -f -` batch a call (a transaction: all of it or nothing).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from typing import Iterable

from .rules import BACKENDS
from .rules.base import RuleError, Runner, run_tool
from .rules.nftables import NftablesBackend

# netlink and nfnetlink
NETLINK_NETFILTER = 12
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10  # error answers without a copy of the request's payload
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL = 0x1, 0x4, 0x200
NLA_F_NESTED, NLA_F_NET_BYTEORDER = 0x8000, 0x4000
NFNL_SUBSYS_IPSET = 6
# ipset (linux/netfilter/ipset/ip_set.h)
IPSET_PROTOCOL = 6  # the oldest protocol the kernel accepts for these commands (IPSET_PROTOCOL_MIN), as pyroute2
IPSET_CMD_FLUSH, IPSET_CMD_ADD, IPSET_CMD_DEL = 4, 9, 10
IPSET_ATTR_PROTOCOL, IPSET_ATTR_SETNAME, IPSET_ATTR_DATA = 1, 2, 7
IPSET_ATTR_IP, IPSET_ATTR_TIMEOUT = 1, 6
IPSET_ATTR_IPADDR = {4: 1, 6: 2}  # IPSET_ATTR_IPADDR_IPV4, _IPV6
IPSET_ERR_EXIST = 4103            # add: already there (we send NLM_F_EXCL to hear it)
IPSET_ERR_HASH_FULL = 4352        # add: the set holds maxelem entries
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}

BATCH = 256              # messages per send(): their error answers fit the receive buffer with room to spare
RECEIVE_BUFFER = 1 << 20
SO_RCVBUFFORCE = 33     # socket.SO_RCVBUFFORCE, which Python does not export everywhere
ANSWER_TIMEOUT = 5.0     # seconds to wait for the kernel's answers to one batch


class CacheError(RuntimeError):
    """The kernel refused a change to the cache (a set is missing, say). The packet's own verdict is unaffected:
    the caller logs it and goes on; the source's SYNs simply keep reaching the queue."""


def version_of(key: bytes) -> int:
    if len(key) == 4:
        return 4
    if len(key) == 16:
        return 6
    raise ValueError(f"a packed source address has 4 or 16 bytes, not {len(key)}")


class KernelCache:
    """The sets of judged sources the rules read, for the backend `backend_name` ("iptables" or "nftables", the
    backend the daemon chose), each entry living `timeout` seconds.

    What goes in is the caller's (the worker's) decision, and this class takes it as given:
      - an allowed source only if it is bound to no interface and no MAC: the kernel set cannot check a binding,
        so a bound source must always reach the queue;
      - a blocked source only for a real blocked verdict, never for unknown-source or spoofed-source: a cached
        drop of a spoofed address would block its real owner.
    When the table changes, no cached verdict may survive it: forget() the addresses whose verdict changed, or
    flush(), once the new table is in place, and so that no remember() of a verdict from the old table comes after
    (call all of them from the one thread that judges). Not thread-safe.

    netns: open the netlink socket (iptables) or run nft (nftables) in that named network namespace, else in this
    process's own. sock: a NETLINK_NETFILTER socket the caller opened already (in whatever namespace), which the
    cache then owns. run: the nft runner (tests record the batches).
    """

    def __init__(self, backend_name: str, timeout: int, *, netns: str | None = None,
                 sock: socket.socket | None = None, run: Runner | None = None):
        backend = BACKENDS.get(backend_name)
        if backend is None:
            raise ValueError(f"unknown backend {backend_name!r}; the kernel cache needs iptables or nftables")
        if not 1 <= timeout <= 86400:
            raise ValueError(f"timeout {timeout}: expected 1 to 86400 seconds")
        self.timeout = timeout
        self.sets = dict(backend.cache_sets)
        # what remember() did, since the start: added, already there (left as they were), refused as the set is full
        self.counts = {"added": 0, "present": 0, "full": 0}
        self._impl: _IpsetSets | _NftSets
        if backend_name == "iptables":
            self._impl = _IpsetSets(self, sock or netlink_socket(netns))
        else:
            self._impl = _NftSets(self, run or nft_runner(netns))

    def remember(self, entries: Iterable[tuple[bytes, bool]]) -> int:
        """Put each (packed source address, allowed?) into its family's allowed or blocked set, with the timeout,
        and out of the other one. An address already there keeps its entry (and its timeout); one that does not
        fit a full set is left out. Returns how many were added; self.counts keeps all three."""
        return self._impl.remember([(version_of(key), key, allowed) for key, allowed in entries])

    def forget(self, keys: Iterable[bytes]) -> None:
        """Delete these addresses from both sets of their family (an address in neither is fine)."""
        self._impl.forget([(version_of(key), key) for key in keys])

    def flush(self) -> None:
        """Empty all four sets."""
        self._impl.flush()

    def close(self) -> None:
        self._impl.close()

    def __enter__(self) -> KernelCache:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# ---------------------------------------------------------------- ipset over netlink


def netlink_socket(netns: str | None = None) -> socket.socket:
    """A NETLINK_NETFILTER socket in the named network namespace, else in this thread's own. A socket stays in the
    namespace it was made in, so only this thread steps in and out, for the socket() call."""
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    from pyroute2 import netns as namespaces
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        namespaces.setns(netns, flags=0)  # flags 0: never create it
        try:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        finally:
            namespaces.setns(home, flags=0)
    finally:
        os.close(home)


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + bytes(-size % 4)


def set_attrs(family: int, name: str) -> bytes:
    """nfgenmsg and the attributes every message about set `name` starts with."""
    return struct.pack("=BBH", family, 0, 0) + attr(IPSET_ATTR_PROTOCOL, bytes([IPSET_PROTOCOL])) + \
        attr(IPSET_ATTR_SETNAME, name.encode() + b"\0")


def entry_data(version: int, key: bytes, timeout: int | None) -> bytes:
    """IPSET_ATTR_DATA for one address (and its timeout)."""
    ip = attr(IPSET_ATTR_IP | NLA_F_NESTED, attr(IPSET_ATTR_IPADDR[version] | NLA_F_NET_BYTEORDER, key))
    if timeout is not None:
        ip += attr(IPSET_ATTR_TIMEOUT | NLA_F_NET_BYTEORDER, struct.pack("!I", timeout))
    return attr(IPSET_ATTR_DATA | NLA_F_NESTED, ip)


def message(cmd: int, flags: int, seq: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_IPSET << 8) | cmd, flags, seq, 0) + body


class _IpsetSets:
    """The four ipsets, over one netlink socket. Each batch goes in one send(): its messages ask for no answer
    but the last, the kernel answers only the ones that fail, and it handles and answers the messages of a
    send() in order, so the last one's answer closes the batch."""

    def __init__(self, cache: KernelCache, sock: socket.socket):
        self.cache = cache
        self.sock = sock
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        except OSError:  # without CAP_NET_ADMIN: the ordinary limit
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        sock.bind((0, 0))
        sock.settimeout(ANSWER_TIMEOUT)
        self.seq = 0
        self.head = {key: set_attrs(FAMILY[key[0]], name) for key, name in cache.sets.items()}

    def remember(self, entries: list[tuple[int, bytes, bool]]) -> int:
        out: list[tuple[str, bytes]] = []   # (what it is, the message)
        for version, key, allowed in entries:
            # out of the other set first: a moment in neither set only sends a SYN to the queue
            out.append(("del", self._message(IPSET_CMD_DEL, (version, not allowed), entry_data(version, key, None))))
            out.append(("add", self._message(IPSET_CMD_ADD, (version, allowed),
                                             entry_data(version, key, self.cache.timeout), NLM_F_EXCL)))
        errors = self._send(out)
        present = sum(1 for kind, code in errors if kind == "add" and code == IPSET_ERR_EXIST)
        full = sum(1 for kind, code in errors if kind == "add" and code == IPSET_ERR_HASH_FULL)
        self._raise_unexpected(errors, {IPSET_ERR_EXIST, IPSET_ERR_HASH_FULL})
        added = len(entries) - present - full
        counts = self.cache.counts
        counts["added"] += added
        counts["present"] += present
        counts["full"] += full
        return added

    def forget(self, keys: list[tuple[int, bytes]]) -> None:
        out = [("del", self._message(IPSET_CMD_DEL, (version, allowed), entry_data(version, key, None)))
               for version, key in keys for allowed in (True, False)]
        self._raise_unexpected(self._send(out), set())

    def flush(self) -> None:
        """Each set's flush is atomic; the four are not one transaction (ipset has none): they go in one send()
        and the kernel empties them one after the other, so a SYN in between may still meet an entry of a set
        not yet emptied, as it would have a moment before the flush. Once flush() returns, all four are empty."""
        out = [("flush", self._message(IPSET_CMD_FLUSH, key)) for key in self.cache.sets]
        self._raise_unexpected(self._send(out), set())

    def close(self) -> None:
        self.sock.close()

    # ------------------------------------------------------------ the wire

    def _message(self, cmd: int, key: tuple[int, bool], data: bytes = b"", flags: int = 0) -> bytes:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return message(cmd, NLM_F_REQUEST | flags, self.seq, self.head[key] + data)

    def _send(self, out: list[tuple[str, bytes]]) -> list[tuple[str, int]]:
        """Send the messages, BATCH at a time, each batch's last one asking for an answer; returns (what it was,
        ipset error code) for each message the kernel refused. A missing set (ENOENT) is not an error for a
        deletion or a flush: nothing of it can be cached."""
        refused: list[tuple[str, int]] = []
        for start in range(0, len(out), BATCH):
            chunk = out[start:start + BATCH]
            first = struct.unpack_from("=I", chunk[0][1], 8)[0]
            last_msg = bytearray(chunk[-1][1])
            struct.pack_into("=H", last_msg, 6, struct.unpack_from("=H", last_msg, 6)[0] | NLM_F_ACK)
            last = struct.unpack_from("=I", last_msg, 8)[0]
            try:
                self.sock.send(b"".join(m for _, m in chunk[:-1]) + bytes(last_msg))
            except OSError as e:
                raise CacheError(f"sending the cache's netlink batch failed: {e}") from None
            for seq, code in self._answers(last):
                index = (seq - first) & 0xFFFFFFFF
                if index < len(chunk) and code:
                    kind = chunk[index][0]
                    if not (code == errno.ENOENT and kind in ("del", "flush")):
                        refused.append((kind, code))
        return refused

    def _answers(self, last: int) -> list[tuple[int, int]]:
        """(sequence number, error code) of each answer, until the answer to `last`; answers to an earlier batch
        that timed out are skipped by the caller (their numbers fall outside this batch)."""
        answers = []
        while True:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise CacheError(f"the kernel did not answer the cache's netlink batch within {ANSWER_TIMEOUT:g} s") \
                    from None
            except OSError as e:  # ENOBUFS: answers were lost; the next batch starts afresh
                raise CacheError(f"reading the kernel's answers for the cache failed: {e}") from None
            offset = 0
            while offset + 16 <= len(data):
                size, kind, _, seq, _ = struct.unpack_from("=IHHII", data, offset)
                if kind == NLMSG_ERROR and size >= 20:
                    code = -struct.unpack_from("=i", data, offset + 16)[0]
                    answers.append((seq, code))
                    if seq == last:
                        return answers
                offset += max(16, (size + 3) & ~3)

    def _raise_unexpected(self, refused: list[tuple[str, int]], expected: set[int]) -> None:
        other = [(kind, code) for kind, code in refused if code not in expected]
        if other:
            kind, code = other[0]
            what = "a set of the cache is missing (are the rules installed with the cache?)" if code == errno.ENOENT \
                else f"error {code}" + (f" ({os.strerror(code)})" if code < 4096 else "")
            raise CacheError(f"the kernel refused {len(other)} cache {kind} message(s): {what}")


# ---------------------------------------------------------------- nftables


def nft_runner(netns: str | None) -> Runner:
    """nft in the named network namespace (ip netns exec), else in this process's own."""
    if netns is None:
        return run_tool
    name = netns

    def run(argv: list[str], stdin: str | None) -> str:
        return run_tool(["ip", "netns", "exec", name, *argv], stdin)
    return run


class _NftSets:
    """The four sets of our nftables table, one `nft -f -` transaction a call."""

    def __init__(self, cache: KernelCache, run: Runner):
        self.cache = cache
        self.run = run
        self.table = NftablesBackend.table

    def _element(self, verb: str, key: tuple[int, bool], address: str, timeout: int | None = None) -> str:
        after = f" timeout {timeout}s" if timeout is not None else ""
        return f"{verb} element inet {self.table} {self.cache.sets[key]} {{ {address}{after} }}\n"

    def _out_of(self, key: tuple[int, bool], address: str) -> str:
        """Delete an element whether or not it is there: nft 1.0.6 has no `destroy element`, and deleting a
        missing one fails the transaction, so add it first (in the same transaction: nothing sees it)."""
        return self._element("add", key, address) + self._element("delete", key, address)

    def remember_batch(self, entries: list[tuple[int, bytes, bool]]) -> str:
        batch = []
        for version, key, allowed in entries:
            address = str(ipaddress.ip_address(key))
            batch.append(self._out_of((version, not allowed), address))
            batch.append(self._element("add", (version, allowed), address, self.cache.timeout))
        return "".join(batch)

    def remember(self, entries: list[tuple[int, bytes, bool]]) -> int:
        """One transaction for all; if the kernel refuses it (a full set fails the whole transaction), each entry
        in its own, and those that do not fit are counted as full. nft does not say whether an element was there
        already: such an entry counts as added."""
        if not entries:
            return 0
        try:
            self.run(["nft", "-f", "-"], self.remember_batch(entries))
            added = len(entries)
        except RuleError:
            added = 0
            for entry in entries:
                try:
                    self.run(["nft", "-f", "-"], self.remember_batch([entry]))
                    added += 1
                except RuleError as e:
                    if "Too many open files" not in str(e):  # ENFILE: the set is full
                        raise CacheError(str(e)) from None
                    self.cache.counts["full"] += 1
        self.cache.counts["added"] += added
        return added

    def forget_batch(self, keys: list[tuple[int, bytes]]) -> str:
        return "".join(self._out_of((version, allowed), str(ipaddress.ip_address(key)))
                       for version, key in keys for allowed in (True, False))

    def forget(self, keys: list[tuple[int, bytes]]) -> None:
        """One transaction; if the kernel refuses it (the add before a delete cannot go into a full set), all
        sets are flushed instead: a stale entry must not survive."""
        if not keys:
            return
        try:
            self.run(["nft", "-f", "-"], self.forget_batch(keys))
        except RuleError:
            self.flush()

    def flush_batch(self) -> str:
        return "".join(f"flush set inet {self.table} {name}\n" for name in self.cache.sets.values())

    def flush(self) -> None:
        """All four sets in one transaction: atomic."""
        try:
            self.run(["nft", "-f", "-"], self.flush_batch())
        except RuleError as e:
            raise CacheError(str(e)) from None

    def close(self) -> None:
        pass
