"""The key layout of a whole state in etcd (etcd_store.state_keys), pure: the keys a copy writes are those a change
making the same state writes, meta/format last; and the copy's batches stay within etcd's default limits."""

from __future__ import annotations

from enforcer.core.converge import converge
from enforcer.core.inventory import Inventory
from enforcer.state.backend import copy_rows
from enforcer.state.documents import read_document
from enforcer.state.etcd_copy import BATCH_BYTES, BATCH_OPS, OP_BYTES, batches
from enforcer.state.etcd_store import FORMAT, Keys, planned, state_keys
from enforcer.state.profiles import load_profile
from support.paths import LAB
from support.states import TODAY


def lab() -> Inventory:
    profile = load_profile("azure")
    inv, _ = converge(Inventory(profile=profile.id), profile, read_document(str(LAB)), str(LAB), today=TODAY)
    return inv.with_(internal_prefixes=("198.18.0.0/24",))


def test_a_whole_state_is_the_keys_a_change_making_it_writes_format_last():
    keys, inv = Keys("p"), lab()
    made, _ = copy_rows(inv, False, "p")(Inventory())
    writes, rows = planned(keys, Inventory(), made, exists=False)
    whole = list(state_keys(keys, inv))
    assert whole[-1] == (keys.meta("format"), FORMAT.encode())
    assert dict(whole[:-1]) == writes and len(whole) - 1 == len(writes) > 100
    tables = ("subscriptions", "vnets", "resources")
    written = [k.decode().split("/")[2:4] for k, _ in whole if k.decode().split("/")[2] in tables]
    # the audit rows of that change in the order the copy writes the rows (its audit entry is made as they pass)
    assert [r[:2] for r in rows] == [[t[:-1], name] for t, name in written] + [["setting", "internal_prefixes"]]


def test_batches_keep_order_and_etcds_default_limits():
    kvs = [(f"/p/k/{i}".encode(), bytes(i % 5000)) for i in range(2_000)] + [(b"/p/big", bytes(BATCH_BYTES))]
    got = list(batches(kvs))
    assert [kv for batch in got for kv in batch] == kvs
    assert all(len(b) <= BATCH_OPS < 128 for b in got)
    assert all(sum(len(k) + len(v) + OP_BYTES for k, v in b) <= BATCH_BYTES for b in got[:-1])
    assert got[-1] == [(b"/p/big", bytes(BATCH_BYTES))]  # a key past the size alone, in a batch of its own

