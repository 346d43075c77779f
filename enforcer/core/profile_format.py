"""The policies/*.toml format: parse_profile() reads a file's text into a Profile, checking every table and key.

Apart from the model, so that what a profile means reads without the rules of writing one down; every mistake is
one UserError naming the file, the key, and how to fix it.
"""

from __future__ import annotations

import datetime
import ipaddress
import tomllib
from typing import Any

from ..errors import UserError
from .profile import (DEFAULT_NEVER_JUDGED, NO_PROVENANCE, OPERATOR_GRANTED, REQUIREMENTS, SELF_GRANTED,
                      TUNNEL_PROTOCOLS, ChangeApplies, Exemption, ExemptionPath, NeverJudged, Profile, Provenance,
                      ResourceKind, Source, Status, SubscriptionType)

OWN_NETWORK = "own"  # never_judged.*.network: the account's own networks (the inventory's VNet/VPC prefixes)
PORT25_CHOICES = ("allow", "block")
SCOPE_CHOICES = ("subscription", "never")


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


def _date(path: str, key: str, value: Any) -> str:
    """A day, written as a TOML date (2021-06-24) or a string "2021-06-24" -> "2021-06-24"."""
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, str) and len(value) == 10:  # fromisoformat() also takes 20210624
        try:
            return datetime.date.fromisoformat(value).isoformat()
        except ValueError:
            pass
    raise _fail(path, key, f"{value!r} is not a day", "write it as YYYY-MM-DD, e.g. 2021-06-24")


def _provenance(path: str, where: str, t: dict[str, Any], sources: dict[str, Source],
                source_key: str = "source", decision_key: str = "decision") -> Provenance:
    """The source a table names (by id, from [sources]) and the lab's decision, if it states one."""
    sid, decision = t.get(source_key), t.get(decision_key, "")
    if sid is None:
        if decision:
            raise _fail(path, f"{where}.{source_key}", "missing", "name the [sources.ID] the decision was taken on")
        return NO_PROVENANCE
    if sid not in sources:
        raise _fail(path, f"{where}.{source_key}", f"no source '{sid}'",
                    f"use one of: {', '.join(sources) or 'none (add a [sources.ID] table)'}")
    source = sources[sid]
    if source.status == Status.UNDOCUMENTED and not decision:
        raise _fail(path, f"{where}.{decision_key}", f"missing, and source '{sid}' is undocumented",
                    "say what the lab decided where the provider is silent")
    return Provenance(source, decision)


def _parse_sources(path: str, top: dict[str, Any]) -> dict[str, Source]:
    sources: dict[str, Source] = {}
    for sid, body in top.get("sources", {}).items():
        if not isinstance(body, dict):
            raise _fail(path, f"sources.{sid}", "not a table", f"write it as [sources.{sid}]")
        t = _take(body, path, f"sources.{sid}", {"url": (str, True), "read": (object, True),
                                                 "status": (str, True), "quote": (str, False)})
        if not t["url"].startswith(("https://", "http://")):
            raise _fail(path, f"sources.{sid}.url", f"'{t['url']}' is not a web address", "write https://...")
        status = Status(_choice(path, f"sources.{sid}.status", t["status"], tuple(Status)))
        sources[sid] = Source(sid, t["url"], _date(path, f"sources.{sid}.read", t["read"]), status,
                              t.get("quote", ""))
    return sources


def _parse_type(path: str, tid: str, body: Any, seen_words: dict[str, str],
                sources: dict[str, Source]) -> SubscriptionType:
    """One [types.ID] table; `seen_words` (every id and alias so far) is updated."""
    if not isinstance(body, dict):
        raise _fail(path, f"types.{tid}", "not a table", f"write it as [types.{tid}]")
    t = _take(body, path, f"types.{tid}", {
        "name": (str, True), "aliases": (list, True), "port25": (str, True),
        "exemption": (str, True), "rule": (int, False), "created_from": (object, False),
        "when_flagged": (bool, False), "source": (str, False), "decision": (str, False),
    })
    _choice(path, f"types.{tid}.port25", t["port25"], PORT25_CHOICES)
    exemption = Exemption(_choice(path, f"types.{tid}.exemption", t["exemption"], tuple(Exemption)))
    blocked = t["port25"] == "block"
    if blocked == (exemption == Exemption.NOT_NEEDED):
        raise _fail(path, f"types.{tid}.exemption", f"'{t['exemption']}' contradicts port25 = '{t['port25']}'",
                    "use exemption = 'not-needed' exactly for types whose port25 is 'allow'")
    when_flagged = t.get("when_flagged", False)
    if when_flagged != (exemption == Exemption.REACTIVE):
        raise _fail(path, f"types.{tid}.when_flagged", "a reactive block needs when_flagged = true, and only it",
                    "write exemption = 'reactive' and when_flagged = true together, or neither")
    created_from = None
    if "created_from" in t:
        if not blocked:
            raise _fail(path, f"types.{tid}.created_from", "set on a type whose port25 is 'allow'",
                        "remove it, or set port25 = 'block'")
        created_from = _date(path, f"types.{tid}.created_from", t["created_from"])
    for word in [tid, *t["aliases"]]:
        if not isinstance(word, str) or word != word.lower():
            raise _fail(path, f"types.{tid}.aliases", f"alias {word!r} is not a lower-case string",
                        "write aliases in lower case")
        if word in seen_words:
            raise _fail(path, f"types.{tid}.aliases", f"'{word}' already names type '{seen_words[word]}'",
                        "give every type and alias a distinct name")
        seen_words[word] = tid
    return SubscriptionType(tid, t["name"], tuple(t["aliases"]), blocked, exemption, t.get("rule"), created_from,
                            when_flagged, _provenance(path, f"types.{tid}", t, sources))


