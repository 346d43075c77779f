"""Consistency: whether an inventory holds together under its profile (what a row names exists, an address has
one owner, an egress is an appliance), checked whole (validate), for what an operation changed (check_changes), or
for one stored row before anything reads it (check_row).

Apart from the model because these rules read the profile, and every operation ends with them: one place to read
what a valid inventory is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import UserError
from . import hints
from .inventory import Inventory, Resource, State, Subscription, VNet
from .profile import Profile


def _networks(prefixes: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(p) for p in prefixes]


def validate(inv: Inventory, profile: Profile) -> None:
    """Raise a UserError naming the first inconsistency; a valid inventory passes silently. Reads every row: for
    an inventory held whole (a compile, a test); an operation checks what it changed (check_changes)."""
    if inv.profile != profile.id:
        raise UserError(f"the inventory uses profile '{inv.profile}' but '{profile.id}' was loaded")
    for sub in inv.subscriptions.values():
        validate_subscription(profile, sub)
    for vnet in inv.vnets.values():
        _validate_vnet(inv, vnet)
    claimed: dict[str, str] = {}
    for r in inv.resources.values():
        validate_resource(inv, profile, r, claimed)
    for p in inv.internal_prefixes:
        ipaddress.ip_network(p)


def check_changes(inv: Inventory, profile: Profile) -> None:
    """validate() for what the inventory changed over its source, and for the rows that depend on a changed one (a
    removed subscription's or VNet's rows, an appliance's dependents, a VNet's resources when a subnet went): the
    check every operation ends with, in O(what changed). The source is consistent: every change that built it
    passed this check."""
    if inv.profile != profile.id:
        raise UserError(f"the inventory uses profile '{inv.profile}' but '{profile.id}' was loaded")
    tables = inv.changes.tables
    for name, sub in tables["subscriptions"].items():
        if sub is not None:
            validate_subscription(profile, sub)
        else:  # what still names it says so
            for r in inv.resources_of(name):
                _validate_resource(inv, profile, r)
            for vnet in inv.vnets_of(name):
                _validate_vnet(inv, vnet)
    for name, changed_vnet in tables["vnets"].items():
        _check_vnet_change(inv, name, changed_vnet)
    claimed: dict[str, str] = {}
    for name, changed in tables["resources"].items():
        _check_resource_change(inv, profile, name, changed, claimed)
    for p in inv.internal_prefixes:
        ipaddress.ip_network(p)


def _check_vnet_change(inv: Inventory, name: str, vnet: VNet | None) -> None:
    if vnet is not None:
        _validate_vnet(inv, vnet)
    before: VNet | None = inv.source.row("vnets", name)
    if before is not None and (vnet is None or {s.name for s in before.subnets} - {s.name for s in vnet.subnets}):
        for r in inv.resources_in(name):  # a subnet went, or the VNet: its resources say whether they stood there
            _validate_placement(inv, r)


def _check_resource_change(inv: Inventory, profile: Profile, name: str, r: Resource | None,
                           claimed: dict[str, str]) -> None:
    if r is not None:
        validate_resource(inv, profile, r, claimed, elsewhere=lambda a: _unchanged_owner(inv, a))
    before: Resource | None = inv.source.row("resources", name)
    if before is not None and (r is None or (r.kind, r.egress) != (before.kind, before.egress)):
        for dependent in inv.egressing_through(name):  # is what they egress through still an appliance?
            _validate_egress(inv, profile, dependent)


def _unchanged_owner(inv: Inventory, address: str) -> str | None:
    """The resource of the source that holds `address`, unless it changed (then its new row speaks for it)."""
    name = inv.source.owner(address)
    return None if name is None or name in inv.changes.tables["resources"] else name


def validate_subscription(profile: Profile, sub: Subscription) -> None:
    if sub.type not in profile.types:
        raise UserError(f"subscription '{sub.name}' has type '{sub.type}', which profile '{profile.id}' "
                        f"({profile.source}) does not have; put the type back in the profile")
    cutoff = profile.types[sub.type].created_from
    if cutoff is not None and sub.created is None:
        raise UserError(f"{profile.account_word} '{sub.name}' has no creation day, which profile '{profile.id}' "
                        f"needs: its {profile.types[sub.type].name} accounts created on or after {cutoff} are "
                        "blocked; give it one: created: YYYY-MM-DD (or --created)")


def _validate_vnet(inv: Inventory, vnet: VNet) -> None:
    if vnet.subscription not in inv.subscriptions:
        raise UserError(f"virtual network '{vnet.name}' names subscription '{vnet.subscription}', which does "
                        "not exist; add the subscription first")
    nets = _networks(vnet.prefixes)
    for s in vnet.subnets:
        sn = ipaddress.ip_network(s.prefix)
        if not any(sn.version == n.version and sn.subnet_of(n) for n in nets):  # type: ignore[arg-type]
            raise UserError(f"subnet '{s.name}' ({s.prefix}) lies outside the prefixes of virtual network "
                            f"'{vnet.name}' ({', '.join(vnet.prefixes)}); pick a prefix inside them")


def validate_resource(inv: Inventory, profile: Profile, r: Resource, claimed: dict[str, str],
                      elsewhere: Callable[[str], str | None] = lambda address: None) -> None:
    """What validate() checks of one resource, in O(its own size): against the inventory's other tables by name,
    and its addresses against `claimed` (address -> resource: those checked before it, which it extends) and
    `elsewhere` (who else holds an address: the rows not being checked)."""
    _validate_resource(inv, profile, r)
    _validate_placement(inv, r)
    _validate_egress(inv, profile, r)
    for a in r.addresses:
        other = claimed.get(a) or elsewhere(a)
        if other is not None and other != r.name:
            raise UserError(f"address {a} of '{r.name}' already belongs to '{other}'; "
                            "give every resource its own addresses")
        claimed[a] = r.name


def check_row(profile: Profile, table: str, row: Any) -> None:
    """What a stored row needs of the profile before anything reads it (the profile may have been edited since
    the row was written): an account's type, a resource's kind, state and pulled policy."""
    if table == "subscriptions":
        validate_subscription(profile, row)
    elif table == "resources":
        _validate_resource_alone(profile, row)


def _validate_resource(inv: Inventory, profile: Profile, r: Resource) -> None:
    if r.subscription not in inv.subscriptions:
        raise UserError(f"resource '{r.name}' names subscription '{r.subscription}', which does not exist; "
                        "add the subscription first")
    _validate_resource_alone(profile, r)


def _validate_resource_alone(profile: Profile, r: Resource) -> None:
    if r.kind not in profile.kinds:
        raise UserError(f"resource '{r.name}' has kind '{r.kind}', unknown to profile '{profile.id}'; "
                        f"use one of: {', '.join(profile.kinds)}")
    if r.state not in tuple(State):
        raise UserError(f"resource '{r.name}' has state '{r.state}'; use one of: {', '.join(State)}")
    if r.pulled is not None and r.pulled.type not in profile.types:
        raise UserError(f"resource '{r.name}' pulled its policy under type '{r.pulled.type}', which profile "
                        f"'{profile.id}' ({profile.source}) no longer has; put the type back in the profile")
    if r.state == State.RUNNING and r.pulled is None:
        raise UserError(f"resource '{r.name}' is running but never pulled a policy; start it again")


def _validate_placement(inv: Inventory, r: Resource) -> None:
    if r.vnet is None:
        if r.subnet is not None:
            raise UserError(f"resource '{r.name}' names a subnet but no virtual network; give --vnet too")
        return
    vnet = inv.vnets.get(r.vnet)
    if vnet is None:
        raise UserError(f"resource '{r.name}' names virtual network '{r.vnet}', which does not exist; "
                        f"add it first: {hints.add_vnet()}")
    if r.subnet is not None and vnet.subnet(r.subnet) is None:
        raise UserError(f"resource '{r.name}' names subnet '{r.subnet}', which virtual network "
                        f"'{r.vnet}' does not have; add it: {hints.add_subnet(r.vnet, r.subnet)}")


def _validate_egress(inv: Inventory, profile: Profile, r: Resource) -> None:
    if r.egress is None:
        return
    app = inv.resources.get(r.egress)
    if app is None or not profile.kinds[app.kind].appliance:
        raise UserError(f"resource '{r.name}' egresses through '{r.egress}', which is not an appliance "
                        f"(kinds: {', '.join(k for k, v in profile.kinds.items() if v.appliance)}); "
                        "register the appliance first")
    if app.egress is not None:
        raise UserError(f"appliance '{app.name}' itself egresses through '{app.egress}'; "
                        "an appliance must send to the internet directly")

