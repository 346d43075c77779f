"""enforcer.dataplane._fastpath (the verdict table and the packet callback in C) against a reference model in
dicts: what Table -> image() -> View answers, and what Judge does with every packet, including dense prefixes
being promoted to pages and demoted back, bindings, bad images and packets that raise."""

from __future__ import annotations

import collections
import ipaddress
import mmap
import os
import random
import socket
import struct
import sys
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from scapy.all import IP, TCP, IPv6, IPv6ExtHdrHopByHop, IPOption_NOP

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


SYN = TCP(sport=40000, dport=25, flags="S")


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


# ---------------------------------------------------------------- the table, step by step against the model

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


class TableMachine(RuleBasedStateMachine):
    """Random puts and removals (single and in runs that cross the promotion thresholds), prefixes and allow
    flags; after every step the image a View reads must answer as the model does."""

    def __init__(self) -> None:
        super().__init__()
        self.table = Table()
        self.model = Model()
        self.touched: set[bytes] = set()
        self.generation = 0
        self.rng = random.Random(0)

    @rule(key=keys, verdict=verdicts, binding=bindings)
    def put(self, key: bytes, verdict: int, binding: tuple[str | None, bytes | None]) -> None:
        self.table.put(key, verdict, *binding)
        self.model.put(key, verdict, *binding)
        self.touched.add(key)

    @rule(key=keys)
    def remove(self, key: bytes) -> None:
        assert self.table.remove(key) == self.model.remove(key)

    @rule(data=st.data())
    def remove_known(self, data: st.DataObject) -> None:
        if self.model.exact:
            key = data.draw(st.sampled_from(sorted(self.model.exact)))
            assert self.table.remove(key) and self.model.remove(key)

    @rule(base=st.sampled_from(BASES), lo=st.integers(0, 255), n=st.integers(1, 90), verdict=verdicts,
          bound=st.booleans())
    def put_run(self, base: bytes, lo: int, n: int, verdict: int, bound: bool) -> None:
        for last in range(lo, min(256, lo + n)):
            key = base[:-1] + bytes([last])
            mac = bytes([2, 0, 0, 0, 0, last, 0, 0]) if bound else None
            self.table.put(key, verdict, None, mac)
            self.model.put(key, verdict, None, mac)
            self.touched.add(key)

    @rule(base=st.sampled_from(BASES), lo=st.integers(0, 255), n=st.integers(1, 90))
    def remove_run(self, base: bytes, lo: int, n: int) -> None:
        for last in range(lo, min(256, lo + n)):
            key = base[:-1] + bytes([last])
            assert self.table.remove(key) == self.model.remove(key)

    @rule(net=st.sampled_from(NETS), verdict=verdicts, binding=bindings)
    def put_prefix(self, net: tuple[str, int], verdict: int, binding: tuple[str | None, bytes | None]) -> None:
        self.table.put_prefix(pack(net[0]), net[1], verdict, *binding)
        self.model.put_prefix(pack(net[0]), net[1], verdict, *binding)

    @rule(net=st.sampled_from(NETS))
    def remove_prefix(self, net: tuple[str, int]) -> None:
        assert self.table.remove_prefix(pack(net[0]), net[1]) == self.model.remove_prefix(pack(net[0]), net[1])

    @rule(allow=st.binary(max_size=8))
    def set_allowed(self, allow: bytes) -> None:
        self.table.set_allowed(allow)
        self.model.allow = allow

    def sample(self) -> list[bytes]:
        keys = set(self.touched) | set(self.model.exact)
        for base in BASES:
            keys.update(base[:-1] + bytes([self.rng.randrange(256)]) for _ in range(8))
        for net, plen in NETS:
            packed = pack(net)
            keys.add(packed)
            keys.add((int.from_bytes(packed, "big") | self.rng.getrandbits(len(packed) * 8 - plen))
                     .to_bytes(len(packed), "big") if plen < len(packed) * 8 else packed)
        keys.update(self.rng.randbytes(4) for _ in range(4))
        keys.update(self.rng.randbytes(16) for _ in range(4))
        return sorted(keys)

    @invariant()
    def the_image_answers_as_the_model_does(self) -> None:
        self.generation += 1
        image = self.table.image(self.generation)
        assert len(image) == self.table.nbytes
        view = View(image)
        assert view.generation == self.generation
        assert len(view) == len(self.table) == len(self.model)
        assert view.verdicts == len(self.model.allow)
        for verdict in range(-1, 10):
            assert view.allows(verdict) == self.model.allows(verdict)
        for key in self.sample():
            assert view.entry(key) == self.model.entry(key), key
            assert view.lookup(key) == self.model.lookup(key), key
            assert self.table.get(key) == self.model.exact.get(key), key

    @invariant()
    def dense_prefixes_have_pages(self) -> None:
        stats = self.table.stats()
        dense4 = sum(1 for p in self.model.dense if len(p) == 3)
        assert (stats["dense4"], stats["dense6"]) == (dense4, len(self.model.dense) - dense4)
        assert stats["pages"] - stats["free_pages"] == len(self.model.dense)
        exact = [k for k in self.model.exact if k[:-1] not in self.model.dense]
        assert stats["exact4"] == sum(1 for k in exact if len(k) == 4)
        assert stats["exact6"] == sum(1 for k in exact if len(k) == 16)
        bound = sum(1 for _, i, m in [*self.model.exact.values(), *self.model.prefixes.values()]
                    if i is not None or m is not None)
        assert stats["records"] - stats["free_records"] == bound
        assert stats["addresses"] == len(self.model.exact)
        for n, slots in ((stats["exact4"], stats["exact4_slots"]), (stats["exact6"], stats["exact6_slots"])):
            assert n * 2 <= slots  # load <= 0.5


TableMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
test_table_against_the_model = TableMachine.TestCase


def test_a_prefix_gets_a_page_at_64_addresses_and_loses_it_at_32():
    t = Table()
    base = pack("198.18.7.0")[:3]
    for last in range(63):
        t.put(base + bytes([last]), 1)
    assert t.stats()["dense4"] == 0 and t.stats()["exact4"] == 63
    t.put(base + bytes([63]), 1)
    assert t.stats()["dense4"] == 1 and t.stats()["exact4"] == 0 and t.stats()["pages"] == 1
    for last in range(63, 32, -1):        # down to 33: still dense (hysteresis)
        assert t.remove(base + bytes([last]))
    assert t.stats()["dense4"] == 1
    assert t.remove(base + bytes([32]))   # 32 left: back to exact entries, the page on the free list
    assert t.stats()["dense4"] == 0 and t.stats()["exact4"] == 32 and t.stats()["free_pages"] == 1
    for last in range(32, 64):
        t.put(base + bytes([last]), 2)
    assert t.stats()["pages"] == 1 and t.stats()["free_pages"] == 0   # the freed page, reused
    view = View(t.image(0))
    assert [view.lookup(base + bytes([last])) for last in range(66)] == [1] * 32 + [2] * 32 + [-1, -1]


def test_binding_records_are_reused():
    t = Table()
    t.put(pack("10.1.1.1"), 1, "lo", MAC1)
    t.put(pack("10.1.1.1"), 2, None, MAC2)  # replaced in place, same record
    assert t.stats()["records"] == 1 and t.get(pack("10.1.1.1")) == (2, None, MAC2)
    t.put(pack("10.1.1.1"), 2)               # unbound now: the record is freed
    assert t.stats()["free_records"] == 1
    t.put(pack("2001:db8::9"), 3, "lo")
    assert t.stats()["records"] == 1 and t.stats()["free_records"] == 0
    assert t.remove(pack("2001:db8::9")) and t.stats()["free_records"] == 1


def test_maps_shrink_after_removals():
    t = Table()
    rng = random.Random(1)
    keys = [rng.randbytes(16) for _ in range(5000)]
    for k in keys:
        t.put(k, 0)
    assert t.stats()["exact6_slots"] >= 10000
    for k in keys[:-10]:
        assert t.remove(k)
    assert t.stats()["exact6_slots"] <= 128
    view = View(t.image(0))
    assert all(view.lookup(k) == 0 for k in keys[-10:]) and all(view.lookup(k) == -1 for k in keys[:100])


@pytest.mark.parametrize("call, error", [
    (lambda t: t.put(b"\1\2\3", 0), ValueError),
    (lambda t: t.put(bytes(5), 0), ValueError),
    (lambda t: t.put(bytes(4), -1), ValueError),
    (lambda t: t.put(bytes(4), 2**31 - 1), ValueError),
    (lambda t: t.put(bytes(4), 2**80), ValueError),
    (lambda t: t.put(bytes(4), "1"), TypeError),
    (lambda t: t.put(bytes(4), 0, "x" * 16), ValueError),
    (lambda t: t.put(bytes(4), 0, "é" * 8), ValueError),     # 16 bytes of UTF-8
    (lambda t: t.put(bytes(4), 0, ""), ValueError),
    (lambda t: t.put(bytes(4), 0, "a\0b"), ValueError),
    (lambda t: t.put(bytes(4), 0, None, bytes(6)), ValueError),
    (lambda t: t.put(bytes(4), 0, None, b"\2" * 8), ValueError),  # the two trailing bytes must be zero
    (lambda t: t.put(bytes(4), 0, None, bytearray(8)), TypeError),
    (lambda t: t.put_prefix(pack("10.0.0.1"), 24, 0), ValueError),
    (lambda t: t.put_prefix(pack("10.0.0.0"), 33, 0), ValueError),
    (lambda t: t.put_prefix(pack("10.0.0.0"), -1, 0), ValueError),
    (lambda t: t.put_prefix(pack("2001:db8::1"), 127, 0), ValueError),
    (lambda t: t.remove_prefix(pack("10.0.0.1"), 8), ValueError),
    (lambda t: t.remove(bytes(15)), ValueError),
    (lambda t: t.image(-1), ValueError),
    (lambda t: t.image(2**64), ValueError),
])
def test_bad_arguments_are_refused(call, error):
    t = Table()
    with pytest.raises(error):
        call(t)
    assert len(t) == 0 and t.stats()["records"] == 0


