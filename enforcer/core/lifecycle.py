"""Lifecycle operations on the inventory. Pure: each takes an Inventory and returns a new one plus the lines
a person is told. Every result is validated, so an operation that would leave an inconsistency changes nothing.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import re
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from ..errors import UserError
from . import hints
from .inventory import ATTRIBUTES, Inventory, Resource, State, Subnet, Subscription, VNet, pull
from .normalize import check_name, normalize_address, normalize_day, normalize_mac, normalize_prefix
from .policy import Code, assess, assess_pulled, exemption_how, verdict_word
from .profile import OPERATOR_GRANTED, SELF_GRANTED, ChangeApplies, Exemption, Profile
from .validate import check_changes

Result = tuple[Inventory, list[str]]
INTERFACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,14}")  # what Linux accepts as a name (IFNAMSIZ 16)


def normalize_interface(text: str | None) -> str | None:
    """A gateway interface name (eth1, br-shop, v3), or None: not bound to an interface."""
    if text is None:
        return None
    if not isinstance(text, str) or not INTERFACE_RE.fullmatch(text):
        raise UserError(f"invalid interface name {text!r}; write the gateway's interface as `ip link` names it, "
                        "e.g. eth1 (at most 15 letters, digits, '.', '_', '@' or '-')")
    return text


def _done(inv: Inventory, profile: Profile, lines: list[str]) -> Result:
    check_changes(inv, profile)
    return inv, lines


# ---------------------------------------------------------------- subscriptions


def _attributes(profile: Profile, given: dict[str, Any]) -> dict[str, Any]:
    """Account attributes as the model keeps them: a known name each, the creation day as YYYY-MM-DD, flags
    as booleans."""
    out: dict[str, Any] = {}
    for key, value in given.items():
        if key not in ATTRIBUTES:
            raise UserError(f"unknown {profile.account_word} attribute '{key}'; use one of: {', '.join(ATTRIBUTES)}")
        if key == "created":
            out[key] = None if value is None else normalize_day(value)
        elif not isinstance(value, bool):
            raise UserError(f"{key}: expected true or false, got {value!r}")
        else:
            out[key] = value
    return out


def add_subscription(inv: Inventory, profile: Profile, name: str, type_word: str, **attributes: Any) -> Result:
    """A new account of the type `type_word` names, with the attributes given (created, verified, ...)."""
    check_name("subscription", name)
    if name in inv.subscriptions:
        raise UserError(f"subscription '{name}' exists already; change its type with: "
                        f"{hints.set_type(name)}")
    t = profile.type_named(type_word)
    sub = Subscription(name, t.id, **_attributes(profile, attributes))
    said = "".join(f", {k} {getattr(sub, k)}" for k in ATTRIBUTES if k in attributes)
    return _done(inv.put(sub), profile, [f"added {profile.account_word} '{name}' ({t.name}{said})"])


def set_attributes(inv: Inventory, profile: Profile, name: str, apply_now: bool = False, **attributes: Any) -> Result:
    """Change an account's attributes (the creation day, verified, first_invoice_paid, flagged)."""
    sub = inv.subscription(name)
    new = replace(sub, **_attributes(profile, attributes))
    if new == sub:
        return inv, []
    changed = ", ".join(f"{k} {getattr(sub, k)} -> {getattr(new, k)}" for k in ATTRIBUTES
                        if getattr(sub, k) != getattr(new, k))
    inv, more = _reach_running(inv.put(new), profile, name, apply_now)
    return _done(inv, profile, [f"{profile.account_word} '{name}': {changed}", *more])


def _repull_running(inv: Inventory, sub_name: str, said: str) -> tuple[Inventory, list[str]]:
    """Every running resource of the subscription pulls the policy again."""
    fresh = pull(inv.subscriptions[sub_name])
    changed = [replace(r, pulled=fresh) for r in inv.resources_of(sub_name)
               if r.state == State.RUNNING and r.pulled != fresh]
    lines = [f"{said} to running: {listed([r.name for r in changed], len(changed))}"] if changed else []
    return inv.put(*changed), lines


