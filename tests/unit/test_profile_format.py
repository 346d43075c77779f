"""The profile format beyond Azure (issue 10): restricted ports, destinations never judged, account attributes and
the rules over them, exemption paths with their conditions, when a change reaches a running resource, and every
rule's provenance. Checked on a made-up profile (the real ones have their own tests), at the decide() level."""

from __future__ import annotations

import datetime
import json

import pytest

from enforcer.core import lifecycle
from enforcer.core.converge import converge
from enforcer.core.inventory import Inventory
from enforcer.core.policy import Code, decide, internal_destinations
from enforcer.core.profile import ChangeApplies, Exemption
from enforcer.core.profile_format import parse_profile
from enforcer.core.validate import validate
from enforcer.core.verdicts import pack
from enforcer.dataplane.keeper import Keeper
from enforcer.errors import UserError
from enforcer.state.rows import to_doc
from enforcer.state.store import Store

INTERNET = "198.19.25.25"
TODAY = datetime.date(2026, 11, 27)

# A made-up provider with one of each new feature. Its sources are placeholders (example.org).
LAB_CLOUD = """
[profile]
id = "labcloud"
name = "Lab Cloud"
account = "account"
restricted_ports = [25, 465]
never_restricted_ports = [587]
advice = "use a relay on port 587"
source = "ports"

[sources.ports]
url = "https://example.org/ports"
read = 2026-11-27
status = "documented"
quote = "ports 25 and 465 are blocked"

[sources.silent]
url = "https://example.org/faq"
read = "2026-11-27"
status = "undocumented"

[never_judged.rfc1918]
name = "RFC 1918"
prefixes = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
source = "ports"

[never_judged.ula]
name = "RFC 4193"
prefixes = ["fc00::/7"]
source = "ports"

[never_judged.own]
name = "the account's VPC"
network = "own"
source = "silent"
decision = "every VPC of the lab"

[exemption]
path = "a limit request, once the account is 30 days old and its first invoice is paid"
min_age_days = 30
requires = ["first-invoice-paid"]
source = "ports"

[change]
applies = "at-once"
source = "silent"
decision = "at once: the platform's firewall"

[kinds.vm]
name = "server"
scope = "subscription"

[types.standard]
name = "standard account"
aliases = ["std"]
port25 = "block"
exemption = "support-case"
source = "ports"

[types.new]
name = "account created from 2020-01-01 on"
aliases = []
port25 = "block"
exemption = "never"
created_from = 2020-01-01
source = "ports"

[types.watched]
name = "account blocked when flagged"
aliases = []
port25 = "block"
exemption = "reactive"
when_flagged = true
source = "ports"

[types.kyc]
name = "account with a switch"
aliases = []
port25 = "block"
exemption = "switch"
source = "ports"
"""
P = parse_profile(LAB_CLOUD, "policies/labcloud.toml")
RESTARTING = parse_profile(LAB_CLOUD.replace('applies = "at-once"', 'applies = "restart"'), "policies/labcloud.toml")
AZURE_LIKE = parse_profile(LAB_CLOUD.replace('applies = "at-once"', 'applies = "stop-deallocate-start"'),
                           "policies/labcloud.toml")


def lab(sub_type: str, profile=P, **attributes) -> Inventory:
    inv, _ = lifecycle.add_subscription(Inventory(profile=profile.id), profile, "a1", sub_type, **attributes)
    inv, _ = lifecycle.add_vnet(inv, profile, "vpc", "a1", ["198.18.1.0/24", "2001:db8:1::/64"])
    inv, _ = lifecycle.add_resource(inv, profile, "vm1", "a1", "vm", ["198.18.1.10", "2001:db8:1::10"])
    return inv


def step(op, inv, *args, profile=P, **kw) -> Inventory:
    return op(inv, profile, *args, **kw)[0]


# ---------------------------------------------------------------- the format


