"""A declarative inventory document (parsed YAML), converged onto the current inventory with the same lifecycle
operations the CLI uses, so that applying a file follows the same rules as typing the commands.

Pure: the document arrives as plain data (enforcer.state.documents reads the file). Idempotent: a second
convergence onto the same document changes nothing.
"""

from __future__ import annotations

import datetime
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import UserError
from . import hints, lifecycle
from .inventory import ATTRIBUTES, Inventory, State
from .normalize import NAME_RE, normalize_address, normalize_prefix
from .profile import OPERATOR_GRANTED, SELF_GRANTED, Exemption, Profile
from .validate import check_changes, validate_resource

TOP_KEYS = {"profile", "internal_prefixes", "subscriptions", "vnets", "resources", "lab"}
SUB_KEYS = {"name", "type", "exempt", *ATTRIBUTES}
VNET_KEYS = {"name", "subscription", "prefixes", "subnets", "interface"}
SUBNET_KEYS = {"name", "prefix", "delegated"}
RES_KEYS = {"name", "subscription", "kind", "addresses", "vnet", "subnet", "mac", "egress", "state", "interface"}
STRING_KEYS = {"name", "type", "subscription", "kind", "vnet", "subnet", "mac", "egress", "state", "prefix",
               "interface"}
BOOL_KEYS = {"delegated", "exempt", "verified", "first_invoice_paid", "flagged"}


Document = dict[str, Any]


def wanted_profile(inv: Inventory, doc: Document, path: str) -> str:
    """The profile the document asks for. Only an empty inventory may change its profile."""
    wanted = doc.get("profile", inv.profile)
    if not isinstance(wanted, str) or not NAME_RE.fullmatch(wanted):
        raise UserError(f"{path}: profile: expected a profile name such as azure, got {_shown(wanted)}")
    if wanted != inv.profile and (inv.subscriptions or inv.resources or inv.vnets):
        raise UserError(f"{path}: profile '{wanted}' differs from the state's profile '{inv.profile}'; "
                        "use a new state (--state PATH) for another profile")
    return wanted


def _items(path: str, doc: Document, key: str, allowed: set[str], required: set[str]) -> list[Document]:
    items = doc.get(key) or []
    if not isinstance(items, list):
        raise UserError(f"{path}: {key}: expected a list")
    for i, item in enumerate(items):
        _check_item(f"{path}: {key}[{i}]", item, allowed, required)
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        if item["name"] in first:  # applied in turn, the last would win: in the state, and over the first
            raise UserError(f"{path}: {key}[{first[item['name']]}] and {key}[{i}] are both named "
                            f"{item['name']!r}; give each its own name")
        first[item["name"]] = i
    return items


def _check_item(where: str, item: Any, allowed: set[str], required: set[str]) -> None:
    if not isinstance(item, dict):
        raise UserError(f"{where}: expected a mapping")
    unknown = sorted(map(str, set(item) - allowed))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; use: {', '.join(sorted(allowed))}")
    missing = required - set(item)
    if missing:
        raise UserError(f"{where}: missing '{sorted(missing)[0]}'; add it")
    for key, value in item.items():
        if key in STRING_KEYS and value is None and key in required:
            raise UserError(f"{where}: {key}: expected a name, got None; give it a value")
        if key in STRING_KEYS and value is not None and not isinstance(value, str):
            quote = "" if isinstance(value, (list, dict)) else f" (quote it: {key}: \"{_shown(value)}\")"
            raise UserError(f"{where}: {key}: expected a name, got {_shown(value)}; write it as a string{quote}")
        if key in STRING_KEYS and key != "name" and isinstance(value, str) and not value.isprintable():
            # names get check_name's fuller message; other words end up in messages that must stay one line
            raise UserError(f"{where}: {key}: {_shown(value)} holds a line break or another control character; "
                            "remove it")
        if key in BOOL_KEYS and not isinstance(value, bool):
            raise UserError(f"{where}: {key}: expected true or false, got {_shown(value)}")


def _shown(value: Any) -> str:
    """A value from the document, on one line and short: a mistake may be a whole nested structure."""
    if isinstance(value, (list, dict)):
        return f"a {'list' if isinstance(value, list) else 'mapping'}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _where(path: str, key: str, item: Document) -> str:
    return f"{path}: {key} {item.get('name')!r}"


