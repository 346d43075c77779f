"""The fleet lab (issue 21, item 4) for real: `enforcer lab up --gateways 2 --etcd-members 3` builds an etcd cluster
of three real members in namespaces of the lab's own and two gateways, each running the real daemon on the state in
etcd for its share of the VNets; real SMTP from the VMs, each SYN judged by its own gateway; a change made once,
applied by both; `lab down` leaves nothing. One fleet lab for the module (the tests before the last read it or
change it in ways the later ones expect); `lab demo --fleet` runs once, after it is down (both would hold the
control network).

Every command runs as its own process, as a person types it: this process never loads gRPC (the lab's namespaces
are entered in preexec functions elsewhere in the suite).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from enforcer.lab.manage import tag_for
from enforcer.lab.netns import can_build_namespaces, netns, own_module
from support.etcd import need_etcd
from support.netlab import wait_for
from support.paths import LAB

WHY_NOT = can_build_namespaces()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
INTERNET = yaml.safe_load(LAB.read_text())["lab"]["internet"]["addresses"][0]


def enforcer(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "enforcer.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def ok(*args: str) -> str:
    done = enforcer(*args)
    assert done.returncode == 0, f"enforcer {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


class Fleet:
    def __init__(self, directory: Path):
        self.dir = directory
        self.record = json.loads((directory / "lab.json").read_text())
        self.state = self.record["state"]

    def smtp(self, *vms: str) -> dict[str, str]:
        """Real deliveries to the internet host's port 25, one from each VM at once: vm -> outcome."""
        procs = {vm: subprocess.Popen([sys.executable, "-m", "enforcer.cli", "lab", "exec", "--dir", str(self.dir),
                                       vm, "--", *own_module("enforcer.lab.smtptry", INTERNET, "25", "--timeout",
                                                             "2")], stdout=subprocess.PIPE, text=True)
                 for vm in vms}
        return {vm: json.loads(p.communicate(timeout=60)[0])["outcome"] for vm, p in procs.items()}

    def status(self, gateway: str) -> dict:
        return json.loads(ok("--state", self.state, "status", "--socket", self.record["gateways"][gateway]["socket"],
                             "--json"))

    def drops(self, gateway: str) -> set[str]:
        log = Path(self.record["gateways"][gateway]["log"])
        return {json.loads(line).get("resource") for line in log.read_text().splitlines()
                if line.startswith("{") and '"blocked"' in line}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    need_etcd()
    directory = tmp_path_factory.mktemp("fleet") / "lab"
    try:
        said = ok("lab", "up", "--gateways", "2", "--etcd-members", "3", "--dir", str(directory))
        assert "gw1:" in said and "gw2:" in said, said
        yield Fleet(directory)
    finally:
        enforcer("lab", "down", "--dir", str(directory), "--purge")


def test_each_gateway_judges_its_own_vms_with_real_deliveries(fleet):
    serves = {name: g["serves"] for name, g in fleet.record["gateways"].items()}
    # the VNets dealt out in turn: hub, devnet, misc behind gw1; shop, corp behind gw2
    assert {"ea-vm", "devtest-vm", "msdn-vm"} <= set(serves["gw1"]) and {"shop-web", "mcae-vm"} <= set(serves["gw2"])
    assert not set(serves["gw1"]) & set(serves["gw2"])
    outcomes = fleet.smtp("ea-vm", "devtest-vm", "mcae-vm", "shop-web")
    assert outcomes == {"ea-vm": "delivered", "devtest-vm": "timeout", "mcae-vm": "delivered",
                        "shop-web": "timeout"}
    # each SYN crossed its own gateway's queue, and no other's
    assert wait_for(lambda: "devtest-vm" in fleet.drops("gw1") and "shop-web" in fleet.drops("gw2"))
    assert not fleet.drops("gw1") & {"shop-web", "mcae-vm"} and not fleet.drops("gw2") & {"devtest-vm", "ea-vm"}
    judged = {gw: {(v["subscription"], v["verdict"]) for v in fleet.status(gw)["daemon"]["verdicts"]}
              for gw in ("gw1", "gw2")}
    assert ("ea-prod", "allowed") in judged["gw1"] and ("devtest-lab", "blocked") in judged["gw1"]
    assert ("mcae-corp", "allowed") in judged["gw2"] and ("payg-shop", "blocked") in judged["gw2"]
    assert not {s for s, _ in judged["gw2"]} & {"ea-prod", "devtest-lab"}


