"""The integration harness: a real topology in network namespaces, a real SMTP sink, the real daemon.

Everything it makes carries a tag and is removed in close(), which the fixtures call also when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from enforcer.cli import main as cli_main
from enforcer.netns import Topology, remove_tagged, run_in

SMTP_PORTS = (25, 465, 587)


class NetLab:
    def __init__(self, workdir: Path, internet: list[str]):
        self.workdir = workdir
        self.tag = f"p25t{uuid.uuid4().hex[:6]}"
        self.state = workdir / "state.db"
        self.socket = str(workdir / "control.sock")
        self.maildir = workdir / "mail"
        self.topology = Topology(self.tag, internet)
        self.internet = self.topology.internet.addresses
        self.procs: list[subprocess.Popen] = []
        self.daemon: subprocess.Popen | None = None
        self.daemon_log = workdir / "daemon.log"

    # ------------------------------------------------------------ building

    def cli(self, *args: str) -> int:
        return cli_main(["--state", str(self.state), *args])

    def up(self, vms: dict[str, list[str]]) -> None:
        for name, addresses in vms.items():
            self.topology.add_vm(name, addresses)
        self.topology.up()
        sink = run_in(self.topology.internet.namespace,
                      [sys.executable, "-m", "enforcer.smtpsink", "--maildir", str(self.maildir),
                       *[x for p in SMTP_PORTS for x in ("--port", str(p))]],
                      stdout=subprocess.PIPE, text=True)
        self.procs.append(sink)
        assert sink.stdout.readline().strip() == "ready", "the SMTP sink did not start"

    def start_daemon(self, *options: str, env: dict | None = None) -> subprocess.Popen:
        """Start `enforcer run` in the gateway namespace and wait for its READY=1 (sd_notify); every message it
        sends to its notify socket is kept in self.notified."""
        notify_path = str(self.workdir / f"notify-{len(self.procs)}.sock")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(0.2)
        self.notified: list[str] = []
        ready = threading.Event()

        def collect():
            while True:
                try:
                    message = notify.recv(4096).decode()
                except socket.timeout:
                    if self.daemon is None or self.daemon.poll() is not None:
                        break
                    continue
                self.notified.append(message)
                if "READY=1" in message:
                    ready.set()
            notify.close()

        log = open(self.daemon_log, "a")
        self.daemon = run_in(self.topology.gateway.namespace,
                             [sys.executable, "-m", "enforcer.cli", "--state", str(self.state), "run",
                              "--socket", self.socket, *options],
                             env={**os.environ, "NOTIFY_SOCKET": notify_path, **(env or {})},
                             stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(self.daemon)
        threading.Thread(target=collect, daemon=True).start()
        if not ready.wait(30):
            raise AssertionError(f"the daemon sent no READY=1:\n{self.daemon_log.read_text()}")
        return self.daemon

    def stop_daemon(self, sig: int = signal.SIGTERM) -> int:
        proc, self.daemon = self.daemon, None
        proc.send_signal(sig)
        return proc.wait(30)

    # ------------------------------------------------------------ traffic

    def smtp(self, attempts: list[tuple[str, str, int]], timeout: float = 2.5) -> list[str]:
        """Run real SMTP deliveries at once, each from its VM's namespace: [(vm, destination, port)] ->
        outcomes ("delivered", "timeout", "refused", "error")."""
        procs = []
        for vm, destination, port in attempts:
            procs.append(run_in(self.topology.vms[vm].namespace,
                                [sys.executable, "-m", "enforcer.smtptry", destination, str(port),
                                 "--timeout", str(timeout), "--source-name", vm],
                                stdout=subprocess.PIPE, text=True))
        return [json.loads(p.communicate(timeout=timeout + 30)[0])["outcome"] for p in procs]

    def in_gateway(self, argv: list[str]) -> subprocess.CompletedProcess:
        proc = run_in(self.topology.gateway.namespace, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      text=True)
        out, err = proc.communicate(timeout=60)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def project_rules(self) -> str:
        """Every rule line of the project in the gateway, IPv4 and IPv6."""
        lines = []
        for tool in ("iptables-save", "ip6tables-save"):
            lines += [line for line in self.in_gateway([tool]).stdout.splitlines()
                      if "P25-ENFORCER" in line or "port25-enforcer" in line]
        return "\n".join(lines)

    def delivered(self) -> int:
        return len(list(self.maildir.glob("*.eml"))) if self.maildir.exists() else 0

    # ------------------------------------------------------------ cleanup

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        remove_tagged(self.tag)


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05):
    """Poll until predicate() is truthy (bounded); returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


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
        except BaseException as e:  # noqa: BLE001 - report anything to the parent
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
