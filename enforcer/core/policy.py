"""decide(): one source, one destination -> allow or block, with a reason code and a sentence a person reads.

The semantics of every rule in docs/azure-policy.md live here, parameterised by the profile.
assess() is the part that depends on the source alone; the compiled table (table.py) memoises it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from . import hints
from .inventory import Inventory, Pulled, Resource, State, is_prefix, pull
from .profile import Exemption, Profile


class Code(StrEnum):
    """Why a connection is allowed or blocked. The first three are about the destination; the rest about the
    source."""
    PORT_NOT_RESTRICTED = "port-not-restricted"
    PORT_NEVER_RESTRICTED = "port-never-restricted"
    INTERNAL_DESTINATION = "internal-destination"
    UNKNOWN_SOURCE = "unknown-source"
    SPOOFED_SOURCE = "spoofed-source"  # an allowed source's address, seen on another interface or MAC
    KIND_NEVER = "kind-never-allowed"
    NOT_RUNNING = "not-running"
    TYPE_NOT_BLOCKED = "type-not-blocked"
    EXEMPT = "exempt"
    BLOCKED_EXEMPTIBLE = "blocked-exemptible"
    BLOCKED_NEVER_EXEMPTIBLE = "blocked-never-exemptible"


def verdict_word(allow: bool) -> str:
    return "allowed" if allow else "blocked"


@dataclass(frozen=True, slots=True)
class Verdict:
    allow: bool
    code: Code
    reason: str
    resource: str | None = None
    subscription: str | None = None  # whose policy decided: the appliance's for egress through one

    @property
    def word(self) -> str:
        return verdict_word(self.allow)


def assess_pulled(profile: Profile, pulled: Pulled) -> tuple[bool, Code]:
    """What a pulled policy says of port 25: (allow, code)."""
    ptype = profile.types[pulled.type]
    if not ptype.blocked_by_default:
        return True, Code.TYPE_NOT_BLOCKED
    if pulled.exempt:
        return True, Code.EXEMPT
    return False, Code.BLOCKED_EXEMPTIBLE if ptype.exemptible else Code.BLOCKED_NEVER_EXEMPTIBLE


def assess(inv: Inventory, profile: Profile, r: Resource) -> tuple[bool, Code, Resource]:
    """The verdict for an internet-bound SYN to a restricted port from r: (allow, code, resource whose policy
    decided). Depends only on r's subscription, kind, state, egress and pulled policy (the table relies on it)."""
    if not profile.kinds[r.kind].follows_subscription:
        return False, Code.KIND_NEVER, r
    if r.state != State.RUNNING:
        return False, Code.NOT_RUNNING, r
    decider = r
    if r.egress is not None:  # rule 7: judged by the appliance's own subscription
        decider = inv.resources[r.egress]
        if not profile.kinds[decider.kind].follows_subscription:
            return False, Code.KIND_NEVER, decider
        if decider.state != State.RUNNING:
            return False, Code.NOT_RUNNING, decider
    assert decider.pulled is not None  # validate(): a running resource has pulled a policy
    allow, code = assess_pulled(profile, decider.pulled)
    return allow, code, decider


def find_source(inv: Inventory, address: str) -> Resource | None:
    """The resource owning `address`: an exact host address first, else the longest registered prefix."""
    ip = ipaddress.ip_address(address)
    best, best_len = None, -1
    for r in inv.resources.values():
        for a in r.addresses:
            if not is_prefix(a):
                if ipaddress.ip_address(a) == ip:
                    return r
                continue
            net = ipaddress.ip_network(a)
            if net.version == ip.version and ip in net and net.prefixlen > best_len:
                best, best_len = r, net.prefixlen
    return best


def internal_destinations(inv: Inventory) -> tuple[str, ...]:
    """Every prefix whose destinations are never judged: the VNets' and the operator's declared ranges."""
    return tuple(sorted({p for v in inv.vnets.values() for p in v.prefixes} | set(inv.internal_prefixes)))


def internal_network(inv: Inventory, address: str) -> str | None:
    """A phrase naming the lab network that contains `address`, or None when it is internet-bound."""
    ip = ipaddress.ip_address(address)
    for vnet in inv.vnets.values():
        for p in vnet.prefixes:
            net = ipaddress.ip_network(p)
            if net.version == ip.version and ip in net:
                return f"VNet '{vnet.name}'"
    for p in inv.internal_prefixes:
        net = ipaddress.ip_network(p)
        if net.version == ip.version and ip in net:
            return f"the declared internal range {p}"
    return None


