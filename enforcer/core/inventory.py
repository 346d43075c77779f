"""The inventory: subscriptions, virtual networks and resources, as immutable values.

Pure: no I/O. Operations (lifecycle.py) return a new Inventory; the store diffs old and new.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..errors import UserError
from . import hints
from .profile import Profile
from .rows import TABLES, Changes, Counts, MemorySource, Rows, Source, group_of


class State(StrEnum):
    """A resource's power state, as the platform names it."""
    RUNNING = "running"
    STOPPED = "stopped"          # still allocated: it keeps the policy it pulled
    DEALLOCATED = "deallocated"  # the next start pulls the subscription's current policy

# matched whole (fullmatch): with match(), '$' also matches before a final newline and "ea-vm\n" passed
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


@dataclass(frozen=True, slots=True)
class Pulled:
    """The network policy a resource pulled when it last started: what of its subscription decided the verdict
    then (its type, exemption, and the attributes a profile's rules read: creation day, spam flag)."""
    type: str
    exempt: bool
    created: str | None = None
    flagged: bool = False


@dataclass(frozen=True, slots=True)
class Subscription:
    """An account: Azure's subscription, AWS's account, Google's project, Oracle's tenancy (the profile's word).
    Its attributes are data the lab sets; a profile's rules read them."""
    name: str
    type: str
    exempt: bool = False
    exempt_via: str | None = None  # "diagnostic", "support case ...", "inventory file"
    created: str | None = None     # the day the account was created, YYYY-MM-DD
    verified: bool = False         # its owner's identity is verified (KYC)
    first_invoice_paid: bool = False
    flagged: bool = False          # the platform's anti-spam system flagged it


# The account attributes beyond type and exemption, as an inventory file and the CLI name them.
ATTRIBUTES = ("created", "verified", "first_invoice_paid", "flagged")


@dataclass(frozen=True, slots=True)
class Subnet:
    name: str
    prefix: str
    delegated: bool = False


@dataclass(frozen=True, slots=True)
class VNet:
    name: str
    subscription: str
    prefixes: tuple[str, ...]
    subnets: tuple[Subnet, ...] = ()
    interface: str | None = None  # the gateway's interface on this VNet's segment: its resources are bound to it

    def subnet(self, name: str) -> Subnet | None:
        return next((s for s in self.subnets if s.name == name), None)


@dataclass(frozen=True, slots=True)
class Resource:
    name: str
    subscription: str
    kind: str
    addresses: tuple[str, ...]  # host addresses ("198.18.1.10", "2001:db8::10") or prefixes for scale sets
    vnet: str | None = None
    subnet: str | None = None
    mac: str | None = None
    egress: str | None = None  # the appliance its internet traffic leaves through (rule 7)
    state: State = State.RUNNING
    pulled: Pulled | None = None
    interface: str | None = None  # the gateway interface its packets arrive on (else its VNet's), if bound


