"""Fuzz target: the Judge (the NFQUEUE callback in C) fed mutated packets. IPv4 and IPv6 headers with options and
extension header chains, then cut short, overwritten, given other versions, zero or huge length fields, padded
to 64 KiB, or plain garbage; from registered sources and random ones, on any interface index, with any MAC.
Whatever comes, every packet gets exactly one verdict, nothing raises, and where the source can be read (a
version 4 header of 20 bytes or more with IHL >= 5, or a version 6 header of 40 bytes or more) the verdict is the
reference's: the dict model of tests/support/fastpath.py over a table with bindings, and decide() over random
inventories compiled by the daemon's Keeper. Anything else is malformed and gets the default verdict.

Budget: HYPOTHESIS_PROFILE (tests/conftest.py); run under ASan and UBSan by scripts/sanitize.sh."""

from __future__ import annotations

import collections
import random
import socket
from typing import Any

from hypothesis import given, strategies as st
from support.fastpath import BASES, LO, MAC1, MAC2, NETS, NO_SUCH_INDEX, Model, Packet, bindings, judge_of, keys, \
    pack, verdicts
from support.fuzz import FUZZ, tally  # noqa: F401 - the fixture
from test_table import INTERNET, PROFILE, inventories

from enforcer.core.policy import decide
from enforcer.dataplane.keeper import Keeper
from enforcer.dataplane._fastpath import Judge

# ---------------------------------------------------------------- packets

PROTOCOLS = [6, 6, 6, 51, 50, 4, 41, 47, 17, 0, 255]
EXTENSIONS = [0, 43, 44, 60, 51, 135, 139, 140, 253]   # hop-by-hop, routing, fragment, dest. opts, AH, ...
NEXT = st.sampled_from(PROTOCOLS + EXTENSIONS) | st.integers(0, 255)
u16 = st.sampled_from([0, 1, 20, 40, 0x7fff, 0xffff]) | st.integers(0, 0xffff)


def tcp_syn(sport: int) -> bytes:
    return sport.to_bytes(2, "big") + (25).to_bytes(2, "big") + bytes(8) + bytes([0x50, 0x02]) + bytes(6)


@st.composite
def ipv4(draw: Any, source: bytes) -> bytes:
    words = draw(st.integers(5, 15))                                        # IHL: 20..60 bytes of header
    header = bytes([0x40 | words, draw(st.integers(0, 255))]) + draw(u16).to_bytes(2, "big") + \
        draw(st.binary(min_size=4, max_size=4)) + bytes([draw(st.integers(0, 255)), draw(NEXT)]) + bytes(2) + \
        source + draw(st.binary(min_size=4, max_size=4)) + draw(st.binary(min_size=4 * (words - 5),
                                                                           max_size=4 * (words - 5)))
    return header + tcp_syn(draw(st.integers(0, 0xffff)))


@st.composite
def ipv6(draw: Any, source: bytes) -> bytes:
    chain = draw(st.lists(st.tuples(NEXT, st.integers(0, 4)), max_size=6))  # extension headers: (next, length)
    first = chain[0][0] if chain else draw(NEXT)
    body = b""
    for i, (_, units) in enumerate(chain):
        nxt = chain[i + 1][0] if i + 1 < len(chain) else 6
        body += bytes([nxt, units]) + draw(st.binary(min_size=6 + 8 * units, max_size=6 + 8 * units))
    header = bytes([0x60 | draw(st.integers(0, 15))]) + draw(st.binary(min_size=3, max_size=3)) + \
        draw(u16).to_bytes(2, "big") + bytes([first, draw(st.integers(0, 255))]) + source + \
        draw(st.binary(min_size=16, max_size=16))
    return header + body + tcp_syn(draw(st.integers(0, 0xffff)))


def mutate(packet: bytes, rng: random.Random) -> bytes:
    """The packet, cut, overwritten, extended or left alone: a few steps of each."""
    data = bytearray(packet)
    for _ in range(rng.randrange(5)):
        step = rng.choice(["cut", "byte", "first", "length", "junk", "huge"])
        if step == "cut":
            del data[rng.randrange(len(data) + 1):]
        elif step == "byte" and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif step == "first" and data:                                       # the version and IHL nibbles
            data[0] = rng.choice([0x00, 0x40, 0x44, 0x45, 0x4f, 0x50, 0x5f, 0x60, 0x6f, 0x70, 0xff])
        elif step == "length" and len(data) >= 6:                            # the length fields, v4 and v6
            at = rng.choice([2, 4])
            data[at:at + 2] = rng.choice([0, 1, 20, 40, 0x7fff, 0xffff, rng.randrange(0x10000)]).to_bytes(2, "big")
        elif step == "junk":
            data += rng.randbytes(rng.randrange(65))
        elif step == "huge":                                                 # past any MTU, up to 64 KiB
            data += bytes(rng.randrange(65536 - min(len(data), 65535)))
    return bytes(data)


