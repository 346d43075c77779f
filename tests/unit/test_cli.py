"""The CLI as a person and a script use it: the example lab, the lifecycle rules, and user mistakes."""

import yaml

import pytest

from support.paths import LAB

DOC = yaml.safe_load(LAB.read_text())
INTERNET4, INTERNET6 = DOC["lab"]["internet"]["addresses"]


def test_example_inventory_has_every_subscription_type(lab):
    types = {s["type"] for s in lab.json("subscription", "list")}
    assert types == set(lab.json("profile", "azure")["types"])


@pytest.mark.parametrize("name, expected", sorted(DOC["lab"]["expect"].items()))
def test_check_answers_for_the_example_match_the_spec(lab, name, expected):
    assert lab.verdict(name, f"{INTERNET4}:25") == expected
    assert lab.verdict(name, f"[{INTERNET6}]:25") == expected          # IPv6 judged like IPv4
    assert lab.verdict(name, f"{INTERNET4}:587") == "allowed"          # rule 2
    assert lab.verdict(name, f"{INTERNET4}:465") == "allowed"


def test_apply_is_idempotent_and_dry_run_changes_nothing(lab, tmp_path):
    generation = lab.json("status")["generation"]
    assert lab("apply", str(LAB)).strip() == "no changes"
    changed = tmp_path / "changed.yml"
    doc = yaml.safe_load(LAB.read_text())
    doc["resources"].append({"name": "new-vm", "subscription": "ea-prod", "kind": "vm", "addresses": ["198.18.1.99"]})
    changed.write_text(yaml.safe_dump(doc))
    assert "would: added virtual machine 'new-vm'" in lab("apply", "--dry-run", str(changed))
    assert lab.json("status")["generation"] == generation
    assert "added virtual machine 'new-vm'" in lab("apply", str(changed))
    assert lab.verdict("new-vm", INTERNET4) == "allowed"


def test_apply_prune_removes_what_the_file_no_longer_names(lab, tmp_path):
    doc = yaml.safe_load(LAB.read_text())
    doc["resources"] = [r for r in doc["resources"] if r["name"] != "trial-vm"]
    smaller = tmp_path / "smaller.yml"
    smaller.write_text(yaml.safe_dump(doc))
    lab("apply", str(smaller))
    assert "trial-vm" in {r["name"] for r in lab.json("vm", "list")}
    lab("vnet", "subnet-add", "hub", "extra", "198.18.1.240/28")
    out = lab("apply", "--prune", str(smaller))
    assert "removed 'trial-vm'" in out and "removed subnet 'extra' from 'hub'" in out
    assert "trial-vm" not in {r["name"] for r in lab.json("vm", "list")}
    assert lab("apply", "--prune", str(smaller)).strip() == "no changes"


def test_exemption_story_through_the_cli(lab):
    """Rules 4 and 5: diagnose grants; running VMs keep the block until restart; new VMs are exempt at once."""
    assert lab.verdict("devtest-vm", INTERNET4) == "blocked"
    out = lab("diagnose", "devtest-lab")
    assert "now exempt" in out and "devtest-vm" in out
    assert lab.verdict("devtest-vm", INTERNET4) == "blocked"
    assert "enforcer vm restart devtest-vm" in lab("check", "--from", "devtest-vm", "--to", INTERNET4)
    assert lab.json("subscription", "show", "devtest-lab")["pending_restart"] == ["devtest-ase", "devtest-vm"]
    lab("vm", "stop", "devtest-vm")
    lab("vm", "start", "devtest-vm")
    assert lab.verdict("devtest-vm", INTERNET4) == "blocked"      # stopped, not deallocated: same policy
    lab("vm", "restart", "devtest-vm")
    assert lab.verdict("devtest-vm", INTERNET4) == "allowed"
    lab("vm", "add", "devtest-new", "--subscription", "devtest-lab", "--address", "198.18.3.20")
    assert lab.verdict("devtest-new", INTERNET4) == "allowed"
    assert [e["name"] for e in lab.json("exemption", "list")] == ["devtest-lab"]
    # a revoked exemption follows the same restart rule
    lab("exemption", "revoke", "devtest-lab")
    assert lab.verdict("devtest-vm", INTERNET4) == "allowed"
    lab("vm", "deallocate", "devtest-vm")
    lab("vm", "start", "devtest-vm")
    assert lab.verdict("devtest-vm", INTERNET4) == "blocked"


