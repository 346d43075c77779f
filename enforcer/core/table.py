"""The compiled verdict table: packed source address (4 or 16 bytes) -> (allow, resource, subscription, code).

Built aside by compile_table() and swapped whole; never mutated. The packet path does one dict lookup; addresses
registered as prefixes (scale sets) resolve by longest-prefix match only after the exact lookup misses.
"""

from __future__ import annotations

import gc
import ipaddress
import socket
from typing import Any, Iterator

from .inventory import Inventory, Resource
from .policy import Code, assess, verdict_word
from .profile import Profile


class Binding:
    """Where a source's packets must come from: the gateway interface they arrive on, and the MAC address
    they carry (8 bytes, as NFQUEUE reports it: the 6 of the address and two zeros). None: not bound."""

    __slots__ = ("interface", "mac")

    def __init__(self, interface: str | None, mac: bytes | None):
        self.interface, self.mac = interface, mac

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Binding) and (self.interface, self.mac) == (other.interface, other.mac)

    def __hash__(self) -> int:
        return hash((self.interface, self.mac))

    def __repr__(self) -> str:
        return f"Binding({self.interface!r}, {self.mac!r})"


def binding_of(inv: Inventory, r: Resource) -> Binding | None:
    """The resource's own interface, else its VNet's; its MAC where one is registered."""
    interface = r.interface
    if interface is None and r.vnet is not None and r.vnet in inv.vnets:
        interface = inv.vnets[r.vnet].interface
    mac = bytes.fromhex(r.mac.replace(":", "")) + b"\0\0" if r.mac else None
    return Binding(interface, mac) if interface or mac else None


class Entry:
    """What the table says of a source. The exact dict shares one Entry among all sources judged alike (its
    resource is None: the names live in `owners`, the bindings in `bindings`), so that the packet path touches
    a handful of hot objects and counts hits per entry by identity. An entry of a prefix-registered source
    names its resource and carries its binding."""

    __slots__ = ("allow", "resource", "subscription", "code", "binding")

    def __init__(self, allow: bool, resource: str | None, subscription: str | None, code: Code,
                 binding: Binding | None = None):
        self.allow, self.resource, self.subscription, self.code = allow, resource, subscription, code
        self.binding = binding

    @property
    def word(self) -> str:
        return verdict_word(self.allow)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.allow, self.resource, self.subscription, self.code))

    def __repr__(self) -> str:
        return f"Entry{tuple(self)!r}"


UNKNOWN = Entry(False, None, None, Code.UNKNOWN_SOURCE)
SPOOFED = Entry(False, None, None, Code.SPOOFED_SOURCE)  # an allowed source seen where it is not bound


def pack(address: str) -> bytes:
    """'198.18.1.10' -> 4 bytes, '2001:db8::1' -> 16 bytes; the same bytes the IP header carries."""
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


class VerdictTable:
    """exact: packed host address -> shared Entry (the packet path); owners: packed host address -> resource
    name (logs, lookup()); bindings: packed host address -> where its packets must come from (only sources
    that are bound); prefixes: per address length and prefix length, network -> Entry naming its resource
    (scale sets), searched longest first only after the exact dict misses."""

    __slots__ = ("exact", "owners", "bindings", "_prefixes", "generation")

    def __init__(self, exact: dict[bytes, Entry], owners: dict[bytes, str],
                 prefixes: dict[int, dict[int, dict[int, Entry]]], generation: int = 0,
                 bindings: dict[bytes, Binding] | None = None):
        self.exact = exact
        self.owners = owners
        self.bindings = bindings or {}
        self._prefixes = {alen: dict(sorted(by_len.items(), reverse=True)) for alen, by_len in prefixes.items()}
        self.generation = generation

    def prefix_entry(self, source: bytes) -> Entry:
        """Longest-prefix match among prefix-registered sources, for when the exact dict misses."""
        by_len = self._prefixes.get(len(source))
        if by_len:
            value = int.from_bytes(source, "big")
            bits = len(source) * 8
            for plen, nets in by_len.items():
                entry = nets.get(value >> (bits - plen))
                if entry is not None:
                    return entry
        return UNKNOWN

    def entry_for(self, source: bytes) -> Entry:
        """The verdict for a source, as the packet path takes it (the resource may be None: see owners).
        The packet callback inlines these two lines: a method call per packet costs measurable throughput."""
        entry = self.exact.get(source)
        return entry if entry is not None else self.prefix_entry(source)

    def binding(self, source: bytes, entry: Entry) -> Binding | None:
        """Where `source`, found as `entry`, must come from (the packet callback inlines this)."""
        return self.bindings.get(source) if entry.resource is None else entry.binding

    def lookup(self, source: bytes) -> Entry:
        """The verdict for a source, naming its resource."""
        entry = self.exact.get(source)
        if entry is None:
            return self.prefix_entry(source)
        return Entry(entry.allow, self.owners[source], entry.subscription, entry.code)

    def __len__(self) -> int:
        return len(self.exact) + sum(len(n) for by_len in self._prefixes.values() for n in by_len.values())


def compile_table(inv: Inventory, profile: Profile, generation: int = 0) -> VerdictTable:
    """Assess every resource once (memoised on what assess() depends on) and index its addresses."""
    exact: dict[bytes, Entry] = {}
    owners: dict[bytes, str] = {}
    bindings: dict[bytes, Binding] = {}
    prefixes: dict[int, dict[int, dict[int, Entry]]] = {}
    verdicts: dict[tuple[Any, ...], Entry] = {}    # what assess() depends on -> the shared Entry
    inet_pton, AF_INET, AF_INET6 = socket.inet_pton, socket.AF_INET, socket.AF_INET6
    collecting = gc.isenabled()
    gc.disable()  # a million new objects would trigger collections that walk only them, for nothing
    try:
        for r in inv.resources.values():
            p = r.pulled  # its fields, not the Pulled itself, whose dataclass __hash__ runs Python code
            key = (r.subscription, r.kind, r.state, r.egress, p and p.type, p and p.exempt, p and p.created,
                   p and p.flagged)
            shared = verdicts.get(key)
            if shared is None:
                allow, code, decider = assess(inv, profile, r)
                shared = verdicts[key] = Entry(allow, None, decider.subscription, code)
            name = r.name
            binding = binding_of(inv, r)
            for a in r.addresses:
                if "/" in a:
                    net = ipaddress.ip_network(a)
                    alen = 4 if net.version == 4 else 16
                    prefixes.setdefault(alen, {}).setdefault(net.prefixlen, {})[
                        int(net.network_address) >> (alen * 8 - net.prefixlen)] = \
                        Entry(shared.allow, name, shared.subscription, shared.code, binding)
                else:
                    k = inet_pton(AF_INET6 if ":" in a else AF_INET, a)
                    exact[k] = shared
                    owners[k] = name
                    if binding is not None:
                        bindings[k] = binding
    finally:
        if collecting:
            gc.enable()
    return VerdictTable(exact, owners, prefixes, generation, bindings)
