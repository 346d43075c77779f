"""decide(): one source, one destination -> allow or block, with a reason code and a sentence a person reads.

The semantics of every rule in docs/azure-policy.md live here, parameterised by the profile.
assess() is the part that depends on the source alone; the compiled table (table.py) memoises it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from . import hints
from .inventory import Inventory, Pulled, Resource, State, pull
from .normalize import is_prefix
from .profile import OPERATOR_GRANTED, ChangeApplies, Exemption, Profile, exemption_conditions


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
    CREATED_BEFORE_CUTOFF = "created-before-cutoff"  # the profile blocks only accounts created from a day on
    NOT_FLAGGED = "not-flagged"                      # a reactive profile blocks only flagged accounts
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
    # a creation day unknown when it was pulled counts as after the cut-off: the block is the safe side
    if ptype.created_from is not None and pulled.created is not None and pulled.created < ptype.created_from:
        return True, Code.CREATED_BEFORE_CUTOFF
    if ptype.when_flagged and not pulled.flagged:
        return True, Code.NOT_FLAGGED
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
    exact = inv.owner_of(str(ip))
    if exact is not None:
        return inv.resources[exact]
    best, best_len = None, -1
    for r in inv.prefixed():
        for a in r.addresses:
            if is_prefix(a):
                net = ipaddress.ip_network(a)
                if net.version == ip.version and ip in net and net.prefixlen > best_len:
                    best, best_len = r, net.prefixlen
    return best


def internal_destinations(inv: Inventory, profile: Profile | None = None) -> tuple[str, ...]:
    """Every prefix whose destinations are never judged: the profile's (the VNets' when it never-judges the
    account's own networks, as a profile stating none does) and the operator's declared ranges."""
    return tuple(sorted({p for p, _ in _never_judged(inv, profile)}))


def _never_judged(inv: Inventory, profile: Profile | None) -> list[tuple[str, str]]:
    """(prefix, phrase naming it) for every never-judged destination prefix, in the order they are named."""
    own = profile is None or any(n.own_network for n in profile.never_judged)
    out = [(p, f"VNet '{vnet.name}'") for vnet in inv.vnets.values() for p in vnet.prefixes] if own else []
    if profile is not None:
        out += [(p, f"{n.name} ({p}), which profile '{profile.id}' never judges")
                for n in profile.never_judged for p in n.prefixes]
    return out + [(p, f"the declared internal range {p}") for p in inv.internal_prefixes]


def internal_network(inv: Inventory, address: str, profile: Profile | None = None) -> str | None:
    """A phrase naming the never-judged network that contains `address`, or None when it is internet-bound."""
    ip = ipaddress.ip_address(address)
    for p, phrase in _never_judged(inv, profile):
        net = ipaddress.ip_network(p)
        if net.version == ip.version and ip in net:
            return phrase
    return None


def _restart_hint(inv: Inventory, r: Resource) -> str:
    if inv.in_delegated_subnet(r):
        assert r.vnet is not None
        return (f"it sits in delegated subnet '{r.subnet}', so add and remove a temporary subnet: "
                f"{hints.refresh_delegated(r.vnet)}")
    return f"restart it: {hints.restart(r.name)}"


def exemption_how(profile: Profile, sub_name: str, exemption: Exemption) -> str:
    """How an exemption is requested, in the provider's words where the profile gives them, and the command."""
    words = profile.exemption_path.path and profile.exemption_path.path + exemption_conditions(profile)
    if exemption == Exemption.SELF_SERVICE:
        return f"{words}: {hints.diagnose(sub_name)}" if words else hints.diagnose(sub_name)
    if exemption in OPERATOR_GRANTED:
        return f"{words or 'a support case'}, then: {hints.grant_exemption(sub_name)}"
    return f"{words}: {hints.request_exemption(sub_name)}" if words else hints.request_exemption(sub_name)


def _change(profile: Profile, before: Pulled, after: Pulled) -> str:
    """What changed in the account between the resource's pull and now, to end '... while (or before) the
    subscription X ...': a pull that allowed what now is blocked, or the other way round."""
    if before.exempt != after.exempt:
        return "was exempt" if before.exempt else "was exempted"
    allowed_before = assess_pulled(profile, before)[0]
    if before.type != after.type:
        return f"was of type {profile.types[before.type].name}" if allowed_before \
            else f"changed to type {profile.types[after.type].name}"
    if before.flagged != after.flagged:
        return "was not flagged for spam" if after.flagged else "had its spam flag lifted"
    return f"was recorded as created on {before.created if allowed_before else after.created}"


def explain(inv: Inventory, profile: Profile, r: Resource, code: Code, decider: Resource) -> str:
    """One sentence on why assess() gave `code` for r."""
    sub = inv.subscriptions[decider.subscription]
    acct, ports = profile.account_word, profile.ports_phrase
    who = f"{decider.kind} '{decider.name}'"
    via = f"{r.kind} '{r.name}' leaves through {who}, judged by its {acct} '{sub.name}': " \
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
    when = "at its next start" if profile.change_applies == ChangeApplies.STOP_DEALLOCATE_START \
        else "at its next restart"
    if allow and not now_allow:
        return (f"{via}{who} pulled its policy while {acct} '{sub.name}' {_change(profile, pulled, current)}; "
                f"the change applies {when} ({_restart_hint(inv, decider)})")
    if not allow and now_allow:
        return (f"{via}{who} pulled its policy before {acct} '{sub.name}' {_change(profile, pulled, current)}; "
                f"{_restart_hint(inv, decider)}")
    if code == Code.TYPE_NOT_BLOCKED:
        return f"{via}{acct} '{sub.name}' is {ptype.name}, where {ports} {profile.ports_are} not blocked"
    if code == Code.CREATED_BEFORE_CUTOFF:
        return (f"{via}{acct} '{sub.name}' ({ptype.name}) was created on {pulled.created}, before "
                f"{ptype.created_from}, from when {ports} {profile.ports_are} blocked")
    if code == Code.NOT_FLAGGED:
        return f"{via}{acct} '{sub.name}' is not flagged for spam, so {ports} {profile.ports_are} not blocked"
    if code == Code.EXEMPT:
        return f"{via}{acct} '{sub.name}' ({ptype.name}) is exempt from the {ports} block"
    if code == Code.BLOCKED_EXEMPTIBLE:
        how = exemption_how(profile, sub.name, ptype.exemption)
        if ptype.when_flagged:
            return (f"{via}{acct} '{sub.name}' ({ptype.name}) was flagged for spam, so {ports} {profile.ports_are} "
                    f"blocked until the block is lifted: {how}")
        return f"{via}{acct} '{sub.name}' ({ptype.name}) blocks {ports} until it is exempted; request it: {how}"
    return f"{via}{acct} '{sub.name}' is {ptype.name}, which is never exempted; {profile.advice}"


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
    inside = internal_network(inv, destination, profile)
    if inside is not None:
        return Verdict(True, Code.INTERNAL_DESTINATION, f"allowed: {destination} is inside {inside}", name)
    if isinstance(source, str):
        resource = find_source(inv, source)
        if resource is None:
            return Verdict(False, Code.UNKNOWN_SOURCE, f"blocked: {source} belongs to no registered resource; "
                           f"register it: {hints.add_resource()}")
        source = resource
    return verdict_for(inv, profile, source)
