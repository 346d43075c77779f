"""Policy profiles: what each subscription type and resource kind means, parsed from the text of a
policies/*.toml file (finding and reading the file is enforcer.state.profiles' job).

A profile is data. This module only parses and validates it; the semantics live in policy.py.
"""

from __future__ import annotations

import datetime
import ipaddress
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..errors import UserError


class Exemption(StrEnum):
    """How a subscription type that blocks port 25 gets an exemption. The names are the providers' paths; what
    the lab does with each is one of three behaviours (SELF_GRANTED, OPERATOR_GRANTED, REACTIVE)."""
    NOT_NEEDED = "not-needed"        # the type does not block port 25
    SELF_SERVICE = "self-service"    # Azure's diagnostic grants it
    SWITCH = "switch"                # a setting the owner turns on (Scaleway's security-group "Enable SMTP")
    SUPPORT_CASE = "support-case"    # granted by hand after a support case or ticket
    REQUEST_FORM = "request-form"    # granted by hand after a request form (AWS)
    SERVICE_LIMIT = "service-limit"  # granted by hand after a service-limit request (OCI)
    REACTIVE = "reactive"            # blocked only once the platform flags spam; lifted by the owner (OVH)
    NEVER = "never"


SELF_GRANTED = frozenset({Exemption.SELF_SERVICE, Exemption.SWITCH})
OPERATOR_GRANTED = frozenset({Exemption.SUPPORT_CASE, Exemption.REQUEST_FORM, Exemption.SERVICE_LIMIT})


class ChangeApplies(StrEnum):
    """When a change to an account (type, exemption, attributes) reaches a running resource."""
    STOP_DEALLOCATE_START = "stop-deallocate-start"  # Azure: a start from deallocated pulls the policy
    RESTART = "restart"                              # any start pulls it (a reboot)
    AT_ONCE = "at-once"                              # running resources follow the account at once


class Status(StrEnum):
    """How a rule's source knows it."""
    DOCUMENTED = "documented"                        # the provider's own page
    QUOTED = "quoted-by-third-party"                 # the provider's text, as someone else quotes it
    USER_REPORTED = "user-reported"
    UNDOCUMENTED = "undocumented"                    # no source says: the rule is the lab's decision


# What exemption conditions a profile may state, beyond the account's type.
REQUIREMENTS = ("verified", "first-invoice-paid")
OWN_NETWORK = "own"  # never_judged.*.network: the account's own networks (the inventory's VNet/VPC prefixes)


# Tunnel protocols a profile may drop, by name: IP protocol numbers (IPv4) and next-header values (IPv6).
TUNNEL_PROTOCOLS: dict[str, tuple[int, ...]] = {
    "ip-in-ip": (4, 94),   # IPv4 in IP (4), and the older IP-within-IP (94)
    "ipv6-in-ip": (41,),   # IPv6 in IP: 6in4, 6to4, ISATAP
    "gre": (47,),
}
PORT25_CHOICES = ("allow", "block")
SCOPE_CHOICES = ("subscription", "never")


@dataclass(frozen=True, slots=True)
class Source:
    """Where a rule comes from: the page, the date it was read, and how the page knows."""
    id: str
    url: str
    read: str  # YYYY-MM-DD
    status: Status
    quote: str = ""


@dataclass(frozen=True, slots=True)
class Provenance:
    source: Source | None = None
    decision: str = ""  # the lab's decision, where the source does not settle the rule

    @property
    def status(self) -> str:
        if self.source is None:
            return "-"
        return "lab decision" if self.source.status == Status.UNDOCUMENTED else str(self.source.status)


NO_PROVENANCE = Provenance()


def plural(word: str) -> str:
    return word[:-1] + "ies" if word.endswith("y") and word[-2:-1] not in ("a", "e", "i", "o", "u") else word + "s"


@dataclass(frozen=True, slots=True)
class SubscriptionType:
    id: str
    name: str
    aliases: tuple[str, ...]
    blocked_by_default: bool
    exemption: Exemption
    rule: int | None
    created_from: str | None = None  # blocked only for accounts created on or after this day (YYYY-MM-DD)
    when_flagged: bool = False       # blocked only while the platform flags the account (REACTIVE)
    provenance: Provenance = NO_PROVENANCE

    @property
    def exemptible(self) -> bool:
        return self.exemption in SELF_GRANTED | OPERATOR_GRANTED | {Exemption.REACTIVE}


@dataclass(frozen=True, slots=True)
class NeverJudged:
    """Destinations a profile never judges: fixed prefixes, or the account's own networks."""
    id: str
    name: str
    prefixes: tuple[str, ...]
    own_network: bool
    provenance: Provenance = NO_PROVENANCE


# A profile that states no never_judged tables keeps the lab's first decision (docs/azure-policy.md): the
# inventory's virtual networks are never judged.
DEFAULT_NEVER_JUDGED = (NeverJudged("own", "the lab's virtual networks", (), True),)


