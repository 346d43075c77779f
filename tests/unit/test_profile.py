"""Profiles are data: every file in policies/ loads, and a malformed one names the file, the key and the fix."""

import pytest

from enforcer.errors import UserError
from support.paths import ROOT
from enforcer.core.profile_format import parse_profile
from enforcer.state.profiles import load_profile, load_profile_file

POLICIES = ROOT / "policies"
GOOD = (POLICIES / "azure.toml").read_text()


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.toml")), ids=lambda p: p.name)
def test_every_policy_file_loads(path):
    profile = load_profile_file(path)
    assert profile.id == path.stem
    assert profile.types and profile.kinds
    assert 25 in profile.restricted_ports
    if profile.id.startswith("azure"):  # rule 2; other providers restrict 587 too (digitalocean, linode, ...)
        assert 587 in profile.never_restricted_ports


def test_azure_profile_encodes_the_spec():
    p = load_profile("azure")
    assert {t.id for t in p.types.values() if not t.blocked_by_default} == {"ea", "mca-e"}      # rule 3
    assert [t.id for t in p.types.values() if t.exemption == "self-service"] == ["devtest"]      # rule 4
    assert all(t.exemption == "never" for t in p.types.values()                                 # rule 8
               if t.blocked_by_default and t.id != "devtest")
    assert {k for k, v in p.kinds.items() if v.follows_subscription} == {                       # rule 1
        "vm", "vmss", "app-service-vnet", "functions-vnet", "ase-v3", "azure-firewall", "nva"}
    assert p.restricted_ports == {25} and p.never_restricted_ports == {587}                    # rule 2
    assert p.type_named("EA").id == "ea" and p.type_named("payg").id == "payg"
    assert p.type_named("msdn").id == "msdn" and p.type_named("pay-as-you-go").id == "payg"


def test_historical_profile_differs_where_the_old_page_did():
    old = load_profile("azure-2017")
    assert old.types["payg"].exemption == "support-case"
    assert old.types["csp"].exemption == "self-service"
    assert old.types["msdn"].exemption == "never"


def test_unknown_type_word_lists_the_choices():
    with pytest.raises(UserError, match="unknown subscription type 'gold'.*use one of: ea, mca-e"):
        load_profile("azure").type_named("gold")


@pytest.mark.parametrize("edit, key, fix", [
    (lambda t: t.replace('port25 = "allow"', 'port25 = "allow"\ncolour = "red"', 1), "types.ea.colour", "remove it"),
    (lambda t: t.replace("restricted_ports = [25]", "restricted_ports = [70000]"), "profile.restricted_ports",
     "1 to 65535"),
    (lambda t: t.replace('port25 = "block"', 'port25 = "sometimes"', 1), "types.devtest.port25", "use one of"),
    (lambda t: t.replace('name = "Enterprise Agreement (EA)"\n', "", 1), "types.ea.name", "add name"),
    (lambda t: t.replace('exemption = "self-service"', 'exemption = "maybe"'), "types.devtest.exemption",
     "use one of"),
    (lambda t: t.replace('scope = "never"', 'scope = "sometimes"', 1), "kinds.app-service.scope", "use one of"),
    (lambda t: t.replace('aliases = ["pass"]', 'aliases = ["ea"]'), "types.azure-pass.aliases", "distinct"),
    (lambda t: t.replace("[profile]", "[profil]"), "profile file.profil", "remove it"),
    (lambda t: t + "\n[types.broken\n", "not valid TOML", "fix the syntax"),
    (lambda t: t.replace('exemption = "not-needed"', 'exemption = "never"', 1), "types.ea.exemption",
     "not-needed"),
])
def test_malformed_profile_names_file_key_and_fix(edit, key, fix):
    with pytest.raises(UserError) as err:
        parse_profile(edit(GOOD), "policies/broken.toml")
    message = str(err.value)
    assert message.startswith("policies/broken.toml: ")
    assert key in message and fix in message
    assert "\n" not in message


def test_profile_id_must_match_file_name(tmp_path):
    f = tmp_path / "lab.toml"
    f.write_text(GOOD)
    with pytest.raises(UserError, match="'azure' differs from the file name"):
        load_profile_file(f)


def test_missing_profile_names_the_choices():
    with pytest.raises(UserError, match="no policy profile 'nimbus'.*use one of: .*azure.*vultr"):
        load_profile("nimbus")
