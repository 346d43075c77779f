"""The Vagrant lab booted for real: libvirt VMs from the local box (vagrant/box/build.sh), the enforcer as a real
systemd service on the gateway, real SMTP from the resource VMs to the internet host, and the exemption story
driven by `vagrant halt` / `vagrant up` (the Vagrantfile's lifecycle triggers).

The host is prepared first (vagrant/host/prepare.sh: the lab ranges routed to `unreachable` before anything
else, libvirt, the isolated management network), and the routes are checked before any VM starts. Every machine
is destroyed at the end, whatever happened. Under software emulation (TCG) this takes about ten minutes.
"""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from support.paths import ROOT

VAGRANT_DIR = ROOT / "vagrant"
BOX = "p25/bookworm"
INTERNET = {4: "198.19.25.25", 6: "2001:db8:ffff::25"}
# The lab's first resources of each kind the story needs (lab.yml): EA, Enterprise Dev/Test, Pay-As-You-Go.
RESOURCES = ["ea-vm", "devtest-vm", "shop-web"]
PORT25_OUTCOME = {"ea-vm": "delivered", "devtest-vm": "timeout", "shop-web": "timeout"}
LAB_RANGES = {4: "198.18.0.0/15", 6: "2001:db8::/32"}


def missing() -> str | None:
    """Why the lab cannot boot here, or None."""
    if os.geteuid() != 0:
        return "needs root (libvirt, routes)"
    for tool, package in (("vagrant", "vagrant"), ("virsh", "libvirt-clients"), ("libvirtd", "libvirt-daemon-system"),
                          ("qemu-system-x86_64", "qemu-system-x86"), ("mmdebstrap", "mmdebstrap"),
                          ("qemu-img", "qemu-utils")):
        if shutil.which(tool) is None:
            return f"{tool} is missing (Debian package {package}; ./scripts/install.sh --test installs it)"
    plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True).stdout
    if "vagrant-libvirt" not in plugins:
        return "the vagrant-libvirt plugin is missing (./scripts/install.sh --test installs it)"
    return None


pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))


