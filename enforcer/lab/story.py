"""The exemption story of a lab file, as a plan of steps: what a person types, and what the next real delivery
must do, both taken from the profile (its exemption kind, the account conditions, when a change applies) and
from what the lab file expects. Pure: the demo runs the plan in namespaces (demo.py); the tests read it.

One plan for every provider: the first blocked resource whose account has an exemption path walks it (refused
while the account's conditions do not hold, then granted), and then the profile's rule for when the change
reaches a running resource; the first blocked resource whose account is never exempted asks and is refused with
the provider's advice. A provider with no exemption path at all also shows its advice working: a relay port.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core import lifecycle
from ..core.inventory import Inventory, Resource, Subscription
from ..core.profile import (CHANGE_WORDS, OPERATOR_GRANTED, SELF_GRANTED, ChangeApplies, Exemption, Profile,
                            exemption_paths)
from .files import RELAY_PORT, SMTP_PORTS

CASE = "LAB-1"  # the support case, ticket or request the operator decides in the story


@dataclass(frozen=True)
class Try:
    """Real deliveries from `vm` to the internet host's IPv4 address on `ports`, each expected to end so."""
    text: str
    vm: str
    ports: tuple[int, ...]
    expected: str  # "delivered" or "timeout"


@dataclass(frozen=True)
class Run:
    """`enforcer WORDS`, done as `operation` on the lab's state; `refused`: the provider's conditions refuse it,
    so the command must fail with its one line."""
    words: str
    operation: Callable[..., tuple[Inventory, list[str]]]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    refused: bool = False


@dataclass(frozen=True)
class Create:
    """A new host on the running lab, registered as a resource of `subscription` (`vm add`)."""
    name: str
    subscription: str
    kind: str
    address: str


Step = Try | Run | Create


def summary(profile: Profile) -> str:
    """The profile's exemption path and when a change applies, in one line."""
    path, not_all = exemption_paths(profile)
    said = f"exemption: {path}{' (some types only)' if not_all else ''}" if path else \
        f"exemption: {profile.exemption_path.path or 'none'}"
    return f"{said}; a change applies {CHANGE_WORDS[profile.change_applies]}"


def open_port(profile: Profile) -> int:
    """A port the profile never restricts and the lab's SMTP server listens on: the relay its advice points to,
    and the port that proves a path is up (587 where it is open; DigitalOcean's 2525 where 587 is blocked)."""
    return next(p for p in (587, 465, RELAY_PORT) if p not in profile.restricted_ports)


def blocked_by_account(profile: Profile, inv: Inventory, expect: dict[str, dict[int, str]],
                       r: Resource) -> tuple[int, ...]:
    """The ports r's own account blocks (not its kind, not an appliance it leaves through)."""
    sub = inv.subscriptions[r.subscription]
    if not profile.kinds[r.kind].follows_subscription or r.egress or sub.exempt \
            or not profile.types[sub.type].blocked_by_default:
        return ()
    return tuple(p for p in SMTP_PORTS if expect.get(r.name, {}).get(p) == "blocked")


def cast(profile: Profile, inv: Inventory, expect: dict[str, dict[int, str]]) -> tuple[Resource | None,
                                                                                          Resource | None]:
    """The story's two resources: the first blocked by its account where the account has a way out, and the
    first whose account is never exempted (either None where the lab file has none)."""
    def first(kinds: frozenset[Exemption]) -> Resource | None:
        return next((r for r in inv.resources.values() if blocked_by_account(profile, inv, expect, r)
                     and profile.types[inv.subscriptions[r.subscription].type].exemption in kinds), None)
    return first(SELF_GRANTED | OPERATOR_GRANTED | {Exemption.REACTIVE}), first(frozenset({Exemption.NEVER}))


def plan(profile: Profile, inv: Inventory, expect: dict[str, dict[int, str]], today: datetime.date) -> list[Step]:
    """The story's steps for a lab file: its inventory (converged from the file) and what it expects of each
    resource per port."""
    resources = list(inv.resources.values())
    candidate, never = cast(profile, inv, expect)
    steps: list[Step] = []
    if candidate is not None:
        steps += _exemption(profile, candidate, inv.subscriptions[candidate.subscription],
                            blocked_by_account(profile, inv, expect, candidate), resources, today)
    if never is not None:
        steps += _refusal(profile, never, inv.subscriptions[never.subscription],
                          blocked_by_account(profile, inv, expect, never), relay=candidate is None)
    return steps


def _request(profile: Profile, account: str) -> tuple[str, str]:
    """(the words that take the owner's path, what the path is called): Azure's own name for it where the profile
    has Azure's self-service diagnostic, whatever the account's type."""
    if not profile.exemption_path.path and any(t.exemption == Exemption.SELF_SERVICE for t in profile.types.values()):
        return f"diagnose {account}", "diagnostic"
    return f"exemption request {account}", "request"


