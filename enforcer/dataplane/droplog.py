"""The drop log: one structured line per blocked connection attempt, deduplicated per flow, written by a worker's
control thread from what the Judge queued (the view that judged, the verdict, the source, the packet's head).

What a line says of the source (its resource, why) is the state's answer; where the packet went is read here from
its raw bytes (`flow`: pure, no parsing library; the packet path itself reads only the source address).
"""

from __future__ import annotations

import collections
import json
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, TextIO

from ..core.policy import Code
from ..core.verdicts import Verdict, mac_text
from ._fastpath import View
from .counters import verdict_of

if TYPE_CHECKING:  # a type of the C module's stub only
    from ._fastpath import Drop


IPV6_EXTENSIONS = {0, 43, 60, 135, 139, 140, 253, 254}  # hop-by-hop, routing, destination opts, ...


def flow(payload: bytes) -> tuple[str, str, int, int] | None:
    """(source, destination, source port, destination port) of a TCP packet, behind IPv6 extension headers and
    an Authentication Header, for logs; None if unreadable (not TCP, a later fragment, ESP)."""
    try:
        version = payload[0] >> 4
        if version == 4:
            ihl = (payload[0] & 15) * 4
            if ihl < 20 or int.from_bytes(payload[6:8], "big") & 0x1FFF:
                return None  # a later fragment, without a TCP header
            src = socket.inet_ntop(socket.AF_INET, payload[12:16])
            dst = socket.inet_ntop(socket.AF_INET, payload[16:20])
            offset = _tcp_header(payload, version, payload[9], ihl)
        elif version == 6:
            src = socket.inet_ntop(socket.AF_INET6, payload[8:24])
            dst = socket.inet_ntop(socket.AF_INET6, payload[24:40])
            offset = _tcp_header(payload, version, payload[6], 40)
        else:
            return None
        if offset is None or len(payload) < offset + 4:
            return None
        return src, dst, int.from_bytes(payload[offset:offset + 2], "big"), \
            int.from_bytes(payload[offset + 2:offset + 4], "big")
    except (IndexError, ValueError, OSError):
        return None


def _tcp_header(payload: bytes, version: int, nxt: int, offset: int) -> int | None:
    """Where the TCP header starts, past the headers before it (a bounded walk); None if there is none."""
    for _ in range(8):
        if nxt == 6:
            return offset
        if nxt == 51:  # AH: its length counts 4-byte words, less 2
            nxt, offset = payload[offset], offset + (payload[offset + 1] + 2) * 4
        elif version == 4:
            return None
        elif nxt == 44:  # fragment header: fixed 8 bytes; only the first fragment has ports
            if int.from_bytes(payload[offset + 2:offset + 4], "big") & 0xFFF8:
                return None
            nxt, offset = payload[offset], offset + 8
        elif nxt in IPV6_EXTENSIONS:
            nxt, offset = payload[offset], offset + (payload[offset + 1] + 1) * 8
        else:
            return None
    return None


