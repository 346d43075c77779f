"""Soak: the data plane under a steady SYN stream with a policy change every second, every SYN counted against
what decide() says of it. Not a test (bounded, not in CI); run as root:

    .venv/bin/python -m benchmarks.soak [--minutes 10] [--rate 2500] [--quick]

It builds the lab of vagrant/lab.yml in network namespaces (enforcer.lab.NamespaceLab: addresses from
198.18.0.0/15 and 2001:db8::/32 only, all removed at the end) with the real daemon on the gateway. Four VMs
whose policy never changes send SYNs to the internet host's port 25 the whole time, `--rate` per second each:
ea-vm and mcae-vm (allowed), shop-web and trial-vm (blocked). Every second the soak changes the policy of a fifth,
devtest-vm: the diagnostic and a restart (it is now allowed), or a revoked exemption and a restart (blocked),
in turns; it waits until the daemon runs the new generation, then devtest-vm sends a burst, which therefore has
one right verdict. A counter per source address in the internet host's namespace sees every SYN that arrives.

misjudged = SYNs of an allowed VM that did not arrive + SYNs of a blocked VM that did; the figure to reach is 0,
with 0 kernel queue drops. The daemon's own verdict counters are printed beside the counts as a cross-check.

--kernel-cache runs the daemon with it, and first unbinds the five VMs from their links and MACs (a bound source
is never cached): then every SYN after a source's first is judged in the kernel, and a stale cached verdict
after a change would show as misjudged SYNs of devtest-vm.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator

import yaml

from enforcer.core import lifecycle
from enforcer.lab.files import DEFAULT_LAB, resources_of
from enforcer.lab.namespace_lab import NamespaceLab
# `ip netns exec` (exec_in) rather than a preexec function: no Python runs between fork and exec, which gRPC's fork
# handlers would disturb in a process that has used an etcd state (benchmarks.fleet_soak)
from enforcer.lab.netns import can_build_namespaces, exec_in

STEADY = {"ea-vm": True, "mcae-vm": True, "shop-web": False, "trial-vm": False}  # VM -> allowed
TOGGLED = "devtest-vm"
COUNTER = "p25-soak"

# A child in a VM's namespace: "send N RATE" -> sends N prebuilt SYNs paced at RATE per second, prints the count.
SENDER = r"""
import socket, sys, time
from benchmarks.senders import syn_packets
src, dst, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
packets = syn_packets(src, dst, 25, 16384, seed)
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
sock.connect((dst, 0))
i = 0
for line in sys.stdin:
    _, n, rate = line.split()
    n, rate = int(n), float(rate)
    start, sent = time.monotonic(), 0
    while sent < n:
        for _ in range(min(50, n - sent)):
            try:
                sock.send(packets[i % len(packets)])
                sent += 1
            except OSError:
                pass  # ENOBUFS: not sent, not counted
            i += 1
        lag = start + sent / rate - time.monotonic()
        if lag > 0:
            time.sleep(lag)
    print(sent, flush=True)