def test_limits_that_are_allowed():
    t = Table()
    t.put(bytes(4), 2**31 - 2, "x" * 15, MAC1)
    t.put_prefix(bytes(16), 0, 0)
    t.put_prefix(pack("2001:db8::1"), 128, 1)
    t.image(2**64 - 1)
    assert t.get(bytes(4)) == (2**31 - 2, "x" * 15, MAC1) and len(t) == 3
    assert View(t.image(2**64 - 1)).generation == 2**64 - 1


def test_prefixes_match_longest_first_and_only_after_an_exact_miss():
    t = Table()
    t.put_prefix(pack("10.0.0.0"), 8, 1)
    t.put_prefix(pack("10.1.0.0"), 16, 2, "lo")
    t.put_prefix(pack("10.1.2.0"), 24, 3)
    t.put(pack("10.1.2.3"), 4)
    t.put_prefix(pack("10.1.0.0"), 16, 5)      # replaces, unbound now
    v = View(t.image(0))
    assert [v.lookup(pack(a)) for a in ("10.9.9.9", "10.1.9.9", "10.1.2.9", "10.1.2.3", "11.0.0.0")] == \
        [1, 5, 3, 4, -1]
    assert v.entry(pack("10.1.9.9")) == (5, None, None)
    assert v.lookup(pack("::a01:203")) == -1    # the same bits as IPv6: another family
    assert t.remove_prefix(pack("10.1.2.0"), 24) and not t.remove_prefix(pack("10.1.2.0"), 24)
    assert View(t.image(0)).lookup(pack("10.1.2.9")) == 5
    assert t.get(pack("10.1.9.9")) is None      # get(): exact entries only


def test_image_into_a_memfd_and_a_view_over_its_read_only_mmap():
    t = Table()
    for i in range(1000):
        t.put(pack(f"198.18.{i >> 8}.{i & 255}"), i % 3, "lo" if i % 7 == 0 else None)
    t.put(pack("2001:db8::1"), 2, None, MAC1)
    t.set_allowed(b"\0\1\1")
    fd = os.memfd_create("verdicts", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, t.nbytes)
        with mmap.mmap(fd, t.nbytes) as writable:
            assert t.image_into(writable, 42) == t.nbytes
        assert os.pread(fd, t.nbytes, 0) == t.image(42)
        import fcntl
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW |
                    fcntl.F_SEAL_SEAL)
        with pytest.raises(PermissionError):
            mmap.mmap(fd, t.nbytes)            # sealed: no one can map it writable any more
        mapped = mmap.mmap(fd, t.nbytes, prot=mmap.PROT_READ)
        view = View(mapped)
        assert view.generation == 42 and view.buffer is mapped
        assert view.lookup(pack("198.18.0.7")) == 7 % 3 and view.entry(pack("198.18.0.7")) == (1, "lo", None)
        assert view.entry(pack("2001:db8::1")) == (2, None, MAC1)
        with pytest.raises(BufferError):
            mapped.close()                     # the View holds the buffer: the mapping cannot go away under it
        judge = Judge(view)
        pkt = Packet(payload_of(pack("198.18.0.8")))
        judge(pkt)
        assert pkt.verdicts == ["accept"]
        del judge, view
        mapped.close()
        with mmap.mmap(fd, t.nbytes, access=mmap.ACCESS_READ) as again:
            assert View(again).lookup(pack("198.18.0.9")) == 0
    finally:
        os.close(fd)


def test_image_into_a_buffer_too_small():
    t = Table()
    with pytest.raises(ValueError):
        t.image_into(bytearray(t.nbytes - 1), 0)
    with pytest.raises(TypeError):
        t.image_into(bytes(t.nbytes), 0)       # read-only


def test_a_view_keeps_its_image_alive_and_works_over_any_buffer():
    t = Table()
    t.put(pack("10.0.0.1"), 3)
    image = t.image(5)
    for buffer in (image, bytearray(image), memoryview(image), memoryview(b"x" + image)[1:]):  # even unaligned
        assert View(buffer).lookup(pack("10.0.0.1")) == 3
    held = bytearray(image)
    view = View(held)
    with pytest.raises(BufferError):
        held.extend(b"x")                      # exported: cannot be resized under the View
    del held
    assert view.lookup(pack("10.0.0.1")) == 3 and isinstance(view.buffer, bytearray)
    with pytest.raises(TypeError):
        View("not a buffer")
    with pytest.raises(TypeError):
        view.lookup(bytearray(4))
    with pytest.raises(ValueError):
        view.lookup(bytes(5))


# ---------------------------------------------------------------- memory


def bytes_per_address(t: Table, n: int) -> float:
    image = t.image(0)
    View(image)
    return len(image) / n


N = 100_000


