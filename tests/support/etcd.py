"""Real etcd processes for the tests: Debian's etcd on 127.0.0.1, random free ports, a data directory of the test's
own; healthy before the test starts, killed and removed after it whatever happened. Optionally TLS (a CA and
certificates made with openssl) and authentication (a root user, enabled with etcdctl).

No mock of etcd anywhere: a test that needs etcd and finds no binary is skipped, saying so.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from enforcer.errors import Failure
from enforcer.lab.etcd_cluster import ETCD, ETCDCTL, MAX_TXN_OPS, EtcdCluster, Member, Tls, free_port

__all__ = ["ETCD", "ETCDCTL", "MAX_TXN_OPS", "free_port"]  # what the tests take from here


def need_etcd() -> None:
    if ETCD is None or ETCDCTL is None:
        pytest.skip("the etcd binaries are missing (apt-get install etcd-server etcd-client; scripts/install.sh "
                    "--test installs them)")


@dataclass
class Pki:
    """A CA, the member's certificate (127.0.0.1, localhost), a client certificate; and a CA that signed nothing."""
    dir: Path
    ca: Path = field(init=False)
    other_ca: Path = field(init=False)

    def __post_init__(self) -> None:
        self.ca, self.other_ca = self.dir / "ca.pem", self.dir / "other-ca.pem"
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in ("ca", "other-ca"):
            self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                          "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}")
        self.sign("server", "subjectAltName=IP:127.0.0.1,DNS:localhost")
        self.sign("client", "extendedKeyUsage=clientAuth")

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.dir, check=True, capture_output=True)

    def sign(self, name: str, extension: str, days: int = 2) -> Path:
        """A certificate (DIR/name.pem, its key DIR/name.key) signed by the CA; `days` -1: one that expired a day
        before it was made (openssl takes a negative -days: notAfter in the past, a real expired certificate)."""
        self._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                      f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (self.dir / f"{name}.ext").write_text(extension + "\n")
        self._openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                      "-out", f"{name}.pem", "-days", str(days), "-extfile", f"{name}.ext")
        return self.dir / f"{name}.pem"


@dataclass
class Etcd:
    """One running member (a cluster of one, enforcer.lab.etcd_cluster): its client endpoint, and etcdctl against it
    (as root once auth is on)."""
    dir: Path
    cluster: EtcdCluster
    pki: Pki | None = None
    root_password: str | None = None

    @property
    def member(self) -> Member:
        return self.cluster.members[0]

    @property
    def port(self) -> int:
        return self.member.client_port

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self.member.process is not None
        return self.member.process

    @property
    def endpoint(self) -> str:
        return self.member.endpoint

    def url(self, prefix: str) -> str:
        return self.cluster.url(prefix)

    def ctl(self, *args: str) -> str:
        if self.root_password is not None:
            args = ("--user", f"root:{self.root_password}", *args)
        try:
            return self.cluster.ctl(*args)
        except Failure as e:
            raise AssertionError(str(e)) from None

    def healthy(self) -> bool:
        return self.cluster.healthy(self.member)

    def enable_auth(self, password: str) -> None:
        """A root user (etcd's own superuser) and authentication on."""
        self.ctl("user", "add", f"root:{password}")
        self.ctl("auth", "enable")
        self.root_password = password


@contextmanager
def running_cluster(dir: Path, size: int, pki: Pki | None = None, options: tuple[str, ...] = (),
                    host: str = "127.0.0.1", namespace: str | None = None,
                    more_clients: int = 0) -> Iterator[EtcdCluster]:
    """`size` members on `host` (loopback by default; in `namespace` if given, each with `more_clients` further
    client ports) in `dir`, healthy with a leader; always killed and their data removed afterwards. A port taken
    between our look and etcd's bind: tried again on others."""
    need_etcd()
    dir.mkdir(parents=True, exist_ok=True)
    tls_files = Tls(pki.dir / "server.pem", pki.dir / "server.key", pki.ca) if pki else None

    def member(i: int) -> Member:  # in a namespace the host's free ports are as good as any: its own are all free
        return Member(f"etcd{i}", host, free_port(host if namespace is None else "127.0.0.1"), free_port(
            host if namespace is None else "127.0.0.1"), dir / f"etcd{i}", namespace,
            tuple(free_port() for _ in range(more_clients)))
    for attempt in range(5):
        cluster = EtcdCluster([member(i) for i in range(1, size + 1)], tls=tls_files, options=options)
        try:
            cluster.start(timeout=30)
        except Failure:
            if attempt == 4:
                raise
            continue
        try:
            yield cluster
        finally:
            cluster.close()
        return


@contextmanager
def running_etcd(dir: Path, tls: bool = False) -> Iterator[Etcd]:
    """An etcd member in `dir`, healthy; always killed and its data removed afterwards."""
    need_etcd()
    pki = Pki(dir / "pki") if tls else None
    with running_cluster(dir, 1, pki) as cluster:
        yield Etcd(dir, cluster, pki)


@dataclass
class SecondHost:
    """A network namespace linked to this host by a veth pair: another machine that reaches the host's `address`
    (198.18.254.1: the benchmarking range, on this link only) from its own (198.18.254.2)."""
    namespace: str
    address: str = "198.18.254.1"
    own_address: str = "198.18.254.2"

    def run(self, argv: list[str], **kwargs: object) -> subprocess.Popen[str]:
        """argv in the namespace (`ip netns exec`: nothing between fork and exec)."""
        return subprocess.Popen(["ip", "netns", "exec", self.namespace, *argv], **kwargs)  # type: ignore[call-overload]


@contextmanager
def second_host() -> Iterator[SecondHost]:
    """A SecondHost, removed afterwards (the namespace, and with it both ends of the link) whatever happened."""
    tag = f"p25f{uuid.uuid4().hex[:6]}"
    host = SecondHost(tag)

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)
    try:
        ip("netns", "add", tag)
        ip("link", "add", f"{tag}h", "type", "veth", "peer", "name", f"{tag}n", "netns", tag)
        ip("addr", "add", f"{host.address}/30", "dev", f"{tag}h")
        ip("link", "set", f"{tag}h", "up")
        for args in (("addr", "add", f"{host.own_address}/30", "dev", f"{tag}n"), ("link", "set", f"{tag}n", "up"),
                     ("link", "set", "lo", "up")):
            ip("-n", tag, *args)
        yield host
    finally:
        subprocess.run(["ip", "netns", "del", tag], capture_output=True)
        subprocess.run(["ip", "link", "del", f"{tag}h"], capture_output=True)


def fill_quota(cluster: EtcdCluster, under: str = "/junk/", limit: int = 200) -> int:
    """Junk put outside any state (1 MiB values through etcdctl's stdin) until etcd refuses with its space quota
    reached (the NOSPACE alarm raised); returns how many puts it took."""
    assert ETCDCTL is not None
    m = next(m for m in cluster.members if m.running)
    junk = os.urandom(1 << 19).hex()  # 1 MiB of text: not compressible into less
    for i in range(limit):
        done = subprocess.run(m.within([ETCDCTL, "--endpoints", m.endpoint, "put", f"{under}{i}"]), input=junk,
                              capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=30)
        if done.returncode:
            assert "space exceeded" in done.stderr, done.stderr
            return i
    raise AssertionError(f"etcd took {limit} MiB of junk without reaching its quota")