def _reach_running(inv: Inventory, profile: Profile, sub_name: str, apply_now: bool) -> tuple[Inventory, list[str]]:
    """After a change to a subscription: apply it to running resources now (where the profile says a change
    applies at once, or by the lab shortcut), or say which of them keep their old policy until restarted."""
    if profile.change_applies == ChangeApplies.AT_ONCE:
        return _repull_running(inv, sub_name, f"applied at once (profile '{profile.id}')")
    if apply_now:
        return _repull_running(inv, sub_name, "applied now (lab shortcut)")
    return inv, _pending_lines(inv, profile, sub_name)


def pending_restart(inv: Inventory, profile: Profile, sub_name: str) -> list[Resource]:
    """Running resources of the subscription whose pulled policy differs in effect from its current one."""
    now = assess_pulled(profile, pull(inv.subscriptions[sub_name]))[0]
    return [r for r in inv.resources_of(sub_name)
            if r.state == State.RUNNING and r.pulled is not None and assess_pulled(profile, r.pulled)[0] != now]


LISTED = 20  # names a sentence lists before it counts the rest


def listed(names: list[str], total: int) -> str:
    """'a, b, c', or 'a, ..., t and 1,234 more' past LISTED names."""
    more = total - min(len(names), LISTED)
    return ", ".join(names[:LISTED]) + (f" and {more:,} more" if more > 0 else "")


PENDING_BY = ("pulled", "vnet", "subnet")


def _pending(inv: Inventory, profile: Profile, sub_name: str) -> dict[tuple[Any, ...], int]:
    """The subscription's running resources whose pulled policy differs in effect from its current one, counted
    by (pulled, vnet, subnet): read through the index, not row by row."""
    now = assess_pulled(profile, pull(inv.subscriptions[sub_name]))[0]
    return {g: n for g, n in inv.running(PENDING_BY, sub_name).items()
            if g[0] is not None and assess_pulled(profile, g[0])[0] != now}


def pending_names(inv: Inventory, profile: Profile, sub_name: str, limit: int | None) -> tuple[list[str], int]:
    """Up to `limit` names (None: all) of the resources pending_restart() would list, and how many there are."""
    pending = _pending(inv, profile, sub_name)
    names = sorted(n for g in pending for n in inv.running_names(sub_name, dict(zip(PENDING_BY, g, strict=True)),
                                                                  limit))
    return names[:limit], sum(pending.values())


def _pending_lines(inv: Inventory, profile: Profile, sub_name: str) -> list[str]:
    """Which running resources keep their old policy: counted by what they pulled, naming at most LISTED."""
    pending = _pending(inv, profile, sub_name)

    def delegated(vnet: str | None, subnet: str | None) -> bool:
        found = inv.vnets[vnet].subnet(subnet) if vnet is not None and subnet is not None and vnet in inv.vnets \
            else None
        return found is not None and found.delegated
    plain_groups = {g: n for g, n in pending.items() if not delegated(g[1], g[2])}
    plain = sorted(name for g in plain_groups
                   for name in inv.running_names(sub_name, dict(zip(PENDING_BY, g, strict=True)), LISTED))
    delegated_vnets = sorted({g[1] for g in pending if g[1] is not None and delegated(g[1], g[2])})
    lines = []
    until = "stopped, deallocated and started again" \
        if profile.change_applies == ChangeApplies.STOP_DEALLOCATE_START else "restarted"
    if plain:
        names = listed(plain, sum(plain_groups.values()))
        lines.append(f"running resources keep their old policy until {until}: {names} ({hints.restart()})")
    for v in delegated_vnets:
        lines.append(f"resources in delegated subnets of VNet '{v}' pick it up only after a temporary subnet is "
                     f"added and removed: {hints.refresh_delegated(v)}")
    return lines


def set_type(inv: Inventory, profile: Profile, name: str, type_word: str, apply_now: bool = False) -> Result:
    sub = inv.subscription(name)
    t = profile.type_named(type_word)
    if t.id == sub.type:
        return inv, [f"subscription '{name}' is {t.name} already; nothing to do"]
    lines = [f"subscription '{name}': type {profile.types[sub.type].name} -> {t.name}"]
    new_sub = replace(sub, type=t.id)
    if sub.exempt and not t.exemptible:
        new_sub = replace(new_sub, exempt=False, exempt_via=None)
        lines.append("its exemption ends: the new type is not exemptible")
    inv, more = _reach_running(inv.put(new_sub), profile, name, apply_now)
    lines += more
    return _done(inv, profile, lines)


