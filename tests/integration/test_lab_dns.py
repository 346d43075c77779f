"""The lab's DNS for real (issue 20, item 1): Debian's unbound on the internet host, and lookups from inside lab
VMs through the resolv.conf `ip netns exec` binds over theirs, with `dig` (bind9-dnsutils) and the C library's
resolver (Python's getaddrinfo), from a VM whose port 25 is blocked and from one whose is not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support.paths import LAB
from enforcer.cli.main import main
from enforcer.lab.manage import tag_for
from enforcer.lab.namespace_lab import NamespaceLab
from enforcer.lab.netns import NETNS_ETC, Topology, can_build_namespaces, exec_in, netns, remove_tagged

WHY_NOT = can_build_namespaces()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

INTERNET = ["198.19.25.25", "2001:db8:ffff::25"]
# what `lab exec` runs with the C library's resolver: a name's addresses, IPv4 first (as getaddrinfo sorts them
# here), one line
ADDRESSES = "import socket, sys; print(' '.join(sorted({i[4][0] for i in socket.getaddrinfo(sys.argv[1], 25)})))"


@pytest.fixture
def lab(tmp_path, capfd):
    """A small lab up (ea-vm allowed, shop-web blocked), with records of its own in its lab file."""
    doc = yaml.safe_load(LAB.read_text())
    keep = {"ea-vm", "shop-web"}
    doc["resources"] = [r for r in doc["resources"] if r["name"] in keep]
    doc["lab"]["expect"] = {k: v for k, v in doc["lab"]["expect"].items() if k in keep}
    doc["lab"]["dns"] = {"records": [{"name": "example.org", "type": "MX", "value": "5 mail.example.org"},
                                     {"name": "mail.example.org", "type": "A", "value": "198.19.25.26"},
                                     {"name": "example.org", "type": "TXT", "value": "v=spf1 mx -all"}]}
    path = tmp_path / "dns.yml"
    path.write_text(yaml.safe_dump(doc))
    directory = tmp_path / "lab"
    assert main(["lab", "up", "--lab", str(path), "--dir", str(directory)]) == 0
    capfd.readouterr()
    yield directory
    main(["lab", "down", "--dir", str(directory)])


def in_vm(capfd, directory: Path, vm: str, *argv: str) -> str:
    """What a command run with `enforcer lab exec` prints (its output is the command's own, so capfd's)."""
    code = main(["lab", "exec", "--dir", str(directory), vm, "--", *argv])
    out, err = capfd.readouterr()
    assert code == 0, f"{vm}: {argv} -> {code}\n{out}\n{err}"
    return out.strip()


def dig(capfd, directory: Path, vm: str, name: str, kind: str, *options: str) -> str:
    # no @server: dig reads /etc/resolv.conf, so this checks that the VM's is the lab's
    return in_vm(capfd, directory, vm, "dig", "+short", "+time=2", "+tries=1", *options, name, kind)


def test_lab_vms_resolve_through_the_lab_dns(lab, capfd):
    record = json.loads((lab / "lab.json").read_text())
    for namespace in [*record["hosts"].values(), record["gateway"], record["internet"]]:
        assert Path(NETNS_ETC, namespace, "resolv.conf").read_text().splitlines()[1:] == \
            [f"nameserver {a}" for a in INTERNET]
    for vm in ("shop-web", "ea-vm"):  # shop-web's port 25 is blocked: DNS is not
        assert dig(capfd, lab, vm, "gmail.com", "MX") == "10 mx.lab."
        assert dig(capfd, lab, vm, "outlook.com", "MX", "+tcp") == "10 mx.lab."   # TCP too
        assert in_vm(capfd, lab, vm, sys.executable, "-c", ADDRESSES, "gmail.com") == " ".join(INTERNET)
        assert in_vm(capfd, lab, vm, sys.executable, "-c", ADDRESSES, "mx.lab") == " ".join(INTERNET)
        assert in_vm(capfd, lab, vm, sys.executable, "-c", ADDRESSES, "relay.lab") == " ".join(INTERNET)
        assert in_vm(capfd, lab, vm, sys.executable, "-c", ADDRESSES, "shop-web.lab") == \
            " ".join(record["addresses"]["shop-web"])
        # the lab file's records: its MX and A, a TXT beside the catch-all's A
        assert dig(capfd, lab, vm, "example.org", "MX") == "5 mail.example.org."
        assert dig(capfd, lab, vm, "mail.example.org", "A") == "198.19.25.26"
        assert dig(capfd, lab, vm, "example.org", "TXT") == '"v=spf1 mx -all"'
        assert dig(capfd, lab, vm, "example.org", "A") == "198.19.25.25"
    # every address of the internet host answers, over UDP and TCP
    for server in INTERNET:
        for transport in ("+notcp", "+tcp"):
            assert dig(capfd, lab, "ea-vm", "relay.lab", "AAAA", f"@{server}", transport) == INTERNET[1]
    assert dig(capfd, lab, "ea-vm", "ghost.lab", "A") == ""   # a lab name no host has: none, not the catch-all
    # gmail.com's MX by name, as a mail server finds it: silence from shop-web (the block, over IPv4 then IPv6),
    # delivered from ea-vm
    smtptry = [sys.executable, "-P", "-m", "enforcer.lab.smtptry", "mx.lab", "25", "--timeout"]
    assert json.loads(in_vm(capfd, lab, "shop-web", *smtptry, "1"))["outcome"] == "timeout"
    assert json.loads(in_vm(capfd, lab, "ea-vm", *smtptry, "5"))["outcome"] == "delivered"
    # the preflight inside a lab VM names the MX, and finds both its addresses through the lab's DNS
    assert main(["probe", "--dir", str(lab), "--in", "shop-web", "--preflight", "gmail.com", "--port", "587",
                 "--json"]) == 0
    report = json.loads(capfd.readouterr().out)
    assert report["addresses"] == {"IPv4": INTERNET[0], "IPv6": INTERNET[1]}
    assert {r["outcome"] for r in report["results"]} == {"connected"}
    namespaces = record["hosts"].values()
    assert main(["lab", "down", "--dir", str(lab)]) == 0
    assert not [n for n in namespaces if os.path.exists(os.path.join(NETNS_ETC, n))]


def test_a_crashed_labs_resolv_conf_goes_with_its_namespaces(tmp_path):
    tag = tag_for(tmp_path / "lab")
    half = Topology(tag, INTERNET)
    half._create(half.gateway.namespace)  # a lab up that died half-way
    assert os.path.exists(os.path.join(NETNS_ETC, half.gateway.namespace, "resolv.conf"))
    netns.remove(half.gateway.namespace)  # and its namespace already gone (a reboot empties /run, not /etc)
    remove_tagged(tag)
    assert not os.path.exists(os.path.join(NETNS_ETC, half.gateway.namespace))


def test_a_vm_attached_to_a_lab_that_is_up_gets_its_name(tmp_path):
    """The demo's story creates a VM mid-way: unbound reads its config again, and the new name answers."""
    lab = NamespaceLab(tmp_path, INTERNET)
    try:
        lab.up({"first-vm": ["198.18.1.10"]})
        lab.attach("new-vm", ["198.18.4.20", "2001:db8:4::20"])
        dig = exec_in(lab.topology.vms["first-vm"].namespace, ["dig", "+short", "new-vm.lab", "AAAA"],
                      stdout=subprocess.PIPE, text=True)
        assert dig.communicate(timeout=30)[0].strip() == "2001:db8:4::20"
        assert os.path.exists(os.path.join(NETNS_ETC, lab.topology.vms["new-vm"].namespace, "resolv.conf"))
    finally:
        lab.close()
