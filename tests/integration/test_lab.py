"""The namespace lab, the demo and the probe, for real (root, network namespaces)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path
from unittest.mock import patch

import pytest
import yaml
from rich.console import Console

from support.netlab import wait_for
from support.paths import LAB
from enforcer.cli.main import main
from enforcer.lab.demo import EXIT_LAB_NOT_READY, Demo
from enforcer.lab.files import LABS, every_lab
from enforcer.lab.manage import tag_for
from enforcer.lab.netns import Topology, can_build_namespaces, netns, run_in

WHY_NOT = can_build_namespaces()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


def run(capsys, *args: str, expect: int = 0) -> str:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert code == expect, f"enforcer {' '.join(args)} -> {code}\n{out}\n{err}"
    return out + err


@pytest.fixture
def labdir(tmp_path):
    directory = tmp_path / "lab"
    yield directory
    main(["lab", "down", "--dir", str(directory)])
    assert not [n for n in netns.listnetns() if n.startswith(tag_for(directory))]


def test_demo_runs_for_real_and_matches_the_spec(capsys):
    out = run(capsys, "lab", "demo")
    assert "every outcome matches the spec" in out
    assert out.count("as the spec says") == len(yaml.safe_load(LAB.read_text())["resources"]) + 5


def small_lab(tmp_path, **expect_changes) -> str:
    doc = yaml.safe_load(LAB.read_text())
    keep = {"ea-vm", "shop-web", "devtest-vm"}
    doc["resources"] = [r for r in doc["resources"] if r["name"] in keep]
    doc["lab"]["expect"] = {k: v for k, v in doc["lab"]["expect"].items() if k in keep} | expect_changes
    path = tmp_path / "small.yml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_demo_fails_when_an_outcome_differs_from_the_spec(tmp_path, capsys):
    out = run(capsys, "lab", "demo", "--lab", small_lab(tmp_path, **{"shop-web": "allowed"}), expect=1)
    assert "1 outcome(s) differ from the spec" in out and "DIFFERS" in out


def test_every_providers_demo_matches_its_lab_file(capsys):
    """`lab demo --all`: every provider's lab, for real, one after the other (about 3 minutes, so CI runs the
    providers once, here), then the summary table; and what a newcomer reads of Hetzner's."""
    out = run(capsys, "lab", "demo", "--all")
    assert "DIFFERS" not in out and "lab fault" not in out and "not ready" not in out
    assert out.count("every outcome matches the spec") == len(every_lab())
    summary = out[out.index("Every provider's lab"):]
    for name, path in every_lab().items():
        assert f"│ {name} " in summary, name
        for resource in yaml.safe_load(path.read_text())["resources"]:
            assert f"│ {resource['name']} " in summary, (name, resource["name"])
    assert "steps as the spec says" in summary and not re.search(r"(\d+) of (?!\1)\d+ steps", summary)
    hetzner = out[out.index("Hetzner Cloud (/"):out.index("Every provider's lab")]
    hetzner = hetzner[:hetzner.index("every outcome matches the spec")]
    assert "Hetzner Cloud restricts" in hetzner and "ports 25 and 465" in hetzner
    assert re.search(r"server-new +│ Hetzner account +│ timeout +│ timeout +│ delivered", hetzner)
    assert "only once the account is at least 30 days old and its first invoice is paid" in hetzner
    assert "refused: account 'new-acct' (Hetzner account) does not qualify for an exemption yet" in hetzner
    assert re.search(r"server-new, still running: the change applies at once +port 25: delivered +port 465: "
                     r"delivered +as the spec says", hetzner)
    digitalocean = out[out.index("DigitalOcean (Droplets) (/"):]
    assert re.search(r"through a relay on port 2525, as the advice says +port 2525: delivered", digitalocean)


def test_a_providers_demo_judges_every_port(tmp_path, capsys):
    """Hetzner's lab file, but saying its new server's port 465 is open: the real block of 465 differs."""
    doc = yaml.safe_load((LABS / "hetzner.yml").read_text())
    doc["lab"]["expect"]["server-new"][465] = "allowed"
    path = tmp_path / "hetzner.yml"
    path.write_text(yaml.safe_dump(doc))
    out = run(capsys, "lab", "demo", "--lab", str(path), expect=1)
    assert re.search(r"server-new +│ Hetzner account +│ timeout +│ timeout +│ delivered +│ 25 blocked, 465 "
                     r"allowed +│ DIFFERS", out)
    assert "1 outcome(s) differ from the spec" in out