def test_every_rule_carries_its_provenance():
    rules = {r.id: r for r in P.rules()}
    assert set(rules) == {"ports", "never-judged.rfc1918", "never-judged.ula", "never-judged.own", "types.standard",
                          "types.new", "types.watched", "types.kyc", "exemption", "change-applies"}
    assert rules["ports"].provenance.source.url == "https://example.org/ports"
    assert rules["ports"].provenance.source.read == "2026-11-27"
    assert rules["ports"].provenance.status == "documented"
    assert rules["change-applies"].provenance.status == "lab decision"
    assert rules["change-applies"].provenance.decision == "at once: the platform's firewall"
    assert rules["ports"].says == "ports 25 and 465 restricted; 587 never restricted"
    assert "2020-01-01" in rules["types.new"].says
    assert P.change_applies == ChangeApplies.AT_ONCE and P.account_word == "account"


def test_a_profile_without_the_new_tables_keeps_azure_s_model():
    azure_like = parse_profile(LAB_CLOUD.split("[sources.ports]")[0].replace('source = "ports"', "")
                               + LAB_CLOUD[LAB_CLOUD.index("[kinds.vm]"):LAB_CLOUD.index("[types.new]")]
                               .replace('source = "ports"', ""), "policies/labcloud.toml")
    assert azure_like.change_applies == ChangeApplies.STOP_DEALLOCATE_START
    assert [n.own_network for n in azure_like.never_judged] == [True]
    assert azure_like.exemption_path.path == ""


@pytest.mark.parametrize("edit, key, fix", [
    (lambda t: t.replace('source = "silent"\ndecision = "every VPC of the lab"', 'source = "silent"'),
     "never_judged.own.decision", "say what the lab decided"),
    (lambda t: t.replace('source = "ports"\n\n[sources.ports]', 'source = "nowhere"\n\n[sources.ports]'),
     "profile.source", "use one of: ports, silent"),
    (lambda t: t.replace("read = 2026-11-27", 'read = "27.11.2026"'), "sources.ports.read", "YYYY-MM-DD"),
    (lambda t: t.replace('status = "documented"', 'status = "rumour"'), "sources.ports.status", "use one of"),
    (lambda t: t.replace('url = "https://example.org/ports"', 'url = "example.org"'), "sources.ports.url",
     "https://"),
    (lambda t: t.replace('network = "own"', 'network = "own"\nprefixes = ["10.0.0.0/8"]'), "never_judged.own",
     "not both"),
    (lambda t: t.replace('network = "own"', 'network = "theirs"'), "never_judged.own.network", "use one of: own"),
    (lambda t: t.replace('"fc00::/7"', '"fc00::1/7"'), "never_judged.ula.prefixes", "host bits zero"),
    (lambda t: t.replace("when_flagged = true\n", ""), "types.watched.when_flagged", "together"),
    (lambda t: t.replace("created_from = 2020-01-01", "created_from = 2020-13-01"), "not valid TOML", "syntax"),
    (lambda t: t.replace("created_from = 2020-01-01", 'created_from = "2020-1-1"'), "types.new.created_from",
     "YYYY-MM-DD"),
    (lambda t: t.replace('requires = ["first-invoice-paid"]', 'requires = ["rich"]'), "exemption.requires",
     "use one of: verified, first-invoice-paid"),
    (lambda t: t.replace('applies = "at-once"', 'applies = "sometime"'), "change.applies", "use one of"),
    (lambda t: t.replace('account = "account"', 'account = "Tenancy!"'), "profile.account", "lower-case"),
    (lambda t: t.replace('exemption = "support-case"', 'exemption = "prayer"'), "types.standard.exemption",
     "use one of"),
])
def test_a_malformed_new_key_names_file_key_and_fix(edit, key, fix):
    with pytest.raises(UserError) as err:
        parse_profile(edit(LAB_CLOUD), "policies/labcloud.toml")
    message = str(err.value)
    assert message.startswith("policies/labcloud.toml: ") and key in message and fix in message, message
    assert "\n" not in message


# ---------------------------------------------------------------- ports and destinations


