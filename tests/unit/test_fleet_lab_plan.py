"""The fleet lab's pure parts: which gateway serves which resources, its sizes refused, the gateways' addresses on
the internet host's network, a lab found from any of its members' etcd locations."""

from __future__ import annotations

import re

import pytest
import yaml

from enforcer.errors import UserError
from enforcer.lab.fleet import check_fleet, shares, side
from enforcer.lab.index import same_state
from support.paths import LAB

DOC = yaml.safe_load(LAB.read_text())


def test_the_vnets_are_dealt_out_in_turn_and_a_vnet_stays_behind_one_gateway():
    served = shares(DOC, 2)
    vnet_of = {r["name"]: r.get("vnet") for r in DOC["resources"]}
    for gateway, resources in served.items():
        for vnet in {vnet_of[r] for r in resources} - {None}:
            assert all(vnet_of[r] != vnet for other, rs in served.items() if other != gateway for r in rs)
    assert sorted(r for rs in served.values() for r in rs) == sorted(vnet_of)
    assert "shop-blob" in served["gw1"]  # in no VNet: behind the first gateway
    assert {"ea-vm", "devtest-vm", "msdn-vm"} <= set(served["gw1"]) and {"shop-web", "mcae-vm"} <= set(served["gw2"])
    assert list(shares(DOC, 1)) == ["gw1"] and len(shares(DOC, 1)["gw1"]) == len(DOC["resources"])


@pytest.mark.parametrize("gateways, members, said", [
    (0, 3, "--gateways 0: give 1 or more"),
    (6, 3, "--gateways 6: the lab file has 5 VNet(s)"),
    (2, 2, "--etcd-members 2: give an odd number from 1 to 7"),
    (2, 0, "--etcd-members 0: give an odd number"),
    (2, 9, "--etcd-members 9: give an odd number"),
])
def test_sizes_are_refused_in_one_line(gateways, members, said):
    with pytest.raises(UserError, match=re.escape(said)):
        check_fleet(gateways, members, DOC)


def test_each_gateway_has_its_own_address_beside_the_internet_host():
    internet = ["198.19.25.25", "2001:db8:ffff::25"]
    assert [side("198.19.25.25", k, internet) for k in (1, 2, 3)] == \
        [("198.19.25.1", 24), ("198.19.25.2", 24), ("198.19.25.3", 24)]
    assert side("2001:db8:ffff::25", 2, internet) == ("2001:db8:ffff::2", 64)
    assert side("198.19.25.1", 1, ["198.19.25.1"]) == ("198.19.25.2", 24)  # never the internet host's own


def test_a_lab_is_found_from_any_member_of_its_etcd_and_its_prefix():
    ours = "etcd://198.19.253.11:2379,198.19.253.12:2379/lab"
    assert same_state(ours, "etcd://198.19.253.12:2379/lab")
    assert same_state(ours, "etcd://198.19.253.11:2379,10.0.0.1:2379/lab/")
    assert not same_state(ours, "etcd://198.19.253.12:2379/other")
    assert not same_state(ours, "etcd://10.0.0.1:2379/lab")
    assert not same_state(ours, "/run/enforcer-lab/state.db") and not same_state("/x/state.db", ours)
    assert same_state("/tmp/x/../x/state.db", "/tmp/x/state.db")
