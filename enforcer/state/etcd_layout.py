"""The key layout of a state in etcd: where each row, index, address, count, setting and audit entry lives
under /PREFIX/, what each value holds, the keys of a whole state (state_keys) and the keys a change writes
(planned). docs/architecture.md, "The state in etcd"; the store that reads and writes them: etcd_store.py.

Keys under PREFIX: meta/{format,profile,internal_prefixes,changed},
{subscriptions,vnets,resources}/NAME (the row's JSON document, as state/rows.py encodes it), addresses/ADDRESS
(its owner and what the table needs of it: the uniqueness of an address is one key), index/TABLE.COLUMN/VALUE/NAME
and index/prefixed/NAME (what an operation asks by an indexed column), counts/SUB/GROUP (how many resources a
group of alike ones holds, and its first names: SQLite's resource_counts; GROUP is the JSON array of the group's
other values, state first) and index/group/SUB/GROUP/NAME (the names in it), audit/ID (one key per change: its rows).
meta/format makes the state exist: at a revision without it there is no row (a copy writes it last: etcd_copy.py,
whose claim on a prefix without a state is meta/copying).
Beside the state, gateways/NAME (what a gateway holds, under its lease: there while it lives) and
gateways/NAME/seen (the same, without a lease: what it last said, kept until `enforcer gateway forget NAME`;
etcd_gateways.py reads them).
"""

from __future__ import annotations

import heapq
import json
import os
import random
import socket
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

from ..core.inventory import Inventory, Resource
from ..core.rows import INDEXED, TABLES
from ..core.verdicts import Judged, pulled_of, pulled_text
from ..errors import UserError
from .rows import Entity, to_doc
from .schema import GROUPED_BY


FORMAT = "2"       # the key layout's version, in meta/format (1: address values in JSON)


def end_of(prefix: bytes) -> bytes:
    """The end of the range of keys that begin with `prefix` (which ends in '/')."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


class Keys:
    """The key layout under one prefix (pure)."""

    def __init__(self, prefix: str):
        self.root = f"/{prefix}/"

    def _k(self, text: str) -> bytes:
        return (self.root + text).encode()

    def meta(self, name: str) -> bytes:
        return self._k(f"meta/{name}")

    def row(self, table: str, name: str) -> bytes:
        return self._k(f"{table}/{name}")

    def table(self, table: str) -> bytes:
        return self._k(f"{table}/")

    def address(self, address: str) -> bytes:
        return self._k(f"addresses/{address}")

    def index(self, table: str, column: str, value: str) -> bytes:
        return self._k(f"index/{table}.{column}/{value}/")

    def prefixed(self) -> bytes:
        return self._k("index/prefixed/")

    def counts(self, subscription: str | None = None) -> bytes:
        """counts/ (every group), or counts/SUB/ (one subscription's groups: one range)."""
        return self._k("counts/" if subscription is None else f"counts/{subscription}/")

    def count(self, subscription: str, group: str) -> bytes:
        return self.counts(subscription) + group.encode()

    def group(self, subscription: str, group: str) -> bytes:
        """The range of the names in a group (a group's JSON is an array: no group's key is a prefix of another's)."""
        return self._k(f"index/group/{subscription}/{group}/")

    def audit(self) -> bytes:
        return self._k("audit/")

    def new_audit(self) -> bytes:
        """A change's audit key, unique to it (a transaction told lost is looked for by it): TIME-PID-RANDOM, TIME
        its writer's time.time_ns() just before the commit."""
        return self.audit() + f"{time.time_ns():020d}-{os.getpid()}-{random.getrandbits(32):08x}".encode()

    def gateways(self) -> bytes:
        return self._k("gateways/")

    def gateway(self, name: str) -> bytes:
        """What a gateway holds, under its lease."""
        return self._k(f"gateways/{name}")

    def gateway_seen(self, name: str) -> bytes:
        """The same without a lease: outlives the gateway (names hold no '/', so no gateway is called NAME/seen)."""
        return self._k(f"gateways/{name}{SEEN}")

    def everything(self) -> bytes:
        return self.root.encode()

    def name_of(self, key: bytes, under: bytes) -> str:
        return key[len(under):].decode()


SEEN = "/seen"


def other_layout(found: str) -> str:
    """What to do with a state another version wrote."""
    if found.isdigit() and int(found) < int(FORMAT):
        return (f"was written by an earlier port25-enforcer (key layout {found}, this one reads {FORMAT}): copy it "
                "to SQLite with that version (enforcer state copy), then into etcd with this one")
    return f"was written by a later port25-enforcer (key layout {found}, this one reads {FORMAT}): upgrade"


def audit_entry(command: str, rows: list[Any]) -> bytes:
    """An audit key's value: when, who, which command, the rows it changed (kind, name, before, after)."""
    entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "uid": os.getuid(), "command": command, "rows": rows}
    return json.dumps(entry, separators=(",", ":")).encode()


