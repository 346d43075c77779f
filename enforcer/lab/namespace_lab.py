"""The namespace lab: a real topology in network namespaces, an SMTP sink (aiosmtpd) on the internet host,
the real daemon on the gateway, and real SMTP attempts from the VMs. `enforcer lab`, the demo and the
integration tests all use it.

Everything it makes carries a tag and is removed by close(), also when something fails half-way.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any, Callable, TypeVar

from ..core.converge import converge, wanted_profile
from ..core.inventory import Inventory
from ..core.lifecycle import update_resource
from ..core.profile import Profile
from ..dataplane.control import ask
from ..errors import Failure
from ..state.backend import StateBackend, open_state
from ..state.profiles import load_profile
from .dns import unbound_binary, unbound_config
from .files import RELAY_NAME, SINK_PORTS, Record, Relay
from .netns import Host, Topology, own_module, remove_tagged, run_in

Attempt = tuple[str, str, int]  # (vm, destination, port)
DNS_READY = "start of service"  # what unbound logs once it serves
T = TypeVar("T")


def last_line(log: Path) -> str:
    """What a process said last before it died: the line a person needs (a traceback's last line names it)."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "it said nothing"


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll until predicate() is truthy (bounded); its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def read_inventory(state: str | os.PathLike[str]) -> Inventory:
    """What a lab's state holds now, an SQLite file or an etcd:// location (one read, the store closed again)."""
    store = open_state(str(state))
    try:
        inv, _ = store.read()
    finally:
        store.close()
    return inv


class LabError(Failure):
    """The lab could not be built or does not answer (not a user mistake, not an enforcer verdict)."""


class NamespaceLab:
    """A lab in network namespaces: the topology, an SMTP sink on the internet host, the daemon on the
    gateway, and SMTP attempts from the VMs. Everything it makes is named with its tag and removed by close()."""

    def __init__(self, workdir: Path, internet: list[str], tag: str | None = None):
        self.workdir = workdir
        self.tag = tag or f"p25t{uuid.uuid4().hex[:6]}"
        self.state: Path | str = workdir / "state.db"  # the fleet lab's: an etcd:// location
        self.socket = str(workdir / "control.sock")
        self.maildir = workdir / "mail"
        self.topology = Topology(self.tag, internet)
        self.internet = self.topology.internet.addresses
        self.procs: list[subprocess.Popen[Any]] = []
        self.daemon: subprocess.Popen[Any] | None = None
        self.daemon_log = workdir / "daemon.log"
        self.notified: list[str] = []
        self.relay = Relay()  # the relay ports' account: the lab file's lab.relay, set before up()
        self.ca = workdir / "tls" / "relay.pem"  # the relay's certificate, its own CA: what a client trusts
        self.records: list[Record] = []  # what the lab file adds to the lab's DNS (lab.dns), set before up()
        self.dns_dir = workdir / "dns"
        self.dns_log = self.dns_dir / "unbound.log"
        self.dns: subprocess.Popen[Any] | None = None
        self.dns_starts = 0  # how many times its log says it serves (once more after each reload)

    # ------------------------------------------------------------ the lab's state

    def change(self, command: str, operation: Callable[..., tuple[Inventory, T]], *args: Any, **kwargs: Any) -> T:
        """Run a lifecycle operation on the lab's state in one transaction, recorded as `command` in the audit
        log; returns what the operation says (the lines a person is told)."""
        def run(inv: Inventory) -> tuple[Inventory, T]:
            return operation(inv, load_profile(inv.profile), *args, **kwargs)
        store = self.open_state()
        try:
            return store.change(command, run)
        finally:
            store.close()

    def apply(self, path: str, doc: dict[str, Any]) -> list[str]:
        """Converge the lab's state onto a lab file's inventory (today judges an account's age, as `apply` does)."""
        def run(inv: Inventory, _: Profile) -> tuple[Inventory, list[str]]:
            return converge(inv, load_profile(wanted_profile(inv, doc, path)), doc, path, today=datetime.date.today())
        return self.change(f"enforcer apply {path}", run)

    def open_state(self) -> StateBackend:
        """The lab's state (SQLite here; the fleet lab's is in etcd): a change creates it."""
        return open_state(str(self.state))

    def has_state(self) -> bool:
        store = self.open_state()
        try:
            return store.exists
        finally:
            store.close()

    # ------------------------------------------------------------ building

    def up(self, vms: dict[str, list[str]]) -> None:
        """Build the topology with one host per VM (each with the MAC the state registers for it), start the
        SMTP sink, and bind each registered resource to its link, so that the gateway accepts its address only
        from there."""
        macs = self.registered_macs()
        for name, addresses in vms.items():
            self.topology.add_vm(name, addresses, macs.get(name))
        self.topology.up()
        self.start_sink()
        self.start_dns()
        self.bind_links()

    def registered_macs(self) -> dict[str, str]:
        if not self.has_state():
            return {}
        return {r.name: r.mac for r in read_inventory(self.state).resources.values() if r.mac}

    def bind_links(self) -> None:
        """Each registered resource's interface: its own link to the gateway."""
        if not self.has_state():
            return
        links = {name: host.link for name, host in self.topology.vms.items()}

        def bind(inv: Inventory, profile: Profile) -> tuple[Inventory, list[str]]:
            lines: list[str] = []
            for name in sorted(links.keys() & inv.resources.keys()):
                inv, said = update_resource(inv, profile, name, interface=links[name])
                lines += said
            return inv, lines
        self.change("enforcer lab up: bind each resource to its link", bind)

    def attach(self, name: str, addresses: list[str], mac: str | None = None) -> str:
        """A new host on a lab that is up, its NAME.lab answered by the lab's DNS; returns the gateway-side link to
        bind its resource to."""
        link = self.topology.attach(name, addresses, mac).link
        if self.dns is not None:
            self.write_dns_config()
            self.dns.send_signal(signal.SIGHUP)  # unbound reads its config again, the new name in it
            self.wait_dns_serving(self.dns, times=self.dns_starts + 1)
        return link

    def start_sink(self) -> None:
        key = self.make_certificate()
        relay = ["--tls-cert", str(self.ca), "--tls-key", str(key), "--relay-user", self.relay.user,
                 "--relay-password", self.relay.password]
        # its own log, not our stderr: a process that outlives `enforcer lab up` must not hold a pipe the caller
        # reads to its end (`lab up 2>&1 | tee log` waited for `lab down`)
        with open(self.workdir / "sink.log", "a") as log:
            sink = run_in(self.topology.internet.namespace,
                          own_module("enforcer.lab.smtpsink", "--maildir", str(self.maildir),
                                     *[x for p in SINK_PORTS for x in ("--port", str(p))], *relay),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True,
                          start_new_session=True)
        self.procs.append(sink)
        assert sink.stdout is not None
        if sink.stdout.readline().strip() != "ready":
            said = last_line(self.workdir / "sink.log")
            raise LabError(f"the SMTP server on the internet host did not start: {said}")

    def start_dns(self) -> None:
        """unbound on the internet host's addresses, port 53, answering from the config the lab writes (see dns.py);
        waits until it serves."""
        binary = unbound_binary()
        if binary is None:
            raise LabError("the lab's DNS server is missing: apt-get install unbound")
        config = self.write_dns_config()
        self.dns_starts = self.dns_log.read_text(errors="replace").count(DNS_READY) if self.dns_log.exists() else 0
        with open(self.dns_log, "a") as out:  # its own log, never our stdout/stderr (see start_sink)
            dns = run_in(self.topology.internet.namespace, [binary, "-d", "-c", str(config)],
                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(dns)
        self.wait_dns_serving(dns, times=self.dns_starts + 1)
        self.dns = dns

    def write_dns_config(self) -> Path:
        self.dns_dir.mkdir(parents=True, exist_ok=True)
        config = self.dns_dir / "unbound.conf"
        resources = {name: host.addresses for name, host in self.topology.vms.items()}
        config.write_text(unbound_config(self.dns_dir, self.internet, self.internet, resources, self.records))
        return config

    def wait_dns_serving(self, dns: subprocess.Popen[Any], times: int) -> None:
        """Until unbound's log says it serves for the `times`th time: it says so once every socket is bound, at
        its start and after each reload; a mistake in the config ends it at once."""
        deadline = time.monotonic() + 20
        while self.dns_log.read_text(errors="replace").count(DNS_READY) < times:
            if dns.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"the DNS server on the internet host did not start: {last_line(self.dns_log)} "
                               f"(its log: {self.dns_log})")
            time.sleep(0.05)
        self.dns_starts = times

    def make_certificate(self) -> Path:
        """The relay's certificate (self-signed, for relay.lab, internet.lab and the internet host's addresses),
        made once per lab: returns its key's path."""
        key = self.ca.with_name("relay.key")
        if self.ca.exists() and key.exists():
            return key
        self.ca.parent.mkdir(parents=True, exist_ok=True)
        names = ",".join([f"DNS:{RELAY_NAME}", "DNS:internet.lab", *(f"IP:{a}" for a in self.internet)])
        done = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                               "-subj", f"/CN={RELAY_NAME}", "-addext", f"subjectAltName={names}",
                               "-keyout", str(key), "-out", str(self.ca)], capture_output=True, text=True)
        if done.returncode != 0:
            said = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise LabError(f"openssl could not make the relay's certificate: {said} (apt-get install openssl)")
        return key

    def start_daemon(self, *options: str, env: dict[str, str] | None = None,
                     timeout: float = 30) -> subprocess.Popen[Any]:
        """Start `enforcer run` in the gateway namespace and wait for its READY=1 (sd_notify), `timeout` seconds at
        most; every message it sends to its notify socket is kept in self.notified."""
        self.notified = []
        self.daemon = self.start_enforcer(self.topology.gateway, self.socket, self.daemon_log, self.notified,
                                          *options, env=env, timeout=timeout)
        return self.daemon

    def start_daemons(self) -> None:
        """The enforcer on every gateway: the one here."""
        self.start_daemon()

    def start_enforcer(self, gateway: Host, control: str, log_path: Path, notified: list[str], *options: str,
                       env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.Popen[Any]:
        """`enforcer run` on one gateway, its control socket `control`, its output in `log_path`; returns once it
        said READY=1 (sd_notify, within `timeout` seconds), every message it sends kept in `notified`."""
        notify_path = str(self.workdir / f"notify-{len(self.procs)}.sock")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(0.2)
        ready = threading.Event()
        log: IO[str] = open(log_path, "a")
        daemon = run_in(gateway.namespace,
                        own_module("enforcer.cli", "--state", str(self.state), "run", "--socket", control, *options),
                        env={**os.environ, "NOTIFY_SOCKET": notify_path, **(env or {})},
                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(daemon)

        def collect() -> None:
            while True:
                try:
                    message = notify.recv(4096).decode()
                except TimeoutError:
                    if daemon.poll() is not None:
                        break
                    continue
                notified.append(message)
                if "READY=1" in message:
                    ready.set()
            notify.close()

        threading.Thread(target=collect, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.1):
            if daemon.poll() is not None or time.monotonic() > deadline:
                where = "the gateway" if gateway is self.topology.gateway else gateway.name
                raise LabError(f"the enforcer did not start on {where}: {last_line(log_path)} "
                               f"(its log: {log_path})")
        return daemon

    # ------------------------------------------------------------ traffic

    def smtp(self, attempts: list[Attempt], timeout: float = 2.5) -> list[str]:
        """Run real SMTP deliveries at once, each from its VM's namespace: [(vm, destination, port)] ->
        outcomes ("delivered", "timeout", "refused", "error")."""
        procs = []
        for vm, destination, port in attempts:
            procs.append(run_in(self.topology.vms[vm].namespace,
                                own_module("enforcer.lab.smtptry", destination, str(port), "--timeout", str(timeout),
                                           "--source-name", vm, *self.client_args()),
                                stdout=subprocess.PIPE, text=True))
        return [json.loads(p.communicate(timeout=timeout + 30)[0])["outcome"] for p in procs]

    def client_args(self) -> list[str]:
        """What a client of the relay ports needs: the lab's account, and its certificate to trust."""
        return ["--user", self.relay.user, "--password", self.relay.password, "--cafile", str(self.ca)]

    def smtp_batched(self, attempts: list[Attempt], batch: int = 24, timeout: float = 2.5,
                     progress: Callable[[int], None] | None = None) -> list[str]:
        """smtp() in bounded batches (each attempt is a process; these machines have 2 cores)."""
        outcomes: list[str] = []
        for i in range(0, len(attempts), batch):
            outcomes += self.smtp(attempts[i:i + batch], timeout)
            if progress:
                progress(len(outcomes))
        return outcomes

    def in_gateway(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        proc = run_in(self.topology.gateway.namespace, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      text=True)
        out, err = proc.communicate(timeout=60)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def live(self) -> dict[str, Any]:
        answer = ask(self.socket, {"cmd": "status"})
        if not answer or not answer.get("ok"):
            raise LabError(f"the daemon does not answer: {answer}")
        return answer

    def wait_synced(self, timeout: float = 5.0, poll: float = 0.02) -> float:
        """Wait until the daemon runs the state's current generation, asking every `poll` seconds; returns how long
        that took."""
        started = time.monotonic()
        store = self.open_state()
        try:
            target = store.generation()
        finally:
            store.close()
        while self.live()["generation"] != target:
            if time.monotonic() - started > timeout:
                raise LabError(f"the daemon did not pick up generation {target} within {timeout} s")
            time.sleep(poll)
        return time.monotonic() - started

    def daemon_logs(self) -> list[Path]:
        """Where the enforcer writes its drop log (one gateway's here)."""
        return [self.daemon_log]

    def gateway_of(self, vm: str) -> str:
        """The name of the gateway a VM's traffic crosses."""
        return self.topology.gateway_of(self.topology.vms[vm]).name

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