def remove_subscription(inv: Inventory, profile: Profile, name: str) -> Result:
    inv.subscription(name)
    users = [r.name for r in itertools.islice(inv.resources_of(name), 6)] + \
            [v.name for v in itertools.islice(inv.vnets_of(name), 6)]
    if users:
        raise UserError(f"subscription '{name}' still holds {', '.join(sorted(users)[:5])}"
                        f"{' ...' if len(users) > 5 else ''}; remove them first")
    return _done(inv.removed("subscriptions", name), profile, [f"removed subscription '{name}'"])


# ---------------------------------------------------------------- exemptions


class Outcome(StrEnum):
    """What the diagnostic did."""
    GRANTED = "granted"
    ALREADY_EXEMPT = "already-exempt"
    NOT_NEEDED = "not-needed"
    REFUSED = "refused"
    SUPPORT_CASE = "support-case"


@dataclass(frozen=True)
class Diagnosis:
    subscription: str
    type_name: str
    blocked: bool
    eligible: bool
    outcome: Outcome
    lines: tuple[str, ...]


def exemption_refusal(profile: Profile, sub: Subscription, today: datetime.date | None) -> str | None:
    """Why the account does not meet the profile's conditions for an exemption yet (age, verified identity, paid
    first invoice), or None when it does. `today` judges the age; the core reads no clock."""
    e = profile.exemption_path
    missing = []
    if e.min_age_days:
        if sub.created is None:
            missing.append(f"its creation day is unknown (set it: {hints.set_attributes(sub.name)} --created "
                           "YYYY-MM-DD)")
        elif today is None:
            raise ValueError("an account's age needs today's date")
        elif (age := (today - datetime.date.fromisoformat(sub.created)).days) < e.min_age_days:
            missing.append(f"it is {age} days old, not yet {e.min_age_days}")
    if "verified" in e.requires and not sub.verified:
        missing.append("its identity is not verified")
    if "first-invoice-paid" in e.requires and not sub.first_invoice_paid:
        missing.append("its first invoice is not paid")
    return "; ".join(missing) or None


def diagnose(inv: Inventory, profile: Profile, name: str, apply_now: bool = False,
             today: datetime.date | None = None) -> tuple[Inventory, Diagnosis]:
    """The owner's own exemption path: Azure's "Cannot send email (SMTP-Port 25)" diagnostic, a switch the owner
    turns on, lifting a reactive block; elsewhere it says the provider's path, or refuses with its advice."""
    sub = inv.subscription(name)
    t = profile.types[sub.type]
    acct, ports = profile.account_word, profile.ports_phrase
    are = profile.ports_are
    lines = [f"{acct} '{name}' is {t.name}"]
    state_code = assess_pulled(profile, pull(sub))[1]
    refusal = exemption_refusal(profile, sub, today) if t.exemption in SELF_GRANTED | OPERATOR_GRANTED else None
    if not t.blocked_by_default:
        outcome, eligible, blocked = Outcome.NOT_NEEDED, False, False
        lines.append(f"{ports} {are} not blocked for this type: nothing to do")
    elif state_code == Code.CREATED_BEFORE_CUTOFF:
        outcome, eligible, blocked = Outcome.NOT_NEEDED, False, False
        lines.append(f"{ports} {are} not blocked: it was created on {sub.created}, before {t.created_from}")
    elif t.exemption == Exemption.REACTIVE:
        blocked, eligible = False, True
        if sub.flagged:
            outcome = Outcome.GRANTED
            sub = replace(sub, flagged=False)
            inv = inv.put(sub)
            how = profile.exemption_path.path or "by its owner"
            lines.append(f"{ports} {are} unblocked: the spam flag is lifted ({how})")
        else:
            outcome = Outcome.NOT_NEEDED
            lines.append(f"{ports} {are} not blocked: the platform has not flagged it for spam; nothing to lift")
    elif sub.exempt:
        outcome, eligible, blocked = Outcome.ALREADY_EXEMPT, True, False
        lines.append(f"{ports} {are} unblocked: the {acct} is exempt already (via {sub.exempt_via})")
    elif t.exemption in SELF_GRANTED and refusal:
        outcome, eligible, blocked = Outcome.REFUSED, False, True
        lines.append(f"{ports} {are} blocked and the {acct} does not qualify yet: {refusal}; "
                     f"{profile.exemption_path.path or profile.advice}")
    elif t.exemption in SELF_GRANTED:
        outcome, eligible, blocked = Outcome.GRANTED, True, False
        via = "diagnostic" if t.exemption == Exemption.SELF_SERVICE else "switch"
        sub = replace(sub, exempt=True, exempt_via=via)
        inv = inv.put(sub)
        lines.append(f"{ports} {'were' if are == 'are' else 'was'} blocked; the {acct} qualifies and is now exempt")
    elif t.exemption in OPERATOR_GRANTED:
        outcome, eligible, blocked = Outcome.SUPPORT_CASE, refusal is None, True
        path = profile.exemption_path.path or "a support case"
        lines.append(f"{ports} {are} blocked; this type can be exempted only through {path}; once approved: "
                     f"{hints.grant_exemption(name)}")
        if refusal:
            lines.append(f"the {acct} does not qualify yet: {refusal}")
    else:
        outcome, eligible, blocked = Outcome.REFUSED, False, True
        lines.append(f"{ports} {are} blocked and {accounts_of(profile, t.name)} are never exempted; {profile.advice}")
    inv, more = _reach_running(inv, profile, name, apply_now and outcome == Outcome.GRANTED)
    lines += more
    check_changes(inv, profile)
    return inv, Diagnosis(name, t.name, blocked, eligible, outcome, tuple(lines))


