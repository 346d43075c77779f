"""Benchmark of what reading interface names costs the Judge (enforcer/dataplane/_fastpath/judge.h) per SYN of a
source bound to an interface: the name it believed once matching for name_ttl_ns (10 ms by default), for ever
(the Judge before issue 19), or read again for every SYN (name_ttl_ns = 0, which would close the window a rename
leaves entirely); an unbound source for comparison, and what forget_interfaces() itself costs.

A report, not a test: it exits 0 once it has run. From the repository root:

    python -m benchmarks.names [--packets N] [--rounds N]

Every SYN comes from the same source, bound to `lo` and arriving on lo, through the same Python packet object
(its methods are what netfilterqueue's Packet offers); the medians of `rounds` timed batches are printed, the
configurations interleaved batch by batch so that a noisy moment of this shared machine hits all of them.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time

from enforcer.dataplane._fastpath import Judge, Table, View

FOREVER = 2**64 - 1
SOURCE = socket.inet_aton("198.18.0.1")
LO = socket.if_nametoindex("lo")


class Packet:
    __slots__ = ("payload", "indev")

    def __init__(self, payload: bytes, indev: int):
        self.payload, self.indev = payload, indev

    def get_payload(self) -> bytes:
        return self.payload

    def get_hw(self) -> bytes | None:
        return None

    def accept(self) -> None:
        pass

    def drop(self) -> None:
        pass


def judge(interface: str | None, ttl: int | None) -> Judge:
    table = Table()
    table.put(SOURCE, 1, interface)
    table.set_allowed(b"\0\1")
    j = Judge(View(table.image(1)))
    if ttl is not None:
        j.name_ttl_ns = ttl
    return j


def time_batch(j: Judge, pkt: Packet, n: int) -> float:
    """ns per SYN."""
    t0 = time.perf_counter_ns()
    for _ in range(n):
        j(pkt)
    return (time.perf_counter_ns() - t0) / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.names", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=20_000, help="SYNs per timed batch (default 20000)")
    ap.add_argument("--rounds", type=int, default=25, help="timed batches per configuration (default 25)")
    args = ap.parse_args(argv)
    pkt = Packet(bytes([0x45]) + bytes(11) + SOURCE + socket.inet_aton("198.19.25.25"), LO)
    configs = {
        "unbound source": judge(None, None),
        "bound, name believed for ever (before)": judge("lo", FOREVER),
        f"bound, name_ttl_ns {judge('lo', None).name_ttl_ns:,} (default)": judge("lo", None),
        "bound, name read every SYN (ttl 0)": judge("lo", 0),
    }
    times: dict[str, list[float]] = {name: [] for name in configs}
    for j in configs.values():
        time_batch(j, pkt, args.packets // 10)  # warm up
    for _ in range(args.rounds):
        for name, j in configs.items():
            times[name].append(time_batch(j, pkt, args.packets))
    for name, j in configs.items():
        assert j.counts()[0] == j.spoofed == j.errors == 0, name  # every SYN judged and accepted
    forget = judge("lo", None)
    t0 = time.perf_counter_ns()
    for _ in range(args.packets):
        forget.forget_interfaces()
    forget_ns = (time.perf_counter_ns() - t0) / args.packets
    base = statistics.median(times["unbound source"])
    print(f"{'configuration':48} {'ns/SYN':>8} {'vs unbound':>11}")
    for name, samples in times.items():
        m = statistics.median(samples)
        print(f"{name:48} {m:8.0f} {m - base:+10.0f}")
    print(f"forget_interfaces(): {forget_ns:.0f} ns a call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