def fleet_keys(n: int) -> list[bytes]:
    """The synthetic fleet's shape: 10% IPv4 dense in 198.18.0.0/15, the rest 2001:db8:1:X::Y dense."""
    v4 = [(0xC6120000 + i).to_bytes(4, "big") for i in range(n // 10)]
    v6 = [pack(f"2001:db8:1:{(i >> 15) + 1:x}::{(i & 0x7fff) + 1:x}") for i in range(n - len(v4))]
    return v4 + v6


def test_memory_of_100k_dense_addresses():
    t = Table()
    for i, k in enumerate(fleet_keys(N)):
        t.put(k, i % 5)
    assert t.stats()["exact4"] + t.stats()["exact6"] < 200   # nearly all in pages
    assert bytes_per_address(t, N) <= 64


def test_memory_of_100k_random_sparse_ipv6_addresses():
    t = Table()
    rng = random.Random(2)
    for i in range(N):
        t.put(pack("2001:db8::")[:2] + rng.randbytes(14), i % 5)
    assert t.stats()["dense6"] == 0
    assert bytes_per_address(t, N) <= 64


def test_memory_of_100k_addresses_each_bound_to_a_mac():
    t = Table()
    for i, k in enumerate(fleet_keys(N)):
        t.put(k, i % 5, None, struct.pack(">HI", 0x0200, i) + b"\0\0")
    assert t.stats()["records"] == N
    assert bytes_per_address(t, N) <= 64


# ---------------------------------------------------------------- bad images


def small_image() -> bytes:
    t = Table()
    for last in range(70):
        t.put(pack("10.0.0.0")[:3] + bytes([last]), last % 3, "lo" if last % 2 else None, MAC1 if last % 3 else None)
    t.put(pack("2001:db8::1"), 1)
    t.put(pack("10.9.9.9"), 2, "lo")
    t.put_prefix(pack("10.1.0.0"), 16, 1, None, MAC2)
    t.put_prefix(pack("2001:db8:1::"), 48, 2)
    t.set_allowed(b"\0\1\1")
    return t.image(9)


SMALL = small_image()
PROBES = [pack(a) for a in ("10.0.0.1", "10.0.0.2", "10.0.0.69", "10.0.0.200", "2001:db8::1", "10.9.9.9",
                            "10.1.2.3", "2001:db8:1::5", "1.2.3.4", "::")]


def exercise(view: View) -> None:
    """Everything a View offers: must return, whatever the image holds."""
    for key in PROBES:
        view.entry(key)
        view.allows(view.lookup(key))
    judge = Judge(view, drops=collections.deque(maxlen=100), remember=collections.deque(maxlen=100))
    for key in PROBES:
        pkt = Packet(payload_of(key), LO, MAC1)
        judge(pkt)
        assert len(pkt.verdicts) == 1
    assert judge.errors == 0


def test_every_truncation_of_an_image_is_refused():
    for n in range(len(SMALL)):
        with pytest.raises(ValueError):
            View(SMALL[:n])
    exercise(View(SMALL))
    exercise(View(SMALL + b"\xff" * 100))  # a longer buffer (an mmap rounded up) is fine


@given(st.binary(max_size=600))
@settings(max_examples=300, deadline=None)
def test_garbage_is_refused(garbage):
    with pytest.raises(ValueError):
        View(garbage)
    with pytest.raises(ValueError):
        View(fp.MAGIC + garbage)


@given(st.lists(st.tuples(st.integers(0, fp.HEADER_SIZE - 1), st.integers(0, 255)), min_size=1, max_size=6))
@settings(max_examples=500, deadline=None)
def test_a_damaged_header_is_refused_or_harmless(damage):
    image = bytearray(SMALL)
    for at, value in damage:
        image[at] = value
    try:
        view = View(bytes(image))
    except ValueError:
        return
    exercise(view)


@given(st.lists(st.tuples(st.integers(fp.HEADER_SIZE, len(SMALL) - 1), st.integers(0, 255)), min_size=1,
                max_size=40))
@settings(max_examples=500, deadline=None)
def test_a_damaged_body_is_refused_or_harmless(damage):
    image = bytearray(SMALL)
    for at, value in damage:
        image[at] = value
    try:
        view = View(bytes(image))
    except ValueError:
        return
    exercise(view)


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_a_forged_section_table_is_refused_or_harmless(data):
    image = bytearray(SMALL)
    for i in data.draw(st.lists(st.integers(0, 7), min_size=1, max_size=4)):
        offset = data.draw(st.one_of(st.integers(0, len(SMALL) // 64 + 2).map(lambda n: 64 * n),
                                     st.integers(0, len(SMALL) + 128), st.integers(0, 2**64 - 1)))
        count = data.draw(st.one_of(st.integers(0, 64), st.sampled_from([8, 16, 2**40, 2**63]),
                                    st.integers(0, 2**64 - 1)))
        struct.pack_into("<QQ", image, 64 + 16 * i, offset, count)
    try:
        view = View(bytes(image))
    except ValueError:
        return
    exercise(view)


def test_a_full_map_in_a_forged_image_does_not_loop_forever():
    t = Table()
    t.put(pack("10.0.0.1"), 1)
    image = bytearray(t.image(0))
    offset, count = struct.unpack_from("<QQ", image, 64 + 16 * 2)   # EXACT4
    for i in range(count):
        struct.pack_into("<II", image, offset + 8 * i, 0x01010101 * (i + 1), 1)  # every slot taken, none matching
    for i in (0, 1):                                                  # DIR4 too
        o, c = struct.unpack_from("<QQ", image, 64 + 16 * i)
        for j in range(c):
            struct.pack_into("<II", image, o + 8 * j, 0xfefefefe - j, 0xffffffff)  # pages that do not exist
    view = View(bytes(image))
    assert view.lookup(pack("10.0.0.1")) == -1 and view.lookup(pack("2001:db8::1")) == -1


# ---------------------------------------------------------------- Judge


@pytest.fixture
def model() -> Model:
    m = Model()
    m.allow = b"\0\1\1\0"                                   # verdicts 1 and 2 allow
    m.put(pack("198.18.0.1"), 1)
    m.put(pack("198.18.0.2"), 0)
    m.put(pack("198.18.0.3"), 2, "lo")
    m.put(pack("198.18.0.4"), 2, None, MAC1)
    m.put(pack("198.18.0.5"), 2, "lo", MAC1)
    m.put(pack("198.18.0.6"), 0, "lo", MAC1)                # blocked, bound: blocked whatever the interface
    m.put(pack("198.18.0.7"), 9)                            # a verdict past the known ones: blocked
    m.put(pack("2001:db8::1"), 1)
    m.put(pack("2001:db8::2"), 3)
    m.put(pack("2001:db8::3"), 1, "no-such-if0")
    m.put_prefix(pack("198.18.1.0"), 28, 2)
    m.put_prefix(pack("2001:db8:1::"), 64, 1, "lo")
    for last in range(100):                                 # a dense prefix: a page
        m.put(pack("198.18.5.0")[:3] + bytes([last]), 1 + last % 2, None, MAC2 if last % 5 == 0 else None)
    return m


CASES = [  # source, indev, hw, verdict, outcome
    ("198.18.0.1", 0, None, "accept", 1),
    ("198.18.0.2", LO, MAC1, "drop", 0),
    ("198.18.0.3", LO, None, "accept", 2),
    ("198.18.0.3", 0, None, "drop", SPOOFED),
    ("198.18.0.3", NO_SUCH_INDEX, None, "drop", SPOOFED),
    ("198.18.0.4", 0, MAC1, "accept", 2),
    ("198.18.0.4", LO, MAC2, "drop", SPOOFED),
    ("198.18.0.4", LO, None, "drop", SPOOFED),
    ("198.18.0.5", LO, MAC1, "accept", 2),
    ("198.18.0.5", LO, MAC2, "drop", SPOOFED),
    ("198.18.0.5", 0, MAC1, "drop", SPOOFED),
    ("198.18.0.6", 0, None, "drop", 0),
    ("198.18.0.7", 0, None, "drop", 9),
    ("198.18.0.8", 0, None, "drop", UNKNOWN),
    ("198.18.1.5", 0, None, "accept", 2),
    ("198.18.1.16", 0, None, "drop", UNKNOWN),
    ("198.18.5.1", 0, None, "accept", 2),
    ("198.18.5.5", 0, MAC2, "accept", 2),
    ("198.18.5.5", 0, MAC1, "drop", SPOOFED),
    ("198.18.5.200", 0, None, "drop", UNKNOWN),
    ("2001:db8::1", 0, None, "accept", 1),
    ("2001:db8::2", 0, None, "drop", 3),
    ("2001:db8::3", LO, None, "drop", SPOOFED),
    ("2001:db8:1::77", LO, None, "accept", 1),
    ("2001:db8:1::77", NO_SUCH_INDEX, None, "drop", SPOOFED),
    ("2001:db8::99", 0, None, "drop", UNKNOWN),
]


@pytest.mark.parametrize("source, indev, hw, verdict, outcome", CASES)
def test_judge_gives_the_models_verdict(model, source, indev, hw, verdict, outcome):
    assert model.judged(pack(source), indev, hw) == (verdict, outcome)   # the cases say what the model says
    drops: collections.deque[Any] = collections.deque()
    remember: collections.deque[Any] = collections.deque()
    judge = judge_of(model, drops=drops, remember=remember)
    payload = payload_of(pack(source))
    pkt = Packet(payload, indev, hw)
    judge(pkt)
    assert pkt.verdicts == [verdict]
    assert (judge.unknown, judge.spoofed, judge.malformed, judge.errors) == \
        (int(outcome == UNKNOWN), int(outcome == SPOOFED), 0, 0)
    counts = [0] * len(model.allow)
    if 0 <= outcome < len(counts):
        counts[outcome] = 1
    assert judge.counts() == counts and judge.unlisted == int(outcome >= len(model.allow))
    if verdict == "drop":
        came_from = (indev, hw) if outcome == SPOOFED else None
        assert list(drops) == [(judge.view, outcome, pack(source), payload, came_from)]
    else:
        assert not drops
    expected = model.remembered(pack(source), verdict, outcome)
    assert list(remember) == ([expected] if expected else [])


@pytest.mark.parametrize("packet, verdict", [
    (IP(src="198.18.0.1", dst="198.51.100.25") / SYN, "accept"),
    (IP(src="198.18.0.1", dst="198.51.100.25", options=[IPOption_NOP()] * 8) / SYN, "accept"),
    (IP(src="198.18.0.2", dst="198.51.100.25") / SYN, "drop"),
    (IPv6(src="2001:db8::1", dst="2001:db8:ffff::25") / SYN, "accept"),
    (IPv6(src="2001:db8::1", dst="2001:db8:ffff::25") / IPv6ExtHdrHopByHop() / SYN, "accept"),
    (IPv6(src="2001:db8::2", dst="2001:db8:ffff::25") / SYN, "drop"),
], ids=lambda p: p.summary() if hasattr(p, "summary") else p)
def test_judge_reads_real_headers(model, packet, verdict):
    judge = judge_of(model)
    pkt = Packet(bytes(packet))
    judge(pkt)
    assert pkt.verdicts == [verdict] and judge.malformed == judge.errors == 0


@pytest.mark.parametrize("default_allow, verdict", [(False, "drop"), (True, "accept")])
def test_every_short_or_unversioned_payload_is_malformed(model, default_allow, verdict):
    judge = judge_of(model, default_allow=default_allow)
    malformed = 0
    for length in range(41):
        for first in (0x45, 0x4f, 0x44, 0x40, 0x50, 0x60, 0x6f, 0x5f, 0x70, 0x00, 0xff):
            payload = bytes([first]) + bytes(length - 1) if length else b""
            well_formed = (0x45 <= first <= 0x4f and length >= 20) or (0x60 <= first <= 0x6f and length >= 40)
            pkt = Packet(payload)
            judge(pkt)
            malformed += not well_formed
            assert pkt.verdicts == ([verdict] if not well_formed else ["drop"]), (length, first)  # 0.0.0.0: unknown
    assert judge.malformed == malformed and judge.errors == 0


class Raising(Packet):
    def __init__(self, payload: bytes, fail: str, **kwargs: Any) -> None:
        super().__init__(payload, **kwargs)
        self.fail = fail

    def __getattribute__(self, name: str) -> Any:
        if name == object.__getattribute__(self, "fail"):
            object.__getattribute__(self, "verdicts").append(f"{name} raised")
            raise RuntimeError(f"{name} failed")
        return object.__getattribute__(self, name)


@pytest.mark.parametrize("source, fail, default_allow, verdicts, errors", [
    ("198.18.0.1", "get_payload", False, ["get_payload raised", "drop"], 1),
    ("198.18.0.1", "get_payload", True, ["get_payload raised", "accept"], 1),
    ("198.18.0.1", "accept", False, ["accept raised", "drop"], 1),
    ("198.18.0.1", "accept", True, ["accept raised", "accept raised"], 1),  # no verdict possible; no raise
    ("198.18.0.2", "drop", False, ["drop raised", "drop raised"], 1),
    ("198.18.0.2", "drop", True, ["drop raised", "accept"], 1),
    ("198.18.0.3", "indev", False, ["indev raised", "drop"], 1),
    ("198.18.0.4", "get_hw", True, ["get_hw raised", "accept"], 1),
    ("198.18.0.2", "get_hw", False, ["drop"], 0),           # not bound-and-allowed: get_hw is never asked
])
def test_a_packet_that_raises_still_gets_one_verdict_and_nothing_escapes(model, source, fail, default_allow,
                                                                          verdicts, errors):
    judge = judge_of(model, default_allow=default_allow)
    pkt = Raising(payload_of(pack(source)), fail, indev=LO)
    assert judge(pkt) is None
    assert pkt.verdicts == verdicts and judge.errors == errors


def test_odd_packets_are_errors_not_exceptions(model):
    judge = judge_of(model)

    class NoBytes(Packet):
        def get_payload(self):
            return bytearray(self.payload)

    for pkt in (NoBytes(payload_of(pack("198.18.0.1"))),
                Packet(payload_of(pack("198.18.0.3")), indev="lo"),
                Packet(payload_of(pack("198.18.0.3")), indev=-1),
                Packet(payload_of(pack("198.18.0.3")), indev=2**70)):
        judge(pkt)
        assert pkt.verdicts == ["drop"]
    assert judge.errors == 4
    judge(object())                                               # no methods at all
    assert judge.errors == 5


def test_an_error_after_the_verdict_gives_no_second_verdict(model):
    class Full(collections.deque):
        def append(self, item):
            raise MemoryError

    judge = judge_of(model, drops=Full())
    pkt = Packet(payload_of(pack("198.18.0.2")))
    judge(pkt)
    assert pkt.verdicts == ["drop"] and judge.errors == 1


def test_judge_is_called_like_a_function(model):
    judge = judge_of(model)
    pkt = Packet(payload_of(pack("198.18.0.1")))
    Judge.__call__(judge, pkt)
    assert pkt.verdicts == ["accept"]
    with pytest.raises(TypeError):
        judge()
    with pytest.raises(TypeError):
        judge(pkt, pkt)
    with pytest.raises(TypeError):
        judge(pkt=pkt)
    with pytest.raises(TypeError):
        Judge(b"not a view")
    judge.default_allow = True
    assert judge.default_allow is True
    with pytest.raises(AttributeError):
        judge.errors = 0


def test_swap_returns_the_counts_and_starts_new_ones(model):
    judge = judge_of(model)
    for source in ("198.18.0.1", "198.18.0.1", "198.18.0.2", "2001:db8::2", "198.18.0.7", "1.1.1.1"):
        judge(Packet(payload_of(pack(source))))
    assert judge.counts() == [1, 2, 0, 1]
    bigger = Model()
    bigger.allow = b"\1" * 6
    bigger.put(pack("198.18.0.1"), 5)
    new_view = View(mirror(bigger).image(2))
    assert judge.swap(new_view) == [1, 2, 0, 1]
    assert judge.view is new_view and judge.counts() == [0] * 6
    pkt = Packet(payload_of(pack("198.18.0.1")))
    judge(pkt)
    assert pkt.verdicts == ["accept"] and judge.counts() == [0, 0, 0, 0, 0, 1]
    assert judge.unknown == 1 and judge.unlisted == 1   # cumulative, not per view
    with pytest.raises(TypeError):
        judge.swap(b"")


def test_swap_from_another_thread_loses_no_count(model):
    judge = judge_of(model)
    views = [View(mirror(model).image(g)) for g in range(4)]
    returned: list[list[int]] = []
    stop = threading.Event()

    def swapper() -> None:
        i = 0
        while not stop.is_set():
            returned.append(judge.swap(views[i % 4]))
            i += 1

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    thread = threading.Thread(target=swapper)
    thread.start()
    try:
        packets = [Packet(payload_of(pack(s))) for s in ("198.18.0.1", "198.18.0.2", "2001:db8::2") * 5000]
        for pkt in packets:
            judge(pkt)
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old)
    assert len(returned) > 10
    total = [sum(c) for c in zip(*returned, judge.counts(), strict=True)]
    assert total == [5000, 5000, 0, 5000]


@given(st.data())
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_judge_against_the_model(data):
    m = Model()
    m.allow = data.draw(st.binary(max_size=6))
    for key, verdict, binding in data.draw(st.lists(st.tuples(keys, verdicts, bindings), max_size=30)):
        m.put(key, verdict, *binding)
    for base, n, verdict in data.draw(st.lists(st.tuples(st.sampled_from(BASES), st.integers(0, 120), verdicts),
                                           max_size=2)):
        for last in range(n):
            m.put(base[:-1] + bytes([last]), verdict, None, MAC1 if last % 3 == 0 else None)
    for net, verdict, binding in data.draw(st.lists(st.tuples(st.sampled_from(NETS), verdicts, bindings), max_size=4)):
        m.put_prefix(pack(net[0]), net[1], verdict, *binding)
    drops: collections.deque[Any] = collections.deque()
    remember: collections.deque[Any] = collections.deque()
    judge = judge_of(m, drops=drops, remember=remember)
    counts = [0] * len(m.allow)
    unknown = spoofed = 0
    probes = data.draw(st.lists(st.tuples(st.one_of(st.sampled_from(sorted(m.exact) or [bytes(4)]), keys),
                                          st.sampled_from([0, LO, NO_SUCH_INDEX]),
                                          st.sampled_from([None, MAC1, MAC2])), min_size=1, max_size=40))
    for key, indev, hw in probes:
        verdict, outcome = m.judged(key, indev, hw)
        pkt = Packet(payload_of(key), indev, hw)
        drops.clear()
        remember.clear()
        judge(pkt)
        assert pkt.verdicts == [verdict], (key, indev, hw)
        unknown += outcome == UNKNOWN
        spoofed += outcome == SPOOFED
        if 0 <= outcome < len(counts):
            counts[outcome] += 1
        assert [d[1] for d in drops] == ([outcome] if verdict == "drop" else [])
        expected = m.remembered(key, verdict, outcome)
        assert list(remember) == ([expected] if expected else [])
    assert (judge.counts(), judge.unknown, judge.spoofed, judge.errors) == (counts, unknown, spoofed, 0)


def test_the_interface_name_cache_serves_matches_and_mismatches_alike():
    """The index -> name cache (looked up again on a mismatch at most once a second an index, which a unit test
    cannot watch without renaming an interface) answers both ways for the same index, packet after packet."""
    m = Model()
    m.allow = b"\0\1"
    m.put(pack("10.0.0.1"), 1, "lo")
    m.put(pack("10.0.0.2"), 1, "not-lo")
    judge = judge_of(m)
    for _ in range(3):
        for source, verdict in (("10.0.0.1", "accept"), ("10.0.0.2", "drop")):
            pkt = Packet(payload_of(pack(source)), LO)
            judge(pkt)
            assert pkt.verdicts == [verdict]
    assert judge.spoofed == 3


def test_a_swap_in_the_middle_of_a_packet_frees_nothing_it_reads_and_counts_into_no_other_view(model):
    """A packet method written in Python can let another thread swap() mid-packet (here the packet swaps
    itself, deterministically): the Judge keeps reading the view it started with, and that packet's verdict,
    which means something else in the new view, is not counted there (it is lost)."""
    other = Model()
    other.allow = b"\1" * 4
    judge = judge_of(model)
    returned = []

    class Swapping(Packet):
        def get_hw(self):
            returned.append(judge.swap(View(mirror(other).image(2))))   # the old view's last reference goes
            return MAC1

    pkt = Swapping(payload_of(pack("198.18.0.4")), 0, MAC1)         # verdict 2, bound to MAC1: asks get_hw()
    judge(pkt)
    assert pkt.verdicts == ["accept"] and judge.errors == 0
    assert returned == [[0, 0, 0, 0]] and judge.counts() == [0, 0, 0, 0]


# ---------------------------------------------------------------- the image format, read as documented

M64 = 2**64 - 1
SECTIONS = ("dir4", "dir6", "exact4", "exact6", "pages", "records", "prefixes", "allow")


def fold(a: int, b: int) -> int:
    r = a * b
    return (r & M64) ^ (r >> 64)


def hash_of(key: bytes) -> int:
    if len(key) == 4:
        return fold(int.from_bytes(key, "little") ^ 0x243f6a8885a308d3, 0x9e3779b97f4a7c15)
    inner = fold(int.from_bytes(key[:8], "little") ^ 0x243f6a8885a308d3, 0x9e3779b97f4a7c15)
    return fold(inner ^ int.from_bytes(key[8:], "little"), 0xbf58476d1ce4e5b9)


class Image:
    """The image read with nothing but the layout in _fastpath/image.h's header comment."""

    def __init__(self, image: bytes) -> None:
        assert image[:8] == fp.MAGIC == b"P25FAST\0"
        version, header, self.generation, total, self.entries = struct.unpack_from("<IIQQQ", image, 8)
        assert (version, header, total) == (fp.FORMAT_VERSION, fp.HEADER_SIZE, len(image))
        assert image[40:64] == bytes(24)
        self.image = image
        self.parsed: dict[str, list[tuple[bytes, int]]] = {}
        self.at = {}
        for i, name in enumerate(SECTIONS):
            offset, count = struct.unpack_from("<QQ", image, 64 + 16 * i)
            assert offset % 64 == 0 and offset >= fp.HEADER_SIZE
            self.at[name] = (offset, count)

    def slots(self, name: str) -> list[tuple[bytes, int]]:
        if name not in self.parsed:
            offset, count = self.at[name]
            fmt = struct.Struct("<4sI" if name.endswith("4") else "<16sI")
            self.parsed[name] = list(fmt.iter_unpack(self.image[offset:offset + count * fmt.size]))
        return self.parsed[name]

    def probe(self, name: str, key: bytes) -> int:
        slots = self.slots(name)
        i = hash_of(key) >> (64 - (len(slots).bit_length() - 1))
        while slots[i][1]:
            if slots[i][0] == key:
                return slots[i][1]
            i = (i + 1) % len(slots)
        return 0

    def displacements(self, name: str) -> list[int]:
        """How far every key sits past its home slot; every slot between is taken (linear probing)."""
        slots = self.slots(name)
        mask, shift = len(slots) - 1, 64 - (len(slots).bit_length() - 1)
        out = []
        for i, (key, value) in enumerate(slots):
            if value:
                home = hash_of(key) >> shift
                d = (i - home) & mask
                assert all(slots[(home + j) & mask][1] for j in range(d))
                out.append(d)
        return out

    def lookup(self, key: bytes) -> int:
        family = "4" if len(key) == 4 else "6"
        page = self.probe("dir" + family, key[:-1] + b"\0")
        if page:
            offset, count = self.at["pages"]
            assert page - 1 < count
            value = int.from_bytes(self.image[offset + (page - 1) * 1024 + 4 * key[-1]:][:4], "little")
        else:
            value = self.probe("exact" + family, key)
        if not value:
            offset, count = self.at["prefixes"]
            for i in range(count):
                fam, plen, zero, value, net = struct.unpack_from("<BBHI16s", self.image, offset + 24 * i)
                assert zero == 0 and fam in (4, 6)
                if (fam == 4) == (len(key) == 4) and contains(net[:len(key)], plen, key):
                    break
            else:
                return -1
        if value & 0x80000000:
            offset, count = self.at["records"]
            verdict, flags, mac, interface = struct.unpack_from("<II8s16s", self.image,
                                                                offset + 32 * (value & 0x7fffffff))
            assert flags in (1, 2, 3)
            return verdict
        return value - 1


def test_the_image_is_laid_out_as_documented():
    t = Table()
    rng = random.Random(4)
    keys = fleet_keys(20_000) + [rng.randbytes(16) for _ in range(3000)] + [rng.randbytes(4) for _ in range(3000)]
    keys += [pack(f"198.19.{i}.{j}") for i in range(200) for j in range(0, 256, 16)]   # IPv4, 16 a /24: sparse
    for i, k in enumerate(keys):
        t.put(k, i % 7, "lo" if i % 11 == 0 else None, MAC1 if i % 13 == 0 else None)
    t.put_prefix(pack("10.0.0.0"), 8, 3, None, MAC2)
    t.put_prefix(pack("2001:db8:ff::"), 48, 4)
    t.set_allowed(b"\1\0\1")
    image = Image(t.image(77))
    assert image.generation == 77 and image.entries == len(set(keys))
    assert image.image[image.at["allow"][0]:][:3] == b"\1\0\1"
    for name in ("dir4", "dir6", "exact4", "exact6"):
        d = image.displacements(name)
        assert len(d) * 2 <= image.at[name][1]                      # load <= 0.5
        if len(d) > 100:                                            # a cheap hash, but a good one: short runs
            assert sum(d) / len(d) < 1.5 and max(d) < 40, (name, sum(d) / len(d), max(d))
    view = View(image.image)
    for k in rng.sample(keys, 2000) + [pack("10.1.2.3"), pack("2001:db8:ff::1"), pack("11.0.0.0")]:
        assert image.lookup(k) == view.lookup(k), k