class FlakyIPv6Demo(Demo):
    """The demo on a lab whose internet host drops IPv6 for a while after it comes up (the first-run symptom:
    IPv6 paths not ready yet), or for good."""

    def __init__(self, lab_file: str, for_seconds: float | None):
        super().__init__(Path(lab_file), Console(width=200, record=True), timeout=1.5)
        self.for_seconds = for_seconds

    def build(self, lab):
        super().build(lab)
        inet = lab.topology.internet.namespace
        rule = ["ip6tables", "-I", "INPUT", "-j", "DROP"]
        subprocess.run(["ip", "netns", "exec", inet, *rule], check=True)
        if self.for_seconds is not None:
            lift = ["ip", "netns", "exec", inet, "ip6tables", "-D", "INPUT", "-j", "DROP"]
            threading.Timer(self.for_seconds, subprocess.run, [lift]).start()


def test_demo_waits_for_paths_that_are_not_ready_yet(tmp_path):
    demo = FlakyIPv6Demo(small_lab(tmp_path), for_seconds=4)
    assert demo.run() == 0
    out = demo.console.export_text()
    assert "every outcome matches the spec" in out and "DIFFERS" not in out


def test_demo_says_lab_not_ready_instead_of_differs(tmp_path):
    demo = FlakyIPv6Demo(small_lab(tmp_path), for_seconds=None)
    with patch("enforcer.lab.demo.READY_WAIT", 5.0):
        assert demo.run() == EXIT_LAB_NOT_READY
    out = demo.console.export_text()
    assert "lab not ready" in out and "to 2001:db8:ffff::25" in out and "DIFFERS" not in out


def test_a_timeout_the_enforcer_did_not_cause_is_a_lab_fault(tmp_path):
    """After the paths were proven, the internet host drops IPv6 port 25 itself: those time-outs have no drop
    of the enforcer's behind them, so they are a lab fault, not a verdict."""
    class LateFault(Demo):
        def wait_until_ready(self, lab):
            pending = super().wait_until_ready(lab)
            subprocess.run(["ip", "netns", "exec", lab.topology.internet.namespace, "ip6tables", "-I", "INPUT",
                            "-p", "tcp", "--dport", "25", "-j", "DROP"], check=True)
            return pending
    demo = LateFault(Path(small_lab(tmp_path)), Console(width=200, record=True), timeout=1.5)
    assert demo.run() == EXIT_LAB_NOT_READY
    out = demo.console.export_text()
    assert "lab fault" in out and "ea-vm to 2001:db8:ffff::25 port 25" in out


