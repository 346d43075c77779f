"""Real etcd processes for the tests: Debian's etcd on 127.0.0.1, random free ports, a data directory of the test's
own; healthy before the test starts, killed and removed after it whatever happened. Optionally TLS (a CA and
certificates made with openssl) and authentication (a root user, enabled with etcdctl).

No mock of etcd anywhere: a test that needs etcd and finds no binary is skipped, saying so.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

ETCD, ETCDCTL = shutil.which("etcd"), shutil.which("etcdctl")
# enough for a change of the example lab in one transaction (etcd's default is 128 operations)
MAX_TXN_OPS = 10_000


def need_etcd() -> None:
    if ETCD is None or ETCDCTL is None:
        pytest.skip("the etcd binaries are missing (apt-get install etcd-server etcd-client; scripts/install.sh "
                    "--test installs them)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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

    def sign(self, name: str, extension: str) -> None:
        self._openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                      f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (self.dir / f"{name}.ext").write_text(extension + "\n")
        self._openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                      "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")


@dataclass
class Etcd:
    """One running member: its client endpoint, and etcdctl against it (as root once auth is on)."""
    dir: Path
    port: int
    process: subprocess.Popen[bytes]
    pki: Pki | None = None
    root_password: str | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, prefix: str) -> str:
        return f"etcd://{self.endpoint}/{prefix}"

    def ctl(self, *args: str) -> str:
        cmd = [str(ETCDCTL), "--endpoints", self.endpoint, "--dial-timeout", "3s", "--command-timeout", "5s"]
        if self.pki is not None:
            d = self.pki.dir
            cmd += ["--cacert", str(d / "ca.pem"), "--cert", str(d / "client.pem"), "--key", str(d / "client.key")]
        if self.root_password is not None:
            cmd += ["--user", f"root:{self.root_password}"]
        done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=15,
                              env={**os.environ, "ETCDCTL_API": "3"})
        if done.returncode:
            raise AssertionError(f"etcdctl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def healthy(self) -> bool:
        try:
            self.ctl("endpoint", "health")
        except (AssertionError, subprocess.TimeoutExpired):
            return False
        return True

    def enable_auth(self, password: str) -> None:
        """A root user (etcd's own superuser) and authentication on."""
        self.ctl("user", "add", f"root:{password}")
        self.ctl("auth", "enable")
        self.root_password = password


@contextmanager
def running_etcd(dir: Path, tls: bool = False) -> Iterator[Etcd]:
    """An etcd member in `dir`, healthy; always killed and its directory removed afterwards."""
    need_etcd()
    dir.mkdir(parents=True, exist_ok=True)
    pki = Pki(dir / "pki") if tls else None
    for _ in range(5):  # a free port can be taken between our look and etcd's bind: try others
        client, peer = free_port(), free_port()
        scheme = "https" if pki else "http"
        args = [str(ETCD), "--name", "test", "--data-dir", str(dir / "data"),
                "--listen-client-urls", f"{scheme}://127.0.0.1:{client}",
                "--advertise-client-urls", f"{scheme}://127.0.0.1:{client}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", f"test=http://127.0.0.1:{peer}",
                "--max-txn-ops", str(MAX_TXN_OPS), "--logger", "zap", "--log-level", "warn"]
        if pki is not None:
            d = pki.dir
            args += ["--cert-file", str(d / "server.pem"), "--key-file", str(d / "server.key"),
                     "--client-cert-auth", "--trusted-ca-file", str(d / "ca.pem")]
        with open(dir / "etcd.log", "ab") as log:
            process = subprocess.Popen(args, stdout=log, stderr=log)
        member = Etcd(dir, client, process, pki)
        try:
            deadline = time.monotonic() + 20
            while process.poll() is None and time.monotonic() < deadline and not member.healthy():
                time.sleep(0.05)
            if process.poll() is None and member.healthy():
                yield member
                return
        finally:
            process.kill()
            process.wait()
            shutil.rmtree(dir / "data", ignore_errors=True)
    raise AssertionError(f"etcd did not become healthy; see {dir / 'etcd.log'}")
