"""enforcer.dataplane._fastpath's View (a worker's reader): over any buffer, over the read-only mapping of a sealed
memfd, holding what it reads; and every bad image refused or harmless (truncated, garbage, damaged, forged)."""

from __future__ import annotations

import collections
import mmap
import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from enforcer.dataplane import _fastpath as fp
from enforcer.dataplane._fastpath import Judge, Table, View
from support.fastpath import LO, MAC1, MAC2, Packet, pack, payload_of


# ---------------------------------------------------------------- the buffer it reads


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
    assert len(view) >= 0
    for key in PROBES:
        view.entry(key)
        view.allows(view.lookup(key))
    judge = Judge(view, drops=collections.deque(maxlen=100), remember=collections.deque(maxlen=100))
    for key in PROBES:
        pkt = Packet(payload_of(key), LO, MAC1)
        judge(pkt)
        assert len(pkt.verdicts) == 1
    assert judge.errors == 0


def refused_or_harmless(image: bytes) -> None:
    """A View over a damaged image: refused with ValueError, or everything it offers returns."""
    try:
        view = View(image)
    except ValueError:
        return
    exercise(view)


def damaged(damage: list[tuple[int, int]]) -> bytes:
    """SMALL with the bytes at these offsets set to these values."""
    image = bytearray(SMALL)
    for at, value in damage:
        image[at] = value
    return bytes(image)


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
    refused_or_harmless(damaged(damage))


@given(st.lists(st.tuples(st.integers(fp.HEADER_SIZE, len(SMALL) - 1), st.integers(0, 255)), min_size=1,
                max_size=40))
@settings(max_examples=500, deadline=None)
def test_a_damaged_body_is_refused_or_harmless(damage):
    refused_or_harmless(damaged(damage))


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
    refused_or_harmless(bytes(image))


def test_a_header_that_lies_about_its_addresses_is_refused():
    """len(View) is the header's count of addresses (and the prefixes found): 2**64-1 there made len() fail with
    a SystemError (issue 19, row 7). A count the image has no room for is refused when the View is made."""
    for count in (2**64 - 1, 2**63, len(SMALL)):
        image = bytearray(SMALL)
        struct.pack_into("<Q", image, 32, count)
        with pytest.raises(ValueError, match="more addresses than it has room for"):
            View(bytes(image))
    assert len(View(SMALL)) == 72 + 2                                  # 72 addresses, 2 prefixes


def test_a_view_reads_its_prefix_lengths_once_whatever_the_buffer_holds_later():
    """A View over a buffer that changes under it (not a sealed memfd: a second line of defence): the prefix
    lengths a lookup builds its keys from were read when the View was made, so slots rewritten with any family
    and length cannot make it read past a network (a lookup read up to 31 bytes past one before issue 19, row 5;
    the sanitizer run of this test sees any such read)."""
    buffer = bytearray(SMALL)
    view = View(buffer)
    offset, count = struct.unpack_from("<QQ", buffer, 64 + 16 * 6)   # PREFIXES
    for fill in (0xFF, 0x06, 0x04, 0x80):
        buffer[offset:offset + 24 * count] = bytes([fill]) * (24 * count)
        exercise(view)
    buffer[:] = SMALL
    assert view.lookup(pack("10.1.2.3")) == 1 and view.lookup(pack("2001:db8:1::5")) == 2


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
