"""The exemption story each provider's lab demo walks (enforcer/lab/story.py): the plan read from the profile,
and, run in memory step by step, every delivery it expects is what decide() says at that point."""

from __future__ import annotations

import datetime

import pytest

from enforcer.core.converge import converge
from enforcer.core.inventory import Inventory
from enforcer.core.lifecycle import add_resource
from enforcer.core.policy import decide
from enforcer.errors import UserError
from enforcer.lab import story
from enforcer.lab.files import LABS, every_lab, lab_for_profile, port_expectations
from enforcer.state.documents import read_document
from enforcer.state.profiles import load_profile
from support.cli import Cli
from support.paths import LAB

TODAY = datetime.date(2026, 11, 27)
EVERY = every_lab()


def planned(name: str) -> tuple[list[story.Step], Inventory]:
    path = str(EVERY[name])
    doc = read_document(path)
    profile = load_profile(doc["profile"])
    inv, _ = converge(Inventory(profile=profile.id), profile, doc, path, today=TODAY)
    return story.plan(profile, inv, port_expectations(path, doc), TODAY), inv


def words(steps: list[story.Step]) -> list[str]:
    return [s.words + (" (refused)" if s.refused else "") for s in steps if isinstance(s, story.Run)]


def test_every_provider_has_a_lab_and_a_story():
    assert list(EVERY)[0] == "azure" and EVERY["azure"] == LAB and len(EVERY) == 13
    for name in EVERY:
        steps, _ = planned(name)
        assert any(isinstance(s, story.Try) and s.expected == "timeout" for s in steps), name


@pytest.mark.parametrize("name", list(EVERY))
def test_each_step_of_the_story_is_what_decide_says_then(name):
    """Run the plan on the inventory, in memory: each delivery tried is allowed exactly when it is expected to
    be delivered, and a step the provider's conditions refuse fails with one line."""
    steps, inv = planned(name)
    profile = load_profile(inv.profile)
    internet = str(read_document(str(EVERY[name]))["lab"]["internet"]["addresses"][0])
    for step in steps:
        if isinstance(step, story.Try):
            for port in step.ports:
                allowed = decide(inv, profile, inv.resources[step.vm], internet, port).allow
                assert allowed == (step.expected == "delivered"), (step.text, port)
        elif isinstance(step, story.Create):
            inv, _ = add_resource(inv, profile, step.name, step.subscription, step.kind, [step.address])
        elif step.refused:
            with pytest.raises(UserError) as refused:
                step.operation(inv, profile, *step.args, **step.kwargs)
            assert "\n" not in str(refused.value)
        else:
            inv, _ = step.operation(inv, profile, *step.args, **step.kwargs)


def test_azure_story_is_the_diagnostic_then_stop_deallocate_start():
    steps, _ = planned("azure")
    assert words(steps) == ["diagnose devtest-lab", "vm restart devtest-vm", "diagnose payg-shop",
                            "vm restart shop-web"]
    tries = [(s.vm, s.expected) for s in steps if isinstance(s, story.Try)]
    assert tries == [("devtest-vm", "timeout"), ("devtest-vm", "timeout"), ("devtest-vm", "delivered"),
                     ("devtest-new", "delivered"), ("shop-web", "timeout")]


def test_hetzner_story_refuses_the_ticket_until_the_account_qualifies_then_applies_at_once():
    steps, _ = planned("hetzner")
    assert words(steps) == ["exemption request new-acct", "exemption grant new-acct --case LAB-1 (refused)",
                            "account set new-acct --created 2026-10-28 --first-invoice-paid",
                            "exemption grant new-acct --case LAB-1"]
    tries = [(s.text, s.ports, s.expected) for s in steps if isinstance(s, story.Try)]
    assert tries[2] == ("server-new, still running: the change applies at once", (25, 465), "delivered")


def test_scaleway_switch_needs_a_verified_identity_then_applies_at_once():
    steps, _ = planned("scaleway")
    assert words(steps) == ["exemption request org-unverified", "organization set org-unverified --verified",
                            "exemption request org-unverified"]
    assert [s.ports for s in steps if isinstance(s, story.Try)][0] == (25, 465, 587)


def test_vultr_ticket_applies_at_the_next_restart():
    steps, _ = planned("vultr")
    assert words(steps) == ["exemption request new", "exemption grant new --case LAB-1", "vm restart vc2-new"]


@pytest.mark.parametrize("name, relay", [("gcp", 587), ("digitalocean", 2525), ("ibm-classic", 587)])
def test_a_provider_that_never_exempts_refuses_and_its_relay_port_delivers(name, relay):
    steps, _ = planned(name)
    assert [w.split()[:2] for w in words(steps)] == [["exemption", "request"]]
    last = steps[-1]
    assert isinstance(last, story.Try) and last.ports == (relay,) and last.expected == "delivered"


