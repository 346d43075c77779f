"""What the tests of enforcer.dataplane._fastpath (tests/unit/test_fastpath_*.py) share: a reference model of
what a Table means, in dicts; packets as netfilterqueue hands them to a Judge; the addresses, prefixes and
hypothesis strategies they draw from."""

from __future__ import annotations

import collections
import ipaddress
import socket
from typing import Any

from hypothesis import strategies as st

from enforcer.dataplane import _fastpath as fp
from enforcer.dataplane._fastpath import SPOOFED, UNKNOWN, Judge, Table, View

Described = tuple[int, "str | None", "bytes | None"]
MAC1 = bytes.fromhex("02aabbccdd01") + b"\0\0"
MAC2 = bytes.fromhex("02aabbccdd02") + b"\0\0"
LO = socket.if_nametoindex("lo")
NO_SUCH_INDEX = 2**31 - 7  # no interface has it


def pack(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def name_of(index: int) -> str | None:
    try:
        return socket.if_indextoname(index) if index else None
    except OSError:
        return None


# ---------------------------------------------------------------- the reference model


def contains(net: bytes, plen: int, key: bytes) -> bool:
    bits = len(key) * 8
    return len(net) == len(key) and int.from_bytes(net, "big") >> (bits - plen) == \
        int.from_bytes(key, "big") >> (bits - plen)


class Model:
    """What a Table means, in dicts; `dense` mirrors the promotion rule (PROMOTE_AT up, DEMOTE_AT down)."""

    def __init__(self) -> None:
        self.exact: dict[bytes, Described] = {}
        self.prefixes: dict[tuple[bytes, int], Described] = {}
        self.allow = b""
        self.per_prefix: collections.Counter[bytes] = collections.Counter()
        self.dense: set[bytes] = set()

    def put(self, key: bytes, verdict: int, interface: str | None = None, mac: bytes | None = None) -> None:
        if key not in self.exact:
            self.per_prefix[key[:-1]] += 1
            if self.per_prefix[key[:-1]] >= fp.PROMOTE_AT:
                self.dense.add(key[:-1])
        self.exact[key] = (verdict, interface, mac)

    def remove(self, key: bytes) -> bool:
        if self.exact.pop(key, None) is None:
            return False
        p = key[:-1]
        self.per_prefix[p] -= 1
        if self.per_prefix[p] <= fp.DEMOTE_AT:
            self.dense.discard(p)
        if not self.per_prefix[p]:
            del self.per_prefix[p]
        return True

    def put_prefix(self, net: bytes, plen: int, verdict: int, interface: str | None = None,
                   mac: bytes | None = None) -> None:
        self.prefixes[(net, plen)] = (verdict, interface, mac)

    def remove_prefix(self, net: bytes, plen: int) -> bool:
        return self.prefixes.pop((net, plen), None) is not None

    def entry(self, key: bytes) -> Described | None:
        if key in self.exact:
            return self.exact[key]
        found = [(plen, d) for (net, plen), d in self.prefixes.items() if contains(net, plen, key)]
        return max(found, key=lambda f: f[0])[1] if found else None

    def lookup(self, key: bytes) -> int:
        e = self.entry(key)
        return -1 if e is None else e[0]

    def allows(self, verdict: int) -> bool:
        return 0 <= verdict < len(self.allow) and self.allow[verdict] != 0

    def judged(self, key: bytes, indev: int, hw: bytes | None) -> tuple[str, int]:
        """(accept or drop, the verdict or UNKNOWN or SPOOFED) for a packet from key."""
        e = self.entry(key)
        if e is None:
            return "drop", UNKNOWN
        verdict, interface, mac = e
        if not self.allows(verdict):
            return "drop", verdict
        if (interface is not None and name_of(indev) != interface) or (mac is not None and hw != mac):
            return "drop", SPOOFED
        return "accept", verdict

    def remembered(self, key: bytes, verdict: str, outcome: int) -> tuple[bytes, bool] | None:
        """What a Judge with `remember` appends: exact sources whose verdict does not depend on where the packet
        came from."""
        if key not in self.exact or outcome < 0:
            return None
        _, interface, mac = self.exact[key]
        if verdict == "accept" and (interface is not None or mac is not None):
            return None
        return key, verdict == "accept"

    def __len__(self) -> int:
        return len(self.exact) + len(self.prefixes)


def mirror(model: Model) -> Table:
    t = Table()
    for key, (verdict, interface, mac) in model.exact.items():
        t.put(key, verdict, interface, mac)
    for (net, plen), (verdict, interface, mac) in model.prefixes.items():
        t.put_prefix(net, plen, verdict, interface, mac)
    t.set_allowed(model.allow)
    return t


# ---------------------------------------------------------------- packets


def v4_payload(key: bytes) -> bytes:
    return bytes([0x45]) + bytes(11) + key + bytes([198, 51, 100, 25])


def v6_payload(key: bytes) -> bytes:
    return bytes([0x60]) + bytes(7) + key + pack("2001:db8:ffff::25")


def payload_of(key: bytes) -> bytes:
    return v4_payload(key) if len(key) == 4 else v6_payload(key)


class Packet:
    """What netfilterqueue hands the callback."""

    def __init__(self, payload: bytes, indev: int = 0, hw: bytes | None = None) -> None:
        self.payload, self.indev, self.hw = payload, indev, hw
        self.verdicts: list[str] = []

    def get_payload(self) -> bytes:
        return self.payload

    def get_hw(self) -> bytes | None:
        return self.hw

    def accept(self) -> None:
        self.verdicts.append("accept")

    def drop(self) -> None:
        self.verdicts.append("drop")


def judge_of(model: Model, **kwargs: Any) -> Judge:
    return Judge(View(mirror(model).image(1)), **kwargs)


# ---------------------------------------------------------------- addresses, prefixes, strategies

V4_BASES = [pack("10.0.0.0"), pack("10.0.1.0")]
V6_BASES = [pack("2001:db8::"), pack("2001:db8::1:0")]
BASES = V4_BASES + V6_BASES
NETS = [("10.0.0.0", 24), ("10.0.0.0", 16), ("10.0.0.128", 25), ("10.0.0.0", 8), ("0.0.0.0", 0),
        ("10.0.1.64", 26), ("10.0.0.7", 32), ("2001:db8::", 32), ("2001:db8::", 120), ("2001:db8::", 64),
        ("2001:db8::1:0", 112), ("::", 0), ("2001:db8::80", 121), ("2001:db8::5", 128)]

dense_keys = st.builds(lambda base, last: base[:-1] + bytes([last]), st.sampled_from(BASES), st.integers(0, 255))
sparse_keys = st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16))
keys = st.one_of(dense_keys, sparse_keys)
verdicts = st.integers(0, 5)
bindings = st.one_of(st.just((None, None)),
                     st.tuples(st.sampled_from([None, "lo", "eth0", "veth-é"]), st.sampled_from([None, MAC1, MAC2])))
