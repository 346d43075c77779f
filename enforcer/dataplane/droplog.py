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
    """(source, destination, source port, destination port) of a TCP packet, for logs; None if unreadable."""
    try:
        version = payload[0] >> 4
        if version == 4:
            ihl = (payload[0] & 15) * 4
            if ihl < 20 or payload[9] != 6 or int.from_bytes(payload[6:8], "big") & 0x1FFF:
                return None  # not TCP, or a later fragment without a TCP header
            src = socket.inet_ntop(socket.AF_INET, payload[12:16])
            dst = socket.inet_ntop(socket.AF_INET, payload[16:20])
            offset = ihl
        elif version == 6:
            src = socket.inet_ntop(socket.AF_INET6, payload[8:24])
            dst = socket.inet_ntop(socket.AF_INET6, payload[24:40])
            nxt, offset = payload[6], 40
            for _ in range(8):  # bounded walk of extension headers
                if nxt == 6:
                    break
                if nxt == 44:  # fragment header: fixed 8 bytes; only the first fragment has ports
                    if int.from_bytes(payload[offset + 2:offset + 4], "big") & 0xFFF8:
                        return None
                    nxt, offset = payload[offset], offset + 8
                elif nxt in IPV6_EXTENSIONS:
                    nxt, offset = payload[offset], offset + (payload[offset + 1] + 1) * 8
                else:
                    return None
            if nxt != 6:
                return None
        else:
            return None
        if len(payload) < offset + 4:
            return None
        return src, dst, int.from_bytes(payload[offset:offset + 2], "big"), \
            int.from_bytes(payload[offset + 2:offset + 4], "big")
    except (IndexError, ValueError, OSError):
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


class DropLog:
    """One structured line per blocked connection attempt, deduplicated per flow (SYN retransmissions)."""

    def __init__(self, verdicts: Callable[[int], list[Verdict]], explain: Explain, window: float = 60.0,
                 out: TextIO | None = None):
        self.verdicts = verdicts        # a table generation -> what its verdicts say
        self.explain = explain
        self.window = window
        self.seen: collections.OrderedDict[Any, float] = collections.OrderedDict()
        self.out = out or sys.stderr
        self.interfaces = InterfaceNames()

    def drain(self, drops: collections.deque[Drop]) -> int:
        written = 0
        now = time.monotonic()
        while drops:
            view, verdict, key, head, came_from = drops.popleft()
            f = flow(head)
            seen_key = f or head[:40]
            last = self.seen.get(seen_key)
            if last is not None and now - last < self.window:
                continue
            self.seen[seen_key] = now
            self.seen.move_to_end(seen_key)
            while len(self.seen) > 20000:
                self.seen.popitem(last=False)
            said = verdict_of(self.verdicts(view.generation), verdict)
            resource, reason = self.explain(key)
            src, dst, sport, dport = f or ("?", "?", 0, 0)
            record = {"event": "blocked", "resource": resource or "unknown", "subscription": said.subscription,
                      "source": src, "destination": dst, "port": dport, "source_port": sport, "code": said.code,
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
        return {"code": Code.SPOOFED_SOURCE, "subscription": None, "interface": where, "mac": mac_text(hw),
                "bound_interface": bound_interface, "bound_mac": mac_text(bound_mac),
                "reason": f"the packet carries the address of {resource or 'a registered resource'} but came from "
                          f"interface {where}, MAC {mac_text(hw)}, where that resource is not bound; the platform lets "
                          "a VM send only from its own addresses"}