class Inventory:
    """Subscriptions, VNets and resources, read from a Source (dicts unless a store hands one), with the changes
    operations made on top. Immutable to its users: an operation returns a new Inventory (put, removed, with_),
    sharing the source and copying only the changes."""

    __slots__ = ("profile", "internal_prefixes", "source", "changes", "subscriptions", "vnets", "resources")

    def __init__(self, profile: str = "azure", subscriptions: dict[str, Subscription] | None = None,
                 vnets: dict[str, VNet] | None = None, resources: dict[str, Resource] | None = None,
                 internal_prefixes: tuple[str, ...] = (), *, source: Source | None = None,
                 changes: Changes | None = None):
        if source is None:
            source = MemorySource(dict(subscriptions or {}), dict(vnets or {}), dict(resources or {}))
        elif subscriptions or vnets or resources:
            raise TypeError("give rows or a source, not both")
        self.profile = profile
        self.internal_prefixes = tuple(internal_prefixes)  # private ranges the operator declares: never judged
        self.source = source
        self.changes = changes if changes is not None else Changes()
        tables = self.changes.tables
        self.subscriptions: Mapping[str, Subscription] = Rows(source, "subscriptions", tables["subscriptions"])
        self.vnets: Mapping[str, VNet] = Rows(source, "vnets", tables["vnets"])
        self.resources: Mapping[str, Resource] = Rows(source, "resources", tables["resources"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Inventory) and all(
            getattr(self, k) == getattr(other, k) for k in ("profile", "internal_prefixes", *TABLES))

    def __repr__(self) -> str:
        return f"Inventory({self.profile!r}, {len(self.subscriptions)} subscriptions, {len(self.vnets)} VNets, " \
               f"{len(self.resources)} resources)"

    # ------------------------------------------------------------ what operations ask

    def subscription(self, name: str) -> Subscription:
        sub = self.subscriptions.get(name)
        if sub is None:
            raise UserError(f"no subscription {name!r}; list them with: {hints.list_subscriptions()}")
        return sub

    def vnet(self, name: str) -> VNet:
        vnet = self.vnets.get(name)
        if vnet is None:
            raise UserError(f"no virtual network {name!r}; list them with: {hints.list_vnets()}")
        return vnet

    def resource(self, name: str) -> Resource:
        res = self.resources.get(name)
        if res is None:
            raise UserError(f"no resource {name!r}; list them with: {hints.list_resources()}")
        return res

    def where(self, table: str, column: str, value: str) -> Iterator[Any]:
        """The rows of `table` whose `column` (an indexed one: rows.INDEXED) equals `value`."""
        changed = self.changes.tables[table]
        for row in self.source.where(table, column, value):
            if row.name not in changed:
                yield row
        for row in changed.values():
            if row is not None and getattr(row, column) == value:
                yield row

    def resources_of(self, subscription: str) -> Iterator[Resource]:
        return self.where("resources", "subscription", subscription)

    def resources_in(self, vnet: str) -> Iterator[Resource]:
        return self.where("resources", "vnet", vnet)

    def egressing_through(self, appliance: str) -> Iterator[Resource]:
        return self.where("resources", "egress", appliance)

    def vnets_of(self, subscription: str) -> Iterator[VNet]:
        return self.where("vnets", "subscription", subscription)

    def owner_of(self, address: str) -> str | None:
        """The resource holding `address` (a host address or a prefix, as normalised), if any."""
        holder = self.changes.holders.get(address)
        if holder is not None:
            return holder
        name = self.source.owner(address)
        return None if name is None or name in self.changes.tables["resources"] else name

    def prefixed(self) -> Iterator[Resource]:
        """Resources registered with a prefix among their addresses (scale sets)."""
        changed = self.changes.tables["resources"]
        for r in self.source.prefixed():
            if r.name not in changed:
                yield r
        for r in changed.values():
            if r is not None and any(is_prefix(a) for a in r.addresses):
                yield r

    def running(self, by: tuple[str, ...], subscription: str | None = None) -> Counts:
        """Running resources (of one subscription, or all), counted by the values of `by` (rows.COUNTED_BY)."""
        counts = dict(self.source.running(by, subscription))
        for name, r in self.changes.tables["resources"].items():
            for row, step in ((self.source.row("resources", name), -1), (r, 1)):
                if row is not None and row.state == State.RUNNING and subscription in (None, row.subscription):
                    key = group_of(row, by)
                    counts[key] = counts.get(key, 0) + step
        return {key: n for key, n in counts.items() if n > 0}

    def running_names(self, subscription: str, where: dict[str, Any], limit: int | None) -> list[str]:
        """Up to `limit` names (None: all), in name order, of the subscription's running resources whose columns
        hold `where`."""
        changed = self.changes.tables["resources"]
        asked = None if limit is None else limit + len(changed)  # what the changes hide, the source makes up for
        names = [n for n in self.source.running_names(subscription, where, asked) if n not in changed]
        key = tuple(where.values())
        names += [r.name for r in changed.values() if r is not None and r.subscription == subscription
                  and r.state == State.RUNNING and group_of(r, tuple(where)) == key]
        return sorted(names)[:limit]

    def in_delegated_subnet(self, r: Resource) -> bool:
        if r.vnet is None or r.subnet is None or r.vnet not in self.vnets:
            return False
        subnet = self.vnets[r.vnet].subnet(r.subnet)
        return subnet is not None and subnet.delegated

    # ------------------------------------------------------------ new inventories

    def with_(self, **changes: Any) -> Inventory:
        """The same rows with another profile or internal prefixes."""
        unknown = set(changes) - {"profile", "internal_prefixes"}
        if unknown:
            raise TypeError(f"with_() changes the profile and internal_prefixes, not {sorted(unknown)}: use put()")
        values = {"profile": self.profile, "internal_prefixes": self.internal_prefixes, **changes}
        return Inventory(values["profile"], internal_prefixes=values["internal_prefixes"], source=self.source,
                         changes=self.changes)

    def put(self, *rows: Subscription | VNet | Resource) -> Inventory:
        """These rows added or replaced (each to its table by its type)."""
        changes = self.changes.copy()
        for row in rows:
            changes.set(table_of(row), row.name, row, self.source)
        return Inventory(self.profile, internal_prefixes=self.internal_prefixes, source=self.source, changes=changes)

    def removed(self, table: str, name: str) -> Inventory:
        changes = self.changes.copy()
        changes.set(table, name, None, self.source)
        return Inventory(self.profile, internal_prefixes=self.internal_prefixes, source=self.source, changes=changes)

    def grown(self) -> Inventory:
        """An inventory whose changes are its own, for a caller that adds many rows in place (grow())."""
        return Inventory(self.profile, internal_prefixes=self.internal_prefixes, source=self.source,
                         changes=self.changes.copy())

    def grow(self, row: Subscription | VNet | Resource) -> None:
        """In place, on an inventory from grown() that nobody else holds: a convergence adding N rows in O(N)."""
        self.changes.set(table_of(row), row.name, row, self.source)


def table_of(row: Subscription | VNet | Resource) -> str:
    return {Subscription: "subscriptions", VNet: "vnets", Resource: "resources"}[type(row)]


def pull(sub: Subscription) -> Pulled:
    return Pulled(sub.type, sub.exempt, sub.created, sub.flagged)


def normalize_day(value: object, what: str = "created") -> str:
    """A day as YYYY-MM-DD, from a date (YAML reads 2021-06-24 as one) or such a string."""
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, str) and len(value.strip()) == 10:  # fromisoformat() also takes 20210624
        try:
            return datetime.date.fromisoformat(value.strip()).isoformat()
        except ValueError:
            pass
    shown = repr(value) if isinstance(value, (str, int, float, bool)) or value is None else type(value).__name__
    raise UserError(f"{what}: {shown[:60]} is not a day; write it as YYYY-MM-DD, e.g. 2021-06-24")