def test_every_restricted_port_is_judged_and_the_others_pass():
    inv = lab("standard")
    for port in (25, 465):
        v = decide(inv, P, "198.18.1.10", INTERNET, port)
        assert (v.allow, v.code) == (False, Code.BLOCKED_EXEMPTIBLE)
        assert "ports 25 and 465" in v.reason and "a limit request" in v.reason
    assert decide(inv, P, "198.18.1.10", INTERNET, 587).code == Code.PORT_NEVER_RESTRICTED
    assert decide(inv, P, "198.18.1.10", INTERNET, 2525).code == Code.PORT_NOT_RESTRICTED


@pytest.mark.parametrize("destination, named", [("10.9.8.7", "RFC 1918"), ("192.168.1.1", "RFC 1918"),
                                                ("fd00::25", "RFC 4193"), ("198.18.1.99", "VNet 'vpc'")])
def test_fixed_prefixes_and_the_own_network_are_never_judged(destination, named):
    inv = lab("standard")
    v = decide(inv, P, "198.18.1.10", destination, 25)
    assert (v.allow, v.code) == (True, Code.INTERNAL_DESTINATION) and named in v.reason
    assert "10.0.0.0/8" in internal_destinations(inv, P) and "198.18.1.0/24" in internal_destinations(inv, P)


def test_a_profile_that_judges_the_own_network_judges_the_vnets_too():
    judging = parse_profile(LAB_CLOUD.replace('network = "own"', 'prefixes = ["100.64.0.0/10"]'),
                            "policies/labcloud.toml")
    inv = lab("standard", profile=judging)
    assert decide(inv, judging, "198.18.1.10", "198.18.1.99", 25).code == Code.BLOCKED_EXEMPTIBLE
    assert "198.18.1.0/24" not in internal_destinations(inv, judging)  # the kernel rules queue them too


# ---------------------------------------------------------------- who is blocked: account attributes


def test_creation_day_cut_off_is_inclusive():
    assert decide(lab("new", created="2019-12-31"), P, "198.18.1.10", INTERNET, 25).code == \
        Code.CREATED_BEFORE_CUTOFF
    v = decide(lab("new", created=datetime.date(2020, 1, 1)), P, "198.18.1.10", INTERNET, 25)
    assert (v.allow, v.code) == (False, Code.BLOCKED_NEVER_EXEMPTIBLE) and "never exempted" in v.reason


def test_an_account_the_cut_off_judges_needs_a_creation_day():
    with pytest.raises(UserError, match="account 'a1' has no creation day.*2020-01-01.*created: YYYY-MM-DD"):
        lab("new")
    with pytest.raises(UserError, match="created: '2020-02-30' is not a day; write it as YYYY-MM-DD"):
        lab("new", created="2020-02-30")


def test_reactive_block_follows_the_flag_and_the_owner_lifts_it():
    inv = lab("watched")
    assert decide(inv, P, "198.18.1.10", INTERNET, 25).code == Code.NOT_FLAGGED
    inv = step(lifecycle.set_attributes, inv, "a1", flagged=True)
    v = decide(inv, P, "198.18.1.10", INTERNET, 25)
    assert (v.allow, v.code) == (False, Code.BLOCKED_EXEMPTIBLE)
    assert "flagged for spam" in v.reason and "enforcer exemption request a1" in v.reason
    with pytest.raises(UserError, match="flagged for spam; its owner lifts that"):
        lifecycle.grant_exemption(inv, P, "a1", "C1", today=TODAY)
    inv, d = lifecycle.diagnose(inv, P, "a1")
    assert d.outcome == "granted" and not inv.subscriptions["a1"].flagged
    assert decide(inv, P, "198.18.1.10", INTERNET, 25).allow


# ---------------------------------------------------------------- exemption paths and their conditions


