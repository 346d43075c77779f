"""_fastpath's Judge as netfilterqueue's callback, with real packets: a throwaway network namespace (unshare)
queues the SYNs to port 25 that arrive on its loopback, and connections from its addresses succeed or time out
as the table says. On lo a packet arrives with indev = lo's index and an all-zero MAC, so bindings to lo and to
that MAC hold, and bindings elsewhere are spoofed.

Needs root, unshare(1) and the iptables NFQUEUE target; skipped with the reason where they are missing. The
part inside the namespace is this file run as a script.
"""

from __future__ import annotations

import collections
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from enforcer.lab.netns import can_build_namespaces

# (not probed when this file runs as the script inside the namespace)
WHY_NOT = None if __name__ == "__main__" else \
    can_build_namespaces() or (None if shutil.which("unshare") else "needs unshare(1)")
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

ZERO_MAC = bytes(8)
OTHER_MAC = bytes.fromhex("02aabbccdd01") + b"\0\0"
# source, verdict (1 allows), interface, mac -> what a connection from it does
SOURCES = [
    ("198.18.0.1", 1, None, None, "connected"),
    ("198.18.0.2", 0, None, None, "timeout"),
    ("198.18.0.3", 1, "lo", None, "connected"),
    ("198.18.0.4", 1, "eth9", None, "timeout"),          # spoofed: it arrives on lo
    ("198.18.0.5", 1, "lo", ZERO_MAC, "connected"),
    ("198.18.0.6", 1, None, OTHER_MAC, "timeout"),       # spoofed: lo's MAC is all zeros
    ("198.18.0.7", None, None, None, "timeout"),          # unknown
    ("198.18.1.9", None, None, None, "connected"),        # in the prefix below
    ("2001:db8::1", 1, None, None, "connected"),
    ("2001:db8::2", 0, "lo", None, "timeout"),
]
PREFIX = ("198.18.1.0", 24, 1)
QUEUE = 7


def family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def text(key: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(key) == 16 else socket.AF_INET, key)


def set_up_namespace() -> None:
    """The sources' and the listeners' addresses on lo, and SYNs to port 25 arriving there queued."""
    def sh(*cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True)

    sh("ip", "link", "set", "lo", "up")
    for address in [s[0] for s in SOURCES] + ["198.18.0.254", "2001:db8::fe"]:
        sh("ip", "addr", "add", address + ("/128" if ":" in address else "/32"), "dev", "lo",
           *(["nodad"] if ":" in address else []))
    for tool in ("iptables", "ip6tables"):
        sh(tool, "-A", "INPUT", "-p", "tcp", "--dport", "25", "--syn", "-j", "NFQUEUE", "--queue-num", str(QUEUE))


def attempt(source: str) -> str:
    with socket.socket(family(source)) as c:
        c.settimeout(0.5)
        c.bind((source, 0))
        try:
            c.connect(("2001:db8::fe" if ":" in source else "198.18.0.254", 25))
            return "connected"
        except TimeoutError:
            return "timeout"


def in_namespace() -> dict[str, object]:
    """Runs in the fresh namespace: the Judge bound to the queue, a connection tried from every source."""
    from support.nfqueue import served

    from enforcer.dataplane._fastpath import Judge, Table, View

    set_up_namespace()
    table = Table()
    for address, verdict, interface, mac, _ in SOURCES:
        if verdict is not None:
            table.put(socket.inet_pton(family(address), address), verdict, interface, mac)
    table.put_prefix(socket.inet_pton(socket.AF_INET, PREFIX[0]), PREFIX[1], PREFIX[2])
    table.set_allowed(b"\0\1")
    drops: collections.deque = collections.deque()
    remember: collections.deque = collections.deque()
    judge = Judge(View(table.image(1)), drops=drops, remember=remember)
    listeners = [socket.create_server((address, 25), family=family(address), backlog=16)
                 for address in ("198.18.0.254", "2001:db8::fe")]
    try:
        with served(QUEUE, judge):
            outcomes = {s[0]: attempt(s[0]) for s in SOURCES}
    finally:
        for listener in listeners:
            listener.close()
    return {"outcomes": outcomes, "counts": judge.counts(), "unknown": judge.unknown, "spoofed": judge.spoofed,
            "errors": judge.errors, "malformed": judge.malformed, "lo": socket.if_nametoindex("lo"),
            "drops": sorted({(verdict, text(key), json.dumps(None if seen is None else [seen[0], seen[1].hex()]))
                             for _, verdict, key, _, seen in drops}),
            "remember": sorted({(text(key), allowed) for key, allowed in remember})}


@pytest.fixture(scope="module")
def judged() -> dict:
    probe = subprocess.run(["unshare", "--net", "iptables", "-A", "INPUT", "-j", "NFQUEUE", "--queue-num", "7"],
                           capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"no iptables NFQUEUE target here: {probe.stderr.strip()}")
    proc = subprocess.run(["unshare", "--net", sys.executable, __file__], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_connections_succeed_or_time_out_as_the_table_says(judged):
    assert judged["outcomes"] == {s[0]: s[4] for s in SOURCES}
    assert judged["errors"] == judged["malformed"] == 0


def test_the_judge_counted_and_recorded_what_it_dropped(judged):
    # a dropped SYN is retried by the kernel; what matters is which sources, with which verdict, and from where
    assert judged["drops"] == sorted([
        [-2, "198.18.0.4", json.dumps([judged["lo"], ZERO_MAC.hex()])],
        [-2, "198.18.0.6", json.dumps([judged["lo"], ZERO_MAC.hex()])],
        [-1, "198.18.0.7", "null"],
        [0, "198.18.0.2", "null"],
        [0, "2001:db8::2", "null"],
    ])
    assert judged["unknown"] >= 1 and judged["spoofed"] >= 2
    counts = judged["counts"]
    assert counts[1] == 5 and counts[0] >= 2     # five accepted SYNs (one each); blocked ones retried


def test_the_kernel_cache_hook_saw_only_what_does_not_depend_on_where_a_packet_came_from(judged):
    assert judged["remember"] == sorted([["198.18.0.1", True], ["2001:db8::1", True], ["198.18.0.2", False],
                                         ["2001:db8::2", False]])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: support
    print(json.dumps(in_namespace()))
