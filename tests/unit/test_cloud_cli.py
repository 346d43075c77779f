"""The cloud profiles through the CLI: what a newcomer learns from `profile list` and `profile show`, each
provider's exemption path offered or refused in its own terms, and the README's providers table, which must be
what the profiles generate."""

from __future__ import annotations

import re

import yaml

import pytest

from enforcer.cli.profile import README_END, README_START, profiles_in, providers_markdown, readme_section
from support.paths import ROOT

INTERNET = "198.19.25.25"


def test_readme_providers_table_is_generated_from_the_profiles():
    readme = (ROOT / "README.md").read_text()
    table = providers_markdown(profiles_in(ROOT / "policies"))
    assert readme_section(readme, table) == readme, "regenerate it: enforcer profile table --readme README.md"
    assert readme.count(README_START) == 1 and readme.count(README_END) == 1
    assert "| `hetzner` Hetzner Cloud | 25, 465 | 587 |" in table


def test_profile_list_compares_the_providers(cli):
    out = cli("profile", "list")
    for pid in ("aws", "gcp", "oci", "digitalocean", "hetzner", "linode", "scaleway", "ibm-classic", "alibaba",
                "upcloud", "ovh", "vultr", "azure"):
        assert pid in out
    docs = {d["id"]: d for d in cli.json("profile", "list")}
    assert docs["hetzner"]["restricted_ports"] == [25, 465]
    assert docs["oci"]["account"] == "tenancy" and docs["gcp"]["account"] == "project"
    assert docs["vultr"]["change_applies"] == "restart" and docs["scaleway"]["change_applies"] == "at-once"


def test_profile_show_hetzner_tells_a_newcomer_port_465_and_the_exemption_path(cli):
    out = cli("profile", "show", "hetzner")
    assert re.search(r"^ports blocked +25, 465$", out, re.M) and re.search(r"^never restricted +587$", out, re.M)
    assert "587" in out and "limit request" in out and "30 days old" in out and "first invoice is paid" in out
    assert "https://docs.hetzner.com/cloud/servers/faq/" in out and "read 2026-11-27" in out
    assert "quoted-by-third-party" in out and "lab decision:" in out


def test_profile_show_marks_user_reports_and_lab_decisions(cli):
    vultr = cli("profile", "show", "vultr")
    assert "user-reported" in vultr and "at the resource's next restart" in vultr
    aws = cli("profile", "show", "aws")
    assert "100.64.0.0/10" in aws and "fc00::/7" in aws and "10.0.0.0/8" in aws
    doc = cli.json("profile", "show", "aws")
    assert all(r["source"]["url"].startswith("https://") and r["source"]["read"] == "2026-11-27"
               for r in doc["rules"])


def test_profile_command_keeps_its_old_forms(cli):
    assert "payg" in cli.json("profile", "azure")["types"]
    assert cli.json("profile")["hetzner"].endswith("policies/hetzner.toml")


def test_missing_profile_is_one_line(cli):
    err = cli("profile", "show", "nimbus", expect=2)
    assert "no policy profile 'nimbus'" in err and err.count("\n") == 1


def apply(cli, tmp_path, profile: str, accounts: list[dict]) -> None:
    kind = {"aws": "ec2", "gcp": "vm", "oci": "instance", "digitalocean": "droplet", "hetzner": "server",
            "linode": "instance", "scaleway": "instance", "ibm-classic": "virtual-server", "alibaba": "ecs",
            "upcloud": "server", "ovh": "server", "vultr": "instance"}[profile]
    doc = {"profile": profile, "subscriptions": accounts,
           "vnets": [{"name": "net", "subscription": accounts[0]["name"], "prefixes": ["198.18.1.0/24"]}],
           "resources": [{"name": f"vm-{a['name']}", "subscription": a["name"], "kind": kind,
                          "addresses": [f"198.18.1.{10 + i}"]} for i, a in enumerate(accounts)]}
    f = tmp_path / f"{profile}.yml"
    f.write_text(yaml.safe_dump(doc))
    cli("apply", str(f))