def test_lab_up_exec_status_down(labdir, capsys, tmp_path):
    """The lab follows its file: a VM added to lab.yml is a host of the lab, with its own namespace."""
    doc = yaml.safe_load(LAB.read_text())
    doc["resources"].append({"name": "new-vm", "subscription": "ea-prod", "kind": "vm", "vnet": "hub",
                             "addresses": ["198.18.1.99"]})
    changed = tmp_path / "lab.yml"
    changed.write_text(yaml.safe_dump(doc))
    run(capsys, "lab", "up", "--lab", str(changed), "--dir", str(labdir))
    assert "a lab is up already" in run(capsys, "lab", "up", "--lab", str(changed), "--dir", str(labdir),
                                        expect=2)
    status = json.loads(run(capsys, "lab", "status", "--dir", str(labdir), "--json"))
    assert status["hosts"]["new-vm"]["up"] and status["daemon_status"]["ok"]
    assert len(status["hosts"]) == len(doc["resources"]) + 2                    # and the gateway, the internet host
    assert status["hosts"]["gateway"]["up"] and status["hosts"]["internet"]["addresses"] == ["198.19.25.25",
                                                                                            "2001:db8:ffff::25"]
    capsys.readouterr()
    assert main(["lab", "exec", "--dir", str(labdir), "new-vm", "--", "python3", "-m", "enforcer.lab.smtptry",
                 "198.19.25.25", "25", "--timeout", "2"]) == 0
    assert main(["lab", "exec", "--dir", str(labdir), "shop-web", "--", "false"]) == 1
    assert "no lab host 'ghost'" in run(capsys, "lab", "exec", "--dir", str(labdir), "ghost", "--", "true",
                                        expect=2)
    state = status["state"]
    # a stop or restart shuts the VM down (issue 20, row j): its processes end, unless told to keep them
    kept = run_in(status["hosts"]["ea-vm"]["namespace"], ["sleep", "300"])
    ended = run_in(status["hosts"]["new-vm"]["namespace"], ["sleep", "300"])
    try:
        assert "processes" not in run(capsys, "--state", state, "vm", "restart", "ea-vm", "--keep-processes")
        assert "the processes of 'new-vm' ended" in run(capsys, "--state", state, "vm", "stop", "new-vm")
        assert ended.wait(10) == -15 and kept.poll() is None
    finally:
        for proc in (kept, ended):
            proc.kill()
            proc.wait()
    probe = json.loads(run(capsys, "probe", "--dir", str(labdir), "--in", "new-vm", "--to", "198.19.25.25:25",
                           "--json"))
    assert probe["result"] == "silence"           # a stopped VM sends nothing the gateway lets through
    assert "removed" in run(capsys, "lab", "down", "--dir", str(labdir))
    assert sorted(p.name for p in labdir.iterdir()) == ["daemon.log", "mail", "sink.log"]   # what came, kept
    assert "no lab is up" in run(capsys, "lab", "status", "--dir", str(labdir), expect=2)
    run(capsys, "lab", "down", "--purge", "--dir", str(labdir))
    assert not labdir.exists()


# what an unauthenticated client meets at the lab's relay ports, and at the MX (run inside a VM's namespace)
RELAY_REFUSALS = """
import json, os, smtplib, ssl
ca = ssl.create_default_context(cafile=os.environ["ENFORCER_LAB_CA"])
out = {}
def code(e):
    return [e.smtp_code, e.smtp_error.decode()] if hasattr(e, "smtp_code") else [0, str(e)]
s = smtplib.SMTP("198.19.25.25", 587, timeout=5)
out["plain"] = list(s.mail("a@lab.example")); out["plain"][1] = out["plain"][1].decode()
s = smtplib.SMTP("198.19.25.25", 587, timeout=5); s.starttls(context=ca); s.ehlo()
said = s.mail("a@lab.example")
out["tls, no auth"] = [said[0], said[1].decode()]
try:
    s.login(os.environ["ENFORCER_LAB_RELAY_USER"], "wrong")
except smtplib.SMTPAuthenticationError as e:
    out["wrong password"] = code(e)
try:
    smtplib.SMTP_SSL("198.19.25.25", 465, timeout=5, context=ca).login("lab", "wrong")
except smtplib.SMTPAuthenticationError as e:
    out["465 wrong password"] = code(e)
s = smtplib.SMTP("198.19.25.25", 25, timeout=5); s.ehlo()
said = s.mail("a@lab.example")
out["25 plain MX"] = [said[0], said[1].decode()]
print(json.dumps(out))
"""
DECOY = "raise ImportError('the decoy enforcer package of the working directory was imported')\n"