def test_a_profile_names_its_lab_file(tmp_path, capsys):
    assert lab_for_profile("azure") == LAB and lab_for_profile("hetzner") == LABS / "hetzner.yml"
    cli = Cli(tmp_path / "state.db", capsys)
    out = cli("lab", "demo", "--profile", "nosuch", expect=2)
    assert out.count("\n") == 1 and "no lab file for profile 'nosuch'; use one of: azure, alibaba" in out
    out = cli("lab", "demo", "--profile", "gcp", "--all", expect=2)
    assert out.count("\n") == 1 and "give one of --lab FILE, --profile NAME or --all" in out
    out = cli("lab", "demo", "--all", "--mta", expect=2)
    assert out.count("\n") == 1 and "--mta tells one provider's story: give --profile NAME or --lab FILE" in out


def test_profile_show_points_a_newcomer_to_the_demo_and_the_preflight(tmp_path, capsys):
    out = Cli(tmp_path / "state.db", capsys)("profile", "show", "hetzner")
    assert "ports blocked     25, 465" in out and "a limit request" in out
    assert "enforcer lab demo --profile hetzner" in out and "enforcer probe --preflight" in out


def test_the_story_is_headed_by_the_providers_path_and_rule():
    assert story.summary(load_profile("hetzner")).startswith("exemption: a limit request")
    assert story.summary(load_profile("azure")) == ("exemption: self-service diagnostic (some types only); a change "
                                                    "applies at the resource's next stop, deallocate and start")
    assert story.summary(load_profile("gcp")).startswith("exemption: none: Google documents no way")


def test_all_exits_with_the_worst_of_its_demos():
    from enforcer.lab.demo import EXIT_DIFFERS, EXIT_LAB_NOT_READY, overall
    assert overall([0, 0]) == 0
    assert overall([0, EXIT_LAB_NOT_READY]) == EXIT_LAB_NOT_READY
    assert overall([EXIT_LAB_NOT_READY, EXIT_DIFFERS, 0]) == EXIT_DIFFERS


@pytest.mark.parametrize("key, said, complaint", [
    ("relay", "nope", "lab.relay: expected a mapping with user and password"),
    ("relay", {"user": "lab"}, "lab.relay: expected a mapping with user and password"),
    ("relay", {"user": "lab", "password": "two words"}, "lab.relay.password: write 1 to 64 printable characters"),
    ("relay", {"user": "", "password": "x"}, "lab.relay.user: write 1 to 64 printable characters"),
    ("relay", {"user": 7, "password": "x"}, "lab.relay.user: write 1 to 64 printable characters"),
    ("relay", {"user": "lab", "password": "x" * 65}, "lab.relay.password: write 1 to 64 printable characters"),
    ("dns", [{"name": "example.org"}], "lab.dns: expected a mapping with a list of records"),
    ("dns", {"records": [{"name": "example.org", "type": "CNAME", "value": "mx.lab"}]},
     "lab.dns.records[0] (example.org): type 'CNAME' is not one of A, AAAA, MX, TXT"),
    ("dns", {"records": [{"name": "ok.example", "type": "A", "value": "198.19.25.9"},
                         {"name": "example.org", "type": "MX"}]}, "lab.dns.records[1]: expected name, type and value"),
    ("dns", {"records": [{"name": "example.org", "type": "TXT", "value": None}]},
     "lab.dns.records[0]: expected name, type and value"),
    ("dns", {"records": [{"name": "example.org", "type": "A", "value": "2001:db8::1"}]},
     "lab.dns.records[0] (example.org A): '2001:db8::1' is not an IPv4 address"),
    ("dns", {"records": [{"name": "example.org", "type": "MX", "value": "ten mx.lab"}]},
     "lab.dns.records[0] (example.org MX): 'ten mx.lab': write a preference and a host name"),
    ("dns", {"records": [{"name": "bad name.org", "type": "A", "value": "198.19.25.9"}]},
     "lab.dns.records[0]: 'bad name.org' is not a domain name"),
    ("dns", {"records": [{"name": "example.org", "type": "TXT", "value": 'say "hi"'}]},
     "lab.dns.records[0] (example.org TXT): 'say \"hi\"': write 1 to 255 printable characters without quotes"),
])
def test_a_lab_files_relay_account_and_dns_records_are_checked(tmp_path, capsys, key, said, complaint):
    """The relay's account and the DNS records in a lab file: one line naming the entry and how to write it, exit 2,
    nothing made."""
    import yaml
    from support.cli import Cli
    from support.paths import LAB
    doc = yaml.safe_load(LAB.read_text())
    doc["lab"][key] = said
    bad = tmp_path / "lab.yml"
    bad.write_text(yaml.safe_dump(doc))
    out = Cli(tmp_path / "state.db", capsys)("lab", "up", "--lab", str(bad), "--dir", str(tmp_path / "lab"), expect=2)
    assert complaint in out and out.count("\n") == 1
    assert not (tmp_path / "lab").exists()