@pytest.mark.parametrize("profile, account", [
    ("gcp", {"name": "p1", "type": "project"}),
    ("digitalocean", {"name": "a1", "type": "account"}),
    ("ibm-classic", {"name": "a1", "type": "account", "created": "2016-01-01"}),
    ("oci", {"name": "free1", "type": "free", "created": "2022-01-01"}),
    ("upcloud", {"name": "trial1", "type": "trial"}),
])
def test_where_the_provider_never_exempts_every_path_is_refused_with_its_advice(cli, tmp_path, profile, account):
    apply(cli, tmp_path, profile, [account])
    name = account["name"]
    result = cli.json("exemption", "request", name)
    advice = cli.json("profile", "show", profile)["advice"]
    assert result["outcome"] == "refused" and advice in result["lines"][-1]
    err = cli("exemption", "grant", name, "--case", "T-1", expect=2)
    assert "never exempted" in err and advice in err and err.count("\n") == 1
    assert cli.verdict(f"vm-{name}", INTERNET) == "blocked"


@pytest.mark.parametrize("profile, account", [
    ("aws", {"name": "a1", "type": "account"}),
    ("oci", {"name": "paid1", "type": "paid", "created": "2022-01-01"}),
    ("hetzner", {"name": "a1", "type": "account", "created": "2020-01-01", "first_invoice_paid": True}),
    ("linode", {"name": "a1", "type": "account", "created": "2020-01-01"}),
    ("alibaba", {"name": "a1", "type": "account"}),
    ("upcloud", {"name": "a1", "type": "paid", "verified": True}),
    ("vultr", {"name": "a1", "type": "account"}),
])
def test_a_request_the_operator_decides_is_described_granted_or_refused(cli, tmp_path, profile, account):
    apply(cli, tmp_path, profile, [account])
    name, vm = account["name"], f"vm-{account['name']}"
    path = cli.json("profile", "show", profile)["exemption"]["path"]
    result = cli.json("exemption", "request", name)
    assert result["outcome"] == "support-case" and path in result["lines"][-1]
    advice = cli.json("profile", "show", profile)["advice"]
    refused = cli("exemption", "refuse", name, "--case", "T-1")
    assert "request T-1 refused" in refused and advice in refused
    assert cli.verdict(vm, INTERNET) == "blocked"
    cli("exemption", "grant", name, "--case", "T-2")
    if profile == "vultr":  # users report the unblock reaches an instance at its restart
        assert cli.verdict(vm, INTERNET) == "blocked"
        cli("vm", "restart", vm)
    assert cli.verdict(vm, INTERNET) == "allowed"


def test_hetzner_refuses_a_young_account_then_grants(cli, tmp_path):
    apply(cli, tmp_path, "hetzner", [{"name": "a1", "type": "account", "created": "2099-01-01"}])
    err = cli("exemption", "grant", "a1", "--case", "T-1", expect=2)
    assert "does not qualify" in err and "first invoice is not paid" in err
    cli("account", "set", "a1", "--created", "2020-01-01", "--first-invoice-paid")
    cli("exemption", "grant", "a1", "--case", "T-1")
    assert cli.verdict("vm-a1", f"{INTERNET}:465") == "allowed"


def test_scaleway_switch_needs_a_verified_identity_and_applies_at_once(cli, tmp_path):
    apply(cli, tmp_path, "scaleway", [{"name": "o1", "type": "organization"}])
    result = cli.json("exemption", "request", "o1")
    assert result["outcome"] == "refused" and "identity is not verified" in result["lines"][-1]
    cli("organization", "set", "o1", "--verified")
    assert "now exempt" in cli("exemption", "request", "o1")
    assert cli.verdict("vm-o1", f"{INTERNET}:587") == "allowed"  # no restart


def test_ovh_block_is_imposed_by_a_flag_and_lifted_by_its_owner(cli, tmp_path):
    apply(cli, tmp_path, "ovh", [{"name": "a1", "type": "account"}])
    assert cli.verdict("vm-a1", INTERNET) == "allowed"
    cli("account", "set", "a1", "--flagged")
    reason = cli("check", "--from", "vm-a1", "--to", INTERNET)
    assert reason.startswith("blocked") and "Control Panel" in reason
    err = cli("exemption", "grant", "a1", "--case", "T-1", expect=2)
    assert "flagged for spam" in err
    assert "spam flag is lifted" in cli("exemption", "request", "a1")
    assert cli.verdict("vm-a1", INTERNET) == "allowed"


def test_account_set_needs_something_to_set(cli, tmp_path):
    apply(cli, tmp_path, "linode", [{"name": "a1", "type": "account", "created": "2020-01-01"}])
    assert "give at least one of --created" in cli("account", "set", "a1", expect=2)
    err = cli("account", "set", "a1", "--created", "5 Nov 2019", expect=2)
    assert "is not a day; write it as YYYY-MM-DD" in err and err.count("\n") == 1