def test_lab_up_piped_from_another_directory_then_its_mail_kept_by_lab_down(tmp_path, capsys):
    """What a new user hit (issue 20): `lab up --dir X 2>&1 | tee log` never returned (the SMTP server held the
    pipe); run from a directory holding another `enforcer` package (a checkout without its C module), the lab's
    processes imported that one; `lab exec` without --dir said no lab was up; `lab down` deleted the mail the lab
    had received, which carried no port and no recipient. Here the working directory holds a package named
    enforcer that fails on import: every process the lab starts must run the installed code instead."""
    labdir = tmp_path / "lab"
    decoy = tmp_path / "cwd" / "enforcer"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text(DECOY)
    try:
        up = subprocess.run(f"{sys.executable} -P -m enforcer.cli lab up --dir {labdir} 2>&1 | cat", shell=True,
                            cwd=decoy.parent, capture_output=True, text=True, timeout=180)
        assert up.returncode == 0 and "lab up:" in up.stdout, up.stdout
        assert f"enforcer lab exec --dir {labdir} shop-web -- {sys.executable} -P -m enforcer.lab.smtptry" in up.stdout
        assert "no lab is up in" in run(capsys, "lab", "exec", "ea-vm", "--", "true", expect=2)
        assert f"--dir {labdir.resolve()}" in run(capsys, "lab", "status", expect=2)
        assert main(["lab", "exec", "--dir", str(labdir), "ea-vm", "--", sys.executable, "-P", "-m",
                     "enforcer.lab.smtptry", "198.19.25.25", "587", "--timeout", "5"]) == 0
        capsys.readouterr()
        mail = json.loads(run(capsys, "lab", "mail", "--dir", str(labdir), "--json"))
        assert [(m["port"], m["family"], m["from"], m["to"]) for m in mail] == \
            [(587, "IPv4", "ea-vm@lab.example", ["sink@internet.example"])]
        # `lab exec` hands the tools the lab's relay account and certificate: 587 took it over TLS, authenticated
        assert "Received: from ea-vm.lab ([198.18.1.10]) by internet.lab with ESMTPSA on port 587 over IPv4" in \
            Path(mail[0]["file"]).read_text()
        codes = subprocess.run([sys.executable, "-P", "-m", "enforcer.cli", "lab", "exec", "--dir", str(labdir),
                                "ea-vm", "--", sys.executable, "-c", RELAY_REFUSALS], capture_output=True, text=True,
                               timeout=60)
        assert json.loads(codes.stdout) == {"plain": [530, "Must issue a STARTTLS command first"],
                                            "tls, no auth": [530, "5.7.0 Authentication required"],
                                            "wrong password": [535, "5.7.8 Authentication credentials invalid"],
                                            "465 wrong password": [535, "5.7.8 Authentication credentials invalid"],
                                            "25 plain MX": [250, "OK"]}, codes.stderr
        down = run(capsys, "lab", "down", "--dir", str(labdir))
        assert f"kept: {labdir / 'mail'}, {labdir / 'daemon.log'}" in down
        assert len(list((labdir / "mail").glob("*.eml"))) == 1
        again = run(capsys, "lab", "up", "--dir", str(labdir), "--no-daemon")   # the same directory, again
        assert "the earlier lab's mail and logs: " in again
        assert len(list(labdir.glob("earlier-*/mail/*.eml"))) == 1 and not list(labdir.glob("mail/*.eml"))
    finally:
        main(["lab", "down", "--purge", "--dir", str(labdir)])
    assert not labdir.exists()


def test_a_daemon_that_cannot_start_is_one_line(tmp_path):
    from support.netlab import example_lab
    from enforcer.lab.namespace_lab import LabError
    with example_lab(tmp_path) as lab:
        with pytest.raises(LabError) as failed:
            lab.start_daemon("--metrics", "bogus")
    assert "the enforcer did not start on the gateway: enforcer: error: --metrics 'bogus'" in str(failed.value)
    assert "\n" not in str(failed.value) and "Traceback" not in str(failed.value)


def test_lab_down_cleans_up_after_a_crashed_lab_up(labdir, capsys):
    half = Topology(tag_for(labdir), ["198.19.25.25"])
    half.add_vm("ea-vm", ["198.18.1.10"])
    half._create(half.gateway.namespace)          # a lab up that died half-way: namespaces, no record
    half._create(half.vms["ea-vm"].namespace)
    assert "removed 2 namespace(s)" in run(capsys, "lab", "down", "--dir", str(labdir))


def test_probe_reports_syn_ack_rst_and_silence(labdir, capsys):
    run(capsys, "lab", "up", "--dir", str(labdir))
    results = {}
    for vm, port in (("ea-vm", 25), ("ea-vm", 26), ("shop-web", 25)):
        out = run(capsys, "probe", "--dir", str(labdir), "--in", vm, "--to", f"198.19.25.25:{port}", "--timeout",
                  "1", "--json")
        results[(vm, port)] = json.loads(out)["result"]
    assert results == {("ea-vm", 25): "syn-ack", ("ea-vm", 26): "rst", ("shop-web", 25): "silence"}
    human = run(capsys, "probe", "--dir", str(labdir), "--in", "shop-web", "--to", "[2001:db8:ffff::25]:587")
    assert "SYN-ACK" in human


