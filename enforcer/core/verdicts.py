"""What the verdict table holds, pure: for each address of a resource, a verdict (allow, the subscription whose
policy decided, the reason code) and where its packets must come from (a binding); the verdicts numbered once each.

The table itself is the data plane's (`enforcer.dataplane._fastpath.Table`, filled by `dataplane.keeper.Keeper`):
packed source address (4 or 16 bytes, as the IP header carries it) -> verdict, binding.
"""

from __future__ import annotations

import json
import socket
from dataclasses import MISSING, asdict, fields
from typing import NamedTuple

from .inventory import Inventory, Pulled, Resource, State
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
    mac = hw_mac(r.mac)
    return Binding(interface, mac) if interface or mac else None


def hw_mac(mac: str | None) -> bytes | None:
    """'02:00:00:00:00:0a' as NFQUEUE's get_hw() reports a MAC: the 6 bytes and two zeros."""
    return bytes.fromhex(mac.replace(":", "")) + b"\0\0" if mac else None


def mac_text(hw: bytes | None) -> str | None:
    """A MAC as get_hw() reports it, as a person reads it."""
    return ":".join(f"{b:02x}" for b in hw[:6]) if hw else None


class Verdict(NamedTuple):
    """A verdict of the table: every source judged alike shares one."""
    allow: bool
    subscription: str | None  # whose policy decided (an appliance's for a resource egressing through it)
    code: Code

    @property
    def word(self) -> str:
        return verdict_word(self.allow)


UNKNOWN = Verdict(False, None, Code.UNKNOWN_SOURCE)
SPOOFED = Verdict(False, None, Code.SPOOFED_SOURCE)  # an allowed source seen where it is not bound


class Verdicts:
    """The verdicts a table's entries point to, each numbered once in the order first met: (allow, the
    subscription whose policy decided, code) -> index. The packet path holds an index per address; what an index
    means (and the allow flag, per index) travels beside the table."""

    def __init__(self) -> None:
        self.entries: list[Verdict] = []
        self._index: dict[tuple[bool, str | None, Code], int] = {}

    def number(self, allow: bool, subscription: str | None, code: Code) -> int:
        key = (allow, subscription, code)
        index = self._index.get(key)
        if index is None:
            index = self._index[key] = len(self.entries)
            self.entries.append(Verdict(allow, subscription, code))
        return index

    def allow_flags(self) -> bytes:
        return bytes(entry.allow for entry in self.entries)

    def __len__(self) -> int:
        return len(self.entries)


class Judged(NamedTuple):
    """What a resource's verdict depends on, of its own row: all that assess() reads of it. Equal keys, equal
    verdicts. The store writes it beside each address (`encode`); the daemon's table reads it back (`decode`) and
    judges each distinct key once."""
    subscription: str
    kind: str
    state: State
    egress: str | None
    pulled: Pulled | None

    @classmethod
    def of(cls, r: Resource) -> Judged:
        return cls(r.subscription, r.kind, r.state, r.egress, r.pulled)

    def resource(self, name: str) -> Resource:
        """A resource of this key, as far as assess() and the profile's checks read it."""
        return Resource(name, self.subscription, self.kind, (), egress=self.egress, state=self.state,
                        pulled=self.pulled)

    def encode(self) -> str:
        return json.dumps([self.subscription, self.kind, str(self.state), self.egress, pulled_text(self.pulled)],
                          separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> Judged:
        """Raises ValueError (or KeyError, TypeError) for a key this version did not write."""
        subscription, kind, state, egress, pulled = json.loads(text)
        return cls(subscription, kind, State(state), egress, pulled_of(pulled))


def pulled_text(pulled: Pulled | None) -> str | None:
    """A pulled policy as text, canonical (sorted keys; a field at its default left out, as older versions wrote
    it), so that equal policies group."""
    if pulled is None:
        return None
    defaults = {f.name: f.default for f in fields(Pulled) if f.default is not MISSING}
    kept = {k: v for k, v in asdict(pulled).items() if not (k in defaults and v == defaults[k])}
    return json.dumps(kept, separators=(",", ":"), sort_keys=True)


def pulled_of(text: str | None) -> Pulled | None:
    return None if text is None else Pulled(**json.loads(text))


def judged(inv: Inventory, profile: Profile, r: Resource) -> tuple[tuple[bool, str | None, Code], Binding | None]:
    """What the table holds for each of r's addresses: (allow, deciding subscription, code), and where r's
    packets must come from."""
    allow, code, decider = assess(inv, profile, r)
    return (allow, decider.subscription, code), binding_of(inv, r)


def judged_alike(inv: Inventory, profile: Profile, key: Judged) -> tuple[bool, str | None, Code]:
    """The verdict of every resource whose row says `key` (all that assess() reads of a resource): a group of them
    judged at once, without reading any of them."""
    allow, code, decider = assess(inv, profile, key.resource("?"))
    return allow, decider.subscription, code


def packed_address(address: str) -> tuple[bytes, int | None]:
    """A host address or a prefix as the table keys it: the packed (network) address, and the prefix length."""
    host, _, plen = address.partition("/")
    return pack(host), int(plen) if plen else None


def pack(address: str) -> bytes:
    """'198.18.1.10' -> 4 bytes, '2001:db8::1' -> 16 bytes; the same bytes the IP header carries."""
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


