"""enforcer.dataplane._fastpath's Table (the daemon's writer) against the reference model in dicts: what Table ->
image() -> View answers after every step, dense prefixes being promoted to pages and demoted back, binding records,
shrinking maps, prefixes, and the arguments it refuses."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from enforcer.dataplane._fastpath import Table, View
from support.fastpath import BASES, MAC1, MAC2, NETS, Model, bindings, keys, pack, verdicts


# ---------------------------------------------------------------- the table, step by step against the model


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



def test_image_into_a_buffer_too_small():
    t = Table()
    with pytest.raises(ValueError):
        t.image_into(bytearray(t.nbytes - 1), 0)
    with pytest.raises(TypeError):
        t.image_into(bytes(t.nbytes), 0)       # read-only
