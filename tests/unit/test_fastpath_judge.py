"""enforcer.dataplane._fastpath's Judge (the NFQUEUE callback) against the reference model: the verdict it gives
every packet, what it counts, records and remembers, real headers, malformed payloads, packets that raise, swaps
from another thread and in the middle of a packet."""

from __future__ import annotations

import collections
import sys
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scapy.all import IP, TCP, IPv6, IPv6ExtHdrHopByHop, IPOption_NOP

from enforcer.dataplane._fastpath import SPOOFED, UNKNOWN, Judge, View
from support.fastpath import (BASES, LO, MAC1, MAC2, NETS, NO_SUCH_INDEX, Model, Packet, bindings, judge_of, keys,
                              mirror, pack, payload_of, verdicts)

SYN = TCP(sport=40000, dport=25, flags="S")


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
    """The index -> name cache (a match read again once name_ttl_ns old, a mismatch at most once a second an
    index, forgotten on forget_interfaces() and swap(): renames are tests/integration/test_interface_rename.py's)
    answers both ways for the same index, packet after packet, whatever its limit, and after forgetting."""
    m = Model()
    m.allow = b"\0\1"
    m.put(pack("10.0.0.1"), 1, "lo")
    m.put(pack("10.0.0.2"), 1, "not-lo")
    judge = judge_of(m)
    assert judge.name_ttl_ns == 10_000_000
    for ttl in (judge.name_ttl_ns, 0, 2**64 - 1):
        judge.name_ttl_ns = ttl
        for _ in range(3):
            for source, verdict in (("10.0.0.1", "accept"), ("10.0.0.2", "drop")):
                pkt = Packet(payload_of(pack(source)), LO)
                judge(pkt)
                assert pkt.verdicts == [verdict]
            judge.forget_interfaces()
    assert judge.spoofed == 9
    with pytest.raises(OverflowError):
        judge.name_ttl_ns = -1


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