def test_preflight_from_a_lab_vm_reports_connected_refused_and_timed_out(labdir, capsys, tmp_path):
    """The preflight as a mail admin runs it on their VM, from a lab VM's namespace: a Pay-As-You-Go VM's port
    25 times out (the enforcer drops it), 465 and 587 connect, a closed port is refused; each with its time, and
    what Azure's rules say of it."""
    run(capsys, "lab", "up", "--dir", str(labdir))
    report = json.loads(run(capsys, "probe", "--dir", str(labdir), "--in", "shop-web", "--preflight", "198.19.25.25",
                            "--port", "25", "--port", "465", "--port", "587", "--port", "26", "--profile", "azure",
                            "--timeout", "1.5", "--json"))
    by_port = {r["port"]: r for r in report["results"]}
    assert {p: r["outcome"] for p, r in by_port.items()} == {25: "timeout", 465: "connected", 587: "connected",
                                                             26: "refused"}
    assert report["addresses"] == {"IPv4": "198.19.25.25", "IPv6": None}
    assert by_port[25]["seconds"] >= 1.5 and by_port[587]["seconds"] < 1.5
    assert "restricts port 25" in by_port[25]["provider_says"] and "silence" in by_port[25]["provider_says"]
    # shop-web's account is Pay-As-You-Go, which no exemption lifts: the relay, not the diagnostic (issue 20, h)
    assert "no exemption lifts it for Pay-As-You-Go" in by_port[25]["provider_says"]
    assert "exemption" not in by_port[25]["next_step"] and "587" in by_port[25]["next_step"]
    assert "not the provider's block" in by_port[26]["provider_says"]

    # named by a host name with an IPv4 and an IPv6 address: both families tried (the name resolves from a hosts
    # file bind-mounted in a mount namespace of the preflight's own, inside the VM's network namespace), once the
    # IPv6 path is up (neighbour discovery takes a moment after `lab up`, as the demo's readiness wait knows)
    def ipv6_ready() -> bool:
        said = run(capsys, "probe", "--dir", str(labdir), "--in", "shop-web", "--preflight", "2001:db8:ffff::25",
                   "--port", "587", "--timeout", "1", "--json")
        return json.loads(said)["results"][0]["outcome"] == "connected"
    assert wait_for(ipv6_ready, timeout=30, interval=0.5), "the lab's IPv6 path never came up"
    namespace = json.loads(run(capsys, "lab", "status", "--dir", str(labdir), "--json"))["hosts"]["shop-web"][
        "namespace"]
    hosts = tmp_path / "hosts"
    hosts.write_text("198.19.25.25 mx.lab.example\n2001:db8:ffff::25 mx.lab.example\n")
    script = f"mount --bind {hosts} /etc/hosts && exec {sys.executable} -m enforcer.cli probe --preflight " \
             "mx.lab.example --profile azure --timeout 1.5"
    done = subprocess.run(["ip", "netns", "exec", namespace, "unshare", "--mount", "--propagation", "private", "sh",
                           "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "preflight to mx.lab.example: IPv4 198.19.25.25, IPv6 2001:db8:ffff::25" in out
    for family, address in (("IPv4", "198.19.25.25"), ("IPv6", "2001:db8:ffff::25")):
        assert re.search(rf"{family} {address} port 25: timed out after 1\.\d+ s\n +Azure .* restricts port 25", out)
        for port in (465, 587):
            assert re.search(rf"{family} {address} port {port}: connected in 0\.\d+ s\n +Azure .* never restricts "
                             rf"port {port}|{family} {address} port {port}: connected in 0\.\d+ s\n +Azure .* does "
                             rf"not restrict port {port}", out), (family, port, out)


def test_the_host_routes_every_lab_range_nowhere():
    """Asked, not tried: the kernel's route for a lab address (and one a lab file adds) is `unreachable`."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    from enforcer.lab.netns import guard_lab_ranges
    assert guard_lab_ranges(["198.51.100.77"]) == ["198.18.0.0/15", "2001:db8::/32", "198.51.100.77/32"]
    with IPRoute() as host:
        for address in ("198.18.1.10", "198.19.25.25", "2001:db8:ffff::25", "198.51.100.77"):
            with pytest.raises(NetlinkError) as refused:
                host.route("get", dst=address)
            assert refused.value.code in (101, 113), address  # ENETUNREACH, EHOSTUNREACH
        host.route("del", dst="198.51.100.77/32", type=7)