def test_operator_granted_exemption_waits_for_age_and_paid_invoice():
    inv = lab("standard", created="2026-11-01")
    with pytest.raises(UserError, match="does not qualify.*26 days old, not yet 30; its first invoice is not paid"):
        lifecycle.grant_exemption(inv, P, "a1", "T-1", today=TODAY)
    inv = step(lifecycle.set_attributes, inv, "a1", first_invoice_paid=True)
    later = TODAY + datetime.timedelta(days=4)
    inv = step(lifecycle.grant_exemption, inv, "a1", "T-1", today=later)
    assert decide(inv, P, "198.18.1.10", INTERNET, 465).code == Code.EXEMPT  # at once: no restart


def test_operator_granted_exemption_needs_a_creation_day_to_judge_the_age():
    with pytest.raises(UserError, match="creation day is unknown.*enforcer subscription set a1 --created"):
        lifecycle.grant_exemption(lab("standard", first_invoice_paid=True), P, "a1", "T-1", today=TODAY)


def test_switch_needs_what_the_profile_requires():
    kyc = parse_profile(LAB_CLOUD.replace('requires = ["first-invoice-paid"]', 'requires = ["verified"]')
                        .replace("min_age_days = 30\n", ""), "policies/labcloud.toml")
    inv = lab("kyc", profile=kyc)
    inv, d = lifecycle.diagnose(inv, kyc, "a1")
    assert d.outcome == "refused" and "identity is not verified" in d.lines[-1]
    inv = step(lifecycle.set_attributes, inv, "a1", verified=True, profile=kyc)
    inv, d = lifecycle.diagnose(inv, kyc, "a1")
    assert d.outcome == "granted" and inv.subscriptions["a1"].exempt_via == "switch"
    assert decide(inv, kyc, "198.18.1.10", INTERNET, 25).code == Code.EXEMPT


def test_never_exempted_type_refuses_with_the_advice():
    inv = lab("new", created="2021-01-01")
    with pytest.raises(UserError, match="never exempted; use a relay on port 587"):
        lifecycle.grant_exemption(inv, P, "a1", "T-1", today=TODAY)
    _, d = lifecycle.diagnose(inv, P, "a1")
    assert d.outcome == "refused" and "use a relay on port 587" in d.lines[-1]


# ---------------------------------------------------------------- when a change reaches a running resource


def test_at_once_reaches_running_resources_without_a_restart():
    inv = lab("new", created="2019-01-01")
    assert decide(inv, P, "198.18.1.10", INTERNET, 25).allow
    inv, lines = lifecycle.set_attributes(inv, P, "a1", created="2020-06-01")
    assert not decide(inv, P, "198.18.1.10", INTERNET, 25).allow
    assert "applied at once (profile 'labcloud') to running: vm1" in lines


def test_restart_profile_picks_the_change_up_at_any_restart():
    inv = lab("new", profile=RESTARTING, created="2019-01-01")
    inv, lines = lifecycle.set_attributes(inv, RESTARTING, "a1", created="2020-06-01")
    v = decide(inv, RESTARTING, "198.18.1.10", INTERNET, 25)
    assert v.allow and "the change applies at its next restart" in v.reason  # the snapshot it pulled
    assert any("until restarted: vm1" in line for line in lines)
    inv = step(lifecycle.stop, inv, "vm1", profile=RESTARTING)
    inv = step(lifecycle.start, inv, "vm1", profile=RESTARTING)   # a plain stop and start is enough here
    assert not decide(inv, RESTARTING, "198.18.1.10", INTERNET, 25).allow


def test_stop_deallocate_start_profile_keeps_the_snapshot_over_a_plain_stop():
    inv = lab("watched", profile=AZURE_LIKE)
    inv = step(lifecycle.set_attributes, inv, "a1", flagged=True, profile=AZURE_LIKE)
    inv = step(lifecycle.stop, inv, "vm1", profile=AZURE_LIKE)
    inv = step(lifecycle.start, inv, "vm1", profile=AZURE_LIKE)
    v = decide(inv, AZURE_LIKE, "198.18.1.10", INTERNET, 25)
    assert v.allow and "was not flagged for spam" in v.reason
    inv = step(lifecycle.restart, inv, "vm1", profile=AZURE_LIKE)
    assert not decide(inv, AZURE_LIKE, "198.18.1.10", INTERNET, 25).allow


