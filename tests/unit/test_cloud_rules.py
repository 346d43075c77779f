"""Every rule of every cloud profile (issue 10), checked at the decide() level against the facts of
docs/clouds-sources.md, written out here by hand: a rule the profile states and this file does not know fails,
and so does a rule whose source differs from the one the facts were taken from.

Test ids read PROFILE:RULE[SOURCE], e.g. hetzner:exemption[limit-request].
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from enforcer.core import lifecycle
from enforcer.core.inventory import Inventory
from enforcer.core.policy import Code, decide
from enforcer.core.profile import Profile
from enforcer.errors import UserError
from enforcer.state.profiles import available_profiles, load_profile

TODAY = datetime.date(2026, 11, 27)
INTERNET = {4: "198.19.25.25", 6: "2001:db8:ffff::25"}
SOURCE = ["198.18.1.10", "2001:db8:1::10"]
VPC_DESTINATION = "198.18.1.99"  # inside the account's own network

CLOUDS = ["aws", "gcp", "oci", "digitalocean", "hetzner", "linode", "scaleway", "ibm-classic", "alibaba",
          "upcloud", "ovh", "vultr"]

# What the sources say, per profile: (source id, fact). Facts by rule:
#   ports: (blocked ports, ports never restricted, a port left alone)
#   never-judged.ID: destinations never judged
#   types.ID: [(account attributes, allowed?, code)]
#   exemption: (path, attributes that qualify, (attributes that do not, what the refusal says) or None)
#   change-applies: "at-once" | "restart"
R1918 = ["10.1.2.3", "172.16.9.9", "192.168.1.1"]
FACTS: dict[str, dict[str, tuple[str, Any]]] = {
    "aws": {
        "ports": ("kc-jp", ([25], [], 587)),
        "never-judged.vpc": ("exempt-destinations", [VPC_DESTINATION]),
        "never-judged.rfc1918": ("exempt-destinations", R1918),
        "never-judged.rfc6598": ("exempt-destinations", ["100.64.0.1", "100.127.255.254"]),
        "never-judged.rfc4193": ("exempt-destinations", ["fd00::25", "fc00::1"]),
        "types.account": ("ec2-guide", [({}, False, Code.BLOCKED_EXEMPTIBLE)]),
        "exemption": ("kc-jp", ("operator", {}, None)),
        "change-applies": ("timing", "at-once"),
    },
    "gcp": {
        "ports": ("sending-mail", ([25], [465, 587], 2525)),
        "never-judged.vpc": ("sending-mail", [VPC_DESTINATION]),
        "types.project": ("marketplace", [({}, False, Code.BLOCKED_NEVER_EXEMPTIBLE)]),
        "exemption": ("no-path", ("never", {}, None)),
        "change-applies": ("no-path", "at-once"),
    },
    "oci": {
        "ports": ("note", ([25], [], 587)),
        "never-judged.vcn": ("silent", [VPC_DESTINATION]),
        "types.paid": ("note", [({"created": "2021-06-23"}, True, Code.CREATED_BEFORE_CUTOFF),
                                ({"created": "2021-06-24"}, False, Code.BLOCKED_EXEMPTIBLE)]),
        "types.free": ("free-refused", [({"created": "2021-06-23"}, True, Code.CREATED_BEFORE_CUTOFF),
                                        ({"created": "2022-01-01"}, False, Code.BLOCKED_NEVER_EXEMPTIBLE)]),
        "exemption": ("note", ("operator", {"type": "paid", "created": "2022-01-01"},
                               ({"type": "free", "created": "2022-01-01"}, "never exempted"))),
        "change-applies": ("silent", "at-once"),
    },
    "digitalocean": {
        "ports": ("limits", ([25, 465, 587], [], 2525)),
        "never-judged.vpc": ("silent", [VPC_DESTINATION]),
        "types.account": ("limits", [({}, False, Code.BLOCKED_NEVER_EXEMPTIBLE)]),
        "exemption": ("refused", ("never", {}, None)),
        "change-applies": ("silent", "at-once"),
    },
    "hetzner": {
        "ports": ("faq", ([25, 465], [587], 2525)),
        "never-judged.private": ("silent", [VPC_DESTINATION]),
        "types.account": ("faq", [({}, False, Code.BLOCKED_EXEMPTIBLE)]),
        "exemption": ("limit-request", ("operator", {"created": "2026-10-28", "first_invoice_paid": True},
                                        ({"created": "2026-10-29", "first_invoice_paid": True}, "29 days old"))),
        "change-applies": ("silent", "at-once"),
    },
    "linode": {
        "ports": ("guide", ([25, 465, 587], [], 2525)),
        "never-judged.private": ("silent", [VPC_DESTINATION]),
        "types.account": ("cloud-manager", [({"created": "2019-11-05"}, True, Code.CREATED_BEFORE_CUTOFF),
                                            ({"created": "2019-11-06"}, False, Code.BLOCKED_EXEMPTIBLE)]),
        "exemption": ("ticket", ("operator", {"created": "2020-01-01"}, None)),
        "change-applies": ("silent", "at-once"),
    },
    "scaleway": {
        "ports": ("send-emails", ([25, 465, 587], [], 2525)),
        "never-judged.private": ("silent", [VPC_DESTINATION]),
        "types.organization": ("send-emails", [({}, False, Code.BLOCKED_EXEMPTIBLE)]),
        "exemption": ("switch", ("self", {"verified": True}, ({}, "identity is not verified"))),
        "change-applies": ("at-once", "at-once"),
    },
    "ibm-classic": {
        "ports": ("faq", ([25], [465, 587], 2525)),
        "never-judged.private": ("silent", [VPC_DESTINATION]),
        "types.account": ("port25", [({"created": "2015-10-27"}, True, Code.CREATED_BEFORE_CUTOFF),
                                     ({"created": "2015-10-28"}, False, Code.BLOCKED_NEVER_EXEMPTIBLE)]),
        "exemption": ("silent", ("never", {"created": "2016-01-01"}, None)),
        "change-applies": ("silent", "at-once"),
    },
    "alibaba": {
        "ports": ("ecs-jp", ([25], [465, 587], 2525)),
        "never-judged.vpc": ("silent", [VPC_DESTINATION]),
        "types.account": ("ecs-jp", [({}, False, Code.BLOCKED_EXEMPTIBLE)]),
        "exemption": ("ticket", ("operator", {}, None)),
        "change-applies": ("silent", "at-once"),
    },
    "upcloud": {
        "ports": ("firewall", ([25], [], 587)),
        "never-judged.sdn": ("private", [VPC_DESTINATION]),
        "types.paid": ("firewall", [({}, False, Code.BLOCKED_EXEMPTIBLE)]),
        "types.trial": ("trial", [({}, False, Code.BLOCKED_NEVER_EXEMPTIBLE)]),
        "exemption": ("unlock", ("operator", {"type": "paid", "verified": True},
                                 ({"type": "paid"}, "identity is not verified"))),
        "change-applies": ("silent", "at-once"),
    },
    "ovh": {
        "ports": ("antispam", ([25], [], 587)),
        "never-judged.private": ("silent", [VPC_DESTINATION]),
        "types.account": ("antispam", [({}, True, Code.NOT_FLAGGED),
                                       ({"flagged": True}, False, Code.BLOCKED_EXEMPTIBLE)]),
        "exemption": ("unblock", ("reactive", {"flagged": True}, None)),
        "change-applies": ("silent", "at-once"),
    },
    "vultr": {
        "ports": ("blocked", ([25], [], 587)),
        "never-judged.vpc": ("silent", [VPC_DESTINATION]),
        "types.account": ("new-accounts", [({}, False, Code.BLOCKED_EXEMPTIBLE)]),
        "exemption": ("ticket", ("operator", {}, None)),
        "change-applies": ("restart", "restart"),
    },
}
PROFILES = {pid: load_profile(pid) for pid in CLOUDS}
CASES = [(pid, rule.id) for pid in CLOUDS for rule in PROFILES[pid].rules()]


def case_id(case: tuple[str, str]) -> str:
    pid, rule_id = case
    source = FACTS.get(pid, {}).get(rule_id, ("?",))[0]
    return f"{pid}:{rule_id}[{source}]"


def account(profile: Profile, attributes: dict[str, Any]) -> Inventory:
    """Account a1 with a VPC 198.18.1.0/24 + 2001:db8:1::/64 and one running resource vm1 in it."""
    attributes = dict(attributes)
    type_word = attributes.pop("type", next(iter(profile.types)))
    t = profile.types[type_word]
    if t.created_from and "created" not in attributes:
        attributes["created"] = t.created_from
    inv, _ = lifecycle.add_subscription(Inventory(profile=profile.id), profile, "a1", type_word, **attributes)
    inv, _ = lifecycle.add_vnet(inv, profile, "vpc", "a1", ["198.18.1.0/24", "2001:db8:1::/64"])
    kind = next(k for k, v in profile.kinds.items() if v.follows_subscription)
    inv, _ = lifecycle.add_resource(inv, profile, "vm1", "a1", kind, SOURCE)
    return inv


def blocked_account(profile: Profile) -> Inventory:
    """An account of the profile's first type, blocked: created on the cut-off day, flagged if that is the rule."""
    t = next(iter(profile.types.values()))
    return account(profile, {"flagged": True} if t.when_flagged else {})


