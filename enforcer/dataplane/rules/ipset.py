"""The iptables backend's kernel cache writer: its four ipsets, written over netlink (NETLINK_NETFILTER, the
ipset subsystem). The messages for a whole batch of sources go in one send() and the kernel's answers come back on
the same socket, so a batch costs one round trip, not one per source (pyroute2.ipset.IPSet answers each message
before it sends the next: about 300 us a source on these machines). The messages carry exactly what pyroute2's
ipset_msg encodes (a unit test compares the bytes)."""

from __future__ import annotations

import errno
import os
import socket
import struct

from ..netlink import (NLA_F_NESTED, NLA_F_NET_BYTEORDER, NLM_F_ACK, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_ERROR,
                       NETLINK_CAP_ACK, SOL_NETLINK, attr, message as netlink_message, nfgenmsg)
from .base import CacheError, CacheWriter

NFNL_SUBSYS_IPSET = 6
# linux/netfilter/ipset/ip_set.h
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


def set_attrs(family: int, name: str) -> bytes:
    """nfgenmsg and the attributes every message about set `name` starts with."""
    return nfgenmsg(family) + attr(IPSET_ATTR_PROTOCOL, bytes([IPSET_PROTOCOL])) + \
        attr(IPSET_ATTR_SETNAME, name.encode() + b"\0")


def entry_data(version: int, key: bytes, timeout: int | None) -> bytes:
    """IPSET_ATTR_DATA for one address (and its timeout)."""
    ip = attr(IPSET_ATTR_IP | NLA_F_NESTED, attr(IPSET_ATTR_IPADDR[version] | NLA_F_NET_BYTEORDER, key))
    if timeout is not None:
        ip += attr(IPSET_ATTR_TIMEOUT | NLA_F_NET_BYTEORDER, struct.pack("!I", timeout))
    return attr(IPSET_ATTR_DATA | NLA_F_NESTED, ip)


def message(cmd: int, flags: int, seq: int, body: bytes) -> bytes:
    """An ipset command."""
    return netlink_message(NFNL_SUBSYS_IPSET, cmd, flags, seq, body)


class IpsetWriter(CacheWriter):
    """The four ipsets, over one netlink socket. Each batch goes in one send(): its messages ask for no answer
    but the last, the kernel answers only the ones that fail, and it handles and answers the messages of a
    send() in order, so the last one's answer closes the batch."""

    def __init__(self, sets: dict[tuple[int, bool], str], timeout: int, sock: socket.socket):
        super().__init__(sets, timeout)
        self.sock = sock
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        except OSError:  # without CAP_NET_ADMIN: the ordinary limit
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        sock.bind((0, 0))
        sock.settimeout(ANSWER_TIMEOUT)
        self.seq = 0
        self.head = {key: set_attrs(FAMILY[key[0]], name) for key, name in sets.items()}

    def remember(self, entries: list[tuple[int, bytes, bool]]) -> int:
        out: list[tuple[str, bytes]] = []   # (what it is, the message)
        for version, key, allowed in entries:
            # out of the other set first: a moment in neither set only sends a SYN to the queue
            out.append(("del", self._message(IPSET_CMD_DEL, (version, not allowed), entry_data(version, key, None))))
            out.append(("add", self._message(IPSET_CMD_ADD, (version, allowed),
                                             entry_data(version, key, self.timeout), NLM_F_EXCL)))
        errors = self._send(out)
        present = sum(1 for kind, code in errors if kind == "add" and code == IPSET_ERR_EXIST)
        full = sum(1 for kind, code in errors if kind == "add" and code == IPSET_ERR_HASH_FULL)
        self._raise_unexpected(errors, {IPSET_ERR_EXIST, IPSET_ERR_HASH_FULL})
        added = len(entries) - present - full
        counts = self.counts
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
        out = [("flush", self._message(IPSET_CMD_FLUSH, key)) for key in self.sets]
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