def packets(sources: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    whole = sources.flatmap(lambda s: ipv4(s) if len(s) == 4 else ipv6(s))
    mutated = st.tuples(whole, st.integers(0, 2**32 - 1)).map(lambda p: mutate(p[0], random.Random(p[1])))
    return st.one_of(mutated, whole, st.binary(max_size=80))


INDEVS = [0, LO, NO_SUCH_INDEX]
HWS = [None, MAC1, MAC2, bytes(8), MAC1[:6]]
indevs = st.sampled_from(INDEVS) | st.integers(0, 2**32 - 1)
hws = st.sampled_from(HWS) | st.binary(max_size=10)
BULK = 200  # more packets an example, mutated from its own by a seeded generator: Hypothesis's drawing is slow


def cases_for(data: Any, sources: st.SearchStrategy[bytes]) -> list[tuple[bytes, int, bytes | None]]:
    """Drawn packets (shrinkable), then BULK more mutated from them (reproducible by the drawn seed)."""
    drawn = data.draw(st.lists(st.tuples(packets(sources), indevs, hws), min_size=1, max_size=20))
    rng = random.Random(data.draw(st.integers(0, 2**32 - 1)))
    bulk = []
    for _ in range(BULK):
        payload, indev, hw = rng.choice(drawn)
        bulk.append((mutate(payload, rng), rng.choice([indev, *INDEVS, rng.randrange(2**32)]),
                     rng.choice([hw, *HWS, rng.randbytes(rng.randrange(11))])))
    return drawn + bulk


def readable(payload: bytes) -> bytes | None:
    """The source the Judge must read, as documented (the address sits at a fixed offset in both versions)."""
    if len(payload) >= 20 and 0x45 <= payload[0] <= 0x4f:
        return payload[12:16]
    if len(payload) >= 40 and 0x60 <= payload[0] <= 0x6f:
        return payload[8:24]
    return None


def one_verdict_each(judge: Judge, cases: list[tuple[bytes, int, bytes | None]], expect: Any,
                     default_allow: bool) -> None:
    """Every packet judged once, no error, the expected verdict where the source is readable."""
    malformed = 0
    for payload, indev, hw in cases:
        pkt = Packet(payload, indev, hw)
        assert judge(pkt) is None
        source = readable(payload)
        if source is None:
            malformed += 1
            assert pkt.verdicts == ["accept" if default_allow else "drop"], payload.hex()
        else:
            assert pkt.verdicts == [expect(source, indev, hw)], (payload.hex(), indev, hw)
    assert judge.errors == 0 and judge.malformed == malformed


# ---------------------------------------------------------------- over a model table with bindings


@st.composite
def models(draw: Any) -> Model:
    m = Model()
    m.allow = draw(st.binary(max_size=6))
    for key, verdict, binding in draw(st.lists(st.tuples(keys, verdicts, bindings), max_size=30)):
        m.put(key, verdict, *binding)
    for base, n, verdict in draw(st.lists(st.tuples(st.sampled_from(BASES), st.integers(0, 120), verdicts),
                                          max_size=2)):
        for last in range(n):                                               # dense: pages
            m.put(base[:-1] + bytes([last]), verdict, "lo" if last % 2 else None, MAC1 if last % 3 == 0 else None)
    for net, verdict, binding in draw(st.lists(st.tuples(st.sampled_from(NETS), verdicts, bindings), max_size=4)):
        m.put_prefix(pack(net[0]), net[1], verdict, *binding)
    return m


@FUZZ
@given(data=st.data(), default_allow=st.booleans())
def test_fuzzed_packets_get_one_verdict_and_the_models(tally, data, default_allow):  # noqa: F811
    m = data.draw(models())
    sources = st.sampled_from(sorted(m.exact) or [bytes(4)]) | keys
    cases = cases_for(data, sources)
    judge = judge_of(m, default_allow=default_allow, drops=collections.deque(maxlen=64),
                     remember=collections.deque(maxlen=64))
    one_verdict_each(judge, cases, lambda key, indev, hw: m.judged(key, indev, hw)[0], default_allow)
    tally["packets"] += len(cases)


# ---------------------------------------------------------------- over a compiled inventory, against decide()


def text(key: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(key) == 16 else socket.AF_INET, key)


@FUZZ
@given(data=st.data(), default_allow=st.booleans())
def test_fuzzed_packets_over_a_compiled_inventory_get_decides_verdict(tally, data, default_allow):  # noqa: F811
    inv = data.draw(inventories())
    keeper = Keeper(PROFILE)
    keeper.fill(inv)
    registered = sorted({pack(a.split("/")[0]) for r in inv.resources.values() for a in r.addresses})
    sources = st.sampled_from(registered or [bytes(4)]) | keys
    cases = cases_for(data, sources)
    judge = Judge(keeper.view(), default_allow=default_allow, drops=collections.deque(maxlen=64))

    def expect(key: bytes, indev: int, hw: bytes | None) -> str:  # these inventories bind no source
        return "accept" if decide(inv, PROFILE, text(key), INTERNET, 25).allow else "drop"

    one_verdict_each(judge, cases, expect, default_allow)
    tally["packets"] += len(cases)
