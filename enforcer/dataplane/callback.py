"""The packet callback, and what it leaves for the worker's control thread: hit counts and blocked packets.

The callback runs once per queued SYN: it reads the source address from the payload, looks it up in the current
table and gives the verdict. Counting and logging happen off the packet path (Counters, DropLog).
"""

from __future__ import annotations

import collections
import json
import socket
import sys
import threading
import time
from typing import Any, Callable, Protocol, TextIO

from ..core.policy import Code, verdict_word
from ..core.table import SPOOFED, Binding, Entry, VerdictTable
from .packet import flow


class QueuedPacket(Protocol):
    """What the callback needs of netfilterqueue's Packet."""
    indev: int
    def get_payload(self) -> bytes: ...
    def get_hw(self) -> bytes | None: ...
    def accept(self) -> None: ...
    def drop(self) -> None: ...


Seen = tuple[int, "bytes | None"]  # where a spoofed packet came from: interface index, source MAC
# the table that judged, the source key, the packet's head, and where it came from if it was spoofed
Drop = tuple[VerdictTable, bytes, bytes, "Seen | None"]


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


def spoofed(pkt: QueuedPacket, binding: Binding, names: InterfaceNames) -> bool:
    """Whether an allowed source's packet came from somewhere it is not bound to."""
    if binding.interface is not None and names.get(pkt.indev) != binding.interface:
        return True
    return binding.mac is not None and pkt.get_hw() != binding.mac


class PacketCallback:
    """Gives every queued packet one verdict. Always: an exception in it would end netfilterqueue's run()."""

    __slots__ = ("table", "hits", "malformed", "default_allow", "drops", "errors", "interfaces")

    def __init__(self, table: VerdictTable, default_allow: bool = False):
        self.table = table              # swapped whole by the control thread; never mutated
        self.interfaces = InterfaceNames()
        self.hits: dict[Entry, int] = {}  # Entry (identity) -> count; only the packet thread writes
        self.malformed = 0
        self.errors = 0
        self.default_allow = default_allow
        self.drops: collections.deque[Drop] = collections.deque(maxlen=4096)  # for the drop log, drained elsewhere

    def __call__(self, pkt: QueuedPacket) -> None:
        # The source address sits at a fixed offset in both IP versions (options and extension headers come
        # after it); parsing is inlined here because a function call per packet costs measurable throughput.
        try:
            p = pkt.get_payload()
            first = p[0] if p else 0
            # one chained comparison per version: 0x45..0x4f is version 4 with a header length (IHL) of 5 or more
            if 0x45 <= first <= 0x4f and len(p) >= 20:
                key = p[12:16]
            elif 0x60 <= first <= 0x6f and len(p) >= 40:
                key = p[8:24]
            else:
                self.malformed += 1
                pkt.accept() if self.default_allow else pkt.drop()
                return
            table = self.table
            entry = table.exact.get(key)  # VerdictTable.entry_for, inlined
            if entry is None:
                entry = table.prefix_entry(key)
            hits = self.hits
            came_from = None
            if entry.allow:
                # an allowed source must come from where the inventory binds it (VerdictTable.binding, inlined)
                binding = table.bindings.get(key) if entry.resource is None else entry.binding
                if binding is None or not spoofed(pkt, binding, self.interfaces):
                    hits[entry] = hits.get(entry, 0) + 1
                    pkt.accept()
                    return
                entry, came_from = SPOOFED, (pkt.indev, pkt.get_hw())
            hits[entry] = hits.get(entry, 0) + 1
            pkt.drop()
            self.drops.append((table, key, p, came_from))  # at most the 128 bytes the queue copies
        except Exception:  # noqa: BLE001 - the loop must survive anything; count it and decide
            self.errors += 1
            try:
                pkt.accept() if self.default_allow else pkt.drop()
            except Exception:  # noqa: BLE001 - the verdict was given already
                pass


# ---------------------------------------------------------------- counters

CounterKey = tuple[str, str, str]  # subscription, code, verdict word


def fold(hits: dict[Entry, int], into: collections.Counter[CounterKey]) -> None:
    for entry, n in hits.items():
        into[(entry.subscription or "-", entry.code, verdict_word(entry.allow))] += n


class Counters:
    """Cumulative counts per (subscription, code, verdict), from hits of the current and retired tables."""

    def __init__(self, callback: PacketCallback):
        self.callback = callback
        self.retired: collections.Counter[CounterKey] = collections.Counter()
        self.lock = threading.Lock()

    def retire(self) -> None:
        """Start a fresh hits dict (at a table swap, so that retired entries can be freed)."""
        with self.lock:
            old, self.callback.hits = self.callback.hits, {}
            time.sleep(0.05)  # let an increment that already fetched the old dict land in it
            fold(old, self.retired)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            total = collections.Counter(self.retired)
            fold(dict(self.callback.hits), total)  # dict() copies atomically under the GIL
        return {"by": [[s, c, v, n] for (s, c, v), n in sorted(total.items())],
                "malformed": self.callback.malformed, "errors": self.callback.errors}


# ---------------------------------------------------------------- drop log


class DropLog:
    """One structured line per blocked connection attempt, deduplicated per flow (SYN retransmissions)."""

    def __init__(self, explain: Callable[[str | None], str], window: float = 60.0, out: TextIO | None = None):
        self.explain = explain          # resource name or None -> reason sentence
        self.window = window
        self.seen: collections.OrderedDict[Any, float] = collections.OrderedDict()
        self.out = out or sys.stderr
        self.interfaces = InterfaceNames()

    def drain(self, drops: collections.deque[Drop]) -> int:
        written = 0
        now = time.monotonic()
        while drops:
            table, key, head, came_from = drops.popleft()
            f = flow(head)
            seen_key = f or head[:40]
            last = self.seen.get(seen_key)
            if last is not None and now - last < self.window:
                continue
            self.seen[seen_key] = now
            self.seen.move_to_end(seen_key)
            while len(self.seen) > 20000:
                self.seen.popitem(last=False)
            entry = table.lookup(key)
            src, dst, sport, dport = f or ("?", "?", 0, 0)
            record = {"event": "blocked", "resource": entry.resource or "unknown", "subscription":
                      entry.subscription, "source": src, "destination": dst, "port": dport, "source_port": sport,
                      "code": entry.code, "reason": self.explain(entry.resource)}
            if came_from is not None:
                record.update(self.spoofed(table, key, entry, came_from))
            self.out.write(json.dumps(record, sort_keys=True) + "\n")
            written += 1
        self.out.flush()
        return written

    def spoofed(self, table: VerdictTable, key: bytes, entry: Entry, came_from: Seen) -> dict[str, Any]:
        """What a spoofed-source line says besides the usual: where the packet came from, where it should have."""
        index, hw = came_from
        bound = table.binding(key, table.exact.get(key) or entry) or Binding(None, None)
        return {"code": Code.SPOOFED_SOURCE, "subscription": None,
                "interface": self.interfaces.get(index) or str(index), "mac": _mac(hw),
                "bound_interface": bound.interface, "bound_mac": _mac(bound.mac),
                "reason": f"the packet carries the address of {entry.resource or 'a registered resource'} "
                          f"but came from interface {self.interfaces.get(index) or index}, MAC {_mac(hw)}, where "
                          "that resource is not bound; the platform lets a VM send only from its own addresses"}


def _mac(hw: bytes | None) -> str | None:
    return ":".join(f"{b:02x}" for b in hw[:6]) if hw else None