@contextmanager
def _at(where: str) -> Iterator[None]:
    """Prefix a UserError raised inside with the place in the file it concerns."""
    try:
        yield
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def _string_list(value: Any, what: str, noun: str) -> list[str]:
    """A list of addresses or prefixes: each a string (or a number, as YAML may read one), never a collection."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return [str(value)]
    if not isinstance(value, list):
        raise UserError(f"{what}: expected a list")
    for i, v in enumerate(value):
        if not isinstance(v, (str, int)) or isinstance(v, bool):
            raise UserError(f"{what}[{i}]: expected {noun}, got {_shown(v)}")
    return [str(v) for v in value]


def _once(values: list[str]) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise UserError(f"{v} is listed twice; list it once")
        seen.add(v)


def converge(inv: Inventory, profile: Profile, doc: Document, path: str, prune: bool = False,
             today: datetime.date | None = None) -> lifecycle.Result:
    """The inventory the document describes, reached through lifecycle operations; lines say what changed.
    `profile` is the one the document asks for (wanted_profile()); `today` judges an account's age where an
    exemption the document asks for depends on it."""
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a mapping with keys {', '.join(sorted(TOP_KEYS))}")
    unknown = sorted(map(str, set(doc) - TOP_KEYS))
    if unknown:
        raise UserError(f"{path}: unknown top-level key {unknown[0]!r}; use: {', '.join(sorted(TOP_KEYS))}")
    if wanted_profile(inv, doc, path) != profile.id:
        raise UserError(f"{path}: profile '{doc.get('profile')}' differs from the loaded profile '{profile.id}'")
    run = _Convergence(inv.with_(profile=profile.id), profile, path, today)
    run.internal_prefixes(doc)
    run.subscriptions(doc)
    run.vnets(doc)
    run.resources(doc)
    if prune:
        run.step(_prune(run.inv, profile, doc))
    check_changes(run.inv, profile)
    return run.inv, run.lines


class _Convergence:
    """One convergence: the inventory so far, and the lines said about it.

    New resources are added in place, each checked on its own (O(1)), not through add_resource(), which copies
    the changes so far: a file of N new resources converges in O(N), not O(N^2). What changed is checked once more
    at the end (check_changes)."""

    def __init__(self, inv: Inventory, profile: Profile, path: str, today: datetime.date | None = None):
        self.inv, self.profile, self.path, self.today = inv, profile, path, today
        self.lines: list[str] = []
        self.growing = False  # whether self.inv's changes are ours to grow in place

    def step(self, result: lifecycle.Result) -> None:
        self.inv, more = result
        self.lines.extend(more)
        self.growing = False  # the step may have returned an inventory shared with its caller

    def add(self, name: str, state: State, attrs: dict[str, Any]) -> None:
        r = lifecycle.new_resource(self.inv, self.profile, name, state=state, **attrs)
        if not self.growing:
            self.inv, self.growing = self.inv.grown(), True
        validate_resource(self.inv, self.profile, r, {}, elsewhere=self.inv.owner_of)
        self.inv.grow(r)
        self.lines.append(lifecycle.added(self.inv, self.profile, r))

    def internal_prefixes(self, doc: Document) -> None:
        where = f"{self.path}: internal_prefixes"
        raw = _string_list(doc.get("internal_prefixes") or [], where, "a prefix")
        with _at(where):
            internal = tuple(normalize_prefix(p) for p in raw)
            _once(list(internal))
        if internal != self.inv.internal_prefixes:
            self.step((self.inv.with_(internal_prefixes=internal),
                       [f"internal prefixes: {', '.join(internal) or 'none'}"]))

    def subscriptions(self, doc: Document) -> None:
        profile = self.profile
        for s in _items(self.path, doc, "subscriptions", SUB_KEYS, {"name", "type"}):
            with _at(_where(self.path, "subscription", s)):
                attributes = {k: s[k] for k in ATTRIBUTES if k in s}
                if s["name"] not in self.inv.subscriptions:
                    self.step(lifecycle.add_subscription(self.inv, profile, str(s["name"]), str(s["type"]),
                                                         **attributes))
                else:  # attributes first: the new type may need one (a creation day)
                    self.step(lifecycle.set_attributes(self.inv, profile, s["name"], **attributes))
                    if profile.type_named(str(s["type"])).id != self.inv.subscriptions[s["name"]].type:
                        self.step(lifecycle.set_type(self.inv, profile, s["name"], str(s["type"])))
                if "exempt" in s:
                    self.exemption(s)

    def exemption(self, s: Document) -> None:
        want = s["exempt"]
        if not isinstance(want, bool):
            raise UserError("exempt: expected true or false")
        sub = self.inv.subscriptions[s["name"]]
        if want == sub.exempt:
            return
        if not want:
            self.step(lifecycle.revoke_exemption(self.inv, self.profile, sub.name))
            return
        t = self.profile.types[sub.type]
        acct = self.profile.account_word
        if t.exemption in OPERATOR_GRANTED:
            self.step(lifecycle.grant_exemption(self.inv, self.profile, sub.name, "from the inventory file",
                                                today=self.today))
        elif t.exemption in SELF_GRANTED:
            inv, lines = lifecycle.run_diagnostic(self.inv, self.profile, sub.name, today=self.today)
            if not inv.subscriptions[sub.name].exempt:  # the owner's path refused: the account does not qualify
                raise UserError(f"exempt: true, but {lines[-1]}")
            self.step((inv, lines))
        elif t.exemption == Exemption.REACTIVE:
            raise UserError(f"exempt: true has no meaning where the block is reactive ({t.name}); "
                            "write flagged: true or false instead")
        else:
            raise UserError(f"exempt: true, but {t.name} {acct}s cannot be exempted; remove the key")

    def vnets(self, doc: Document) -> None:
        for v in _items(self.path, doc, "vnets", VNET_KEYS, {"name", "subscription", "prefixes"}):
            where = _where(self.path, "vnet", v)
            with _at(where):
                prefixes = tuple(normalize_prefix(p) for p in _string_list(v["prefixes"], "prefixes", "a prefix"))
                _once(list(prefixes))
                current = self.inv.vnets.get(v["name"])
                if current is not None and (current.subscription, current.prefixes) != (v["subscription"], prefixes):
                    raise UserError("its subscription or prefixes differ from the state; a virtual network's "
                                    f"address space is fixed here: remove it first ({hints.remove_vnet(v['name'])})")
                if current is None:
                    self.step(lifecycle.add_vnet(self.inv, self.profile, str(v["name"]), str(v["subscription"]),
                                                 list(prefixes), v.get("interface")))
                elif "interface" in v:
                    self.step(lifecycle.set_vnet_interface(self.inv, self.profile, str(v["name"]), v["interface"]))
            for sn in _items(where, v, "subnets", SUBNET_KEYS, {"name", "prefix"}):
                with _at(f"{where}: subnet {sn['name']!r}"):
                    self.subnet(v["name"], sn)

    def subnet(self, vnet: str, sn: Document) -> None:
        have = self.inv.vnets[vnet].subnet(sn["name"])
        delegated = bool(sn.get("delegated", False))
        if have is None:
            self.step(lifecycle.add_subnet(self.inv, self.profile, vnet, str(sn["name"]), str(sn["prefix"]),
                                           delegated))
        elif (have.prefix, have.delegated) != (normalize_prefix(str(sn["prefix"])), delegated):
            raise UserError(f"it differs from the state; remove it first: {hints.remove_subnet(vnet, sn['name'])}")

    def resources(self, doc: Document) -> None:
        resources = _items(self.path, doc, "resources", RES_KEYS, {"name", "subscription", "kind", "addresses"})
        # appliances first, so that resources egressing through them find them
        resources.sort(key=lambda r: r.get("egress") is not None)
        for r in resources:
            with _at(_where(self.path, "resource", r)):
                self.resource(r)

    def resource(self, r: Document) -> None:
        state = r.get("state", State.RUNNING)
        if state not in tuple(State):
            raise UserError(f"state {state!r}; use one of: {', '.join(State)}")
        state = State(state)
        name = str(r["name"])
        addresses = _string_list(r["addresses"], "addresses", "an address")
        _once([normalize_address(a, allow_prefix=True) for a in addresses])
        attrs: dict[str, Any] = dict(subscription=str(r["subscription"]), kind=str(r["kind"]), addresses=addresses,
                                     vnet=r.get("vnet"), subnet=r.get("subnet"), mac=r.get("mac"),
                                     egress=r.get("egress"))
        if "interface" in r:  # only when the file says: a lab binds its resources to their links itself
            attrs["interface"] = r["interface"]
        if name not in self.inv.resources:
            self.add(name, state, attrs)
            return
        self.step(lifecycle.update_resource(self.inv, self.profile, name, **attrs))
        if "state" in r and self.inv.resources[name].state != state:
            transition = {State.RUNNING: lifecycle.start, State.STOPPED: lifecycle.stop,
                          State.DEALLOCATED: lifecycle.deallocate}[state]
            self.step(transition(self.inv, self.profile, name))


def _prune(inv: Inventory, profile: Profile, doc: Document) -> lifecycle.Result:
    """Remove what the document does not name: resources (appliances last), subnets, VNets, subscriptions."""
    lines: list[str] = []
    named = {key: {str(x.get("name")) for x in doc.get(key) or []} for key in ("subscriptions", "vnets", "resources")}
    gone = [inv.resources[name] for name in inv.resources if name not in named["resources"]]
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
