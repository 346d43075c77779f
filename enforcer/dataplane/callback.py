"""What the packet callback leaves for the worker's control thread, and what that thread makes of it: counts per
verdict, and the deduplicated drop log.

The callback itself is `_fastpath.Judge` (C): once per queued SYN it reads the source address from the payload,
looks it up in the table's image, checks where a bound source came from, and gives the verdict. It counts hits
per verdict index and appends each blocked packet to a deque; the rest happens here, off the packet path.
"""

from __future__ import annotations

import collections
import json
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, TextIO

from ..core.policy import Code, verdict_word
from ..core.table import SPOOFED, UNKNOWN, Entry
from ._fastpath import SPOOFED as SPOOFED_CLASS, UNKNOWN as UNKNOWN_CLASS, Judge, View
from .packet import flow

if TYPE_CHECKING:  # a type of the C module's stub only
    from ._fastpath import Drop


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


def meaning(verdicts: list[Entry], cls: int) -> Entry:
    """The entry a Judge's class stands for (its two outcomes that are not a table's index included)."""
    if cls == UNKNOWN_CLASS:
        return UNKNOWN
    if cls == SPOOFED_CLASS:
        return SPOOFED
    return verdicts[cls] if 0 <= cls < len(verdicts) else UNKNOWN


# ---------------------------------------------------------------- counters

CounterKey = tuple[str, str, str]  # subscription, code, verdict word


def fold(counts: list[int], verdicts: list[Entry], into: collections.Counter[CounterKey]) -> None:
    for cls, n in enumerate(counts):
        if n:
            entry = meaning(verdicts, cls)
            into[(entry.subscription or "-", entry.code, verdict_word(entry.allow))] += n


class Counters:
    """Cumulative counts per (subscription, code, verdict) across table swaps. The Judge counts per index of the
    table it judges with; at a swap those counts are folded here with what the indexes meant."""

    def __init__(self, judge: Judge, verdicts: list[Entry]):
        self.judge, self.verdicts = judge, verdicts
        self.retired: collections.Counter[CounterKey] = collections.Counter()
        self.lock = threading.Lock()

    def swap(self, view: View, verdicts: list[Entry]) -> None:
        """Judge with `view` from the next packet on (the swap is atomic: no packet lands between its steps)."""
        with self.lock:
            old, old_verdicts = self.judge.swap(view), self.verdicts
            self.verdicts = verdicts
            fold(old, old_verdicts, self.retired)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            total = collections.Counter(self.retired)
            fold(self.judge.counts(), self.verdicts, total)
        j = self.judge
        for entry, n in ((UNKNOWN, j.unknown), (SPOOFED, j.spoofed)):
            if n:
                total[("-", entry.code, verdict_word(False))] += n
        return {"by": [[s, c, v, n] for (s, c, v), n in sorted(total.items())],
                "malformed": j.malformed, "errors": j.errors}


# ---------------------------------------------------------------- drop log

# (resource name or None, the reason a person reads) for a blocked source: the state's answer, off the packet path
Explain = Callable[[bytes], "tuple[str | None, str]"]


class DropLog:
    """One structured line per blocked connection attempt, deduplicated per flow (SYN retransmissions)."""

    def __init__(self, verdicts: Callable[[int], list[Entry]], explain: Explain, window: float = 60.0,
                 out: TextIO | None = None):
        self.verdicts = verdicts        # a table generation -> what its indexes mean
        self.explain = explain
        self.window = window
        self.seen: collections.OrderedDict[Any, float] = collections.OrderedDict()
        self.out = out or sys.stderr
        self.interfaces = InterfaceNames()

    def drain(self, drops: collections.deque[Drop]) -> int:
        written = 0
        now = time.monotonic()
        while drops:
            view, cls, key, head, came_from = drops.popleft()
            f = flow(head)
            seen_key = f or head[:40]
            last = self.seen.get(seen_key)
            if last is not None and now - last < self.window:
                continue
            self.seen[seen_key] = now
            self.seen.move_to_end(seen_key)
            while len(self.seen) > 20000:
                self.seen.popitem(last=False)
            entry = meaning(self.verdicts(view.generation), cls)
            resource, reason = self.explain(key)
            src, dst, sport, dport = f or ("?", "?", 0, 0)
            record = {"event": "blocked", "resource": resource or "unknown", "subscription": entry.subscription,
                      "source": src, "destination": dst, "port": dport, "source_port": sport, "code": entry.code,
                      "reason": reason}
            if came_from is not None:
                record.update(self.spoofed(view, key, resource, came_from))
            self.out.write(json.dumps(record, sort_keys=True) + "\n")
            written += 1
        self.out.flush()
        return written

    def spoofed(self, view: View, key: bytes, resource: str | None, came_from: tuple[int, bytes | None]
                ) -> dict[str, Any]:
        """What a spoofed-source line says besides the usual: where the packet came from, where it should have."""
        index, hw = came_from
        _, bound_interface, bound_mac = view.entry(key) or (0, None, None)
        where = self.interfaces.get(index) or str(index)
        return {"code": Code.SPOOFED_SOURCE, "subscription": None, "interface": where, "mac": _mac(hw),
                "bound_interface": bound_interface, "bound_mac": _mac(bound_mac),
                "reason": f"the packet carries the address of {resource or 'a registered resource'} but came from "
                          f"interface {where}, MAC {_mac(hw)}, where that resource is not bound; the platform lets a "
                          "VM send only from its own addresses"}


def _mac(hw: bytes | None) -> str | None:
    return ":".join(f"{b:02x}" for b in hw[:6]) if hw else None
