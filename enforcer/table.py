"""The compiled verdict table: packed source address (4 or 16 bytes) -> (allow, resource, subscription, code).

Built aside by compile() and swapped whole; never mutated. The packet path does one dict lookup; addresses
registered as prefixes (scale sets) resolve by longest-prefix match only after the exact lookup misses.
"""

from __future__ import annotations

import ipaddress
import socket

from .inventory import Inventory, is_prefix
from .policy import UNKNOWN_SOURCE, judge
from .profile import Profile

class Entry:
    """What the table says of one source. Shared by all addresses of a resource; hashed by identity, so that
    the packet path can count hits per entry cheaply."""

    __slots__ = ("allow", "resource", "subscription", "code")

    def __init__(self, allow: bool, resource: str | None, subscription: str | None, code: str):
        self.allow, self.resource, self.subscription, self.code = allow, resource, subscription, code

    def __iter__(self):
        return iter((self.allow, self.resource, self.subscription, self.code))

    def __repr__(self) -> str:
        return f"Entry{tuple(self)!r}"


UNKNOWN = Entry(False, None, None, UNKNOWN_SOURCE)


def pack(address: str) -> bytes:
    """'198.18.1.10' -> 4 bytes, '2001:db8::1' -> 16 bytes; the same bytes the IP header carries."""
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


class VerdictTable:
    __slots__ = ("exact", "_prefixes", "generation")

    def __init__(self, exact: dict[bytes, Entry], prefixes: dict[int, dict[int, dict[int, Entry]]],
                 generation: int = 0):
        self.exact = exact
        # address length in bytes -> prefix length -> network as int -> entry; lengths longest first
        self._prefixes = {alen: dict(sorted(by_len.items(), reverse=True)) for alen, by_len in prefixes.items()}
        self.generation = generation

    def lookup(self, source: bytes) -> Entry:
        entry = self.exact.get(source)
        if entry is not None:
            return entry
        by_len = self._prefixes.get(len(source))
        if by_len:
            value = int.from_bytes(source, "big")
            bits = len(source) * 8
            for plen, nets in by_len.items():
                entry = nets.get(value >> (bits - plen))
                if entry is not None:
                    return entry
        return UNKNOWN

    def __len__(self) -> int:
        return len(self.exact) + sum(len(n) for by_len in self._prefixes.values() for n in by_len.values())


def compile_table(inv: Inventory, profile: Profile, generation: int = 0) -> VerdictTable:
    """Judge every resource once (memoised on what judge() depends on) and index its addresses."""
    exact: dict[bytes, Entry] = {}
    prefixes: dict[int, dict[int, dict[int, Entry]]] = {}
    verdicts: dict[tuple, tuple[bool, str, str]] = {}
    for r in inv.resources.values():
        key = (r.subscription, r.kind, r.state, r.egress, r.pulled)
        verdict = verdicts.get(key)
        if verdict is None:
            allow, code, decider = judge(inv, profile, r)
            verdict = verdicts[key] = (allow, code, decider.subscription)
        entry = Entry(verdict[0], r.name, verdict[2], verdict[1])
        for a in r.addresses:
            if is_prefix(a):
                net = ipaddress.ip_network(a)
                alen = 4 if net.version == 4 else 16
                prefixes.setdefault(alen, {}).setdefault(net.prefixlen, {})[
                    int(net.network_address) >> (alen * 8 - net.prefixlen)] = entry
            else:
                exact[pack(a)] = entry
    return VerdictTable(exact, prefixes, generation)