def run_diagnostic(inv: Inventory, profile: Profile, name: str, apply_now: bool = False,
                   today: datetime.date | None = None) -> Result:
    """diagnose() as an operation like the others: the new inventory and the lines a person is told."""
    inv, diagnosis = diagnose(inv, profile, name, apply_now, today)
    return inv, list(diagnosis.lines)


def accounts_of(profile: Profile, type_name: str) -> str:
    """'Pay-As-You-Go subscriptions', 'DigitalOcean accounts' (a type named 'DigitalOcean account' says it once)."""
    word = profile.account_word
    if type_name.lower().endswith(word):
        return type_name[:-len(word)] + profile.accounts_word
    return f"{type_name} {profile.accounts_word}"


def _operator_granted(inv: Inventory, profile: Profile, name: str) -> Subscription:
    """The account, if its type is exempted by a request the operator decides; else a UserError naming its path."""
    sub = inv.subscription(name)
    t = profile.types[sub.type]
    if t.exemption in OPERATOR_GRANTED:
        return sub
    if t.exemption == Exemption.SELF_SERVICE and not profile.exemption_path.path:
        hint = f"run the diagnostic: {hints.diagnose(name)}"
    elif t.exemption in SELF_GRANTED:
        hint = f"its owner does it: {exemption_how(profile, name, t.exemption)}"
    elif t.exemption == Exemption.REACTIVE:
        hint = f"it is blocked only while flagged for spam; its owner lifts that: {hints.request_exemption(name)}"
    elif t.exemption == Exemption.NOT_NEEDED:
        hint = f"{profile.ports_phrase} {profile.ports_are} not blocked for it"
    else:
        hint = f"{accounts_of(profile, t.name)} are never exempted; {profile.advice}"
    path = profile.exemption_path.path and "a request the operator grants"
    raise UserError(f"{profile.account_word} '{name}' ({t.name}) is not exempted through "
                    f"{path or 'a support case'}; {hint}")


def refuse_exemption(inv: Inventory, profile: Profile, name: str, case: str) -> Result:
    """The operator refuses a request the provider decides by hand: nothing changes; the owner hears the advice."""
    sub = _operator_granted(inv, profile, name)
    acct = profile.account_word
    if sub.exempt:
        return inv, [f"{acct} '{name}' is exempt already (via {sub.exempt_via}); to end that: "
                     f"{hints.revoke_exemption(name)}"]
    are = profile.ports_are
    return inv, [f"{acct} '{name}': request {case} refused; {profile.ports_phrase} {are} still blocked; "
                 f"{profile.advice}"]