def to_internet(inv: Inventory, profile: Profile, port: int = 25, fam: int = 4) -> Any:
    return decide(inv, profile, SOURCE[0 if fam == 4 else 1], INTERNET[fam], port)


def test_every_cloud_profile_is_in_the_facts_and_loads():
    assert set(CLOUDS) <= set(available_profiles())
    assert set(FACTS) == set(CLOUDS)


def test_vultr_rests_on_users_only():
    assert {s.status for s in PROFILES["vultr"].sources.values()} <= {"user-reported", "undocumented"}
    assert "user-reported" in PROFILES["vultr"].name


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_rule(case):
    pid, rule_id = case
    profile = PROFILES[pid]
    assert rule_id in FACTS[pid], f"{pid} states rule {rule_id}, which the facts here do not know"
    source_id, fact = FACTS[pid][rule_id]
    rule = next(r for r in profile.rules() if r.id == rule_id)
    assert rule.provenance.source is not None and rule.provenance.source.id == source_id
    assert rule.provenance.source.url.startswith("http") and rule.provenance.source.read == "2026-11-27"
    if rule.provenance.source.status == "undocumented":
        assert rule.provenance.decision, "an undocumented rule states the lab's decision"
    kind = rule_id.split(".")[0]
    CHECKS[kind](profile, rule_id, fact)


