"""Fuzz target: the View (a worker's reader of a table image) over damaged images. Images are built by a real
Table from random content (exact entries, dense pages, binding records, prefixes), then damaged without knowing
their layout beyond the fixed header: bytes set at random offsets, 32- and 64-bit words set to edge values at
aligned offsets anywhere (header fields, section offsets and counts, page and record numbers, verdicts, whatever
lies there), ranges copied over others, the image cut or extended. Each must be refused with ValueError when the
View is made, or answer everything it offers (lookups, entries, allows, len, a Judge's packets) without a crash,
an exception or a SystemError.

Budget: HYPOTHESIS_PROFILE (tests/conftest.py); run under ASan and UBSan by scripts/sanitize.sh."""

from __future__ import annotations

import collections
import random
import struct
from typing import Any

import pytest
from hypothesis import given, strategies as st
from support.fastpath import BASES, LO, MAC1, NETS, Model, Packet, bindings, keys, mirror, pack, payload_of, \
    verdicts
from support.fuzz import FUZZ, tally  # noqa: F401 - the fixture

from enforcer.dataplane import _fastpath as fp
from enforcer.dataplane._fastpath import Judge, Table, View

EDGES64 = [0, 1, 7, 8, 63, 64, 65, fp.HEADER_SIZE, 1024, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 2**40 + 1,
           2**63 - 1, 2**63, 2**64 - 64, 2**64 - 1]
BULK = 30  # damaged images an example (Hypothesis draws the table and the seed: drawing each byte is slow)
EDGES32 = [0, 1, 2, 255, 256, 0x7fffffff, 0x80000000, 0x80000001, 0xfffffffe, 0xffffffff]


@st.composite
def tables(draw: Any) -> tuple[Table, list[bytes]]:
    """A Table of random content, and keys worth looking up in it."""
    m = Model()
    m.allow = draw(st.binary(max_size=6))
    for key, verdict, binding in draw(st.lists(st.tuples(keys, verdicts, bindings), max_size=20)):
        m.put(key, verdict, *binding)
    dense = st.tuples(st.sampled_from(BASES), st.sampled_from([0, 70, 200]), st.sampled_from([0, 1, 2, 7]))
    for base, n, every in draw(st.lists(dense, max_size=2)):   # pages, every n-th address bound (0: none)
        for last in range(n):
            bound = every and last % every == 0
            m.put(base[:-1] + bytes([last]), last % 4, "lo" if bound else None, MAC1 if bound and last % 3 else None)
    for net, verdict, binding in draw(st.lists(st.tuples(st.sampled_from(NETS), verdicts, bindings), max_size=4)):
        m.put_prefix(pack(net[0]), net[1], verdict, *binding)
    probes = sorted(m.exact)[:20] + [pack(n) for n, _ in NETS] + [bytes(4), bytes(16), b"\xff" * 4, b"\xff" * 16]
    return mirror(m), probes


# weighted towards damage that a View cannot see at once and must survive in its lookups
STEPS = ["byte", "byte", "u32", "u32", "nudge", "nudge", "u64", "copy", "cut", "extend"]


def damage(image: bytes, rng: random.Random) -> bytes:
    """A few steps of damage (STEPS), each anywhere in the image."""
    data = bytearray(image)
    for _ in range(rng.randint(1, 4)):
        step, n = rng.choice(STEPS), len(data)
        if step == "byte" and n:
            data[rng.randrange(n)] = rng.randrange(256)
        elif step == "u64" and n >= 8:                          # the header's fields are u64s at multiples of 8
            value = rng.choice([*EDGES64, n, rng.randrange(n + 64), rng.randrange(2**64)])
            struct.pack_into("<Q", data, 8 * rng.randrange(n // 8), value)
        elif step == "u32" and n >= 4:                          # values, page numbers, record numbers, verdicts
            near = n // 1024 + rng.randrange(-1, 3)             # about as many as there are pages of 1 KiB
            value = rng.choice([*EDGES32, near, 0x80000000 | near, rng.randrange(2**32)]) & 0xffffffff
            struct.pack_into("<I", data, 4 * rng.randrange(n // 4), value)
        elif step == "nudge" and n >= 4:                        # a small number (a count, a page or record
            words = memoryview(data)[:n - n % 4].cast("I")      # number, bound or not) off by one or two
            small = [i for i, w in enumerate(words) if 0 < w & 0x7fffffff < 65536]
            if small:
                i = rng.choice(small)
                words[i] = (words[i] & 0x80000000) | ((words[i] & 0x7fffffff) + rng.choice([-2, -1, 1, 2])) & 0x7fffffff
            words.release()
        elif step == "copy" and n:
            src, dst = rng.randrange(n), rng.randrange(n)
            length = rng.randint(1, min(n - src, n - dst))
            data[dst:dst + length] = data[src:src + length]
        elif step == "cut":
            del data[rng.randrange(n + 1):]
        elif step == "extend":
            data += rng.randbytes(rng.randrange(257))
    return bytes(data)


def cut_keys(image: bytes, rng: random.Random, count: int = 24) -> list[bytes]:
    """Keys cut from the image itself at aligned offsets: slots hold their keys, so lookups of these reach the
    slots the damage touched, wherever they lie."""
    keys = []
    for _ in range(count):
        width = rng.choice([4, 16])
        if len(image) >= width:
            at = rng.randrange(0, len(image) - width + 1, 4)
            keys.append(image[at:at + width])
    return keys


def exercise(view: View, probes: list[bytes]) -> None:
    """Everything a View offers, as the worker and the daemon use it: must answer, whatever the image holds."""
    assert len(view) >= 0
    assert view.generation >= 0 and view.verdicts >= 0
    for key in probes:
        verdict = view.lookup(key)
        assert verdict >= -1
        assert view.entry(key) is None or len(view.entry(key)) == 3
        view.allows(verdict)
    judge = Judge(view, drops=collections.deque(maxlen=64), remember=collections.deque(maxlen=64))
    for key in probes:
        pkt = Packet(payload_of(key), LO, MAC1)
        judge(pkt)
        assert len(pkt.verdicts) == 1
    assert judge.errors == 0 and judge.malformed == 0


@FUZZ
@given(data=st.data())
def test_a_damaged_image_is_refused_or_answers(tally, data):  # noqa: F811
    table, probes = data.draw(tables())
    image = table.image(data.draw(st.integers(0, 2**64 - 1)))
    exercise(View(image), probes)                               # undamaged, it answers
    rng = random.Random(data.draw(st.integers(0, 2**32 - 1)))  # reproducible by the drawn seed
    for _ in range(BULK):
        bad = damage(image, rng)
        try:
            view = View(bad)
        except ValueError:
            tally["refused"] += 1
            continue
        exercise(view, probes + cut_keys(bad, rng))
        tally["answered"] += 1


@pytest.mark.parametrize("value", [2**63, 2**64 - 2, 2**64 - 1])
@pytest.mark.parametrize("prefix", [False, True])
def test_len_of_a_view_never_raises_systemerror(value, prefix):
    """Issue 19, row 7: the header's entry count was len()'s answer unchecked, and a count of 2^63 or more made
    len(View) a SystemError. Every 64-bit word of the header set to it, in turn."""
    t = Table()
    t.put(pack("198.18.0.1"), 1)
    if prefix:
        t.put_prefix(pack("198.18.1.0"), 24, 1)
    image = t.image(1)
    for at in range(0, fp.HEADER_SIZE, 8):
        bad = bytearray(image)
        struct.pack_into("<Q", bad, at, value)
        try:
            view = View(bytes(bad))
        except ValueError:
            continue
        assert 0 <= len(view) < 2**63, at
