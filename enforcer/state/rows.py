"""How an inventory's row is stored: its JSON document (to_doc, from_doc), and for a resource the indexed columns
and the address rows written beside it (write_resource, drop_addresses).

Apart from the store because the schema's migrations rewrite rows with it too and the store's source parses
them: one encoding, read and written in one place.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict
from typing import Any

from ..core.inventory import Pulled, Resource, Subnet, Subscription, VNet
from ..core.verdicts import Judged, pulled_text

# The columns a resource row repeats of its document (schema version 2), for the indexes.
RESOURCE_COLUMNS = ("subscription", "kind", "state", "vnet", "subnet", "egress", "pulled")

Entity = Subscription | VNet | Resource


# Fields added after the first schema (an account's attributes, and what a resource pulled of them): a stored
# document leaves them out while they hold their default, so that a state that does not use them is stored as
# before, and an older port25-enforcer still reads it. Reading fills them in from the dataclasses' defaults.
LATER_FIELDS: dict[str, object] = {"created": None, "verified": False, "first_invoice_paid": False, "flagged": False}


def _lean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not (k in LATER_FIELDS and v == LATER_FIELDS[k])}


def to_doc(entity: Entity) -> str:
    d = _lean(asdict(entity))
    if isinstance(d.get("pulled"), dict):
        d["pulled"] = _lean(d["pulled"])
    return json.dumps(d, separators=(",", ":"), sort_keys=True)


def write_resource(cx: sqlite3.Connection, r: Resource, doc: str, before: Resource | None) -> None:
    """A resource's row, its columns and its address rows."""
    columns = (r.subscription, r.kind, str(r.state), r.vnet, r.subnet, r.egress, pulled_text(r.pulled))
    # an upsert, not INSERT OR REPLACE: the row a REPLACE deletes fires no delete trigger (resource_counts)
    cx.execute(f"INSERT INTO resources (name, doc, {', '.join(RESOURCE_COLUMNS)}) "
               f"VALUES (?, ?{', ?' * len(RESOURCE_COLUMNS)}) ON CONFLICT (name) DO UPDATE SET doc = excluded.doc, "
               + ", ".join(f"{c} = excluded.{c}" for c in RESOURCE_COLUMNS), (r.name, doc, *columns))
    drop_addresses(cx, before, keep=set(r.addresses))
    judged = Judged.of(r).encode()
    bound = json.dumps([r.vnet, r.interface, r.mac]) if (r.vnet, r.interface, r.mac) != (None, None, None) else None
    cx.executemany("INSERT OR REPLACE INTO addresses (address, resource, prefix_len, judged, bound) "
                   "VALUES (?, ?, ?, ?, ?)", [(a, r.name, _prefix_len(a), judged, bound) for a in r.addresses])


def _prefix_len(address: str) -> int | None:
    return int(address.partition("/")[2]) if "/" in address else None


def drop_addresses(cx: sqlite3.Connection, before: Resource | None, keep: set[str]) -> None:
    # only where the row still names this resource: another one may have taken the address in the same change
    if before is not None:
        cx.executemany("DELETE FROM addresses WHERE address = ? AND resource = ?",
                       [(a, before.name) for a in before.addresses if a not in keep])


def from_doc(table: str, text: str) -> Entity:
    d = json.loads(text)
    if table == "vnets":
        return VNet(d["name"], d["subscription"], tuple(d["prefixes"]), tuple(Subnet(**s) for s in d["subnets"]),
                    d.get("interface"))
    if table == "resources":
        pulled = Pulled(**d.pop("pulled")) if d.get("pulled") else None
        d.pop("pulled", None)
        return Resource(**{**d, "addresses": tuple(d["addresses"]), "pulled": pulled})
    return Subscription(**d)