def _exemption(profile: Profile, r: Resource, sub: Subscription, ports: tuple[int, ...],
               resources: list[Resource], today: datetime.date) -> list[Step]:
    t = profile.types[sub.type]
    account = sub.name
    words, called = _request(profile, account)
    request = Run(words, lifecycle.run_diagnostic, (account,), {"today": today})
    grant = Run(f"exemption grant {account} --case {CASE}", lifecycle.grant_exemption, (account, CASE),
                {"today": today})
    by_operator = t.exemption in OPERATOR_GRANTED
    steps: list[Step] = [Try(f"{r.name} ({t.name}), before the {called}", r.name, ports, "timeout"), request]
    if t.exemption in SELF_GRANTED | OPERATOR_GRANTED and lifecycle.exemption_refusal(profile, sub, today):
        # the provider's conditions do not hold yet: refused; then they do, and the same path is taken again
        if by_operator:
            steps.append(dataclasses.replace(grant, refused=True))
        steps.append(Try(f"{r.name}, the {profile.account_word} not qualifying yet", r.name, ports, "timeout"))
        steps.append(_meet_conditions(profile, account, today))
        if not by_operator:
            steps.append(request)
    if by_operator:
        steps.append(grant)
    steps += _takes_effect(profile, r, ports)
    new = _new_resource(r, resources)
    if new is not None:
        steps += [new, Try(f"{new.name}, created after the exemption", new.name, ports, "delivered")]
    return steps


def _meet_conditions(profile: Profile, account: str, today: datetime.date) -> Run:
    """The account made to meet the profile's conditions (old enough, identity verified, first invoice paid)."""
    e = profile.exemption_path
    attributes: dict[str, Any] = {}
    flags = []
    if e.min_age_days:
        attributes["created"] = (today - datetime.timedelta(days=e.min_age_days)).isoformat()
        flags.append(f"--created {attributes['created']}")
    for requirement in e.requires:
        key = requirement.replace("-", "_")
        attributes[key] = True
        flags.append(f"--{requirement}")
    return Run(f"{profile.account_word} set {account} {' '.join(flags)}", lifecycle.set_attributes, (account,),
               attributes)


def _takes_effect(profile: Profile, r: Resource, ports: tuple[int, ...]) -> list[Step]:
    """When the granted exemption reaches the running resource: the profile's [change] applies."""
    if profile.change_applies == ChangeApplies.AT_ONCE:
        return [Try(f"{r.name}, still running: the change applies at once", r.name, ports, "delivered")]
    how = "stop, deallocate, start" if profile.change_applies == ChangeApplies.STOP_DEALLOCATE_START \
        else "a restart"
    return [Try(f"{r.name}, still running with its old policy", r.name, ports, "timeout"),
            Run(f"vm restart {r.name}", lifecycle.restart, (r.name,)),
            Try(f"{r.name} after {how}", r.name, ports, "delivered")]


def _new_resource(r: Resource, resources: list[Resource]) -> Create | None:
    """A resource of the same account created after the exemption, with a free IPv4 address of r's /24."""
    names = {x.name for x in resources}
    used = {ipaddress.ip_address(a.split("/")[0]) for x in resources for a in x.addresses}
    v4 = next((ipaddress.ip_address(a) for a in r.addresses if "/" not in a and ":" not in a), None)
    if v4 is None:
        return None
    net = ipaddress.ip_network(f"{v4}/24", strict=False)
    address = next((a for a in net.hosts() if int(a) - int(net.network_address) >= 99 and a not in used), None)
    name = f"{r.name.rsplit('-', 1)[0]}-new"
    if name in names:
        name = f"{r.name}-2"
    return None if address is None else Create(name, r.subscription, r.kind, str(address))


def _refusal(profile: Profile, r: Resource, sub: Subscription, ports: tuple[int, ...], relay: bool) -> list[Step]:
    """An account the provider never exempts asks anyway: refused with the advice, and still blocked."""
    t = profile.types[sub.type]
    words, called = _request(profile, sub.name)
    steps: list[Step] = [Run(words, lifecycle.run_diagnostic, (sub.name,))]
    if profile.change_applies == ChangeApplies.AT_ONCE:
        steps.append(Try(f"{r.name} ({t.name}): {called} refused", r.name, ports, "timeout"))
    else:  # a restart changes nothing either
        steps += [Run(f"vm restart {r.name}", lifecycle.restart, (r.name,)),
                  Try(f"{r.name} ({t.name}): {called} refused, restarted", r.name, ports, "timeout")]
    if relay:
        port = open_port(profile)
        steps.append(Try(f"{r.name} through a relay on port {port}, as the advice says", r.name, (port,),
                         "delivered"))
    return steps
