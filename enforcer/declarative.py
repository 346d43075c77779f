"""`enforcer apply FILE`: a declarative YAML inventory, converged onto the current one with the same lifecycle
operations the CLI uses, so that applying a file follows the same rules as typing the commands.

Pure apart from reading the file. Idempotent: a second apply of the same file changes nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import yaml

from . import ops
from .errors import UserError
from .inventory import RUNNING, STATES, Inventory, normalize_prefix
from .profile import Profile

TOP_KEYS = {"profile", "internal_prefixes", "subscriptions", "vnets", "resources", "lab"}
SUB_KEYS = {"name", "type", "exempt"}
VNET_KEYS = {"name", "subscription", "prefixes", "subnets"}
SUBNET_KEYS = {"name", "prefix", "delegated"}
RES_KEYS = {"name", "subscription", "kind", "addresses", "vnet", "subnet", "mac", "egress", "state"}
STRING_KEYS = {"name", "type", "subscription", "kind", "vnet", "subnet", "mac", "egress", "state", "prefix"}
BOOL_KEYS = {"delegated", "exempt"}


def read_document(path: str) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read it: {e.strerror}; check the path") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}; fix the syntax") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a mapping with keys {', '.join(sorted(TOP_KEYS))}")
    return doc


def _items(path: str, doc: dict, key: str, allowed: set[str], required: set[str]) -> list[dict]:
    items = doc.get(key) or []
    if not isinstance(items, list):
        raise UserError(f"{path}: {key}: expected a list")
    for i, item in enumerate(items):
        where = f"{path}: {key}[{i}]"
        if not isinstance(item, dict):
            raise UserError(f"{where}: expected a mapping")
        unknown = set(item) - allowed
        if unknown:
            raise UserError(f"{where}: unknown key '{sorted(unknown)[0]}'; use: {', '.join(sorted(allowed))}")
        missing = required - set(item)
        if missing:
            raise UserError(f"{where}: missing '{sorted(missing)[0]}'; add it")
        for key, value in item.items():
            if key in STRING_KEYS and value is not None and not isinstance(value, str):
                raise UserError(f"{where}: {key}: expected a name, got {value!r}; write it as a string "
                                f"(quote it: {key}: \"{value}\")")
            if key in BOOL_KEYS and not isinstance(value, bool):
                raise UserError(f"{where}: {key}: expected true or false, got {value!r}")
    return items


def _where(path: str, key: str, item: dict) -> str:
    return f"{path}: {key} '{item.get('name')}'"


@contextmanager
def _at(where: str):
    """Prefix a UserError raised inside with the place in the file it concerns."""
    try:
        yield
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def _string_list(value, what: str) -> list[str]:
    if isinstance(value, (str, int)):
        return [str(value)]
    if not isinstance(value, list):
        raise UserError(f"{what}: expected a list")
    return [str(v) for v in value]


def converge(inv: Inventory, profile: Profile, doc: dict, path: str, prune: bool = False) -> ops.Result:
    """The inventory the document describes, reached through lifecycle operations; lines say what changed."""
    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise UserError(f"{path}: unknown top-level key '{sorted(unknown)[0]}'; use: {', '.join(sorted(TOP_KEYS))}")
    if doc.get("profile", inv.profile) != profile.id:
        raise UserError(f"{path}: profile '{doc.get('profile')}' differs from the state's profile '{profile.id}'")
    lines: list[str] = []

    def step(result: ops.Result) -> None:
        nonlocal inv
        inv, more = result
        lines.extend(more)

    with _at(f"{path}: internal_prefixes"):
        internal = tuple(normalize_prefix(p) for p in _string_list(doc.get("internal_prefixes") or [], "value"))
    if internal != inv.internal_prefixes:
        inv = inv.with_(internal_prefixes=internal)
        lines.append(f"internal prefixes: {', '.join(internal) or 'none'}")

    subs = _items(path, doc, "subscriptions", SUB_KEYS, {"name", "type"})
    for s in subs:
        with _at(_where(path, "subscription", s)):
            if s["name"] not in inv.subscriptions:
                step(ops.add_subscription(inv, profile, str(s["name"]), str(s["type"])))
            elif profile.type_named(str(s["type"])).id != inv.subscriptions[s["name"]].type:
                step(ops.set_type(inv, profile, s["name"], str(s["type"])))
            if "exempt" in s:
                _converge_exemption(inv, profile, s, step)

    for v in _items(path, doc, "vnets", VNET_KEYS, {"name", "subscription", "prefixes"}):
        where = _where(path, "vnet", v)
        with _at(where):
            prefixes = tuple(normalize_prefix(p) for p in _string_list(v["prefixes"], "prefixes"))
            current = inv.vnets.get(v["name"])
            if current is not None and (current.subscription, current.prefixes) != (v["subscription"], prefixes):
                raise UserError("its subscription or prefixes differ from the state; a virtual network's "
                                f"address space is fixed here: remove it first (enforcer vnet remove {v['name']})")
            if current is None:
                step(ops.add_vnet(inv, profile, str(v["name"]), str(v["subscription"]), list(prefixes)))
        for sn in _items(where, v, "subnets", SUBNET_KEYS, {"name", "prefix"}):
            with _at(f"{where}: subnet '{sn['name']}'"):
                have = inv.vnets[v["name"]].subnet(sn["name"])
                delegated = bool(sn.get("delegated", False))
                if have is None:
                    step(ops.add_subnet(inv, profile, v["name"], str(sn["name"]), str(sn["prefix"]), delegated))
                elif (have.prefix, have.delegated) != (normalize_prefix(str(sn["prefix"])), delegated):
                    raise UserError("it differs from the state; remove it first: "
                                    f"enforcer vnet subnet-remove {v['name']} {sn['name']}")

    resources = _items(path, doc, "resources", RES_KEYS, {"name", "subscription", "kind", "addresses"})
    # appliances first, so that resources egressing through them find them
    resources.sort(key=lambda r: r.get("egress") is not None)
    for r in resources:
        with _at(_where(path, "resource", r)):
            state = r.get("state", RUNNING)
            if state not in STATES:
                raise UserError(f"state '{state}'; use one of: {', '.join(STATES)}")
            attrs = dict(subscription=str(r["subscription"]), kind=str(r["kind"]),
                         addresses=_string_list(r["addresses"], "addresses"), vnet=r.get("vnet"),
                         subnet=r.get("subnet"), mac=r.get("mac"), egress=r.get("egress"))
            if r["name"] not in inv.resources:
                step(ops.add_resource(inv, profile, str(r["name"]), state=state, **attrs))
                continue
            step(ops.update_resource(inv, profile, r["name"], **attrs))
            if "state" in r and inv.resources[r["name"]].state != state:
                transition = {"running": ops.start, "stopped": ops.stop, "deallocated": ops.deallocate}[state]
                step(transition(inv, profile, r["name"]))

    if prune:
        inv, pruned = _prune(inv, profile, doc)
        lines += pruned
    ops.validate(inv, profile)
    return inv, lines


def _converge_exemption(inv: Inventory, profile: Profile, s: dict, step) -> None:
    want = s["exempt"]
    if not isinstance(want, bool):
        raise UserError("exempt: expected true or false")
    sub = inv.subscriptions[s["name"]]
    if want == sub.exempt:
        return
    if not want:
        step(ops.revoke_exemption(inv, profile, sub.name))
        return
    t = profile.types[sub.type]
    if t.exemption == "support-case":
        step(ops.grant_exemption(inv, profile, sub.name, "from the inventory file"))
    elif t.exemption == "self-service":
        new, diagnosis = ops.diagnose(inv, profile, sub.name)
        step((new, list(diagnosis.lines)))
    else:
        raise UserError(f"exempt: true, but {t.name} subscriptions cannot be exempted; remove the key")


def _prune(inv: Inventory, profile: Profile, doc: dict) -> ops.Result:
    """Remove what the document does not name: resources (appliances last), subnets, VNets, subscriptions."""
    lines = []
    named = {key: {str(x.get("name")) for x in doc.get(key) or []} for key in ("subscriptions", "vnets", "resources")}
    gone = [r for r in inv.resources.values() if r.name not in named["resources"]]
    for r in sorted(gone, key=lambda r: r.egress is None):
        inv, more = ops.remove_resource(inv, profile, r.name)
        lines += more
    for v in doc.get("vnets") or []:
        wanted = {str(sn.get("name")) for sn in v.get("subnets") or []}
        for sn in [sn.name for sn in inv.vnets[str(v["name"])].subnets if sn.name not in wanted]:
            inv, more = ops.remove_subnet(inv, profile, str(v["name"]), sn)
            lines += more
    for v in [v for v in inv.vnets if v not in named["vnets"]]:
        inv, more = ops.remove_vnet(inv, profile, v)
        lines += more
    for s in [s for s in inv.subscriptions if s not in named["subscriptions"]]:
        inv, more = ops.remove_subscription(inv, profile, s)
        lines += more
    return inv, lines
