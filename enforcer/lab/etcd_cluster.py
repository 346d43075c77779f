"""A real etcd cluster of M members (Debian's etcd), for the fleet lab and the tests: each member its own process
and data directory, on loopback ports or inside a namespace of its own; started together, healthy with a leader
before anything uses it; a member killed, stopped (SIGSTOP) or started again on its data, as the fault cases need.

No part of etcd is imitated here: this only starts, signals and asks the real processes (etcdctl for the questions
a person would ask it the same way).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import Failure, UserError
from .namespace_lab import last_line
from .netns import pids_in

ETCD, ETCDCTL = shutil.which("etcd"), shutil.which("etcdctl")
# A change of the example lab is one transaction of ~113 operations: past etcd's default of 128 once it grows. A
# lab's etcd takes bigger ones (a real cluster's operator chooses: docs/architecture.md, "The state in etcd").
MAX_TXN_OPS = 10_000


def need_binaries() -> None:
    if ETCD is None or ETCDCTL is None:
        raise UserError("etcd is not installed; install Debian's etcd: apt-get install etcd-server etcd-client "
                        "(scripts/install.sh --test installs them)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Tls:
    """The files a member serves its clients with: its certificate and key, and the CA whose client certificates
    it accepts (client certificate authentication on)."""
    cert: Path
    key: Path
    ca: Path


@dataclass
class Member:
    """One member: where it listens (its peers' port and its clients' on `host`; `more_clients` are further
    client ports on the same host, e.g. one a rule can cut while the other stays open) and its files."""
    name: str
    host: str
    client_port: int
    peer_port: int
    dir: Path
    namespace: str | None = None
    more_clients: tuple[int, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def client_urls(self, scheme: str) -> str:
        return ",".join(f"{scheme}://{self.host}:{port}" for port in (self.client_port, *self.more_clients))

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def log(self) -> Path:
        return self.dir / "etcd.log"

    @property
    def running(self) -> bool:
        if self.process is None and self.namespace:  # started by an earlier command (`lab up`): what runs in its
            return bool(pids_in(self.namespace))      # namespace is it
        return self.process is not None and self.process.poll() is None

    def within(self, argv: list[str]) -> list[str]:
        """argv run in this member's namespace (`ip netns exec`: no Python between fork and exec, which gRPC's fork
        handlers would disturb in a process that has loaded grpc)."""
        return ["ip", "netns", "exec", self.namespace, *argv] if self.namespace else argv


class EtcdCluster:
    """M members that know each other from the start (a static --initial-cluster), one data directory each."""

    def __init__(self, members: Sequence[Member], *, token: str = "port25-lab", tls: Tls | None = None,
                 options: Iterable[str] = ()):
        if not members:
            raise ValueError("a cluster needs a member")
        self.members = list(members)
        self.token, self.tls, self.options = token, tls, list(options)

    @classmethod
    def on_loopback(cls, directory: Path, size: int, **kwargs: Any) -> EtcdCluster:
        """`size` members on 127.0.0.1, on free ports, in directory/etcdN."""
        members = [Member(f"etcd{i}", "127.0.0.1", free_port(), free_port(), directory / f"etcd{i}")
                   for i in range(1, size + 1)]
        return cls(members, **kwargs)

    # ------------------------------------------------------------ where clients find it

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def url(self, prefix: str, members: Sequence[Member] | None = None) -> str:
        """The --state location of a state under `prefix` in this cluster (every member, or those given)."""
        return f"etcd://{','.join(m.endpoint for m in (members or self.members))}/{prefix}"

    # ------------------------------------------------------------ processes

    def _argv(self, m: Member) -> list[str]:
        assert ETCD is not None
        initial = ",".join(f"{o.name}={o.peer_url}" for o in self.members)
        urls = m.client_urls(self.scheme)
        argv = [ETCD, "--name", m.name, "--data-dir", str(m.dir / "data"),
                "--listen-client-urls", urls, "--advertise-client-urls", urls,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", initial, "--initial-cluster-token", self.token,
                "--initial-cluster-state", "new", "--max-txn-ops", str(MAX_TXN_OPS),
                "--logger", "zap", "--log-level", "warn", *self.options]
        if self.tls is not None:
            argv += ["--cert-file", str(self.tls.cert), "--key-file", str(self.tls.key),
                     "--client-cert-auth", "--trusted-ca-file", str(self.tls.ca)]
        return argv

    def start_member(self, m: Member) -> None:
        """Start (or start again, on the data it kept) one member; its log appended to DIR/etcd.log. A new
        session: the member outlives the command that started it (the lab's `lab up`)."""
        need_binaries()
        m.dir.mkdir(parents=True, exist_ok=True)
        with open(m.log, "ab") as log:
            m.process = subprocess.Popen(m.within(self._argv(m)), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def start(self, timeout: float = 30.0) -> None:
        """Every member started, then healthy, with a leader; a member that dies on the way is one line (its
        log's last line) and the others are stopped."""
        try:
            for m in self.members:
                self.start_member(m)
            self.wait_healthy(timeout)
        except BaseException:
            self.close(remove_data=False)
            raise

    def wait_healthy(self, timeout: float = 30.0, members: Sequence[Member] | None = None) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(members or self.members)
        while waiting:
            for m in waiting:
                if not m.running:
                    raise Failure(f"etcd member {m.name} exited: {last_line(m.log)} (log: {m.log})")
            waiting = [m for m in waiting if not self.healthy(m)]
            if waiting and time.monotonic() > deadline:
                raise Failure(f"etcd member {waiting[0].name} not healthy after {timeout:.0f} s (log: "
                              f"{waiting[0].log})")
            if waiting:
                time.sleep(0.1)

    def signal(self, m: Member, sig: int) -> None:
        if m.process is not None and m.process.poll() is None:
            m.process.send_signal(sig)

    def kill(self, m: Member) -> None:
        """SIGKILL: the member gone at once, its data left as a crash leaves it."""
        if m.process is not None and m.process.poll() is None:
            m.process.kill()
            m.process.wait()

    def pause(self, m: Member) -> None:
        self.signal(m, signal.SIGSTOP)

    def resume(self, m: Member) -> None:
        self.signal(m, signal.SIGCONT)

    def close(self, remove_data: bool = True) -> None:
        """Every member killed (a stopped one too: SIGKILL ends it) and, unless told otherwise, its data gone."""
        for m in self.members:
            self.kill(m)
            if remove_data:
                shutil.rmtree(m.dir / "data", ignore_errors=True)

    # ------------------------------------------------------------ asking it (etcdctl, as a person would)

    def ctl(self, *args: str, member: Member | None = None, timeout: float = 15.0) -> str:
        """etcdctl against one member (the first running one by default), its output; a failure raises Failure
        with etcdctl's own words."""
        assert ETCDCTL is not None
        m = member or next((m for m in self.members if m.running), self.members[0])
        cmd = [ETCDCTL, "--endpoints", m.endpoint, "--dial-timeout", "2s", "--command-timeout", "5s"]
        if self.tls is not None:
            cmd += ["--cacert", str(self.tls.ca), "--cert", str(self.tls.cert), "--key", str(self.tls.key)]
        done = subprocess.run(m.within([*cmd, *args]), capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "ETCDCTL_API": "3"})
        if done.returncode:
            raise Failure(f"etcdctl {' '.join(args)} on {m.name}: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def healthy(self, m: Member) -> bool:
        """The member answers and knows a leader (its status: asked without credentials, also once authentication
        is on, where `endpoint health`'s read would need a user)."""
        status = self.status(m)
        return status is not None and bool(status.get("leader"))

    def status(self, m: Member) -> dict[str, Any] | None:
        """`etcdctl endpoint status` of one member (its leader, raft term, db size), or None if it does not answer."""
        try:
            out = self.ctl("endpoint", "status", "-w", "json", member=m, timeout=10)
        except (Failure, subprocess.TimeoutExpired):
            return None
        rows: list[dict[str, Any]] = json.loads(out)
        return rows[0]["Status"] if rows else None

    def leader(self) -> Member | None:
        """The member the running members agree leads (None while there is no leader)."""
        ids = {m.name: s for m in self.members if m.running and (s := self.status(m)) is not None}
        leaders = {s.get("leader", 0) for s in ids.values()}  # 0 (left out of the JSON): no leader, an election
        if len(leaders) != 1 or 0 in leaders:
            return None
        (lead,) = leaders
        return next((m for m in self.members if m.name in ids and ids[m.name]["header"]["member_id"] == lead), None)

    def head(self) -> int:
        """The cluster's current revision."""
        out = self.ctl("get", "/", "--prefix", "--keys-only", "--limit", "1", "-w", "json")
        return int(json.loads(out)["header"]["revision"])

    def compact(self, revision: int | None = None) -> int:
        """Compact the keyspace up to `revision` (the head by default); returns it."""
        revision = revision or self.head()
        self.ctl("compaction", "--physical", str(revision))
        return revision

