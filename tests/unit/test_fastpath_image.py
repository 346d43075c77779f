"""enforcer.dataplane._fastpath's image read with nothing but the layout documented in _fastpath/image.h (header,
sections, the hash, linear probing), and what it costs: bytes an address."""

from __future__ import annotations

import random
import struct

from enforcer.dataplane import _fastpath as fp
from enforcer.dataplane._fastpath import Table, View
from support.fastpath import MAC1, MAC2, pack


# ---------------------------------------------------------------- the image format, read as documented

M64 = 2**64 - 1
SECTIONS = ("dir4", "dir6", "exact4", "exact6", "pages", "records", "prefixes", "allow")


def fold(a: int, b: int) -> int:
    r = a * b
    return (r & M64) ^ (r >> 64)


def hash_of(key: bytes) -> int:
    if len(key) == 4:
        return fold(int.from_bytes(key, "little") ^ 0x243f6a8885a308d3, 0x9e3779b97f4a7c15)
    if len(key) == 20:  # a prefix key: family, length, two zeros, the network as an IPv6 key
        return fold(hash_of(key[4:]) ^ int.from_bytes(key[:4], "little"), 0x94d049bb133111eb)
    inner = fold(int.from_bytes(key[:8], "little") ^ 0x243f6a8885a308d3, 0x9e3779b97f4a7c15)
    return fold(inner ^ int.from_bytes(key[8:], "little"), 0xbf58476d1ce4e5b9)


def pack_network(address: bytes, plen: int) -> bytes:
    bits = len(address) * 8
    return (int.from_bytes(address, "big") >> (bits - plen) << (bits - plen)).to_bytes(len(address), "big")


def prefix_key(address: bytes, plen: int) -> bytes:
    """The key the prefix map files address/plen under: its network, padded to 16 bytes."""
    return bytes([4 if len(address) == 4 else 6, plen, 0, 0]) + pack_network(address, plen).ljust(16, b"\0")


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
            fmt = struct.Struct("<4sI" if name.endswith("4") else "<20sI" if name == "prefixes" else "<16sI")
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
        if not value:  # the prefix map, one probe a length present in the family, longest first
            family = 4 if len(key) == 4 else 6
            lengths = {k[1] for k, v in self.slots("prefixes") if v and k[0] == family}
            for plen in sorted(lengths, reverse=True):
                value = self.probe("prefixes", prefix_key(key, plen))
                if value:
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
    nets = [(pack(f"172.{16 + i % 16}.{i // 16}.{(i % 4) * 64}"), 26 if i % 3 else 24) for i in range(600)]
    nets += [(pack(f"2001:db8:{i:x}::"), 48 + i % 17) for i in range(600)]
    for i, (net, plen) in enumerate(nets):
        t.put_prefix(pack_network(net, plen), plen, i % 5)
    t.set_allowed(b"\1\0\1")
    image = Image(t.image(77))
    assert image.generation == 77 and image.entries == len(set(keys))
    assert image.image[image.at["allow"][0]:][:3] == b"\1\0\1"
    for name in ("dir4", "dir6", "exact4", "exact6", "prefixes"):
        d = image.displacements(name)
        assert len(d) * 2 <= image.at[name][1]                      # load <= 0.5
        if len(d) > 100:                                            # a cheap hash, but a good one: short runs
            assert sum(d) / len(d) < 1.5 and max(d) < 40, (name, sum(d) / len(d), max(d))
    view = View(image.image)
    inside = [net[:-1] + bytes([net[-1] | 9]) for net, _ in nets]
    for k in rng.sample(keys, 2000) + inside + [pack("10.1.2.3"), pack("2001:db8:ff::1"), pack("11.0.0.0")]:
        assert image.lookup(k) == view.lookup(k), k


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
