"""The inventory: subscriptions, virtual networks and resources, as immutable values.

Pure: no I/O. Operations (lifecycle.py) return a new Inventory; the store diffs old and new.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..errors import UserError
from . import hints
from .normalize import is_prefix
from .rows import TABLES, Changes, Counts, MemorySource, Rows, Source, group_of


class State(StrEnum):
    """A resource's power state, as the platform names it."""
    RUNNING = "running"
    STOPPED = "stopped"          # still allocated: it keeps the policy it pulled
    DEALLOCATED = "deallocated"  # the next start pulls the subscription's current policy


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

