"""Policy profiles: what each subscription type and resource kind means, parsed from the text of a
policies/*.toml file (finding and reading the file is enforcer.state.profiles' job).

A profile is data. This module only parses and validates it; the semantics live in policy.py.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..errors import UserError


class Exemption(StrEnum):
    """How a subscription type that blocks port 25 gets an exemption."""
    NOT_NEEDED = "not-needed"      # the type does not block port 25
    SELF_SERVICE = "self-service"  # Azure's diagnostic grants it
    SUPPORT_CASE = "support-case"  # granted by hand after a support case
    NEVER = "never"


# Tunnel protocols a profile may drop, by name: IP protocol numbers (IPv4) and next-header values (IPv6).
TUNNEL_PROTOCOLS: dict[str, tuple[int, ...]] = {
    "ip-in-ip": (4, 94),   # IPv4 in IP (4), and the older IP-within-IP (94)
    "ipv6-in-ip": (41,),   # IPv6 in IP: 6in4, 6to4, ISATAP
    "gre": (47,),
}
PORT25_CHOICES = ("allow", "block")
SCOPE_CHOICES = ("subscription", "never")


@dataclass(frozen=True, slots=True)
class SubscriptionType:
    id: str
    name: str
    aliases: tuple[str, ...]
    blocked_by_default: bool
    exemption: Exemption
    rule: int | None

    @property
    def exemptible(self) -> bool:
        return self.exemption in (Exemption.SELF_SERVICE, Exemption.SUPPORT_CASE)


@dataclass(frozen=True, slots=True)
class ResourceKind:
    id: str
    name: str
    follows_subscription: bool
    appliance: bool


@dataclass(frozen=True, slots=True)
class Profile:
    id: str
    name: str
    restricted_ports: frozenset[int]
    never_restricted_ports: frozenset[int]
    advice: str
    types: dict[str, SubscriptionType]
    kinds: dict[str, ResourceKind]
    source: str
    dropped_protocols: tuple[str, ...] = ()  # names from TUNNEL_PROTOCOLS: dropped whatever they carry
    dropped_protocols_source: str = ""

    @property
    def dropped_protocol_numbers(self) -> tuple[int, ...]:
        return tuple(sorted({n for name in self.dropped_protocols for n in TUNNEL_PROTOCOLS[name]}))

    def type_named(self, word: str) -> SubscriptionType:
        """The type whose id or alias is `word` (case-insensitive), or a UserError listing the choices."""
        key = word.strip().lower()
        for t in self.types.values():
            if key == t.id or key in t.aliases:
                return t
        raise UserError(
            f"unknown subscription type '{word}' in profile '{self.id}'; "
            f"use one of: {', '.join(self.types)}"
        )

    def kind_named(self, word: str) -> ResourceKind:
        kind = self.kinds.get(word.strip().lower())
        if kind is None:
            raise UserError(
                f"unknown resource kind '{word}' in profile '{self.id}'; use one of: {', '.join(self.kinds)}"
            )
        return kind


# ---------------------------------------------------------------- loading


def _fail(path: str, key: str, problem: str, fix: str) -> UserError:
    return UserError(f"{path}: {key}: {problem}; {fix}")


def _take(table: dict[str, Any], path: str, where: str, spec: dict[str, tuple[type, bool]]) -> dict[str, Any]:
    """Check a TOML table against spec {key: (type, required)}; unknown and missing keys are errors."""
    for key in table:
        if key not in spec:
            raise _fail(path, f"{where}.{key}", "unknown key", f"remove it or use one of: {', '.join(spec)}")
    out: dict[str, Any] = {}
    for key, (typ, required) in spec.items():
        if key not in table:
            if required:
                raise _fail(path, f"{where}.{key}", "missing", f"add {key} = ... to [{where}]")
            continue
        value = table[key]
        ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
        if not ok:
            raise _fail(path, f"{where}.{key}", f"expected {typ.__name__}, got {type(value).__name__}",
                        f"write {key} as a {typ.__name__}")
        out[key] = value
    return out


def _ports(path: str, key: str, values: list[Any]) -> frozenset[int]:
    for p in values:
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
            raise _fail(path, key, f"port {p!r} out of range", "use TCP ports from 1 to 65535")
    return frozenset(values)


def _choice(path: str, key: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(path, key, f"'{value}' is not allowed", f"use one of: {', '.join(choices)}")
    return value


def _parse_type(path: str, tid: str, body: Any, seen_words: dict[str, str]) -> SubscriptionType:
    """One [types.ID] table; `seen_words` (every id and alias so far) is updated."""
    if not isinstance(body, dict):
        raise _fail(path, f"types.{tid}", "not a table", f"write it as [types.{tid}]")
    t = _take(body, path, f"types.{tid}", {
        "name": (str, True), "aliases": (list, True), "port25": (str, True),
        "exemption": (str, True), "rule": (int, False),
    })
    _choice(path, f"types.{tid}.port25", t["port25"], PORT25_CHOICES)
    exemption = Exemption(_choice(path, f"types.{tid}.exemption", t["exemption"], tuple(Exemption)))
    blocked = t["port25"] == "block"
    if blocked == (exemption == Exemption.NOT_NEEDED):
        raise _fail(path, f"types.{tid}.exemption", f"'{t['exemption']}' contradicts port25 = '{t['port25']}'",
                    "use exemption = 'not-needed' exactly for types whose port25 is 'allow'")
    for word in [tid, *t["aliases"]]:
        if not isinstance(word, str) or word != word.lower():
            raise _fail(path, f"types.{tid}.aliases", f"alias {word!r} is not a lower-case string",
                        "write aliases in lower case")
        if word in seen_words:
            raise _fail(path, f"types.{tid}.aliases", f"'{word}' already names type '{seen_words[word]}'",
                        "give every type and alias a distinct name")
        seen_words[word] = tid
    return SubscriptionType(tid, t["name"], tuple(t["aliases"]), blocked, exemption, t.get("rule"))


def parse_profile(text: str, path: str) -> Profile:
    """A profile from the text of a TOML file; `path` names the file in error messages."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}; fix the syntax") from None
    top = _take(doc, path, "profile file", {"profile": (dict, True), "kinds": (dict, True), "types": (dict, True)})
    head = _take(top["profile"], path, "profile", {
        "id": (str, True), "name": (str, True), "restricted_ports": (list, True),
        "never_restricted_ports": (list, False), "advice": (str, True),
        "dropped_protocols": (list, False), "dropped_protocols_source": (str, False),
    })
    restricted = _ports(path, "profile.restricted_ports", head["restricted_ports"])
    never = _ports(path, "profile.never_restricted_ports", head.get("never_restricted_ports", []))
    if restricted & never:
        raise _fail(path, "profile.never_restricted_ports", f"ports {sorted(restricted & never)} are also restricted",
                    "a port is either restricted or never restricted")
    if not restricted:
        raise _fail(path, "profile.restricted_ports", "empty", "list at least one port, e.g. [25]")

    kinds: dict[str, ResourceKind] = {}
    for kid, body in top["kinds"].items():
        if not isinstance(body, dict):
            raise _fail(path, f"kinds.{kid}", "not a table", f"write it as [kinds.{kid}]")
        k = _take(body, path, f"kinds.{kid}", {"name": (str, True), "scope": (str, True), "appliance": (bool, False)})
        _choice(path, f"kinds.{kid}.scope", k["scope"], SCOPE_CHOICES)
        kinds[kid] = ResourceKind(kid, k["name"], k["scope"] == "subscription", k.get("appliance", False))

    types: dict[str, SubscriptionType] = {}
    seen_words: dict[str, str] = {}
    for tid, body in top["types"].items():
        types[tid] = _parse_type(path, tid, body, seen_words)
    if not types:
        raise _fail(path, "types", "empty", "define at least one [types.ID]")
    if not kinds:
        raise _fail(path, "kinds", "empty", "define at least one [kinds.ID]")
    dropped = tuple(_choice(path, "profile.dropped_protocols", p, tuple(TUNNEL_PROTOCOLS))
                    for p in head.get("dropped_protocols", []))
    if dropped and not head.get("dropped_protocols_source"):
        raise _fail(path, "profile.dropped_protocols_source", "missing", "say where the platform documents it")
    return Profile(head["id"], head["name"], restricted, never, head["advice"], types, kinds, path,
                   dropped, head.get("dropped_protocols_source", ""))