def _restart_hint(inv: Inventory, r: Resource) -> str:
    if inv.in_delegated_subnet(r):
        assert r.vnet is not None
        return (f"it sits in delegated subnet '{r.subnet}', so add and remove a temporary subnet: "
                f"{hints.refresh_delegated(r.vnet)}")
    return f"restart it: {hints.restart(r.name)}"


def explain(inv: Inventory, profile: Profile, r: Resource, code: Code, decider: Resource) -> str:
    """One sentence on why assess() gave `code` for r."""
    sub = inv.subscriptions[decider.subscription]
    who = f"{decider.kind} '{decider.name}'"
    via = f"{r.kind} '{r.name}' leaves through {who}, judged by its subscription '{sub.name}': " \
        if decider is not r else ""
    if code == Code.KIND_NEVER:
        return f"{via}{profile.kinds[decider.kind].name} can never send on restricted ports; {profile.advice}"
    if code == Code.NOT_RUNNING:
        return f"{via}{who} is {decider.state}, so it sends nothing; start it: {hints.start(decider.name)}"
    pulled = decider.pulled
    assert pulled is not None
    ptype = profile.types[pulled.type]
    current = pull(sub)
    now_allow, _ = assess_pulled(profile, current)
    allow, _ = assess_pulled(profile, pulled)
    if allow and not now_allow:
        change = "was exempt" if pulled.exempt and not current.exempt else f"was of type {ptype.name}"
        return (f"{via}{who} pulled its policy while subscription '{sub.name}' {change}; "
                f"the change applies at its next start ({_restart_hint(inv, decider)})")
    if not allow and now_allow:
        change = "was exempted" if current.exempt and not pulled.exempt \
            else f"changed to type {profile.types[sub.type].name}"
        return f"{via}{who} pulled its policy before subscription '{sub.name}' {change}; {_restart_hint(inv, decider)}"
    if code == Code.TYPE_NOT_BLOCKED:
        return f"{via}subscription '{sub.name}' is {ptype.name}, where port 25 is not blocked"
    if code == Code.EXEMPT:
        return f"{via}subscription '{sub.name}' ({ptype.name}) is exempt from the port 25 block"
    if code == Code.BLOCKED_EXEMPTIBLE:
        how = hints.diagnose(sub.name) if ptype.exemption == Exemption.SELF_SERVICE \
            else f"a support case, then: {hints.grant_exemption(sub.name)}"
        return f"{via}subscription '{sub.name}' ({ptype.name}) blocks port 25 until it is exempted; request it: {how}"
    return f"{via}subscription '{sub.name}' is {ptype.name}, which is never exempted; {profile.advice}"


def verdict_for(inv: Inventory, profile: Profile, r: Resource) -> Verdict:
    allow, code, decider = assess(inv, profile, r)
    reason = explain(inv, profile, r, code, decider)
    return Verdict(allow, code, f"{verdict_word(allow)}: {reason}", r.name, decider.subscription)


def decide(inv: Inventory, profile: Profile, source: Resource | str, destination: str, port: int) -> Verdict:
    """Allow or block a TCP connection from `source` (a resource, or a source address) to destination:port."""
    name = source.name if isinstance(source, Resource) else None
    if port in profile.never_restricted_ports:
        return Verdict(True, Code.PORT_NEVER_RESTRICTED, f"allowed: port {port} is never restricted", name)
    if port not in profile.restricted_ports:
        return Verdict(True, Code.PORT_NOT_RESTRICTED,
                       f"allowed: port {port} is not restricted by profile '{profile.id}'", name)
    inside = internal_network(inv, destination)
    if inside is not None:
        return Verdict(True, Code.INTERNAL_DESTINATION, f"allowed: {destination} is inside {inside}", name)
    if isinstance(source, str):
        resource = find_source(inv, source)
        if resource is None:
            return Verdict(False, Code.UNKNOWN_SOURCE, f"blocked: {source} belongs to no registered resource; "
                           f"register it: {hints.add_resource()}")
        source = resource
    return verdict_for(inv, profile, source)