def test_apply_now_is_an_explicit_shortcut(lab):
    lab("diagnose", "devtest-lab", "--apply-now")
    assert lab.verdict("devtest-vm", INTERNET4) == "allowed"
    assert lab.verdict("devtest-ase", INTERNET4) == "allowed"


def test_payg_diagnose_is_refused_and_stays_blocked(lab):
    result = lab.json("diagnose", "payg-shop")
    assert result["outcome"] == "refused" and result["blocked"]
    assert any("port 587" in line for line in result["lines"])
    lab("vm", "restart", "shop-web")
    assert lab.verdict("shop-web", INTERNET4) == "blocked"
    assert lab.json("exemption", "list") == []


def test_type_change_takes_effect_at_restart(lab):
    """Rule 9: EA -> Pay-As-You-Go brings the block, at each VM's next start."""
    out = lab("subscription", "set-type", "ea-prod", "payg")
    assert "ea-vm" in out
    assert lab.verdict("ea-vm", INTERNET4) == "allowed"
    lab("vm", "restart", "ea-vm")
    assert lab.verdict("ea-vm", INTERNET4) == "blocked"


def test_delegated_subnet_needs_the_temporary_subnet_step(lab):
    """Rule 6: a restart does not help a resource in a delegated subnet; adding and removing a subnet does."""
    lab("diagnose", "devtest-lab")
    lab("vm", "restart", "devtest-ase")
    assert lab.verdict("devtest-ase", INTERNET4) == "blocked"
    assert "enforcer vnet refresh-delegated devnet" in lab("check", "--from", "devtest-ase", "--to", INTERNET4)
    lab("vnet", "subnet-add", "devnet", "temp", "198.18.3.240/28")
    assert lab.verdict("devtest-ase", INTERNET4) == "blocked"
    assert "devtest-ase" in lab("vnet", "subnet-remove", "devnet", "temp")
    assert lab.verdict("devtest-ase", INTERNET4) == "allowed"


def test_refresh_delegated_does_both_steps(lab):
    lab("diagnose", "devtest-lab")
    out = lab("vnet", "refresh-delegated", "devnet")
    assert "added subnet 'enforcer-temp'" in out and "removed subnet 'enforcer-temp'" in out
    assert lab.verdict("devtest-ase", INTERNET4) == "allowed"
    assert "enforcer-temp" not in str(lab.json("vnet", "list"))


def test_appliance_egress_is_judged_by_the_appliance_subscription(lab):
    """Rule 7: shop-relay (Pay-As-You-Go) leaves through fw1 (EA)."""
    assert lab.verdict("shop-relay", INTERNET4) == "allowed"
    lab("subscription", "set-type", "ea-prod", "payg")
    lab("vm", "restart", "fw1")
    assert lab.verdict("shop-relay", INTERNET4) == "blocked"
    assert "fw1" in lab("check", "--from", "shop-relay", "--to", INTERNET4)


def test_internal_destination_and_unknown_source(lab):
    assert lab.verdict("shop-web", "198.18.2.11:25") == "allowed"
    assert lab.verdict("198.18.2.10", "198.18.2.11:25") == "allowed"
    unknown = lab.json("check", "--from", "198.18.9.9", "--to", INTERNET4)
    assert unknown["verdict"] == "blocked" and unknown["code"] == "unknown-source"
    assert lab.verdict("198.18.4.20", INTERNET4) == "allowed"     # inside the scale set's prefix