def _parse_never_judged(path: str, top: dict[str, Any], sources: dict[str, Source]) -> tuple[NeverJudged, ...]:
    if "never_judged" not in top:
        return DEFAULT_NEVER_JUDGED
    out = []
    for nid, body in top["never_judged"].items():
        where = f"never_judged.{nid}"
        if not isinstance(body, dict):
            raise _fail(path, where, "not a table", f"write it as [{where}]")
        t = _take(body, path, where, {"name": (str, True), "prefixes": (list, False), "network": (str, False),
                                      "source": (str, False), "decision": (str, False)})
        if ("prefixes" in t) == ("network" in t):
            raise _fail(path, where, "needs prefixes or network, not both or neither",
                        f"write prefixes = [\"10.0.0.0/8\"] or network = \"{OWN_NETWORK}\"")
        if "network" in t:
            _choice(path, f"{where}.network", t["network"], (OWN_NETWORK,))
        prefixes = []
        for p in t.get("prefixes", []):
            try:
                prefixes.append(str(ipaddress.ip_network(p, strict=True)))
            except (TypeError, ValueError):
                raise _fail(path, f"{where}.prefixes", f"{p!r} is not a network",
                            "write prefixes such as 10.0.0.0/8 or fc00::/7, host bits zero") from None
        out.append(NeverJudged(nid, t["name"], tuple(prefixes), "network" in t,
                               _provenance(path, where, t, sources)))
    return tuple(out)


def _parse_exemption(path: str, top: dict[str, Any], sources: dict[str, Source]) -> ExemptionPath:
    if "exemption" not in top:
        return ExemptionPath()
    t = _take(top["exemption"], path, "exemption", {"path": (str, True), "min_age_days": (int, False),
                                                    "requires": (list, False), "source": (str, False),
                                                    "decision": (str, False)})
    requires = tuple(_choice(path, "exemption.requires", str(r), REQUIREMENTS) for r in t.get("requires", []))
    if t.get("min_age_days", 0) < 0:
        raise _fail(path, "exemption.min_age_days", "negative", "give the age in days, 0 or more")
    return ExemptionPath(t["path"], t.get("min_age_days", 0), requires, _provenance(path, "exemption", t, sources))


def _parse_change(path: str, top: dict[str, Any], sources: dict[str, Source]) -> tuple[ChangeApplies, Provenance]:
    if "change" not in top:
        return ChangeApplies.STOP_DEALLOCATE_START, NO_PROVENANCE
    t = _take(top["change"], path, "change", {"applies": (str, True), "source": (str, False),
                                              "decision": (str, False)})
    applies = ChangeApplies(_choice(path, "change.applies", t["applies"], tuple(ChangeApplies)))
    return applies, _provenance(path, "change", t, sources)


def parse_profile(text: str, path: str) -> Profile:
    """A profile from the text of a TOML file; `path` names the file in error messages."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}; fix the syntax") from None
    top = _take(doc, path, "profile file", {
        "profile": (dict, True), "kinds": (dict, True), "types": (dict, True), "sources": (dict, False),
        "never_judged": (dict, False), "exemption": (dict, False), "change": (dict, False)})
    head = _take(top["profile"], path, "profile", {
        "id": (str, True), "name": (str, True), "restricted_ports": (list, True),
        "never_restricted_ports": (list, False), "advice": (str, True),
        "dropped_protocols": (list, False), "dropped_protocols_source": (str, False),
        "account": (str, False), "source": (str, False), "decision": (str, False),
    })
    sources = _parse_sources(path, top)
    restricted = _ports(path, "profile.restricted_ports", head["restricted_ports"])
    never = _ports(path, "profile.never_restricted_ports", head.get("never_restricted_ports", []))
    if restricted & never:
        raise _fail(path, "profile.never_restricted_ports", f"ports {sorted(restricted & never)} are also restricted",
                    "a port is either restricted or never restricted")
    if not restricted:
        raise _fail(path, "profile.restricted_ports", "empty", "list at least one port, e.g. [25]")
    account = head.get("account", "subscription")
    if not account or account != account.lower() or not account.replace(" ", "").isalpha():
        raise _fail(path, "profile.account", f"{account!r} is not a lower-case word",
                    "write the provider's word for an account, e.g. account, project, tenancy")

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
        types[tid] = _parse_type(path, tid, body, seen_words, sources)
    if not types:
        raise _fail(path, "types", "empty", "define at least one [types.ID]")
    if not kinds:
        raise _fail(path, "kinds", "empty", "define at least one [kinds.ID]")
    dropped = tuple(_choice(path, "profile.dropped_protocols", p, tuple(TUNNEL_PROTOCOLS))
                    for p in head.get("dropped_protocols", []))
    if dropped and not head.get("dropped_protocols_source"):
        raise _fail(path, "profile.dropped_protocols_source", "missing", "say where the platform documents it")
    exemption = _parse_exemption(path, top, sources)
    if (exemption.min_age_days or exemption.requires) and not any(t.exemption in OPERATOR_GRANTED | SELF_GRANTED
                                                                  for t in types.values()):
        raise _fail(path, "exemption", "conditions for an exemption no type can have",
                    "remove min_age_days and requires, or give a type an exemption path")
    change, change_provenance = _parse_change(path, top, sources)
    return Profile(head["id"], head["name"], restricted, never, head["advice"], types, kinds, path,
                   dropped, head.get("dropped_protocols_source", ""), account,
                   _provenance(path, "profile", head, sources), _parse_never_judged(path, top, sources),
                   exemption, change, change_provenance, sources)