def grant_exemption(inv: Inventory, profile: Profile, name: str, case: str, apply_now: bool = False,
                    today: datetime.date | None = None) -> Result:
    """An exemption the operator grants by hand after the provider's request (a support case or ticket, a request
    form, a service-limit request): refused where the type has no such path or the account does not qualify."""
    sub = _operator_granted(inv, profile, name)
    acct = profile.account_word
    if sub.exempt:
        return inv, [f"{acct} '{name}' is exempt already; nothing to do"]
    refusal = exemption_refusal(profile, sub, today)
    if refusal:
        raise UserError(f"{acct} '{name}' ({profile.types[sub.type].name}) does not qualify for an exemption "
                        f"yet: {refusal}; the provider's path: {profile.exemption_path.path}")
    inv = inv.put(replace(sub, exempt=True, exempt_via=f"case {case}"))
    lines = [f"{acct} '{name}' is now exempt (support case {case})"]
    inv, more = _reach_running(inv, profile, name, apply_now)
    lines += more
    return _done(inv, profile, lines)


def revoke_exemption(inv: Inventory, profile: Profile, name: str, apply_now: bool = False) -> Result:
    sub = inv.subscription(name)
    if not sub.exempt:
        raise UserError(f"subscription '{name}' has no exemption to revoke; see: {hints.list_exemptions()}")
    inv = inv.put(replace(sub, exempt=False, exempt_via=None))
    lines = [f"revoked the exemption of subscription '{name}'"]
    inv, more = _reach_running(inv, profile, name, apply_now)
    lines += more
    return _done(inv, profile, lines)


# ---------------------------------------------------------------- virtual networks


def add_vnet(inv: Inventory, profile: Profile, name: str, subscription: str, prefixes: list[str],
             interface: str | None = None) -> Result:
    check_name("virtual network", name)
    if name in inv.vnets:
        raise UserError(f"virtual network '{name}' exists already; remove it first: {hints.remove_vnet(name)}")
    inv.subscription(subscription)
    if not prefixes:
        raise UserError("a virtual network needs at least one prefix: --prefix 198.18.1.0/24")
    vnet = VNet(name, subscription, tuple(normalize_prefix(p) for p in prefixes),
                interface=normalize_interface(interface))
    on = f" on interface {vnet.interface}" if vnet.interface else ""
    return _done(inv.put(vnet), profile, [f"added virtual network '{name}' ({', '.join(vnet.prefixes)}){on}"])


def set_vnet_interface(inv: Inventory, profile: Profile, name: str, interface: str | None) -> Result:
    """Bind a VNet's resources to the gateway interface on its segment (None: unbind)."""
    vnet = inv.vnet(name)
    interface = normalize_interface(interface)
    if vnet.interface == interface:
        return inv, []
    said = f"bound to interface {interface}" if interface else "no longer bound to an interface"
    return _done(inv.put(replace(vnet, interface=interface)), profile, [f"virtual network '{name}': {said}"])


def remove_vnet(inv: Inventory, profile: Profile, name: str) -> Result:
    inv.vnet(name)
    users = sorted(r.name for r in itertools.islice(inv.resources_in(name), 5))
    if users:
        raise UserError(f"virtual network '{name}' still holds {', '.join(users)}; remove them first")
    return _done(inv.removed("vnets", name), profile, [f"removed virtual network '{name}'"])


def add_subnet(inv: Inventory, profile: Profile, vnet_name: str, name: str, prefix: str, delegated: bool) -> Result:
    vnet = inv.vnet(vnet_name)
    check_name("subnet", name)
    if vnet.subnet(name):
        raise UserError(f"virtual network '{vnet_name}' has a subnet '{name}' already")
    subnet = Subnet(name, normalize_prefix(prefix), delegated)
    vnet = replace(vnet, subnets=vnet.subnets + (subnet,))
    return _done(inv.put(vnet), profile,
                 [f"added {'delegated ' if delegated else ''}subnet '{name}' ({subnet.prefix}) to '{vnet_name}'"])


