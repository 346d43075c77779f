"""A real MTA behind the block (issue 20, item 3): Debian's Postfix in lab resources, an instance of each one's
own, fed by swaks, walked through the README's story with the CLI: on a Pay-As-You-Go VM mail to gmail.com stays
deferred with `Connection timed out` on port 25 (the queue and the mail log say so); on an EA VM it is delivered;
with `relayhost = [relay.lab]:587` (SASL, TLS) the deferred message leaves through the relay; the Dev/Test VM's only
after the diagnostic and the stop, deallocate, start. Then `lab demo --mta` runs the same story on its own."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from support.paths import LAB
from enforcer.cli.main import main
from enforcer.lab.manage import lab_down, tag_for
from enforcer.lab.netns import can_build_namespaces, netns, pids_in

WHY_NOT = can_build_namespaces() or next((f"needs {tool}: apt-get install {tool}" for tool in ("postfix", "swaks")
                                          if shutil.which(tool, path="/usr/sbin:/usr/bin") is None), None)
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
KEEP = {"ea-vm", "shop-web", "devtest-vm"}


@pytest.fixture
def lab(capfd):
    """A lab with an EA, a Pay-As-You-Go and a Dev/Test VM, in a directory Postfix (its own user) can reach."""
    top = Path(tempfile.mkdtemp(prefix="p25mta-"))
    top.chmod(0o711)
    doc = yaml.safe_load(LAB.read_text())
    doc["resources"] = [r for r in doc["resources"] if r["name"] in KEEP]
    doc["lab"]["expect"] = {k: v for k, v in doc["lab"]["expect"].items() if k in KEEP}
    (top / "mta.yml").write_text(yaml.safe_dump(doc))
    directory = top / "lab"
    try:
        assert main(["lab", "up", "--lab", str(top / "mta.yml"), "--dir", str(directory)]) == 0
        capfd.readouterr()
        yield directory
    finally:
        lab_down(directory, purge=True)
        shutil.rmtree(top, ignore_errors=True)


def enforcer(capfd, *argv: str) -> str:
    code = main(list(argv))
    out, err = capfd.readouterr()
    assert code == 0, f"{argv} -> {code}\n{out}\n{err}"
    return out


def queue_json(capfd, directory: Path, host: str) -> list[dict]:
    import json
    return json.loads(enforcer(capfd, "lab", "mta", "queue", "--dir", str(directory), host, "--json"))


def wait_for(condition, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert time.monotonic() < deadline, "waited in vain"
        time.sleep(0.2)
    return found


def reasons(capfd, directory: Path, host: str) -> list[str]:
    return [r["delay_reason"] for m in queue_json(capfd, directory, host) for r in m["recipients"]
            if "delay_reason" in r]


def arrived(directory: Path, to: str) -> list[dict]:
    from enforcer.lab.smtpsink import received
    return [m for m in received(directory / "mail") if to in m["to"]]


def test_postfix_behind_the_block_as_the_readme_tells_it(lab, capfd):
    d = ["--dir", str(lab)]
    for host in ("shop-web", "ea-vm", "devtest-vm"):
        assert f"postfix started on {host}" in enforcer(capfd, "lab", "mta", "start", *d, host)
        sent = enforcer(capfd, "lab", "exec", *d, host, "--", "swaks", "--server", "127.0.0.1", "--from",
                        f"app@{host}.lab", "--to", f"{host}@gmail.com", "--hide-informational")
        assert "queued as" in sent

    # EA: delivered by MX on port 25; Pay-As-You-Go and Dev/Test: deferred, as the platform defers them
    [mail] = wait_for(lambda: arrived(lab, "ea-vm@gmail.com"))
    assert mail["port"] == 25 and "ea-vm.lab" in mail["received"]
    for host in ("shop-web", "devtest-vm"):
        [reason] = wait_for(lambda host=host: reasons(capfd, lab, host))
        assert reason.endswith(":25: Connection timed out"), reason
        log = (lab / "postfix-logs" / f"{host}.log").read_text()
        assert "status=deferred (connect to mx.lab[" in log and ":25: Connection timed out)" in log
    # postqueue and mailq on the host read its own instance, as on the VM
    mailq = enforcer(capfd, "lab", "exec", *d, "shop-web", "--", "mailq")
    assert "shop-web@gmail.com" in mailq and "Connection timed out" in mailq

    explained = enforcer(capfd, "lab", "explain", *d, "shop-web")
    assert "Pay-As-You-Go, which is never exempted" in explained
    assert "that is a silent drop: how the provider's block looks" in explained
    assert "the way out: use an authenticated SMTP relay on port 587" in explained

    # the advice taken: relayhost = [relay.lab]:587 with SASL and TLS; the deferred message leaves at once
    assert "postfix reloaded on shop-web" in enforcer(capfd, "lab", "mta", "start", *d, "shop-web", "--relay")
    [mail] = wait_for(lambda: arrived(lab, "shop-web@gmail.com"))
    assert mail["port"] == 587 and mail["authenticated"]
    assert queue_json(capfd, lab, "shop-web") == []

    # Dev/Test: the diagnostic exempts the subscription, the running VM keeps its old policy...
    state = str(lab / "state.db")
    enforcer(capfd, "--state", state, "diagnose", "devtest-lab")
    enforcer(capfd, "lab", "mta", "flush", *d, "devtest-vm")
    log = lab / "postfix-logs" / "devtest-vm.log"
    wait_for(lambda: log.read_text().count("status=deferred") >= 2)
    assert not arrived(lab, "devtest-vm@gmail.com")
    # ...until it is stopped, deallocated and started: its processes end, its Postfix boots with its queue
    namespace = netns_of(lab, "devtest-vm")
    before = set(pids_in(namespace))
    said = enforcer(capfd, "--state", state, "vm", "restart", "devtest-vm")
    assert "processes of 'devtest-vm' ended" in said and "started again with its queue" in said
    assert before and not before & set(pids_in(namespace)), "the old processes ended; new ones run"
    enforcer(capfd, "lab", "mta", "flush", *d, "devtest-vm")
    [mail] = wait_for(lambda: arrived(lab, "devtest-vm@gmail.com"))
    assert mail["port"] == 25
    assert "port 25 now: allowed" in enforcer(capfd, "lab", "explain", *d, "devtest-vm")


def netns_of(directory: Path, host: str) -> str:
    import json
    return json.loads((directory / "lab.json").read_text())["hosts"][host]


def test_lab_down_ends_every_postfix_and_keeps_its_logs(lab, capfd):
    enforcer(capfd, "lab", "mta", "start", "--dir", str(lab), "shop-web")
    namespace = netns_of(lab, "shop-web")
    assert pids_in(namespace), "the instance runs in the host's namespace"
    enforcer(capfd, "lab", "down", "--dir", str(lab))
    assert not [n for n in netns.listnetns() if n.startswith(tag_for(lab))]
    assert not (lab / "postfix").exists(), "the instances' config and queues go with the lab"
    assert (lab / "postfix-logs" / "shop-web.log").exists(), "their mail logs stay, as the lab's other logs"
    assert subprocess.run(["pgrep", "-f", f"master.*{lab}"], capture_output=True).returncode == 1


@pytest.mark.parametrize(("argv", "said"), [
    (["lab", "mta", "start", "nope"], "no lab resource 'nope'; use one of: devtest-vm, ea-vm, shop-web"),
    (["lab", "mta", "queue", "ea-vm"], "no Postfix runs on ea-vm; start it: enforcer lab mta start ea-vm"),
    (["lab", "explain", "gateway"], "no lab resource 'gateway'; use one of: devtest-vm, ea-vm, shop-web"),
])
def test_bad_input_is_one_line_and_exit_2(lab, capfd, argv, said):
    code = main([*argv[:-1], "--dir", str(lab), argv[-1]])
    out, err = capfd.readouterr()
    assert code == 2 and out == ""
    assert err.strip() == f"enforcer: error: {said}"


def test_lab_demo_mta_tells_the_story_with_postfix():
    done = subprocess.run([sys.executable, "-m", "enforcer.cli", "lab", "demo", "--mta"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "ea-vm, its account lets it send" in out and "Connection timed out" in out
    assert "that is the block: blocked: subscription 'payg-shop' is Pay-As-You-Go" in out
    assert "shop-web's deferred message, through the relay" in out and "sent via relay.lab[" in out
    assert "devtest-vm after stop, deallocate, start" in out
    assert "every outcome matches the spec" in out
