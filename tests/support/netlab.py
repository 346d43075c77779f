"""The integration harness: the product's NamespaceLab, plus what only the tests need of it."""

from __future__ import annotations

import os
import signal
import sys

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from enforcer.cli.main import main
from enforcer.lab import namespace_lab
from enforcer.lab.namespace_lab import NamespaceLab
from support.paths import LAB


class NetLab(NamespaceLab):
    def cli(self, *args: str) -> int:
        """`enforcer --state LAB-STATE ARGS`, in-process: the operator's commands against the lab's state."""
        return main(["--state", str(self.state), *args])

    def stop_daemon(self, sig: int = signal.SIGTERM) -> int:
        proc, self.daemon = self.daemon, None
        assert proc is not None, "no daemon is running"
        proc.send_signal(sig)
        return proc.wait(30)

    def project_rules(self) -> str:
        """Every rule line of the project in the gateway, IPv4 and IPv6."""
        lines = []
        for tool in ("iptables-save", "ip6tables-save"):
            lines += [line for line in self.in_gateway([tool]).stdout.splitlines()
                      if "P25-ENFORCER" in line or "P25-DEFRAG" in line or "port25-enforcer" in line]
        return "\n".join(lines)

    def delivered(self) -> int:
        return len(list(self.maildir.glob("*.eml"))) if self.maildir.exists() else 0


@contextmanager
def example_lab(workdir: Path) -> Iterator[NetLab]:
    """The lab of vagrant/lab.yml up in namespaces, applied through the CLI, no daemon yet; all of it removed
    afterwards (and checked to be gone), also when the test fails."""
    doc = yaml.safe_load(LAB.read_text())
    lab = NetLab(workdir, doc["lab"]["internet"]["addresses"])
    assert lab.cli("apply", str(LAB)) == 0
    try:
        lab.up({r["name"]: r["addresses"] for r in doc["resources"]})
        yield lab
    finally:
        lab.close()
        from pyroute2 import netns
        assert not [n for n in netns.listnetns() if n.startswith(lab.tag)]


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05):
    """Poll until predicate() is truthy (bounded); returns its last value (the lab's own, with the tests' pace)."""
    return namespace_lab.wait_for(predicate, timeout, interval)


def as_user(uid: int, function) -> tuple[int, str]:
    """Run function() in a forked child that has become `uid` (no exec: the interpreter may sit where that
    user cannot read); returns (its return value as exit status, what it printed)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.dup2(write, 1)
            os.dup2(write, 2)
            sys.stdout = sys.stderr = open(write, "w", closefd=False)  # past pytest's capture
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            code = function()
        except BaseException as e:  # noqa: BLE001 - the child reports anything to its parent
            print(f"child failed: {e!r}", file=sys.stderr)
            code = 99
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 0)
    os.close(write)
    with os.fdopen(read) as f:
        output = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output