def test_a_change_made_once_is_applied_by_both_gateways(fleet):
    ok("--state", fleet.state, "diagnose", "devtest-lab")
    said = ok("--state", fleet.state, "vm", "restart", "devtest-vm")
    assert "port 25 to the internet: allowed" in said
    generation = json.loads(ok("--state", fleet.state, "status", "--json"))["generation"]
    assert wait_for(lambda: all(fleet.status(gw)["daemon"]["generation"] == generation for gw in ("gw1", "gw2")),
                    timeout=15)
    assert fleet.smtp("devtest-vm") == {"devtest-vm": "delivered"}
    # lab explain reads the state from etcd and the drops from the VM's own gateway's log
    explained = ok("lab", "explain", "--dir", str(fleet.dir), "shop-web")
    assert "never exempted" in explained and "the enforcer dropped" in explained


def test_lab_status_partition_and_heal(fleet):
    status = json.loads(ok("lab", "status", "--dir", str(fleet.dir), "--json"))
    members = status["etcd"]["members"]
    assert [m["running"] for m in members] == [True] * 3 and sum(m["leader"] for m in members) == 1
    assert all(g["daemon_status"]["connected"] for g in status["gateways"].values())
    ok("lab", "partition", "--dir", str(fleet.dir), "gw2")
    try:
        assert wait_for(lambda: fleet.status("gw2")["daemon"]["connected"] is False, timeout=15)
        assert json.loads(ok("lab", "status", "--dir", str(fleet.dir), "--json"))["gateways"]["gw2"]["cut_off"]
        # cut off, it keeps judging with its last table
        assert fleet.smtp("mcae-vm", "shop-web") == {"mcae-vm": "delivered", "shop-web": "timeout"}
    finally:
        ok("lab", "heal", "--dir", str(fleet.dir), "gw2")
    assert wait_for(lambda: fleet.status("gw2")["daemon"]["connected"] is True, timeout=15)


@pytest.mark.parametrize("args, said", [
    (("--gateways", "0"), "--gateways 0: give 1 or more"),
    (("--gateways", "6"), "the lab file has 5 VNet(s)"),
    (("--etcd-members", "2"), "--etcd-members 2: give an odd number from 1 to 7"),
    (("--etcd-members", "9"), "--etcd-members 9: give an odd number from 1 to 7"),
    (("--gateways", "2"), "control network 198.19.253.0/24 is on this host's link"),  # one fleet lab at a time
])
def test_bad_input_is_one_line_and_makes_nothing(fleet, tmp_path, args, said):
    directory = tmp_path / "other"
    done = enforcer("lab", "up", *args, "--dir", str(directory))
    assert done.returncode == 2, done.stdout + done.stderr
    assert said in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not directory.exists() and not [n for n in netns.listnetns() if n.startswith(tag_for(directory) + "-")]


def test_lab_down_leaves_no_namespace_process_or_data(fleet):
    tag = fleet.record["tag"]
    link = fleet.record["etcd"]["link"]
    said = ok("lab", "down", "--dir", str(fleet.dir), "--purge")
    assert "removed" in said
    assert not [n for n in netns.listnetns() if n.startswith(f"{tag}-")]
    assert not fleet.dir.exists()
    assert subprocess.run(["ip", "link", "show", link], capture_output=True).returncode != 0
    leftovers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(fleet.dir) in cmdline or fleet.state in cmdline:
            leftovers.append(cmdline)
    assert not leftovers


def test_the_fleet_demo(capsys):
    """Last: it builds a fleet lab of its own (3 gateways, 3 members) once the module's is down."""
    need_etcd()
    done = enforcer("lab", "demo", "--fleet", timeout=400)
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr
    assert "every outcome matches the spec" in out and "FAILED" not in out
    for said in ("judged only its own resources' SYNs", "a new leader is elected",
                 "committed and applied by every gateway", "says it is not connected", "lost its watch",
                 "missed it, and says it is stale", "its last table still exempts it", "etcd compacted during the cut",
                 "caught up once the cut healed", "relisted after the compaction", "the revocation enforced"):
        assert said in out, said
    assert out.count("judged only its own") == 3
