"""The namespace lab: a real topology in network namespaces, an SMTP sink (aiosmtpd) on the internet host,
the real daemon on the gateway, and real SMTP attempts from the VMs. The integration tests, `enforcer lab` and
the demo all use it.

Everything it makes carries a tag and is removed by close(), also when something fails half-way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from .errors import UserError
from .netns import Topology, remove_tagged, run_in

SMTP_PORTS = (25, 465, 587)


class NamespaceLab:
    """A lab in network namespaces: the topology, an SMTP sink on the internet host, the daemon on the
    gateway, and SMTP attempts from the VMs. Everything it makes is named with its tag and removed by close()."""

    def __init__(self, workdir: Path, internet: list[str], tag: str | None = None):
        self.workdir = workdir
        self.tag = tag or f"p25t{uuid.uuid4().hex[:6]}"
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
        from .cli import main
        return main(["--state", str(self.state), *args])

    def up(self, vms: dict[str, list[str]]) -> None:
        for name, addresses in vms.items():
            self.topology.add_vm(name, addresses)
        self.topology.up()
        sink = run_in(self.topology.internet.namespace,
                      [sys.executable, "-m", "enforcer.smtpsink", "--maildir", str(self.maildir),
                       *[x for p in SMTP_PORTS for x in ("--port", str(p))]],
                      stdout=subprocess.PIPE, text=True, start_new_session=True)
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
                except TimeoutError:
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
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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

    def smtp_batched(self, attempts: list[tuple[str, str, int]], batch: int = 24, timeout: float = 2.5,
                     progress=None) -> list[str]:
        """smtp() in bounded batches (each attempt is a process; these machines have 2 cores)."""
        outcomes: list[str] = []
        for i in range(0, len(attempts), batch):
            outcomes += self.smtp(attempts[i:i + batch], timeout)
            if progress:
                progress(len(outcomes))
        return outcomes

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

    def live(self) -> dict:
        from .control import ask
        answer = ask(self.socket, {"cmd": "status"})
        if not answer or not answer.get("ok"):
            raise RuntimeError(f"the daemon does not answer: {answer}")
        return answer

    def wait_synced(self, timeout: float = 5.0) -> float:
        """Wait until the daemon runs the state's current generation; returns how long that took."""
        from .store import Store
        started = time.monotonic()
        target = Store(self.state).generation()
        while self.live()["generation"] != target:
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"the daemon did not pick up generation {target} within {timeout} s")
            time.sleep(0.02)
        return time.monotonic() - started

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


# ---------------------------------------------------------------- `enforcer lab up|down|status|exec`

LAB_DIR = Path("/run/enforcer-lab")


def tag_for(directory: Path) -> str:
    """The namespace tag of the lab kept in `directory`: p25lab for the default, a short digest otherwise."""
    if directory.resolve() == LAB_DIR:
        return "p25lab"
    return "p25l" + hashlib.sha1(str(directory.resolve()).encode()).hexdigest()[:6]
DEFAULT_LAB = Path(__file__).resolve().parent.parent / "vagrant" / "lab.yml"


def read_lab(lab_file: Path | None) -> tuple[str, dict, list[str], dict[str, str]]:
    """(path, document, internet addresses, what the spec expects per resource) of a lab file."""
    from .declarative import read_document
    path = str(lab_file or DEFAULT_LAB)
    if not Path(path).exists():
        raise UserError(f"no lab file at {path}; pass one: --lab vagrant/lab.yml")
    doc = read_document(path)
    lab = doc.get("lab") or {}
    try:
        internet = [str(a) for a in lab["internet"]["addresses"]]
        expect = {str(k): str(v) for k, v in (lab.get("expect") or {}).items()}
    except (KeyError, TypeError, AttributeError):
        raise UserError(f"{path}: the lab needs lab.internet.addresses; see vagrant/lab.yml") from None
    return path, doc, internet, expect