"""


class Sender:
    def __init__(self, lab: NamespaceLab, vm: str, seed: int):
        src = lab.topology.vms[vm].addresses[0]
        self.vm, self.src = vm, src
        self.proc = exec_in(lab.topology.vms[vm].namespace, [sys.executable, "-c", SENDER, src, lab.internet[0],
                                                              str(seed)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(Path.cwd()))
        lab.procs.append(self.proc)
        self.sent = 0

    def start(self, n: int, rate: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"send {n} {rate}\n")
        self.proc.stdin.flush()

    def wait(self) -> int:
        assert self.proc.stdout is not None
        done = int(self.proc.stdout.readline())
        self.sent += done
        return done


def in_namespace(namespace: str, *argv: str) -> str:
    proc = exec_in(namespace, list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv}: {err}")
    return out


def count_arrivals(lab: NamespaceLab, sources: list[str]) -> None:
    inet = lab.topology.internet.namespace
    for src in sources:
        in_namespace(inet, "iptables", "-t", "mangle", "-A", "INPUT", "-s", src, "-p", "tcp", "--dport", "25",
                     "--tcp-flags", "SYN", "SYN", "-m", "comment", "--comment", f"{COUNTER}-{src}")


def arrivals(lab: NamespaceLab) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in in_namespace(lab.topology.internet.namespace, "iptables-save", "-c", "-t", "mangle").splitlines():
        if f"{COUNTER}-" in line:
            out[line.rsplit(f"{COUNTER}-", 1)[1].strip("\"")] = int(line[1:].split(":")[0])
    return out


def flip(lab: NamespaceLab, allow: bool) -> None:
    """devtest-vm's next policy, the platform's way: the diagnostic (or a revoked exemption), then a restart."""
    if allow:
        lab.change("soak: enforcer diagnose devtest-lab", lifecycle.run_diagnostic, "devtest-lab")
    else:
        lab.change("soak: enforcer exemption revoke devtest-lab", lifecycle.revoke_exemption, "devtest-lab")
    lab.change("soak: enforcer vm restart devtest-vm", lifecycle.restart, TOGGLED)


@contextmanager
def default_lab(prefix: str) -> Iterator[NamespaceLab]:
    """The lab of vagrant/lab.yml up in namespaces (no daemon yet); all of it removed afterwards."""
    doc = yaml.safe_load(DEFAULT_LAB.read_text())
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        lab = NamespaceLab(Path(tmp), [str(a) for a in doc["lab"]["internet"]["addresses"]])
        try:
            lab.apply(str(DEFAULT_LAB), doc)
            lab.up(resources_of(doc))
            yield lab
        finally:
            lab.close()


def soak(lab: NamespaceLab, seconds: float, rate: float) -> dict[str, Any]:
    steady = {vm: Sender(lab, vm, i) for i, vm in enumerate(STEADY)}
    toggled = Sender(lab, TOGGLED, 99)
    count_arrivals(lab, [s.src for s in [*steady.values(), toggled]])
    expected_toggled, changes, reload_ms = 0, 0, []
    allow = False
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for s in steady.values():      # one second of the steady stream, across the change and the reload
            s.start(int(rate), rate)
        allow = not allow
        t0 = time.monotonic()
        flip(lab, allow)
        reload_ms.append(lab.wait_synced(timeout=10) * 1000)
        changes += 1
        toggled.start(int(rate / 2), rate)
        burst = toggled.wait()
        expected_toggled += burst if allow else 0
        for s in steady.values():
            s.wait()
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
    time.sleep(1.0)  # the last SYNs on their way
    seen = arrivals(lab)
    rows = []
    for vm, s in steady.items():
        expected = s.sent if STEADY[vm] else 0
        rows.append((vm, s.sent, expected, seen.get(s.src, 0)))
    rows.append((TOGGLED, toggled.sent, expected_toggled, seen.get(toggled.src, 0)))
    live = lab.live()
    return {"rows": rows, "changes": changes, "reload_ms": sorted(reload_ms), "live": live}


def report(result: dict[str, Any], seconds: float, rate: float) -> int:
    rows = result["rows"]
    print(f"{'source':12} {'sent':>9} {'expected':>9} {'arrived':>9} {'misjudged':>9}")
    misjudged = 0
    for vm, sent, expected, seen in rows:
        misjudged += abs(expected - seen)
        print(f"{vm:12} {sent:9,} {expected:9,} {seen:9,} {abs(expected - seen):9,}")
    total = sum(r[1] for r in rows)
    drops = sum(q.get("queue_dropped", 0) + q.get("user_dropped", 0) for q in result["live"]["kernel_queues"].values())
    reloads = result["reload_ms"]
    print(f"duration {seconds:.0f} s, {total:,} SYNs ({total / seconds:,.0f}/s), {result['changes']} policy changes")
    print(f"commit to the new verdict in the daemon (ms): p50 {reloads[len(reloads) // 2]:.0f}, "
          f"max {reloads[-1]:.0f}")
    print(f"kernel queue drops: {drops}; the daemon's verdicts: "
          + ", ".join(f"{v['subscription']} {v['verdict']} {v['count']:,}" for v in result["live"]["verdicts"]))
    print(f"misjudged: {misjudged}  ({'PASS' if misjudged == 0 and drops == 0 else 'FAIL'}: the figure to reach is 0)")
    return 0 if misjudged == 0 else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=2500.0, help="SYNs per second from each steady VM")
    ap.add_argument("--quick", action="store_true", help="one minute")
    ap.add_argument("--kernel-cache", action="store_true", help="the daemon with --kernel-cache, the VMs unbound")
    args = ap.parse_args(argv)
    if namespaces_missing("benchmarks.soak"):
        return 2
    seconds = 60.0 if args.quick else args.minutes * 60
    with default_lab("enforcer-soak-") as lab:
        if args.kernel_cache:
            unbind_senders(lab)
        lab.start_daemon(*(["--kernel-cache"] if args.kernel_cache else []))
        result = soak(lab, seconds, args.rate)
    return report(result, seconds, args.rate)


def namespaces_missing(prog: str) -> bool:
    """Where this process cannot build network namespaces: says why, for a benchmark that needs them."""
    why = can_build_namespaces()
    if why:
        print(f"python -m {prog}: {why}", file=sys.stderr)
    return why is not None


def unbind_senders(lab: NamespaceLab) -> None:
    """For --kernel-cache: the VMs that send, unbound from their links and MACs (a bound source is never cached,
    its every SYN goes to the queue for the spoofing check)."""
    for vm in [*STEADY, TOGGLED]:
        lab.change(f"benchmark: enforcer vm bind {vm} --unbind", lifecycle.update_resource, vm, interface=None,
                   mac=None)


if __name__ == "__main__":
    sys.exit(main())
