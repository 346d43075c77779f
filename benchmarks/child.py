"""The parent's end of a child process (benchmarks.roles) running in a network namespace: JSON lines over its
stdin and stdout, its stderr in a log file."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

from enforcer.lab.netns import run_in

from .params import CHILD_TIMEOUT

# the repository root: `python -m benchmarks.roles` finds the package (and enforcer) from there
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Child:
    """`python -m MODULE ROLE *options` (benchmarks.roles unless told) in `namespace`, spoken to in JSON lines."""

    def __init__(self, name: str, namespace: str, role: str, options: list[str], log_dir: str,
                 module: str = "benchmarks.roles"):
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.log = open(self.log_path, "wb")
        self.proc = run_in(namespace, [sys.executable, "-m", module, role, *options], cwd=ROOT,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, bufsize=0)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        self.buf = b""

    def send(self, line: str) -> None:
        self.stdin.write(line.encode() + b"\n")
        self.stdin.flush()

    def read(self, timeout: float = CHILD_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name}: no answer within {timeout:.0f} s{self.tail()}")
            ready, _, _ = select.select([self.stdout], [], [], left)
            if ready:
                chunk = os.read(self.stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError(f"{self.name} exited ({self.proc.poll()}){self.tail()}")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def ask(self, line: str, timeout: float = CHILD_TIMEOUT) -> dict:
        self.send(line)
        return self.read(timeout)

    def tail(self) -> str:
        try:
            self.log.flush()
            with open(self.log_path, "rb") as f:
                text = f.read()[-2000:].decode(errors="replace").strip()
            return f":\n{text}" if text else ""
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        """Close its stdin (the long-lived roles end on that), then SIGTERM, then SIGKILL, `grace` seconds apart."""
        p = self.proc
        if p.poll() is None:
            try:
                self.stdin.close()
            except OSError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.terminate()
                try:
                    p.wait(grace)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(grace)
        self.log.close()