# ---------------------------------------------------------------- normalising input


def check_name(what: str, name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UserError(f"invalid {what} name {name!r}; use 1-63 letters, digits, '.', '_' or '-', "
                        "starting with a letter or digit")
    return name


Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges the gateway never routes: no VM sends from them, no network of VMs holds them, no destination in them is
# reached through us. The most specific first, as the first match is the one named.
UNUSABLE: tuple[tuple[Network, str], ...] = tuple((ipaddress.ip_network(p), what) for p, what in (
    ("0.0.0.0/32", "the unspecified address"),
    ("0.0.0.0/8", "'this network'"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "the broadcast address"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "the unspecified address"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
))
_EXAMPLE = {4: ("198.18.1.10", "198.18.0.0/24"), 6: ("2001:db8::10", "2001:db8:1::/64")}


def _parse_network(text: str, bad: str) -> Network:
    """The network `text` names; a zone index (fe80::1%eth0) is refused: Python accepts it, nothing here can
    use it, and the packed address the packet path looks up has no room for it."""
    text = str(text).strip()
    if "%" in text:
        raise UserError(f"{text!r} carries a zone index (the part from '%'), which has no place here; "
                        "write the address without it")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise UserError(bad) from None


def _check_usable(text: str, net: Network, host: bool) -> None:
    """Refuse an address in, or a prefix overlapping, a range the gateway never routes."""
    block, what = next(((b, w) for b, w in UNUSABLE if b.version == net.version and b.overlaps(net)),
                       (None, ""))
    if block is None:
        return
    if what == "IPv4-mapped":
        v4 = f" ({ipaddress.IPv6Address(int(net.network_address)).ipv4_mapped})" if host else ""
        raise UserError(f"{text!r} is an IPv4-mapped IPv6 {'address' if host else 'prefix'} ({block}): the kernel "
                        f"sees such traffic as IPv4; write it as IPv4{v4}")
    example = _EXAMPLE[net.version][0 if host else 1]
    if not host:
        raise UserError(f"prefix {text!r} overlaps {block} ({what}), which the gateway never routes; "
                        f"give a unicast range such as {example}")
    article = "an" if what.lstrip("'")[0].lower() in "aeiou" else "a"
    phrase = what if what.startswith("the ") else f"{article} {what} address"
    raise UserError(f"{text!r} is {phrase} ({block}), which the gateway never routes; "
                    f"give a unicast address such as {example}")


def normalize_address(text: str, allow_prefix: bool) -> str:
    """'198.18.1.10' or '2001:DB8::0010' -> canonical host; '198.18.2.0/28' -> canonical prefix."""
    net = _parse_network(text, f"invalid address {text!r}; write an IPv4 or IPv6 address such as 198.18.1.10 "
                         "or 2001:db8::10" + (", or a prefix such as 198.18.2.0/28" if allow_prefix else ""))
    host = net.prefixlen == net.max_prefixlen
    if not host and not allow_prefix:
        raise UserError(f"{text!r} is a prefix; give a single address")
    _check_usable(text, net, host)
    return str(net.network_address) if host else str(net)


def normalize_prefix(text: str) -> str:
    net = _parse_network(text, f"invalid prefix {text!r}; write a network such as 198.18.0.0/24 or "
                         "2001:db8:1::/64 with the host bits zero")
    _check_usable(text, net, host=False)
    return str(net)


def normalize_mac(text: str | None) -> str | None:
    if text is None:
        return None
    mac = str(text).strip().lower().replace("-", ":")
    if not MAC_RE.fullmatch(mac):
        raise UserError(f"invalid MAC address {text!r}; write it as 52:54:00:12:34:56")
    return mac


def is_prefix(address: str) -> bool:
    return "/" in address


# ---------------------------------------------------------------- consistency


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