class InterfaceNames:
    """Interface index -> name, as the gateway's namespace has them, looked up again for an index not seen."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}

    def get(self, index: int) -> str | None:
        name = self.names.get(index)
        if name is None and index:
            try:
                name = self.names[index] = socket.if_indextoname(index)
            except OSError:
                return None
        return name


# (resource name or None, the reason a person reads) for a blocked source: the state's answer, off the packet path
Explain = Callable[[bytes], "tuple[str | None, str]"]

DRAIN_BUDGET = 0.005     # seconds one drain() may take: the control thread answers the daemon between two
EXPLAIN_SHARE = 0.1      # of the control thread's time, at most, spent explaining new sources (each reads the state)
SUMMARY_EVERY = 10.0     # seconds between two summary lines of the attempts counted but not explained
SEEN = 20_000            # flows remembered for deduplication, and explanations kept per table


class DropLog:
    """One structured line per blocked connection attempt, deduplicated per flow (SYN retransmissions).

    A new source costs an explanation (its resource and why, read from the state: about a millisecond). A VM
    sending from thousands of spoofed sources a second would keep a plain loop explaining forever, and the
    control thread that runs it would answer nothing else (new tables, status). So the work is bounded twice:
    one drain() stops after DRAIN_BUDGET seconds, whatever is left waiting for the next; and explaining may take
    EXPLAIN_SHARE of the time, refilled as it passes. An attempt from a new source past that share is counted,
    not explained, and every SUMMARY_EVERY seconds one `blocked-summary` line says how many such attempts there
    were, from how many sources, under which reason codes."""

    def __init__(self, verdicts: Callable[[int], list[Verdict]], explain: Explain, window: float = 60.0,
                 out: TextIO | None = None, summary_every: float = SUMMARY_EVERY,
                 clock: Callable[[], float] = time.monotonic):
        self.verdicts = verdicts        # a table generation -> what its verdicts say
        self.explain = explain
        self.window = window
        self.seen: collections.OrderedDict[Any, float] = collections.OrderedDict()
        self.said: dict[bytes, tuple[str | None, str]] = {}  # explanations, until the next table
        self.out = out or sys.stderr
        self.interfaces = InterfaceNames()
        self.clock, self.summary_every = clock, summary_every
        self.explaining = EXPLAIN_SHARE  # seconds of explaining available now (a bucket refilled with time)
        self.refilled = self.summarised_at = clock()
        self.lines = 0                   # blocked lines written
        self.summarised = 0              # attempts counted in summaries instead
        self.unexplained: collections.Counter[str] = collections.Counter()  # code -> attempts since the summary
        self.unexplained_sources: set[bytes] = set()

    def forget(self) -> None:
        """A new table: what the state says of a source may have changed."""
        self.said.clear()

    def drain(self, drops: collections.deque[Drop], budget: float | None = DRAIN_BUDGET) -> int:
        """Write what the Judge queued, for at most `budget` seconds (None: until the queue is empty)."""
        written = 0
        now = started = self.clock()
        self._refill(now)
        while drops and (budget is None or now - started < budget):
            written += self._one(*drops.popleft(), now)
            now = self.clock()
        if self.unexplained and now - self.summarised_at >= self.summary_every:
            self.summarise(now)
        self.out.flush()
        return written

    def _refill(self, now: float) -> None:
        self.explaining = min(EXPLAIN_SHARE, self.explaining + (now - self.refilled) * EXPLAIN_SHARE)
        self.refilled = now

    def _one(self, view: View, verdict: int, key: bytes, head: bytes, came_from: tuple[int, bytes | None] | None,
             now: float) -> int:
        f = flow(head)
        seen_key = f or head[:40]
        last = self.seen.get(seen_key)
        if last is not None and now - last < self.window:
            return 0
        self.seen[seen_key] = now
        self.seen.move_to_end(seen_key)
        while len(self.seen) > SEEN:
            self.seen.popitem(last=False)
        said = verdict_of(self.verdicts(view.generation), verdict)
        explained = self._explained(key)
        if explained is None:
            self.unexplained[Code.SPOOFED_SOURCE if came_from is not None else said.code] += 1
            if len(self.unexplained_sources) < SEEN:
                self.unexplained_sources.add(key)
            return 0
        resource, reason = explained
        src, dst, sport, dport = f or ("?", "?", 0, 0)
        record = {"event": "blocked", "resource": resource or "unknown", "subscription": said.subscription,
                  "source": src, "destination": dst, "port": dport, "source_port": sport, "code": said.code,
                  "reason": reason}
        if came_from is not None:
            record.update(self.spoofed(view, key, resource, came_from))
        self.out.write(json.dumps(record, sort_keys=True) + "\n")
        self.lines += 1
        return 1

    def _explained(self, key: bytes) -> tuple[str | None, str] | None:
        """The state's explanation of a source, if known or if there is time left to read it; else None."""
        said = self.said.get(key)
        if said is None and self.explaining > 0:
            started = self.clock()
            said = self.explain(key)
            self.explaining -= self.clock() - started
            if len(self.said) >= SEEN:
                self.said.clear()
            self.said[key] = said
        return said

    def summarise(self, now: float | None = None) -> None:
        """One line for the attempts counted but not explained since the last (none if there were none)."""
        now = self.clock() if now is None else now
        attempts = sum(self.unexplained.values())
        if attempts:
            sources = len(self.unexplained_sources)
            self.out.write(json.dumps({
                "event": "blocked-summary", "attempts": attempts, "sources": sources,
                "codes": dict(sorted(self.unexplained.items())), "seconds": round(now - self.summarised_at, 3),
                "reason": f"{attempts} blocked attempts from {sources}{'+' if sources >= SEEN else ''} new sources "
                          "came faster than the drop log explains them (each reads the state); counted, not "
                          "explained one by one: a VM sending from many addresses (spoofing) looks like this"},
                sort_keys=True) + "\n")
            self.out.flush()
            self.summarised += attempts
        self.unexplained.clear()
        self.unexplained_sources.clear()
        self.summarised_at = now

    def counts(self) -> dict[str, int]:
        return {"lines": self.lines, "summarised": self.summarised + sum(self.unexplained.values())}

    def spoofed(self, view: View, key: bytes, resource: str | None, came_from: tuple[int, bytes | None]
                ) -> dict[str, Any]:
        """What a spoofed-source line says besides the usual: where the packet came from, where it should have."""
        index, hw = came_from
        _, bound_interface, bound_mac = view.entry(key) or (0, None, None)
        where = self.interfaces.get(index) or str(index)
        return {"code": Code.SPOOFED_SOURCE, "subscription": None, "interface": where, "mac": mac_text(hw),
                "bound_interface": bound_interface, "bound_mac": mac_text(bound_mac),
                "reason": f"the packet carries the address of {resource or 'a registered resource'} but came from "
                          f"interface {where}, MAC {mac_text(hw)}, where that resource is not bound; the platform lets "
                          "a VM send only from its own addresses"}