def test_compiled_table_tells_pulls_of_different_attributes_apart():
    """The table memoises assess() on the pulled fields: two resources of one account that pulled before and after
    a change of its creation day must not share an entry."""
    inv = lab("new", profile=RESTARTING, created="2019-01-01")
    inv = step(lifecycle.set_attributes, inv, "a1", created="2020-06-01", profile=RESTARTING)
    inv = step(lifecycle.add_resource, inv, "vm2", "a1", "vm", ["198.18.1.11"], profile=RESTARTING)
    keeper = Keeper(RESTARTING)
    keeper.fill(inv)
    view = keeper.view()
    assert keeper.verdict(view, pack("198.18.1.10")).allow and not keeper.verdict(view, pack("198.18.1.11")).allow


# ---------------------------------------------------------------- inventory files and the state


def test_inventory_file_carries_the_account_attributes():
    doc = {"profile": "labcloud",
           "subscriptions": [{"name": "a1", "type": "standard", "created": datetime.date(2026, 1, 5),
                              "first_invoice_paid": True, "exempt": True},
                             {"name": "a2", "type": "watched", "flagged": True},
                             {"name": "a3", "type": "new", "created": "2019-05-05"}]}
    inv, _ = converge(Inventory(profile="labcloud"), P, doc, "lab.yml", today=TODAY)
    a1 = inv.subscriptions["a1"]
    assert (a1.created, a1.first_invoice_paid, a1.exempt) == ("2026-01-05", True, True)
    assert inv.subscriptions["a2"].flagged and inv.subscriptions["a3"].created == "2019-05-05"
    validate(inv, P)


@pytest.mark.parametrize("entry, message", [
    ({"name": "a1", "type": "new", "created": "yesterday"},
     "lab.yml: subscription 'a1': created: 'yesterday' is not a day; write it as YYYY-MM-DD"),
    ({"name": "a1", "type": "new"}, "lab.yml: subscription 'a1': account 'a1' has no creation day"),
    ({"name": "a1", "type": "standard", "flagged": "yes"}, "lab.yml: subscriptions[0]: flagged: expected true or"),
    ({"name": "a1", "type": "watched", "exempt": True}, "write flagged: true or false instead"),
    ({"name": "a1", "type": "standard", "created": "2026-11-20", "exempt": True}, "not yet 30"),
])
def test_bad_account_attributes_in_a_file_are_one_line_naming_file_key_and_fix(entry, message):
    with pytest.raises(UserError) as err:
        converge(Inventory(profile="labcloud"), P, {"profile": "labcloud", "subscriptions": [entry]}, "lab.yml",
                 today=TODAY)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_stored_documents_keep_attributes_and_stay_lean_without_them(tmp_path):
    inv = step(lifecycle.set_attributes, lab("new", created="2021-03-04"), "a1", flagged=True, verified=True)
    assert json.loads(to_doc(inv.subscriptions["a1"]))["created"] == "2021-03-04"
    plain = lab("standard")
    assert set(json.loads(to_doc(plain.subscriptions["a1"]))) == {"name", "type", "exempt", "exempt_via"}
    assert set(json.loads(to_doc(plain.resources["vm1"]))["pulled"]) == {"type", "exempt"}
    store = Store(tmp_path / "state.db", create=True)
    store.change("test", lambda _: (inv, None))
    again, _ = Store(tmp_path / "state.db").read()
    assert again.subscriptions == inv.subscriptions and again.resources == inv.resources


def test_exemption_kinds_name_the_provider_paths():
    assert {e.value for e in Exemption} >= {"self-service", "switch", "support-case", "request-form",
                                            "service-limit", "reactive", "never"}


@pytest.mark.parametrize("word, words", [("subscription", "subscriptions"), ("tenancy", "tenancies"),
                                         ("account", "accounts"), ("day", "days")])
def test_the_account_word_in_the_plural(word, words):
    from enforcer.core.profile import plural
    assert plural(word) == words
