"""The pytest plugin port25_lab, used as a user uses it: a separate test project (a copy of examples/mail-app, none of
this repository's conftest or settings) run by its own pytest, which finds the plugin through the installed
pytest11 entry point. The lab tests need root and network namespaces (skipped, saying why, without them)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

from support.paths import LAB, ROOT
from enforcer.lab.manage import lab_down, netns_names, tag_for
from enforcer.lab.netns import can_build_namespaces

EXAMPLE = ROOT / "examples" / "mail-app"
WORKFLOW = ROOT / "examples" / "github-actions.yml"
WHY_NOT = can_build_namespaces()
needs_lab = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")


class Project:
    """A copy of the example project, and its pytest run as a subprocess."""

    def __init__(self, tmp_path: Path):
        self.path = tmp_path / "mail-app"
        shutil.copytree(EXAMPLE, self.path)
        self.basetemp = tmp_path / "basetemp"
        # where the plugin puts the lab (--port25-dir): outside tmp_path, whose parents let no other user through
        # (the lab's Postfix runs as postfix)
        self.top = Path(tempfile.mkdtemp(prefix="port25-test-"))
        self.top.chmod(0o711)
        self.lab_dir = self.top / "lab"
        self.tag = tag_for(self.lab_dir)

    def pytest(self, *args: str, prefix: tuple[str, ...] = (), timeout: float = 240) -> subprocess.CompletedProcess:
        # nothing of this session's pytest settings reaches the user's run
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        return subprocess.run([*prefix, sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                               f"--basetemp={self.basetemp}", f"--port25-dir={self.lab_dir}", *args], cwd=self.path,
                              env=env, capture_output=True,
                              text=True, timeout=timeout)

    def write_lab(self, keep: set[str]) -> str:
        """A lab file with only these resources of vagrant/lab.yml (a smaller lab comes up faster)."""
        doc = yaml.safe_load(LAB.read_text())
        doc["resources"] = [r for r in doc["resources"] if r["name"] in keep]
        doc["lab"]["expect"] = {k: v for k, v in doc["lab"]["expect"].items() if k in keep}
        (self.path / "small.yml").write_text(yaml.safe_dump(doc))
        return "small.yml"

    def namespaces(self) -> list[str]:
        return [n for n in netns_names() if n.startswith(f"{self.tag}-")]


@pytest.fixture
def project(tmp_path):
    p = Project(tmp_path)
    yield p
    if WHY_NOT is None:  # whatever a test found, nothing of its lab stays
        lab_down(p.lab_dir, purge=True)
    shutil.rmtree(p.top, ignore_errors=True)


def test_the_plugin_is_registered_under_pytest11():
    found = {e.name: e.value for e in entry_points(group="pytest11")}
    assert found.get("port25_lab") == "enforcer.lab.pytest_plugin", \
        "the installed package has no pytest11 entry point port25_lab: run ./scripts/install.sh again"


def test_every_pytest_run_imports_the_plugin_cheaply():
    """pytest imports the plugin wherever the package is installed: none of the lab's modules come with it."""
    code = ("import sys\nimport enforcer.lab.pytest_plugin\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyroute2', 'yaml', 'scapy', 'aiosmtpd')"
            " or m.startswith(('enforcer.state', 'enforcer.core', 'enforcer.dataplane', 'enforcer.lab.'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "['enforcer.lab.pytest_plugin']", done.stdout + done.stderr


@pytest.mark.parametrize("args, said", [
    (["--port25-lab", "missing.yml"], "port25_lab: --port25-lab missing.yml: no such lab file ({path}/missing.yml)"),
    (["--port25-profile", "nowhere"], "port25_lab: no lab file for profile 'nowhere'; use one of: azure, "),
    (["--port25-lab=missing.yml", "--port25-profile=aws"],
     "port25_lab: give --port25-lab FILE or --port25-profile NAME, not both"),
])
def test_a_wrong_option_is_one_line_and_exit_status_2(project, args, said):
    done = project.pytest(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("Exit: " + said.format(path=project.path)), line


def test_without_root_every_lab_test_is_skipped_with_one_reason(project):
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    # a user namespace of its own: the same files, but this process is not root there (euid 65534)
    done = project.pytest("-rs", prefix=("unshare", "--user"))
    if "unshare:" in done.stderr:
        pytest.skip(f"no user namespaces here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 skipped" in done.stdout
    reasons = set(re.findall(r"SKIPPED \[\d+\] \S+: (.*)", done.stdout))
    assert reasons == {"port25_lab: needs root to build network namespaces; run pytest as root "
                       "(sudo -E python -m pytest)"}, done.stdout


def test_the_ci_recipe_is_a_workflow_github_can_run():
    doc = yaml.safe_load(WORKFLOW.read_text())
    on = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true
    assert on, "the workflow says when it runs"
    [job] = doc["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    steps = job["steps"]
    assert all(("run" in s) != ("uses" in s) for s in steps), "every step runs a command or uses an action"
    assert all(isinstance(s["run"], str) for s in steps if "run" in s)
    script = "\n".join(s["run"] for s in steps if "run" in s)
    assert "unbound" in script and re.search(r"sudo -E \S*python -m pytest", script)
    assert any(s.get("uses", "").startswith("actions/checkout@") for s in steps)


# ------------------------------------------------------------ with the lab, for real

@needs_lab
def test_the_users_tests_pass_in_the_lab(project):
    """The example project's tests, in the default lab: the app falls back to the relay when port 25 is blocked,
    delivers directly where it is open, and after the exemption (change() mid-test) and a restart."""
    started = time.monotonic()
    done = project.pytest("-v")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "test_my_app_falls_back_to_the_relay_when_port_25_is_blocked PASSED" in done.stdout
    assert "test_after_the_exemption_and_a_restart_port_25_works PASSED" in done.stdout
    assert "test_postfix_defers_on_port_25_then_delivers_through_the_relay PASSED" in done.stdout
    assert "6 passed" in done.stdout
    hosts = len(yaml.safe_load(LAB.read_text())["resources"]) + 2  # and the gateway, the internet host
    assert f"(namespaces {project.tag}-*)" in done.stdout and f"port25_lab: removed {hosts} namespace(s)" in done.stdout
    assert not project.namespaces()
    assert not project.lab_dir.exists(), "every test passed: nothing of the lab is kept"
    assert time.monotonic() - started < 120


FAILING = '''
import subprocess
import sys

import pytest
from enforcer.lab.pytest_plugin import CommandFailed

def test_run_is_subprocess_run_in_the_host(port25_lab):
    done = port25_lab.run("shop-web", ["sh", "-c", "cat; echo $ENFORCER_LAB_HOST $MINE; ip -br addr show eth0"],
                          input="in ", capture_output=True, text=True, env={"MINE": "mine"})
    assert done.args == ["sh", "-c", "cat; echo $ENFORCER_LAB_HOST $MINE; ip -br addr show eth0"]
    assert done.stdout.startswith("in shop-web mine\\neth0") and port25_lab.resources["shop-web"][0] in done.stdout
    with pytest.raises(subprocess.CalledProcessError) as e:
        port25_lab.run("shop-web", ["false"], check=True)
    assert e.value.cmd == ["false"]
    with pytest.raises(FileNotFoundError):
        port25_lab.run("shop-web", ["no-such-command"])
    with pytest.raises(subprocess.TimeoutExpired):
        port25_lab.run("shop-web", ["sleep", "5"], timeout=0.5)

def test_a_wrong_change_is_the_enforcers_one_line(port25_lab):
    with pytest.raises(CommandFailed) as e:
        port25_lab.change("vm", "restart", "nope")
    assert e.value.returncode == 2
    assert e.value.line == "enforcer: error: no resource 'nope'; list them with: enforcer vm list"

def test_uses_the_lab_then_fails(port25_lab):
    assert port25_lab.run("shop-web", [sys.executable, "-c", "print(1)"], capture_output=True).stdout == b"1\\n"
    assert port25_lab.smtp("shop-web", 25, timeout=1)["outcome"] == "timeout"
    assert False, "the user's test fails"

def test_raises(port25_lab):
    raise RuntimeError("boom")
'''


@needs_lab
def test_the_lab_comes_down_when_the_users_tests_fail(project):
    (project.path / "test_failing.py").write_text(FAILING)
    done = project.pytest(f"--port25-lab={project.write_lab({'ea-vm', 'shop-web'})}", "test_failing.py")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 failed, 2 passed" in done.stdout and "the user's test fails" in done.stdout
    assert "port25_lab: removed 4 namespace(s); kept for you: " in done.stdout
    assert not project.namespaces()
    assert (project.lab_dir / "daemon.log").exists(), "a failed session keeps the lab's logs for its author"


@needs_lab
def test_an_unknown_host_is_one_line_and_exit_status_2(project):
    (project.path / "test_typo.py").write_text(
        "def test_typo(port25_lab):\n    port25_lab.run('shop-wbe', ['no-such-command'])\n")
    done = project.pytest(f"--port25-lab={project.write_lab({'shop-web'})}", "test_typo.py")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "port25_lab: no lab host 'shop-wbe'; use one of: shop-web, gateway, internet" in done.stdout
    assert not project.namespaces()


@needs_lab
def test_a_sigterm_takes_the_lab_down(project):
    """A CI job cancelled (SIGTERM to pytest): the lab's namespaces do not outlive the run."""
    (project.path / "test_slow.py").write_text(
        "import time\n\ndef test_slow(port25_lab):\n    print('lab up', flush=True)\n    time.sleep(120)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-s",
                             f"--basetemp={project.basetemp}", f"--port25-dir={project.lab_dir}",
                             f"--port25-lab={project.write_lab({'shop-web'})}",
                             "test_slow.py"], cwd=project.path, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "lab up" in line:
                break
        assert project.namespaces()
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
    assert proc.returncode == 2, out  # pytest's status for an interrupted run
    assert "port25_lab: removed 3 namespace(s)" in out
    assert not project.namespaces()