@dataclass(frozen=True, slots=True)
class ExemptionPath:
    """How the provider words its exemption path, and what the account must meet before it is granted."""
    path: str = ""          # the provider's words; empty: the lab's generic sentence for the kind
    min_age_days: int = 0
    requires: tuple[str, ...] = ()  # from REQUIREMENTS
    provenance: Provenance = NO_PROVENANCE


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of a profile, as `enforcer profile show` prints it."""
    id: str
    says: str
    provenance: Provenance


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
    account_word: str = "subscription"  # what the provider calls an account (the model's Subscription)
    ports_provenance: Provenance = NO_PROVENANCE
    never_judged: tuple[NeverJudged, ...] = DEFAULT_NEVER_JUDGED
    exemption_path: ExemptionPath = ExemptionPath()
    change_applies: ChangeApplies = ChangeApplies.STOP_DEALLOCATE_START
    change_provenance: Provenance = NO_PROVENANCE
    sources: dict[str, Source] = field(default_factory=dict)

    @property
    def accounts_word(self) -> str:
        """The account word in the plural: subscriptions, accounts, tenancies."""
        return plural(self.account_word)

    @property
    def ports_phrase(self) -> str:
        """'port 25', 'ports 25 and 465', 'ports 25, 465 and 587'."""
        ports = [str(p) for p in sorted(self.restricted_ports)]
        if len(ports) == 1:
            return f"port {ports[0]}"
        return f"ports {', '.join(ports[:-1])} and {ports[-1]}"

    @property
    def ports_are(self) -> str:
        """The verb that agrees with ports_phrase: 'port 25 is', 'ports 25 and 465 are'."""
        return "are" if len(self.restricted_ports) > 1 else "is"

    def rules(self) -> list[Rule]:
        """Every rule the profile states, each with its provenance."""
        never = ", ".join(map(str, sorted(self.never_restricted_ports)))
        out = [Rule("ports", f"{self.ports_phrase} restricted" + (f"; {never} never restricted" if never else ""),
                    self.ports_provenance)]
        for n in self.never_judged:
            where = "the account's own networks (VNet/VPC prefixes)" if n.own_network else ", ".join(n.prefixes)
            out.append(Rule(f"never-judged.{n.id}", f"never judged: {n.name}: {where}", n.provenance))
        for t in self.types.values():
            out.append(Rule(f"types.{t.id}", f"{t.name}: {type_says(self, t)}", t.provenance))
        out.append(Rule("exemption", exemption_words(self), self.exemption_path.provenance))
        out.append(Rule("change-applies", CHANGE_WORDS[self.change_applies], self.change_provenance))
        return out

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
            f"unknown {self.account_word} type '{word}' in profile '{self.id}'; "
            f"use one of: {', '.join(self.types)}"
        )

    def kind_named(self, word: str) -> ResourceKind:
        kind = self.kinds.get(word.strip().lower())
        if kind is None:
            raise UserError(
                f"unknown resource kind '{word}' in profile '{self.id}'; use one of: {', '.join(self.kinds)}"
            )
        return kind


CHANGE_WORDS = {
    ChangeApplies.STOP_DEALLOCATE_START: "at the resource's next stop, deallocate and start",
    ChangeApplies.RESTART: "at the resource's next restart",
    ChangeApplies.AT_ONCE: "at once, running resources included",
}
EXEMPTION_WORDS = {
    Exemption.NOT_NEEDED: "not needed",
    Exemption.SELF_SERVICE: "self-service diagnostic",
    Exemption.SWITCH: "a switch the owner turns on",
    Exemption.SUPPORT_CASE: "a support case the operator grants or refuses",
    Exemption.REQUEST_FORM: "a request form the operator grants or refuses",
    Exemption.SERVICE_LIMIT: "a service-limit request the operator grants or refuses",
    Exemption.REACTIVE: "no block until the platform flags spam; the owner lifts it",
    Exemption.NEVER: "never",
}


def type_says(profile: Profile, t: SubscriptionType) -> str:
    """Who of this type is blocked, and how an exemption is had, in one phrase."""
    if not t.blocked_by_default:
        return f"{profile.ports_phrase} not blocked" + _azure_rule(t)
    who = f"blocked if created on or after {t.created_from}" if t.created_from else \
        "blocked while flagged for spam" if t.when_flagged else "blocked"
    return f"{who}; exemption: {EXEMPTION_WORDS[t.exemption]}" + _azure_rule(t)


def _azure_rule(t: SubscriptionType) -> str:
    """The Azure profiles name the numbered rule of docs/azure-policy.md a type encodes (their sources)."""
    return f" (docs/azure-policy.md rule {t.rule})" if t.rule is not None and t.provenance.source is None else ""


def exemption_words(profile: Profile) -> str:
    """The exemption path in the provider's words, with its conditions; or the kinds the types use."""
    kinds = sorted({t.exemption for t in profile.types.values() if t.blocked_by_default}, key=list(Exemption).index)
    words = profile.exemption_path.path or "; ".join(EXEMPTION_WORDS[k] for k in kinds)
    return words + exemption_conditions(profile)


def exemption_paths(profile: Profile) -> tuple[str, bool]:
    """(the ways a blocked account is exempted, with the conditions; whether some blocked types have none), or
    ('', True) where no blocked type can be exempted: how a person is told where to ask."""
    blocked = [t for t in profile.types.values() if t.blocked_by_default]
    kinds = sorted({t.exemption for t in blocked if t.exemptible}, key=list(Exemption).index)
    if not kinds:
        return "", True
    words = profile.exemption_path.path or " or ".join(EXEMPTION_WORDS[k] for k in kinds)
    return words + exemption_conditions(profile), any(not t.exemptible for t in blocked)


def exemption_conditions(profile: Profile) -> str:
    """' (only once the account is at least 30 days old and its first invoice is paid)', or ''."""
    e = profile.exemption_path
    conditions = [f"the {profile.account_word} is at least {e.min_age_days} days old"] if e.min_age_days else []
    conditions += [{"verified": "its identity is verified",
                    "first-invoice-paid": "its first invoice is paid"}[r] for r in e.requires]
    return f" (only once {' and '.join(conditions)})" if conditions else ""


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
