"""The clouds' lab files (vagrant/labs/NAME.yml): each is an inventory of its profile, with one account per rule,
and what it says each resource's SMTP to the internet does, per port, is what decide() says."""

from __future__ import annotations

import datetime
import ipaddress

import pytest

from enforcer.core.converge import converge
from enforcer.core.inventory import Inventory
from enforcer.core.policy import decide
from enforcer.errors import UserError
from enforcer.lab.files import SMTP_PORTS, port_expectations, resources_of
from enforcer.state.documents import read_document
from enforcer.state.profiles import load_profile
from support.paths import LAB, ROOT

LABS = sorted((ROOT / "vagrant" / "labs").glob("*.yml"))
CLOUDS = ["aws", "gcp", "oci", "digitalocean", "hetzner", "linode", "scaleway", "ibm-classic", "alibaba",
          "upcloud", "ovh", "vultr"]
TODAY = datetime.date(2026, 11, 27)  # a granted exemption may depend on an account's age (hetzner)


def test_every_cloud_has_a_lab_file():
    assert sorted(p.stem for p in LABS) == sorted(CLOUDS)


@pytest.mark.parametrize("path", LABS, ids=lambda p: p.stem)
def test_lab_file_expectations_are_what_decide_says(path):
    doc = read_document(str(path))
    assert doc["profile"] == path.stem
    profile = load_profile(doc["profile"])
    inv, _ = converge(Inventory(profile=profile.id), profile, doc, str(path), today=TODAY)
    expect = port_expectations(str(path), doc)
    assert set(expect) == set(inv.resources), "lab.expect names every resource, and only them"
    internet = [str(a) for a in doc["lab"]["internet"]["addresses"]]
    differs = []
    for name, by_port in expect.items():
        for address in inv.resources[name].addresses:
            destination = next(d for d in internet if ":" in d) if ":" in address else internet[0]
            for port in SMTP_PORTS:
                got = decide(inv, profile, address, destination, port).word
                if got != by_port[port]:
                    differs.append(f"{name} {address} -> {port}: file says {by_port[port]}, decide() {got}")
    assert not differs, differs
    # each file shows the block itself
    verdicts = {by_port[25] for by_port in expect.values()}
    assert "blocked" in verdicts


@pytest.mark.parametrize("path", LABS, ids=lambda p: p.stem)
def test_lab_file_addresses_and_macs_are_the_lab_s(path):
    doc = read_document(str(path))
    lab_ranges = [ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("2001:db8::/32")]
    for name, addresses in resources_of(doc).items():
        for a in addresses:
            ip = ipaddress.ip_address(a)
            assert any(ip.version == n.version and ip in n for n in lab_ranges), (name, a)
    macs = [r["mac"] for r in doc["resources"]]
    assert len(set(macs)) == len(macs) and all(m.startswith("52:54:00:") for m in macs)


def test_the_azure_lab_file_reads_with_one_word_per_resource():
    doc = read_document(str(LAB))
    expect = port_expectations(str(LAB), doc)
    assert expect["shop-web"] == {25: "blocked", 465: "allowed", 587: "allowed"}


@pytest.mark.parametrize("expect, message", [
    ({"vm1": {25: "blocked"}}, "lab.expect.vm1: expected a mapping of ports 25, 465, 587"),
    ({"vm1": {25: "blocked", 465: "maybe", 587: "allowed"}}, "lab.expect.vm1: 'maybe' is not a verdict"),
    (None, "lab.expect: missing"),
])
def test_a_bad_expectation_is_one_line_naming_file_and_key(expect, message):
    with pytest.raises(UserError, match=message) as err:
        port_expectations("labs/x.yml", {"lab": {"expect": expect}})
    assert str(err.value).startswith("labs/x.yml: ") and "\n" not in str(err.value)
