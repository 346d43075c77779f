"""A declarative inventory document (parsed YAML), converged onto the current inventory with the same lifecycle
operations the CLI uses, so that applying a file follows the same rules as typing the commands.

Pure: the document arrives as plain data (enforcer.state.documents reads the file). Idempotent: a second
convergence onto the same document changes nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from ..errors import UserError
from . import hints, lifecycle
from .inventory import Inventory, State, normalize_prefix, validate
from .profile import Exemption, Profile

TOP_KEYS = {"profile", "internal_prefixes", "subscriptions", "vnets", "resources", "lab"}
SUB_KEYS = {"name", "type", "exempt"}
VNET_KEYS = {"name", "subscription", "prefixes", "subnets"}
SUBNET_KEYS = {"name", "prefix", "delegated"}
RES_KEYS = {"name", "subscription", "kind", "addresses", "vnet", "subnet", "mac", "egress", "state"}
STRING_KEYS = {"name", "type", "subscription", "kind", "vnet", "subnet", "mac", "egress", "state", "prefix"}
BOOL_KEYS = {"delegated", "exempt"}


Document = dict[str, Any]
Step = Callable[[lifecycle.Result], None]


def wanted_profile(inv: Inventory, doc: Document, path: str) -> str:
    """The profile the document asks for. Only an empty inventory may change its profile."""
    wanted = str(doc.get("profile", inv.profile))
    if wanted != inv.profile and (inv.subscriptions or inv.resources or inv.vnets):
        raise UserError(f"{path}: profile '{wanted}' differs from the state's profile '{inv.profile}'; "
                        "use a new state (--state PATH) for another profile")
    return wanted


def _items(path: str, doc: Document, key: str, allowed: set[str], required: set[str]) -> list[Document]:
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


def _where(path: str, key: str, item: Document) -> str:
    return f"{path}: {key} '{item.get('name')}'"


@contextmanager
def _at(where: str) -> Iterator[None]:
    """Prefix a UserError raised inside with the place in the file it concerns."""
    try:
        yield
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def _string_list(value: Any, what: str) -> list[str]:
    if isinstance(value, (str, int)):
        return [str(value)]
    if not isinstance(value, list):
        raise UserError(f"{what}: expected a list")
    return [str(v) for v in value]


def converge(inv: Inventory, profile: Profile, doc: Document, path: str, prune: bool = False) -> lifecycle.Result:
    """The inventory the document describes, reached through lifecycle operations; lines say what changed.
    `profile` is the one the document asks for (wanted_profile())."""
    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise UserError(f"{path}: unknown top-level key '{sorted(unknown)[0]}'; use: {', '.join(sorted(TOP_KEYS))}")
    if wanted_profile(inv, doc, path) != profile.id:
        raise UserError(f"{path}: profile '{doc.get('profile')}' differs from the loaded profile '{profile.id}'")
    inv = inv.with_(profile=profile.id)
    lines: list[str] = []

    def step(result: lifecycle.Result) -> None:
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
                step(lifecycle.add_subscription(inv, profile, str(s["name"]), str(s["type"])))
            elif profile.type_named(str(s["type"])).id != inv.subscriptions[s["name"]].type:
                step(lifecycle.set_type(inv, profile, s["name"], str(s["type"])))
            if "exempt" in s:
                _converge_exemption(inv, profile, s, step)

    for v in _items(path, doc, "vnets", VNET_KEYS, {"name", "subscription", "prefixes"}):
        where = _where(path, "vnet", v)
        with _at(where):
            prefixes = tuple(normalize_prefix(p) for p in _string_list(v["prefixes"], "prefixes"))
            current = inv.vnets.get(v["name"])
            if current is not None and (current.subscription, current.prefixes) != (v["subscription"], prefixes):
                raise UserError("its subscription or prefixes differ from the state; a virtual network's "
                                f"address space is fixed here: remove it first ({hints.remove_vnet(v['name'])})")
            if current is None:
                step(lifecycle.add_vnet(inv, profile, str(v["name"]), str(v["subscription"]), list(prefixes)))
        for sn in _items(where, v, "subnets", SUBNET_KEYS, {"name", "prefix"}):
            with _at(f"{where}: subnet '{sn['name']}'"):
                have = inv.vnets[v["name"]].subnet(sn["name"])
                delegated = bool(sn.get("delegated", False))
                if have is None:
                    step(lifecycle.add_subnet(inv, profile, v["name"], str(sn["name"]), str(sn["prefix"]), delegated))
                elif (have.prefix, have.delegated) != (normalize_prefix(str(sn["prefix"])), delegated):
                    raise UserError("it differs from the state; remove it first: "
                                    f"{hints.remove_subnet(v['name'], sn['name'])}")

    resources = _items(path, doc, "resources", RES_KEYS, {"name", "subscription", "kind", "addresses"})
    # appliances first, so that resources egressing through them find them
    resources.sort(key=lambda r: r.get("egress") is not None)
    for r in resources:
        with _at(_where(path, "resource", r)):
            state = r.get("state", State.RUNNING)
            if state not in tuple(State):
                raise UserError(f"state '{state}'; use one of: {', '.join(State)}")
            state = State(state)
            attrs = dict(subscription=str(r["subscription"]), kind=str(r["kind"]),
                         addresses=_string_list(r["addresses"], "addresses"), vnet=r.get("vnet"),
                         subnet=r.get("subnet"), mac=r.get("mac"), egress=r.get("egress"))
            if r["name"] not in inv.resources:
                step(lifecycle.add_resource(inv, profile, str(r["name"]), state=state, **attrs))
                continue
            step(lifecycle.update_resource(inv, profile, r["name"], **attrs))
            if "state" in r and inv.resources[r["name"]].state != state:
                transition = {State.RUNNING: lifecycle.start, State.STOPPED: lifecycle.stop,
                              State.DEALLOCATED: lifecycle.deallocate}[state]
                step(transition(inv, profile, r["name"]))

    if prune:
        inv, pruned = _prune(inv, profile, doc)
        lines += pruned
    validate(inv, profile)
    return inv, lines


def _converge_exemption(inv: Inventory, profile: Profile, s: Document, step: Step) -> None:
    want = s["exempt"]
    if not isinstance(want, bool):
        raise UserError("exempt: expected true or false")
    sub = inv.subscriptions[s["name"]]
    if want == sub.exempt:
        return
    if not want:
        step(lifecycle.revoke_exemption(inv, profile, sub.name))
        return
    t = profile.types[sub.type]
    if t.exemption == Exemption.SUPPORT_CASE:
        step(lifecycle.grant_exemption(inv, profile, sub.name, "from the inventory file"))
    elif t.exemption == Exemption.SELF_SERVICE:
        step(lifecycle.run_diagnostic(inv, profile, sub.name))
    else:
        raise UserError(f"exempt: true, but {t.name} subscriptions cannot be exempted; remove the key")


def _prune(inv: Inventory, profile: Profile, doc: Document) -> lifecycle.Result:
    """Remove what the document does not name: resources (appliances last), subnets, VNets, subscriptions."""
    lines = []
    named = {key: {str(x.get("name")) for x in doc.get(key) or []} for key in ("subscriptions", "vnets", "resources")}
    gone = [r for r in inv.resources.values() if r.name not in named["resources"]]
    for r in sorted(gone, key=lambda r: r.egress is None):
        inv, more = lifecycle.remove_resource(inv, profile, r.name)
        lines += more
    for v in doc.get("vnets") or []:
        wanted = {str(sn.get("name")) for sn in v.get("subnets") or []}
        for sn in [sn.name for sn in inv.vnets[str(v["name"])].subnets if sn.name not in wanted]:
            inv, more = lifecycle.remove_subnet(inv, profile, str(v["name"]), sn)
            lines += more
    for v in [v for v in inv.vnets if v not in named["vnets"]]:
        inv, more = lifecycle.remove_vnet(inv, profile, v)
        lines += more
    for s in [s for s in inv.subscriptions if s not in named["subscriptions"]]:
        inv, more = lifecycle.remove_subscription(inv, profile, s)
        lines += more
    return inv, lines
