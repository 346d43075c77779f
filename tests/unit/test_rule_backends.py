"""Each rule backend renders its rules purely and sends them as one batch per family: tested without root by
handing the backend a recorder instead of the real tools. (tests/integration runs them for real.)"""

from __future__ import annotations

from enforcer.dataplane.rules import IptablesBackend, NftablesBackend, RuleSpec


class Recorder:
    """Stands in for the rule tools: answers *-save with canned output and records every command and batch."""

    def __init__(self, saved: dict[str, str] | None = None):
        self.saved = saved or {}
        self.calls: list[tuple[list[str], str | None]] = []

    def __call__(self, argv: list[str], stdin: str | None) -> str:
        self.calls.append((argv, stdin))
        return self.saved.get(argv[0], "")


SPEC = RuleSpec(25, 1, (25,), ("198.18.1.0/24", "2001:db8:1::/64"), bypass=False)


def test_iptables_rules_queue_every_syn_past_internal_destinations():
    v4 = IptablesBackend().render(SPEC, 4, old_jumps=[])
    assert "-I FORWARD -p tcp -m multiport --dports 25 --tcp-flags SYN SYN" in v4
    assert "-m comment --comment port25-enforcer -j P25-ENFORCER" in v4
    assert v4.index("-d 198.18.1.0/24 -j RETURN") < v4.index("-j NFQUEUE --queue-num 25\n")
    assert "2001:db8" not in v4 and "*mangle" in v4 and "--queue-bypass" not in v4
    old = "-A FORWARD -p tcp -m multiport --dports 25,2525 -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j P25-ENFORCER"
    v6 = IptablesBackend().render(RuleSpec(25, 2, (25,), SPEC.internal, bypass=True), 6, old_jumps=[old])
    assert "-D FORWARD -p tcp -m multiport --dports 25,2525" in v6      # an old jump is replaced, not kept
    assert v6.count("-I FORWARD") == 1
    assert "-d 2001:db8:1::/64 -j RETURN" in v6 and "--queue-balance 25:26 --queue-bypass" in v6


def test_nftables_rules_replace_their_own_table_whole():
    text = NftablesBackend().render(RuleSpec(25, 2, (25, 2525), SPEC.internal, bypass=True))
    assert text.startswith("add table inet port25_enforcer\ndelete table inet port25_enforcer\n")
    assert "type filter hook forward priority mangle" in text
    assert "ip daddr { 198.18.1.0/24 } return" in text and "ip6 daddr { 2001:db8:1::/64 } return" in text
    assert "tcp dport { 25, 2525 } tcp flags & syn == syn queue num 25-26 bypass" in text
    assert "ct state invalid" in text  # conntrack, so that fragments are reassembled before the rules


def test_tunnel_protocols_are_dropped_before_anything_else():
    spec = RuleSpec(25, 1, (25,), SPEC.internal, bypass=False, dropped_protocols=(4, 41, 47))
    v4 = IptablesBackend().render(spec, 4, old_jumps=[])
    for p in (4, 41, 47):
        assert f"-I FORWARD -p {p} -m comment --comment port25-enforcer -j P25-ENFORCER" in v4
        assert v4.index(f"-A P25-ENFORCER -p {p} -j DROP") < v4.index("-j RETURN")
    nft = NftablesBackend().render(spec)
    assert nft.index("meta l4proto { 4, 41, 47 } drop") < nft.index("return")


def test_iptables_install_sends_exactly_one_batch_per_family():
    old = "-A FORWARD -p tcp -m multiport --dports 25 -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m comment " \
          "--comment port25-enforcer -j P25-ENFORCER"
    run = Recorder({"iptables-save": f"*mangle\n:P25-ENFORCER - [0:0]\n{old}\nCOMMIT\n"})
    IptablesBackend(run).install(SPEC)
    restores = [(argv, stdin) for argv, stdin in run.calls if argv[0].endswith("-restore")]
    assert [argv for argv, _ in restores] == [["iptables-restore", "--noflush", "--test"],
                                              ["ip6tables-restore", "--noflush", "--test"],
                                              ["iptables-restore", "--noflush"], ["ip6tables-restore", "--noflush"]]
    assert [stdin for _, stdin in restores[:2]] == [stdin for _, stdin in restores[2:]]  # tested what it sends
    restores = restores[2:]
    assert restores[0][1] == (
        "*mangle\n"
        ":P25-ENFORCER - [0:0]\n"
        "-D FORWARD -p tcp -m multiport --dports 25 -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m comment "
        "--comment port25-enforcer -j P25-ENFORCER\n"
        "-I FORWARD -p tcp -m multiport --dports 25 --tcp-flags SYN SYN -m comment "
        "--comment port25-enforcer -j P25-ENFORCER\n"
        "-A P25-ENFORCER -m conntrack --ctstate INVALID -m comment --comment port25-enforcer-defragment\n"
        "-A P25-ENFORCER -d 198.18.1.0/24 -j RETURN\n"
        "-A P25-ENFORCER -j NFQUEUE --queue-num 25\n"
        "COMMIT\n")
    assert restores[1][1] == (
        "*mangle\n"
        ":P25-ENFORCER - [0:0]\n"
        "-I FORWARD -p tcp -m multiport --dports 25 --tcp-flags SYN SYN -m comment "
        "--comment port25-enforcer -j P25-ENFORCER\n"
        "-A P25-ENFORCER -m conntrack --ctstate INVALID -m comment --comment port25-enforcer-defragment\n"
        "-A P25-ENFORCER -d 2001:db8:1::/64 -j RETURN\n"
        "-A P25-ENFORCER -j NFQUEUE --queue-num 25\n"
        "COMMIT\n")


def test_iptables_remove_deletes_only_our_jump_and_chain():
    ours = "-A FORWARD -p tcp -m multiport --dports 25 -m comment --comment port25-enforcer -j P25-ENFORCER"
    theirs = "-A FORWARD -p tcp --dport 22 -j ACCEPT"
    run = Recorder({"iptables-save": f"*mangle\n:P25-ENFORCER - [0:0]\n{theirs}\n{ours}\nCOMMIT\n"})
    IptablesBackend(run).remove()
    batches = [stdin for argv, stdin in run.calls if argv[0] == "iptables-restore"]
    assert batches == ["*mangle\n-D FORWARD -p tcp -m multiport --dports 25 -m comment --comment port25-enforcer "
                       "-j P25-ENFORCER\n-F P25-ENFORCER\n-X P25-ENFORCER\nCOMMIT\n"]
    assert not [argv for argv, _ in run.calls if argv[0] == "ip6tables-restore"]  # nothing of ours there


def test_nftables_install_sends_the_rendered_table_as_one_transaction():
    run = Recorder()
    backend = NftablesBackend(run)
    spec = RuleSpec(25, 1, (25,), SPEC.internal, bypass=False)
    backend.install(spec)
    assert run.calls == [(["nft", "-f", "-"], backend.render(spec))]