def apply_lab(lab: NamespaceLab, path: str, doc: dict) -> None:
    """Put the lab file's inventory into the lab's own state."""
    from .declarative import converge
    from .profile import load_profile
    from .store import Store
    profile = load_profile(doc.get("profile", "azure"))
    store = Store(lab.state, create=True)
    try:
        store.change("enforcer lab up", lambda inv: converge(inv.with_(profile=profile.id), profile, doc, path))
    finally:
        store.close()


def resources_of(doc: dict) -> dict[str, list[str]]:
    return {str(r["name"]): [str(a) for a in (r["addresses"] if isinstance(r["addresses"], list)
                                               else [r["addresses"]])] for r in doc.get("resources") or []}


LAB_FILES = ("lab.json", "state.db", "state.db-wal", "state.db-shm", "control.sock", "daemon.log", "notify-*.sock",
             "mail")


def record_path(directory: Path) -> Path:
    return directory / "lab.json"


def lab_up(lab_file: Path | None, directory: Path, daemon: bool = True) -> dict:
    tag = tag_for(directory)
    if record_path(directory).exists() or any(n.startswith(f"{tag}-") for n in netns_names()):
        raise UserError("a lab is up already (see: enforcer lab status); take it down first: enforcer lab down")
    path, doc, internet, _ = read_lab(lab_file)
    if directory.exists() and any(directory.iterdir()):
        raise UserError(f"{directory} is not empty; give lab up a directory of its own: --dir DIR")
    directory.mkdir(parents=True, exist_ok=True)
    lab = NamespaceLab(directory, internet, tag=tag)
    try:
        apply_lab(lab, path, doc)
        lab.up(resources_of(doc))
        if daemon:
            lab.start_daemon()
    except BaseException:
        lab.close()
        raise
    record = {"lab_file": path, "tag": tag, "state": str(lab.state), "socket": lab.socket,
              "gateway": lab.topology.gateway.namespace, "internet": lab.topology.internet.namespace,
              "internet_addresses": internet, "daemon": daemon,
              "hosts": {name: h.namespace for name, h in lab.topology.vms.items()},
              "addresses": {name: h.addresses for name, h in lab.topology.vms.items()}}
    record_path(directory).write_text(json.dumps(record, indent=2))
    return record


def netns_names() -> list[str]:
    from pyroute2 import netns
    return netns.listnetns()


def lab_down(directory: Path) -> list[str]:
    """Remove everything `lab up` made: processes, namespaces (and the rules inside them), the directory.
    Works from the namespaces' names alone, so also after a crash of `lab up`."""
    gone = remove_tagged(tag_for(directory))
    if record_path(directory).exists():  # only a directory `lab up` made, and only what it put there
        for name in LAB_FILES:
            target = directory / name
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                for f in directory.glob(name):
                    f.unlink(missing_ok=True)
        try:
            directory.rmdir()
        except OSError:
            pass  # something else lives there too: leave it
    return gone


def lab_record(directory: Path) -> dict:
    try:
        return json.loads(record_path(directory).read_text())
    except FileNotFoundError:
        raise UserError(f"no lab is up ({record_path(directory)} is missing); start one: enforcer lab up") from None


def host_namespace(directory: Path, host: str) -> str:
    """The namespace of a host of the lab that is up in `directory`."""
    record = lab_record(directory)
    namespaces = {**record["hosts"], "gateway": record["gateway"], "internet": record["internet"]}
    if host not in namespaces:
        raise UserError(f"no lab host '{host}'; use one of: {', '.join(sorted(namespaces))}")
    return namespaces[host]


def lab_exec(directory: Path, host: str, argv: list[str]) -> int:
    namespace = host_namespace(directory, host)
    if not argv:
        raise UserError("give the command after --: enforcer lab exec VM -- COMMAND")
    try:
        proc = run_in(namespace, argv)
    except FileNotFoundError:
        raise UserError(f"command not found: {argv[0]}") from None
    return proc.wait()