def test_listings_have_json(lab):
    assert {v["name"] for v in lab.json("vnet", "list")} == {"hub", "shop", "devnet", "corp", "misc"}
    vms = {r["name"]: r for r in lab.json("vm", "list")}
    assert vms["shop-web"]["port25"] == "blocked" and vms["ea-vm"]["port25"] == "allowed"
    assert lab.json("vm", "show", "shop-relay")["egress"] == "fw1"
    assert lab.json("status")["resources"] == len(DOC["resources"])
    assert lab.json("audit", "--limit", "3")[-1]["kind"] == "resource"
    assert "ea-vm" in lab("vm", "list") and "Subscriptions" in lab("subscription", "list")


def test_audit_records_before_and_after(lab):
    lab("vm", "stop", "ea-vm")
    last = lab.json("audit", "--limit", "1")[0]
    assert last["name"] == "ea-vm" and last["command"].endswith("vm stop ea-vm")
    assert (last["before"]["state"], last["after"]["state"]) == ("running", "stopped")


MISTAKES = [
    (["vm", "start", "no-such-vm"], "no resource 'no-such-vm'"),
    (["vm", "add", "x1", "--subscription", "ea-prod", "--address", "300.1.1.1"], "invalid address"),
    (["vm", "add", "x1", "--subscription", "ea-prod", "--address", "198.18.1.10"], "already belongs to 'ea-vm'"),
    (["vm", "add", "x1", "--subscription", "nope", "--address", "198.18.1.77"], "no subscription 'nope'"),
    (["vm", "add", "x1", "--subscription", "ea-prod", "--kind", "toaster", "--address", "198.18.1.77"],
     "unknown resource kind 'toaster'"),
    (["vm", "add", "x1", "--subscription", "ea-prod", "--egress", "ea-vm", "--address", "198.18.1.77"],
     "not an appliance"),
    (["vm", "add", "x1", "--subscription", "ea-prod"], "Missing option '--address'"),
    (["vm", "remove", "fw1"], "carries the traffic of shop-relay"),
    (["subscription", "add", "new", "--type", "gold"], "unknown subscription type 'gold'"),
    (["subscription", "add", "ea-prod", "--type", "ea"], "exists already"),
    (["subscription", "remove", "ea-prod"], "still holds"),
    (["subscription", "set-type", "ghost", "ea"], "no subscription 'ghost'"),
    (["exemption", "revoke", "payg-shop"], "no exemption to revoke"),
    (["exemption", "grant", "payg-shop", "--case", "1"], "never exempted"),
    (["vnet", "subnet-add", "devnet", "x", "10.0.0.0/24"], "outside the prefixes"),
    (["vnet", "subnet-add", "devnet", "x", "198.18.3.1/24"], "host bits zero"),
    (["vnet", "refresh-delegated", "hub"], "no delegated subnet"),
    (["vnet", "remove", "hub"], "still holds"),
    (["check", "--from", "ea-vm", "--to", "mail.example"], "not an address"),
    (["check", "--from", "ea-vm", "--to", "198.19.25.25:99999"], "from 1 to 65535"),
    (["check", "--from", "ghost", "--to", "198.19.25.25"], "no resource 'ghost'"),
    (["audit", "--limit", "0"], "--limit"),
    (["frobnicate"], "No such command"),
    (["apply", "/nonexistent/lab.yml"], "cannot read it"),
    (["vm", "add", "x1", "--subscription", "ea-prod", "--address", "198.18.1.77", "--interface", "eth 1"],
     "invalid interface name"),
    (["vm", "bind", "ea-vm"], "--interface and/or --mac"),
    (["vm", "bind", "ea-vm", "--mac", "52:54:00:zz:00:01"], "invalid MAC address"),
    (["vm", "bind", "ghost", "--interface", "eth1"], "no resource 'ghost'"),
    (["vnet", "bind", "hub"], "--interface IF, or --unbind"),
    (["vnet", "bind", "hub", "--interface", "a-name-far-too-long"], "invalid interface name"),
]


