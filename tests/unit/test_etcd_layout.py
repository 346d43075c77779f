"""The etcd key layout's pure parts: an address key's value (format 2), what a state of another layout says; the
keys of a whole state (etcd_layout.state_keys): those a change making the same state writes, meta/format last; and a
copy's batches within etcd's default limits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enforcer.core.converge import converge
from enforcer.core.inventory import Inventory, Resource, State
from enforcer.core.verdicts import Judged
from enforcer.errors import UserError
from enforcer.state.backend import copy_rows
from enforcer.state.documents import read_document
from enforcer.state.etcd_client import parse_url
from enforcer.state.etcd_copy import BATCH_BYTES, BATCH_OPS, OP_BYTES, batches
from enforcer.state.etcd_layout import FORMAT, Keys, address_value, parse_address_value, planned, row_keys, state_keys
from enforcer.state.etcd_store import EtcdStore
from enforcer.state.profiles import load_profile
from support.paths import LAB
from support.states import TODAY

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", fullmatch=True)


@given(names, st.none() | st.integers(0, 128), st.text(), st.none() | st.text())
def test_an_address_value_reads_back_as_written(name, prefix_len, judged, bound):
    judged, bound = judged.replace("\0", ""), None if bound is None else bound.replace("\0", "")  # JSON has no NUL
    assert parse_address_value(address_value(name, prefix_len, judged, bound)) == (name, prefix_len, judged,
                                                                                   bound or None)


def test_a_resources_address_keys_carry_its_owner_and_what_the_table_needs():
    r = Resource("web-1", "payg", "vm", ("198.18.1.5", "2001:db8::/64"), state=State.RUNNING, vnet="hub",
                 interface="eth1")
    keys = row_keys(Keys("lab"), "resources", r)
    judged = Judged.of(r).encode()
    assert parse_address_value(keys[b"/lab/addresses/198.18.1.5"]) == ("web-1", None, judged,
                                                                       '["hub", "eth1", null]')
    assert parse_address_value(keys[b"/lab/addresses/2001:db8::/64"])[:2] == ("web-1", 64)


@pytest.mark.parametrize("value", [b"", b"web-1", b"web-1\0x\0\0j", b'["web-1", null, "j", null]'])
def test_a_value_of_another_form_is_refused(value):
    with pytest.raises(ValueError):
        parse_address_value(value)


@pytest.mark.parametrize("found, says", [("1", "earlier port25-enforcer (key layout 1"),
                                         ("99", "later port25-enforcer (key layout 99"),
                                         ("x", "later port25-enforcer (key layout x")])
def test_a_state_of_another_layout_is_one_line_saying_what_to_do(found, says):
    store = EtcdStore(parse_url("etcd://127.0.0.1:1/lab"))
    with pytest.raises(UserError, match=r"\(key layout") as e:
        store._settings({"format": (found.encode(), 1)})
    assert says in str(e.value) and f"this one reads {FORMAT}" in str(e.value)


def lab() -> Inventory:
    profile = load_profile("azure")
    inv, _ = converge(Inventory(profile=profile.id), profile, read_document(str(LAB)), str(LAB), today=TODAY)
    return inv.with_(internal_prefixes=("198.18.0.0/24",))


def test_a_whole_state_is_the_keys_a_change_making_it_writes_format_last():
    keys, inv = Keys("p"), lab()
    made, _ = copy_rows(inv, False, "p")(Inventory())
    writes, rows = planned(keys, Inventory(), made, exists=False, read=lambda key: None, first=lambda *group: [])
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

