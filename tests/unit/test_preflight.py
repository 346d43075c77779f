"""`enforcer probe --preflight`: the target is named (never picked), each family resolved, each outcome judged
by the provider's rules. Connections here go to this machine's loopback only; the lab's namespaces try the
silent drop (tests/integration/test_lab.py)."""

from __future__ import annotations

import json
import socket

import pytest

from enforcer.core.preflight import judge, outcome_line, who_is_blocked
from enforcer.core.profile import EXEMPTION_WORDS
from enforcer.lab.preflight import TargetError, addresses, check_target, preflight
from enforcer.state.profiles import load_profile
from support.cli import Cli


@pytest.mark.parametrize("target", ["", "smtp://mx.example.net", "mx.example.net:25", "mx..example.net",
                                    "a b", "x" * 300])
def test_a_target_that_is_no_host_name_nor_address_is_one_line(target):
    with pytest.raises(TargetError, match="is not a host name or an address; name your relay or MX") as e:
        check_target(target)
    assert "\n" not in str(e.value)


def test_names_and_addresses_are_taken_as_written():
    assert check_target("mx.example.net") == "mx.example.net"
    assert check_target("[2001:db8::25]") == "2001:db8::25"
    assert check_target(" 198.19.25.25 ") == "198.19.25.25"


def resolver(table):
    return lambda target, family: table.get(family, [])


def test_each_family_resolves_on_its_own():
    both = resolver({socket.AF_INET: ["198.19.25.25"], socket.AF_INET6: ["2001:db8:ffff::25", "2001:db8::2"]})
    assert addresses("mx.lab", both) == {"IPv4": "198.19.25.25", "IPv6": "2001:db8:ffff::25"}
    assert addresses("mx.lab", resolver({socket.AF_INET: ["198.19.25.25"]})) == {"IPv4": "198.19.25.25",
                                                                                 "IPv6": None}
    assert addresses("2001:db8::25", resolver({})) == {"IPv4": None, "IPv6": "2001:db8::25"}
    with pytest.raises(TargetError, match="'mx.lab' has no address"):
        addresses("mx.lab", resolver({}))


def test_loopback_connected_and_refused_with_the_time():
    with socket.socket() as listener, socket.socket() as closed:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        closed.bind(("127.0.0.1", 0))  # bound, not listening: a connection is refused
        open_port, closed_port = listener.getsockname()[1], closed.getsockname()[1]
        report = preflight("127.0.0.1", (open_port, closed_port), timeout=2)
    outcomes = {r["port"]: r["outcome"] for r in report["results"]}
    assert outcomes == {open_port: "connected", closed_port: "refused"}
    assert report["addresses"] == {"IPv4": "127.0.0.1", "IPv6": None}
    assert all(0 <= r["seconds"] < 2 for r in report["results"])
    line = outcome_line(report["results"][0])
    assert line.startswith(f"IPv4 127.0.0.1 port {open_port}: connected in ") and line.endswith(" s")


def test_hetzner_says_465_is_blocked_too_and_how_the_exemption_is_had():
    hetzner = load_profile("hetzner")
    says, then = judge(hetzner, 465, "timeout")
    assert says == "Hetzner Cloud restricts port 465 (blocked for every account): this silence is how its block looks"
    assert then.startswith("ask for an exemption: a limit request") and "first invoice is paid" in then
    assert then.endswith("send through a relay on port 587, which Hetzner does not block")
    says, then = judge(hetzner, 587, "timeout")
    assert "never restricts port 587: the silence comes from somewhere else" in says and "firewall" in then
    says, then = judge(hetzner, 25, "connected")
    assert "yet it connected: this account is exempt" in says and then.startswith("nothing to do")


def test_a_provider_that_never_exempts_gives_its_advice_only():
    says, then = judge(load_profile("gcp"), 25, "timeout")
    assert "ask for an exemption" not in then and then == load_profile("gcp").advice


@pytest.mark.parametrize("outcome, cue", [("refused", "listens on port 25"), ("unreachable", "route")])
def test_a_refusal_or_unreachable_is_not_the_providers_block(outcome, cue):
    says, then = judge(load_profile("azure"), 25, outcome)
    assert "not the provider's block, which is silent" in says and cue in then


def test_who_is_blocked_in_a_phrase():
    assert who_is_blocked(load_profile("azure")).startswith("blocked for 11 of its 13 subscription types")
    assert who_is_blocked(load_profile("ibm-classic")) == "blocked if created on or after 2015-10-28"


def test_the_cli_names_no_target_itself_and_says_so_in_one_line(tmp_path, capsys):
    cli = Cli(tmp_path / "state.db", capsys)
    for args, said in [((), "enforcer probe needs one destination you name, and picks none itself"),
                       (("--to", "198.19.25.25", "--preflight", "mx.lab"), "needs one destination"),
                       (("--to", "198.19.25.25", "--profile", "gcp"), "--profile goes with --preflight HOST"),
                       (("--preflight", "smtp://mx"), "is not a host name or an address"),
                       (("--preflight", "127.0.0.1", "--profile", "nosuch"), "no policy profile 'nosuch'")]:
        out = cli("probe", *args, expect=2)
        assert said in out and out.count("\n") == 1, out


def test_the_cli_reports_each_family_and_port(tmp_path, capsys):
    cli = Cli(tmp_path / "state.db", capsys)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = str(listener.getsockname()[1])
        out = cli("probe", "--preflight", "127.0.0.1", "--port", port, "--profile", "hetzner")
        report = json.loads(cli("probe", "--preflight", "127.0.0.1", "--port", port, "--profile", "gcp", "--json"))
    assert f"IPv4 127.0.0.1 port {port}: connected in" in out
    assert "IPv6: nothing tried: 127.0.0.1 is an address of the other family" in out
    assert f"Hetzner Cloud does not restrict port {port}" in out and "next: nothing to do" in out
    assert report["profile"] == "gcp" and report["results"][0]["outcome"] == "connected"


def every_account_type():
    from enforcer.state.profiles import available_profiles
    return [(pid, tid) for pid in available_profiles() for tid in load_profile(pid).types]


@pytest.mark.parametrize("profile_id, type_id", every_account_type())
def test_the_advice_from_a_known_account_is_its_own(profile_id, type_id):
    """From a lab VM the account's type is known (issue 20, row h: a Pay-As-You-Go VM was told to run the
    self-service diagnostic, which never lifts its block): a silence on a restricted port is read by that type's
    own rule, and the way out offered is that type's own, or none where it has none."""
    profile = load_profile(profile_id)
    t = profile.types[type_id]
    port = min(profile.restricted_ports)
    says, step = judge(profile, port, "timeout", t)
    assert t.name in says
    others = {EXEMPTION_WORDS[o.exemption] for o in profile.types.values()} - {EXEMPTION_WORDS[t.exemption]}
    if not t.blocked_by_default:
        assert "comes from somewhere else" in says and "exemption" not in step
    elif not t.exemptible:
        assert "no exemption lifts it" in says and step == profile.advice
    else:
        assert EXEMPTION_WORDS[t.exemption] in step and profile.advice in step
    assert not [words for words in others if words in step and words not in EXEMPTION_WORDS[t.exemption]]
    connected_says, connected_step = judge(profile, port, "connected", t)
    assert connected_step.startswith("nothing to do")
