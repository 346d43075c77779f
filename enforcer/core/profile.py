"""Policy profiles: what each subscription type and resource kind means, as values (profile_format.py parses
them from the text of a policies/*.toml file; finding and reading the file is enforcer.state.profiles' job).

A profile is data: this module holds the model and the words it is told in; the semantics live in policy.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

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


# Tunnel protocols a profile may drop, by name: IP protocol numbers (IPv4) and next-header values (IPv6).
TUNNEL_PROTOCOLS: dict[str, tuple[int, ...]] = {
    "ip-in-ip": (4, 94),   # IPv4 in IP (4), and the older IP-within-IP (94)
    "ipv6-in-ip": (41,),   # IPv6 in IP: 6in4, 6to4, ISATAP
    "gre": (47,),
}


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