class Lab:
    """Runs vagrant on vagrant/ with this test's own machine data, and commands on its machines over SSH."""

    def __init__(self, dotfile: Path):
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("VAGRANT_", "P25_"))}
        self.env.update(VAGRANT_CWD=str(VAGRANT_DIR), VAGRANT_DOTFILE_PATH=str(dotfile), P25_BOX=BOX,
                        VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_NO_COLOR="1", VAGRANT_DEFAULT_PROVIDER="libvirt")
        self.ssh_config = dotfile / "ssh-config"
        self.log: list[str] = []

    def vagrant(self, *args: str, timeout: float = 900) -> str:
        started = time.monotonic()
        r = subprocess.run(["vagrant", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        out = "\n".join(line for line in r.stdout.splitlines() if "Progress:" not in line)
        self.log.append(f"vagrant {' '.join(args)}: exit {r.returncode} in {time.monotonic() - started:.0f} s")
        assert r.returncode == 0, f"vagrant {' '.join(args)}: exit {r.returncode}\n{out[-4000:]}\n{r.stderr[-3000:]}"
        return out

    def refresh_ssh(self, *names: str) -> None:
        self.ssh_config.write_text(self.vagrant("ssh-config", *names))

    def ssh(self, name: str, command: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["ssh", "-F", str(self.ssh_config), "-o", "ConnectTimeout=10", name, command],
                           capture_output=True, text=True, timeout=timeout)
        assert not check or r.returncode == 0, f"{name}: {command}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    def gateway(self, command: str, check: bool = True) -> str:
        return self.ssh("gateway", f"sudo {command}", check=check).stdout

    def smtp(self, name: str, port: int, family: int = 4, to: str | None = None) -> str:
        """One real SMTP delivery from a resource VM to the internet host (or to a name it resolves, `to`):
        delivered, timeout or refused."""
        out = self.ssh(name, f"PYTHONPATH=/vagrant-project python3 -m enforcer.lab.smtptry {to or INTERNET[family]} "
                             f"{port} --timeout 6 --source-name {name}").stdout
        return json.loads(out.strip().splitlines()[-1])["outcome"]

    def state(self, name: str) -> str:
        return json.loads(self.gateway(f"enforcer vm show {name} --json"))["state"]


def routes_unreachable() -> dict[int, bool]:
    found = {}
    for family, prefix in LAB_RANGES.items():
        out = subprocess.run(["ip", f"-{family}", "route", "show", "type", "unreachable"], capture_output=True,
                             text=True).stdout
        found[family] = any(line.split()[:2] == ["unreachable", prefix] for line in out.splitlines())
    return found


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    subprocess.run([str(VAGRANT_DIR / "host" / "prepare.sh")], check=True, timeout=600)
    assert routes_unreachable() == {4: True, 6: True}, "the lab ranges must be unreachable before any VM starts"
    started = time.monotonic()
    subprocess.run([str(VAGRANT_DIR / "box" / "build.sh"), "--name", BOX], check=True, timeout=1200)
    box_seconds = time.monotonic() - started
    # again, now that the box exists: whether KVM can boot its kernel is probed with it (the first run, on a
    # fresh machine, found no box and assumed software emulation)
    subprocess.run([str(VAGRANT_DIR / "host" / "prepare.sh")], check=True, timeout=600)
    lab = Lab(tmp_path_factory.mktemp("vagrant-dotfile"))
    lab.log.append(f"box ready in {box_seconds:.0f} s")
    try:
        lab.vagrant("up", "gateway", "internet")
        lab.vagrant("up", *RESOURCES)
        lab.refresh_ssh("gateway", "internet", *RESOURCES)
        yield lab
    finally:
        try:
            lab.vagrant("destroy", "-f", timeout=600)
        finally:
            print("\n".join(["", "Vagrant lab timings:", *lab.log]))


def test_the_lab_ranges_are_unreachable_on_the_host(lab):
    assert routes_unreachable() == {4: True, 6: True}


@pytest.mark.parametrize("name", ["gateway", "internet", *RESOURCES])
def test_no_machine_has_a_route_off_the_lab(lab, name):
    """The management network hands out no router: a machine reaches the lab's ranges and nothing else."""
    for family in (4, 6):
        assert lab.ssh(name, f"ip -{family} route show default").stdout.strip() == "", name
    assert lab.ssh(name, "ip -4 route get 192.0.2.1", check=False).returncode != 0, "TEST-NET-1 is routable"


def test_the_enforcer_runs_as_a_real_systemd_service_with_its_watchdog(lab):
    out = lab.gateway("systemctl show enforcer -p ActiveState -p Type -p WatchdogUSec -p NRestarts -p User -p MainPID")
    show = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert show["ActiveState"] == "active" and show["Type"] == "notify"
    assert show["User"] == "enforcer", "the daemon runs as its own system user"
    caps = lab.gateway(f"grep -E '^Cap(Eff|Amb)' /proc/{show['MainPID']}/status")
    assert caps.split() == ["CapEff:", f"{1 << 12:016x}", "CapAmb:", f"{1 << 12:016x}"], "CAP_NET_ADMIN alone"
    assert show["WatchdogUSec"] not in ("0", "infinity", ""), show
    assert show["NRestarts"] == "0", show
    assert lab.gateway("systemctl is-active enforcer").strip() == "active"


@pytest.mark.parametrize("name", RESOURCES)
def test_real_smtp_from_each_vm_meets_its_subscriptions_block(lab, name):
    assert lab.smtp(name, 25) == PORT25_OUTCOME[name]
    assert lab.smtp(name, 25, family=6) == PORT25_OUTCOME[name]
    assert lab.smtp(name, 587) == "delivered"
    assert lab.smtp(name, 465) == "delivered"


@pytest.mark.parametrize("name", RESOURCES)
def test_the_vms_resolve_through_the_labs_dns_and_mail_by_name(lab, name):
    """The internet host's unbound (provision/internet.sh) answers as the namespace lab's: any domain leads to it,
    the lab's names too; each VM's resolv.conf (provision/vm.sh) points at it, so a mail server's lookups work."""
    for host in ("gmail.com", "mx.lab", "relay.lab"):
        found = set(lab.ssh(name, f"getent ahosts {host} | awk '{{print $1}}'").stdout.split())
        assert found == set(INTERNET.values()), (host, found)
    assert lab.ssh(name, "getent hosts shop-web.lab").stdout.split()[0] in ("198.18.2.10", "2001:db8:2::10")
    assert lab.smtp(name, 25, to="mx.lab") == PORT25_OUTCOME[name]


def test_the_journal_holds_the_structured_drop_lines(lab):
    assert lab.smtp("shop-web", 25) == "timeout"
    journal = ""
    for _ in range(20):
        journal = lab.gateway("journalctl -u enforcer --no-pager -o cat")
        if "shop-web" in journal and "198.18.2.10" in journal:
            break
        time.sleep(1)
    drops = [line for line in journal.splitlines() if "198.18.2.10" in line]
    assert drops, f"no drop line for shop-web (198.18.2.10) in the journal:\n{journal[-3000:]}"


def test_systemctl_reload_recompiles_without_a_restart(lab):
    pid = lab.gateway("systemctl show enforcer -p MainPID --value").strip()
    lab.gateway("systemctl reload enforcer")
    for _ in range(30):
        if "recompiling on SIGHUP" in lab.gateway("journalctl -u enforcer --no-pager -o cat"):
            break
        time.sleep(1)
    else:
        pytest.fail("the daemon did not log its SIGHUP recompile")
    assert lab.gateway("systemctl show enforcer -p MainPID --value").strip() == pid
    assert lab.gateway("systemctl is-active enforcer").strip() == "active"
    assert lab.smtp("devtest-vm", 25) == "timeout" and lab.smtp("ea-vm", 25) == "delivered"


def test_the_exemption_story_with_real_vagrant_halt_and_up(lab, capsys):
    """Azure's rule 5: an exemption reaches a VM only at a stop-deallocate-start, which `vagrant halt` + `vagrant
    up` are; a shutdown from inside the guest keeps the allocation and so the old policy."""
    started = time.monotonic()
    lab.gateway("enforcer diagnose devtest-lab")
    assert lab.smtp("devtest-vm", 25) == "timeout", "a running VM keeps the policy it pulled"

    lab.ssh("devtest-vm", "sudo systemctl poweroff", check=False)
    for _ in range(60):
        if "shutoff" in lab.vagrant("status", "devtest-vm", "--machine-readable"):
            break
        time.sleep(2)
    lab.vagrant("up", "devtest-vm")
    assert lab.state("devtest-vm") == "running"
    assert lab.smtp("devtest-vm", 25) == "timeout", "a guest shutdown keeps the allocation and the old policy"

    lab.vagrant("halt", "devtest-vm")
    assert lab.state("devtest-vm") == "deallocated"
    lab.vagrant("up", "devtest-vm")
    assert lab.state("devtest-vm") == "running"
    assert lab.smtp("devtest-vm", 25) == "delivered", "a stop-deallocate-start pulls the exemption"
    assert lab.smtp("shop-web", 25) == "timeout", "the other subscriptions are untouched"
    with capsys.disabled():
        print(f"\nthe exemption story with real VMs took {time.monotonic() - started:.0f} s")


def test_systemd_analyze_security_exposure(lab, capsys):
    out = lab.gateway("systemd-analyze security enforcer.service --no-pager")
    overall = next(line for line in out.splitlines() if "Overall exposure level" in line)
    exposure = float(overall.split("level for enforcer.service:")[1].split()[0])
    with capsys.disabled():
        print(f"\n{overall.strip()}")
    assert exposure <= 2.5, out