def remove_subnet(inv: Inventory, profile: Profile, vnet_name: str, name: str) -> Result:
    """Removing a subnet completes an add-and-remove cycle: the resources in the VNet's delegated subnets then
    pull their subscription's current policy (rule 6), also those not running, which start with it."""
    vnet = inv.vnet(vnet_name)
    if vnet.subnet(name) is None:
        raise UserError(f"virtual network '{vnet_name}' has no subnet '{name}'")
    members = list(inv.resources_in(vnet_name))
    users = sorted(r.name for r in members if r.subnet == name)
    if users:
        raise UserError(f"subnet '{name}' still holds {', '.join(users[:5])}; remove them first")
    inv = inv.put(replace(vnet, subnets=tuple(s for s in vnet.subnets if s.name != name)))
    lines = [f"removed subnet '{name}' from '{vnet_name}'"]
    refreshed = []
    for r in members:
        if inv.in_delegated_subnet(r):  # running or not: the policy is the subnet's
            fresh = pull(inv.subscriptions[r.subscription])
            if fresh != r.pulled:
                refreshed.append(replace(r, pulled=fresh))
    if refreshed:
        names = listed(sorted(r.name for r in refreshed), len(refreshed))
        lines.append(f"resources in delegated subnets picked up their subscription's policy: {names}")
    return _done(inv.put(*refreshed), profile, lines)


def refresh_delegated(inv: Inventory, profile: Profile, vnet_name: str) -> Result:
    """The spec's rule 6 in one step: add a temporary subnet to the VNet and remove it again."""
    vnet = inv.vnet(vnet_name)
    if not any(s.delegated for s in vnet.subnets):
        raise UserError(f"virtual network '{vnet_name}' has no delegated subnet; nothing to refresh")
    free = _free_subnet(vnet, inv)
    temp = "enforcer-temp"
    inv, lines = add_subnet(inv, profile, vnet_name, temp, free, delegated=False)
    inv, more = remove_subnet(inv, profile, vnet_name, temp)
    return inv, lines + more


def _free_subnet(vnet: VNet, inv: Inventory) -> str:
    """A small prefix inside the VNet that no subnet and no resource uses."""
    used = [ipaddress.ip_network(s.prefix) for s in vnet.subnets]
    used += [ipaddress.ip_network(a, strict=False) for r in inv.resources_in(vnet.name) for a in r.addresses]
    for p in vnet.prefixes:
        net = ipaddress.ip_network(p)
        size = net.max_prefixlen - (2 if net.version == 4 else 64)
        if net.prefixlen > size:
            continue
        for cand in net.subnets(new_prefix=size):
            if not any(cand.overlaps(u) for u in used):
                return str(cand)
    raise UserError(f"virtual network '{vnet.name}' has no free room for a temporary subnet; "
                    f"add a prefix or do the step by hand: {hints.add_subnet(vnet.name)}, then "
                    f"{hints.remove_subnet(vnet.name)}")


# ---------------------------------------------------------------- resources


def add_resource(inv: Inventory, profile: Profile, name: str, subscription: str, kind: str, addresses: list[str],
                 vnet: str | None = None, subnet: str | None = None, mac: str | None = None,
                 egress: str | None = None, state: State = State.RUNNING, interface: str | None = None) -> Result:
    """Create a resource. Created running, it pulls its subscription's current policy at once."""
    r = new_resource(inv, profile, name, subscription, kind, addresses, vnet, subnet, mac, egress, state, interface)
    inv = inv.put(r)
    check_changes(inv, profile)
    return inv, [added(inv, profile, r)]


def new_resource(inv: Inventory, profile: Profile, name: str, subscription: str, kind: str, addresses: list[str],
                 vnet: str | None = None, subnet: str | None = None, mac: str | None = None,
                 egress: str | None = None, state: State = State.RUNNING, interface: str | None = None) -> Resource:
    """The resource add_resource() creates, not yet in the inventory nor checked against it (a convergence
    adds many and checks each in O(1): see validate_resource)."""
    check_name("resource", name)
    if name in inv.resources:
        raise UserError(f"resource '{name}' exists already; remove it first: {hints.remove_resource(name)}")
    sub = inv.subscription(subscription)
    k = profile.kind_named(kind)
    if not addresses:
        raise UserError(f"resource '{name}' needs at least one address: --address 198.18.1.10")
    return Resource(name, subscription, k.id, tuple(normalize_address(a, allow_prefix=True) for a in addresses),
                    vnet, subnet, normalize_mac(mac), egress, state, pull(sub) if state == State.RUNNING else None,
                    normalize_interface(interface))