def check_ports(profile: Profile, _: str, fact: tuple[list[int], list[int], int]) -> None:
    blocked, never, other = fact
    inv = blocked_account(profile)
    assert sorted(profile.restricted_ports) == blocked
    for fam in (4, 6):
        for port in blocked:
            assert not to_internet(inv, profile, port, fam).allow, (port, fam)
        for port in never:
            assert to_internet(inv, profile, port, fam).code == Code.PORT_NEVER_RESTRICTED
        assert to_internet(inv, profile, other, fam).allow


def check_never_judged(profile: Profile, _: str, destinations: list[str]) -> None:
    inv = blocked_account(profile)
    assert not to_internet(inv, profile).allow
    for destination in destinations:
        v = decide(inv, profile, SOURCE[1 if ":" in destination else 0], destination, 25)
        assert (v.allow, v.code) == (True, Code.INTERNAL_DESTINATION), (destination, v.reason)


def check_type(profile: Profile, rule_id: str, cases: list[tuple[dict[str, Any], bool, Code]]) -> None:
    type_id = rule_id.split(".", 1)[1]
    for attributes, allow, code in cases:
        v = to_internet(account(profile, {"type": type_id, **attributes}), profile)
        assert (v.allow, v.code) == (allow, code), (attributes, v.reason)


def check_exemption(profile: Profile, _: str, fact: tuple[str, dict[str, Any], Any]) -> None:
    path, qualifying, refused = fact
    inv = account(profile, qualifying)
    if path == "never":
        with pytest.raises(UserError, match="never exempted"):
            lifecycle.grant_exemption(inv, profile, "a1", "T-1", today=TODAY)
        _, d = lifecycle.diagnose(inv, profile, "a1", today=TODAY)
        assert d.outcome == "refused" and profile.advice in d.lines[-1]
        assert not to_internet(inv, profile).allow
        return
    blocked = to_internet(inv, profile)
    assert not blocked.allow and blocked.code == Code.BLOCKED_EXEMPTIBLE
    if path == "operator":
        assert "enforcer exemption grant a1 --case ID" in blocked.reason
        assert profile.exemption_path.path in blocked.reason  # the provider's words
        inv = lifecycle.grant_exemption(inv, profile, "a1", "T-1", today=TODAY)[0]
    else:  # the owner's own path: a switch, or lifting a reactive block
        assert "enforcer exemption request a1" in blocked.reason
        inv = lifecycle.diagnose(inv, profile, "a1", today=TODAY)[0]
    if profile.change_applies != "at-once":
        inv = lifecycle.restart(inv, profile, "vm1")[0]
    assert to_internet(inv, profile).allow
    if refused is not None:
        attributes, says = refused
        inv = account(profile, attributes)
        if path == "operator":
            with pytest.raises(UserError, match=says):
                lifecycle.grant_exemption(inv, profile, "a1", "T-1", today=TODAY)
        else:
            inv, d = lifecycle.diagnose(inv, profile, "a1", today=TODAY)
            assert d.outcome == "refused" and says in d.lines[-1]
        assert not to_internet(inv, profile).allow


def check_change(profile: Profile, _: str, applies: str) -> None:
    """A change to the account (here: an exemption, or lifting a flag; else a new creation day) reaches vm1 at once,
    or only at its restart."""
    assert profile.change_applies == applies
    inv = blocked_account(profile)
    t = next(iter(profile.types.values()))
    if t.exemption == "reactive":
        inv, _ = lifecycle.diagnose(inv, profile, "a1", today=TODAY)
    elif t.exemption in ("support-case", "request-form", "service-limit"):
        inv = lifecycle.set_attributes(inv, profile, "a1", created="2020-01-01", first_invoice_paid=True,
                                       verified=True)[0]
        inv, _ = lifecycle.grant_exemption(inv, profile, "a1", "T-1", today=TODAY)
    elif t.created_from:
        inv, _ = lifecycle.set_attributes(inv, profile, "a1", created="2000-01-01")
    else:
        inv, _ = lifecycle.set_attributes(inv, profile, "a1", verified=True)
        inv, _ = lifecycle.diagnose(inv, profile, "a1", today=TODAY)
    if t.exemption == "never" and not t.created_from:
        assert not to_internet(inv, profile).allow  # nothing about such an account lifts the block
        return
    assert to_internet(inv, profile).allow == (applies == "at-once")
    inv, _ = lifecycle.restart(inv, profile, "vm1")
    assert to_internet(inv, profile).allow


CHECKS = {"ports": check_ports, "never-judged": check_never_judged, "types": check_type,
          "exemption": check_exemption, "change-applies": check_change}