@pytest.mark.parametrize("args, message", MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_user_mistake_is_one_line_exit_2_and_changes_nothing(lab, args, message):
    before = lab.state.read_bytes(), lab.json("status")["generation"], len(lab.json("audit", "--limit", "1000"))
    err = lab(*args, expect=2)
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    after = lab.state.read_bytes(), lab.json("status")["generation"], len(lab.json("audit", "--limit", "1000"))
    assert after[1:] == before[1:]


BAD_FILES = [
    ("subscriptions: [{name: a, type: ea, colour: red}]", "unknown key 'colour'"),
    ("subscriptions: [{name: a, type: gold}]", "unknown subscription type 'gold'"),
    ("subscriptions: [{name: a}]", "missing 'type'"),
    ("subscriptions: {name: a}", "expected a list"),
    ("resources: [{name: v, subscription: nope, kind: vm, addresses: [198.18.7.1]}]", "no subscription 'nope'"),
    ("subscriptions: [{name: p, type: payg, exempt: true}]", "cannot be exempted"),
    ("vnets: [{name: v, subscription: s, prefixes: [198.18.7.0/24]}]", "no subscription 's'"),
    ("machines: []", "unknown top-level key 'machines'"),
    ("subscriptions: [{name: a, type: ea}\n  - oops", "not valid YAML at line"),
    ("- just\n- a list", "expected a mapping"),
    ("profile: gcp", "profile 'gcp' differs"),
    ("resources: [{name: twin, subscription: ea-prod, kind: vm, addresses: [198.18.1.10]}]",
     "resource 'twin': address 198.18.1.10 of 'twin' already belongs to 'ea-vm'"),
    ("resources: [{name: a1, subscription: ea-prod, kind: vm, addresses: [198.18.7.1]},\n"
     "            {name: a2, subscription: ea-prod, kind: vm, addresses: [198.18.7.1]}]",
     "resource 'a2': address 198.18.7.1 of 'a2' already belongs to 'a1'"),
    ("resources: [{name: r1, subscription: ea-prod, kind: vm, egress: shop-web, addresses: [198.18.7.2]}]",
     "which is not an appliance"),
]


@pytest.mark.parametrize("text, message", BAD_FILES, ids=[m for _, m in BAD_FILES])
def test_malformed_inventory_file_is_refused_whole(lab, tmp_path, text, message):
    bad = tmp_path / "bad.yml"
    bad.write_text(text)
    before = lab.json("status")["generation"]
    err = lab("apply", str(bad), expect=2)
    assert message in err and str(bad) in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert lab.json("status")["generation"] == before


def test_error_in_the_middle_of_a_file_applies_none_of_it(cli, tmp_path):
    bad = tmp_path / "half.yml"
    bad.write_text("subscriptions: [{name: good, type: ea}, {name: bad, type: gold}]")
    cli("apply", str(bad), expect=2)
    assert cli.json("subscription", "list") == []


def test_state_path_that_is_not_ours_is_refused(tmp_path, cli):
    cli.state.write_text("my notes\n")
    err = cli("subscription", "add", "s", "--type", "ea", expect=2)
    assert "not an enforcer state database" in err
    assert cli.state.read_text() == "my notes\n"


def test_two_cli_processes_at_once_lose_nothing(lab):
    procs = [lab.process("vm", "add", f"burst-{i}", "--subscription", "ea-prod", "--address", f"198.18.1.{100 + i}")
             for i in range(8)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    names = {r["name"] for r in lab.json("vm", "list")}
    assert {f"burst-{i}" for i in range(8)} <= names



@pytest.mark.parametrize("text, message", [
    ("subscriptions: [{name: 123, type: ea}]", "name: expected a name, got 123"),
    ("vnets: [{name: [a, b], subscription: s, prefixes: [198.18.7.0/24]}]", "name: expected a name"),
    ("subscriptions: [{name: s, type: ea}]\nvnets: [{name: v, subscription: s, prefixes: [198.18.7.0/24], "
     "subnets: [{name: x, prefix: 198.18.7.0/25, delegated: 'no'}]}]", "delegated: expected true or false"),
    ("internal_prefixes: [198.18.7.1/24]", "internal_prefixes: invalid prefix"),
])
def test_inventory_values_of_the_wrong_kind_are_refused(cli, tmp_path, text, message):
    bad = tmp_path / "bad.yml"
    bad.write_text(text)
    err = cli("apply", str(bad), expect=2)
    assert message in err and str(bad) in err and "Traceback" not in err


def test_a_profile_that_lost_a_type_gives_one_line(lab, tmp_path, monkeypatch):
    policies = tmp_path / "policies"
    policies.mkdir()
    text = (LAB.parent.parent / "policies" / "azure.toml").read_text()
    start = text.index("[types.payg]")
    end = text.index("[types.msdn]")
    (policies / "azure.toml").write_text(text[:start] + text[end:])
    monkeypatch.setenv("ENFORCER_POLICIES", str(policies))
    for args in (("vm", "list"), ("status",), ("check", "--from", "shop-web", "--to", "198.19.25.25")):
        err = lab(*args, expect=2)
        assert "'payg'" in err and "put the type back in the profile" in err and err.count("\n") == 1


def test_binding_a_resource_and_a_vnet(lab, tmp_path):
    """Where an address is accepted from: the CLI, `vm show`, and a file (the VNet's interface for its VMs)."""
    assert "updated resource 'ea-vm': interface" in lab("vm", "bind", "ea-vm", "--interface", "v3")
    assert lab.json("vm", "show", "ea-vm")["interface"] == "v3"
    assert "bound to interface eth1" in lab("vnet", "bind", "shop", "--interface", "eth1")
    assert "bound so already" in lab("vnet", "bind", "shop", "--interface", "eth1")
    assert "interface" in lab("vm", "bind", "ea-vm", "--unbind")
    assert lab.json("vm", "show", "ea-vm")["interface"] is None
    doc = yaml.safe_load(LAB.read_text())
    doc["vnets"][0]["interface"] = "eth9"
    changed = tmp_path / "lab.yml"
    changed.write_text(yaml.safe_dump(doc))
    assert "virtual network 'hub': bound to interface eth9" in lab("apply", str(changed))
    assert "no changes" in lab("apply", str(changed))
    assert [v["interface"] for v in lab.json("vnet", "list") if v["name"] == "hub"] == ["eth9"]


def test_apply_of_many_new_resources_is_checked_like_one_by_one(cli, tmp_path):
    """The bulk path of apply (new resources added in place) ends where adding them one by one would: the same
    resources, the same verdicts, an audit row each; and a second apply changes nothing."""
    resources = "\n".join(f"  - {{name: v{i}, subscription: {'s2' if i % 2 else 's1'}, kind: vm, vnet: n, "
                          f"addresses: [198.18.9.{i + 1}]{', egress: fw' if i % 5 == 0 else ''}}}"
                          for i in range(40))
    text = ("subscriptions: [{name: s1, type: ea}, {name: s2, type: payg}]\n"
            "vnets: [{name: n, subscription: s1, prefixes: [198.18.9.0/24]}]\n"
            "resources:\n  - {name: fw, subscription: s1, kind: azure-firewall, vnet: n, addresses: [198.18.9.200]}\n"
            + resources + "\n")
    inventory = tmp_path / "many.yml"
    inventory.write_text(text)
    assert cli("apply", str(inventory)).count("added virtual machine") == 40
    vms = {d["name"]: d["port25"] for d in cli.json("vm", "list")}
    assert len(vms) == 41
    assert all(vms[f"v{i}"] == ("allowed" if i % 2 == 0 or i % 5 == 0 else "blocked") for i in range(40))
    assert len([r for r in cli.json("audit", "--limit", "1000") if r["kind"] == "resource"]) == 41
    assert cli("apply", str(inventory)).strip() == "no changes"