def added(inv: Inventory, profile: Profile, r: Resource) -> str:
    """What a person is told of a resource just created (it is in `inv`)."""
    allow, _, _ = assess(inv, profile, r)
    return (f"added {profile.kinds[r.kind].name} '{r.name}' ({r.state}); {profile.ports_phrase} to the internet: "
            f"{verdict_word(allow)}")


def update_resource(inv: Inventory, profile: Profile, name: str, **fields: Any) -> Result:
    """Change a resource's static attributes; its state and pulled policy stay."""
    r = inv.resource(name)
    if "kind" in fields:
        fields["kind"] = profile.kind_named(fields["kind"]).id
    if "addresses" in fields:
        fields["addresses"] = tuple(normalize_address(a, allow_prefix=True) for a in fields["addresses"])
    if "mac" in fields:
        fields["mac"] = normalize_mac(fields["mac"])
    if "interface" in fields:
        fields["interface"] = normalize_interface(fields["interface"])
    new = replace(r, **fields)
    if new == r:
        return inv, []
    changed = ", ".join(f"{k}" for k in fields if getattr(r, k) != getattr(new, k))
    return _done(inv.put(new), profile, [f"updated resource '{name}': {changed}"])


def start(inv: Inventory, profile: Profile, name: str) -> Result:
    """Start: from deallocated it pulls the current policy; from stopped (still allocated) it keeps what it had.
    Resources in a delegated subnet pick up a change only through the subnet step (rule 6)."""
    r = inv.resource(name)
    if r.state == State.RUNNING:
        return inv, [f"'{name}' is running already; to pick up a new policy: {hints.restart(name)}"]
    fresh = pull(inv.subscriptions[r.subscription])
    # only Azure's model keeps a policy across a plain stop; elsewhere any start pulls the current one
    kept_when_stopped = profile.change_applies == ChangeApplies.STOP_DEALLOCATE_START
    keep = r.pulled is not None and ((r.state == State.STOPPED and kept_when_stopped) or inv.in_delegated_subnet(r))
    new = replace(r, state=State.RUNNING, pulled=r.pulled if keep else fresh)
    note = "kept the policy it pulled before (it was only stopped)" if keep and r.state == State.STOPPED else \
        f"kept its policy (delegated subnet: see {hints.refresh_delegated()})" if keep else \
        "pulled its subscription's current policy"
    return _done(inv.put(new), profile, [f"started '{name}': {note}"])


def stop(inv: Inventory, profile: Profile, name: str) -> Result:
    r = inv.resource(name)
    if r.state != State.RUNNING:
        return inv, [f"'{name}' is {r.state} already"]
    return _done(inv.put(replace(r, state=State.STOPPED)), profile,
                 [f"stopped '{name}' (still allocated: it keeps its policy; deallocate to drop it)"])


def deallocate(inv: Inventory, profile: Profile, name: str) -> Result:
    r = inv.resource(name)
    if r.state == State.DEALLOCATED:
        return inv, [f"'{name}' is deallocated already"]
    return _done(inv.put(replace(r, state=State.DEALLOCATED)), profile,
                 [f"deallocated '{name}': it pulls the current policy at its next start"])


def restart(inv: Inventory, profile: Profile, name: str) -> Result:
    """Stop, deallocate and start: the platform's way to pick up a new network policy (rule 5)."""
    lines = []
    for step in (stop, deallocate, start):
        inv, more = step(inv, profile, name)
        lines += more
    r = inv.resources[name]
    allow, _, _ = assess(inv, profile, r)
    return inv, lines + [f"'{name}' {profile.ports_phrase} to the internet: {verdict_word(allow)}"]


def remove_resource(inv: Inventory, profile: Profile, name: str) -> Result:
    inv.resource(name)
    users = sorted(r.name for r in itertools.islice(inv.egressing_through(name), 5))
    if users:
        raise UserError(f"appliance '{name}' carries the traffic of {', '.join(users)}; "
                        "remove them or change their egress first")
    return _done(inv.removed("resources", name), profile, [f"removed '{name}'"])