CLAIM = "copying"  # meta/copying: a copy under way into a prefix that holds no state yet (etcd_copy.py)


def claimed_by(value: bytes) -> str:
    """Who holds a copy's claim, as its value tells it."""
    doc = json_record(value)
    return f"pid {doc.get('pid', '?')} on {doc.get('host', '?')} since {doc.get('at', '?')}"


def claim_gone(value: bytes) -> bool:
    """A copy's claim whose process ran on this host and is gone (killed: its lease outlives it a while)."""
    doc = json_record(value)
    if doc.get("host") != socket.gethostname() or not isinstance(doc.get("pid"), int):
        return False
    try:
        os.kill(doc["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def json_record(value: bytes | None) -> dict[str, Any]:
    try:
        doc = json.loads(value) if value else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def row_keys(keys: Keys, table: str, row: Entity) -> dict[bytes, bytes]:
    """What a row puts beside its document: its index keys, and for a resource its address keys (the address row
    as SQLite's addresses table holds it: owner, prefix length, the Judged key, the binding)."""
    out: dict[bytes, bytes] = {}
    for t, column in sorted(INDEXED):
        value = getattr(row, column) if t == table else None
        if value is not None:
            out[keys.index(t, column, value) + row.name.encode()] = b""
    if isinstance(row, Resource):
        judged = Judged.of(row).encode()
        bound = None if (row.vnet, row.interface, row.mac) == (None, None, None) else \
            json.dumps([row.vnet, row.interface, row.mac])
        for a in row.addresses:
            prefix_len = int(a.partition("/")[2]) if "/" in a else None
            out[keys.address(a)] = address_value(row.name, prefix_len, judged, bound)
        if any("/" in a for a in row.addresses):
            out[keys.prefixed() + row.name.encode()] = b""
        out[keys.group(row.subscription, group_of(row)) + row.name.encode()] = b""
    return out


def address_value(name: str, prefix_len: int | None, judged: str, bound: str | None) -> bytes:
    """An address key's value: NAME NUL PREFIX-LENGTH NUL BINDING NUL JUDGED (an absent one empty). Not JSON: a
    gateway's start splits a million of them (json.loads of the nested form was 3 s of it); names, numbers and JSON
    text hold no NUL. `judged` last: the bytes the table groups alike resources by."""
    return b"\0".join((name.encode(), b"" if prefix_len is None else str(prefix_len).encode(),
                        (bound or "").encode(), judged.encode()))


def parse_address_value(value: bytes) -> tuple[str, int | None, str, str | None]:
    """(resource, prefix length, judged, binding) of an address key's value; raises ValueError for another form."""
    name, prefix_len, bound, judged = value.split(b"\0", 3)
    return name.decode(), int(prefix_len) if prefix_len else None, judged.decode(), bound.decode() or None


# A group of resources alike (schema.GROUPED_BY: what SQLite's resource_counts counts), under its subscription: the
# JSON array of its other values, pulled as pulled_text (as SQLite's column holds it). The state comes first, so
# that a subscription's running groups are one small range: counts/SUB/["running",...
IN_GROUP = tuple(c for c in GROUPED_BY if c != "subscription")


RUNNING_GROUPS = b'["running",'


def group_of(r: Resource) -> str:
    """The JSON of r's group (its values but the subscription), as its count key and its group's names hold it."""
    text = {"state": str(r.state), "pulled": pulled_text(r.pulled)}
    return json.dumps([text[c] if c in text else getattr(r, c) for c in IN_GROUP], separators=(",", ":"))


def group_values(subscription: str, group: str) -> dict[str, Any]:
    """A group's values by column (COUNTED_BY and state; pulled decoded), from its key's JSON. Raises ValueError,
    TypeError or KeyError for one this version did not write."""
    values = dict(zip(IN_GROUP, json.loads(group), strict=True))
    return {**values, "subscription": subscription, "pulled": pulled_of(values["pulled"])}


# The names a count key keeps of its group, the first by name (its head): a listing of up to as many as it holds
# reads no range. A change keeps it at HEAD names at most and HEAD_LOW at least (or all of the group's): a name out
# of the head leaves the rest of it the group's first names still, so it is read again only once it falls short.
HEAD, HEAD_LOW = 50, 25


Group = tuple[str, str]  # (subscription, the JSON of the group's other values)


def count_value(n: int, head: Iterable[str]) -> bytes:
    """A count key's value: how many resources the group holds, and the first HEAD of their names."""
    return json.dumps([n, list(head)], separators=(",", ":")).encode()


def count_of(value: bytes | None, key: bytes) -> tuple[int, list[str]]:
    """(count, head) of a count key's value; (0, []) for a key absent."""
    if value is None:
        return 0, []
    try:
        n, head = json.loads(value)
        if isinstance(n, int) and isinstance(head, list) and all(isinstance(name, str) for name in head):
            return n, head
    except (ValueError, TypeError):
        pass
    raise UserError(f"the count key {key.decode(errors='replace')} holds {value[:40]!r}, not [count, [names]]; the "
                    "state is damaged")


def count_keys(keys: Keys, inv: Inventory) -> dict[bytes, bytes]:
    """The count keys of a whole state: how many resources each group holds, and its first names (what a whole
    state's writer puts beside row_keys(); a change keeps them in planned())."""
    return {keys.count(s, g): count_value(len(names), heapq.nsmallest(HEAD, names))
            for (s, g), names in sorted(members_of(inv).items())}


def members_of(inv: Inventory) -> dict[Group, list[str]]:
    """The names of each group's resources."""
    members: dict[Group, list[str]] = {}
    for r in inv.resources.values():
        members.setdefault((r.subscription, group_of(r)), []).append(r.name)
    return members


def _grouped(row: Entity | None) -> Group | None:
    return (row.subscription, group_of(row)) if isinstance(row, Resource) else None


def counted(keys: Keys, leaving: Mapping[Group, list[str]], joining: Mapping[Group, list[str]],
            read: Callable[[bytes], bytes | None],
            first: Callable[[str, str, int], list[str]]) -> dict[bytes, bytes | None]:
    """The count keys a change writes (None: a group counted down to 0 goes) for the groups whose names it changes:
    the names leaving each and joining it; each key as `read` gives it now (a key read is a key compared). A group
    whose names change is written even when its count does not (one out, another in): its count key's compare is
    what guards a listing of its names (EtcdSource.running_names). When the head would fall below HEAD_LOW names of
    a group that holds more, it is read again: `first` (subscription, group, limit), the group's first names now."""
    out: dict[bytes, bytes | None] = {}
    for group in sorted(set(leaving) | set(joining)):
        key = keys.count(*group)
        n, head = count_of(read(key), key)
        gone, came = set(leaving.get(group, ())), joining.get(group, [])
        kept, rest = [name for name in head if name not in gone], n - len(gone)  # still the first of the rest
        if len(kept) < min(rest, HEAD_LOW):
            kept = [name for name in first(*group, HEAD + len(gone)) if name not in gone]
        if kept and len(kept) < rest:  # past the head's last name the names are not known: one joining there stays out
            came = [name for name in came if name < kept[-1]]
        n = rest + len(joining.get(group, []))
        out[key] = count_value(n, sorted(kept + came)[:HEAD]) if n > 0 else None
    return out


def count_holds(value: bytes | None, names: list[str]) -> bool:
    """Whether a count key's value (None: absent) is right for a group of these names (sorted; [] for none)."""
    if value is None:
        return not names
    try:
        n, head = count_of(value, b"")
    except UserError:
        return False
    return n == len(names) and min(n, HEAD_LOW) <= len(head) <= HEAD and head == names[:len(head)]


def _doc(row: Entity | None) -> str | None:
    return to_doc(row) if row is not None else None


SETTINGS = ("profile", "internal_prefixes")


def _setting(value: str | tuple[str, ...]) -> str:
    """A setting as meta/ and the audit log hold it (JSON: a string, or a list)."""
    return json.dumps(value if isinstance(value, str) else list(value))


def setting_rows(old: Inventory, new: Inventory) -> list[list[str]]:
    """The audit rows of the settings `new` holds other than `old`: (setting, name, before, after)."""
    return [["setting", name, _setting(getattr(old, name)), _setting(getattr(new, name))]
            for name in SETTINGS if getattr(old, name) != getattr(new, name)]


def state_keys(keys: Keys, inv: Inventory) -> Iterator[tuple[bytes, bytes]]:
    """Every key of the whole state `inv` in the store's layout, as changes would have left it (pure): each row's
    document and its row_keys(), the count keys, the settings, and meta/format last (what makes the state exist: a
    copy writes it in its last transaction). Rows by table and name. The one place whole-state keys are made
    (etcd_copy.copy_in writes these, and the benchmark's loader through it): a key the layout gains beside the rows
    is added here."""
    for table in TABLES:
        rows = getattr(inv, table)
        for name in sorted(rows):  # as a change's audit rows are: the copy's audit entry is made of these
            row = rows[name]
            yield keys.row(table, name), to_doc(row).encode()
            yield from row_keys(keys, table, row).items()
    yield from count_keys(keys, inv).items()
    for name in SETTINGS:
        yield keys.meta(name), _setting(getattr(inv, name)).encode()
    yield keys.meta("format"), FORMAT.encode()


def planned(keys: Keys, old: Inventory, new: Inventory, exists: bool, read: Callable[[bytes], bytes | None],
            first: Callable[[str, str, int], list[str]]) -> tuple[dict[bytes, bytes | None], list[Any]]:
    """What a change writes (key -> value, None to delete) and its audit rows (kind, name, before, after as JSON
    documents): the rows `new` changed over its source, each with its index and address keys, and the count keys
    of the groups they leave or join (counted(), with `read` and `first`). Deletes first and puts over them: etcd
    refuses a key twice in one transaction, and an address may pass between two resources."""
    deletes: dict[bytes, bytes | None] = {}
    puts: dict[bytes, bytes | None] = {}
    audit: list[Any] = []
    leaving: dict[Group, list[str]] = {}
    joining: dict[Group, list[str]] = {}
    for table in TABLES:
        for name, after in sorted(new.changes.tables[table].items()):
            before = new.source.row(table, name)
            if before == after:
                continue
            key = keys.row(table, name)
            if before is not None:
                deletes[key] = None
                deletes.update(dict.fromkeys(row_keys(keys, table, before)))
            if after is not None:
                puts[key] = to_doc(after).encode()
                puts.update(row_keys(keys, table, after))
            audit.append([table[:-1], name, _doc(before), _doc(after)])
            left, joined = (_grouped(row) for row in (before, after))
            if left != joined:  # the names of both groups change (a row rewritten in its group changes neither)
                for group, names in ((left, leaving), (joined, joining)):
                    if group is not None:
                        names.setdefault(group, []).append(name)
    puts.update(counted(keys, leaving, joining, read, first))
    for setting in SETTINGS:
        if getattr(old, setting) != getattr(new, setting) or (not exists and audit):
            puts[keys.meta(setting)] = _setting(getattr(new, setting)).encode()
    audit += setting_rows(old, new)
    return {**deletes, **puts}, audit
