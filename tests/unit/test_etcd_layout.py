"""The etcd key layout's pure parts: an address key's value (format 2) and what a state of another layout says."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enforcer.core.inventory import Resource, State
from enforcer.core.verdicts import Judged
from enforcer.errors import UserError
from enforcer.state.etcd_store import FORMAT, EtcdStore, Keys, address_value, parse_address_value, row_keys
from enforcer.state.etcd_client import parse_url

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
