"""Each rule backend renders its rules purely and sends them as one batch per family: tested without root by
handing the backend a recorder instead of the real tools. (tests/integration runs them for real.)"""

from __future__ import annotations

import pytest

from enforcer.dataplane.rules import IptablesBackend, NftablesBackend, RuleError, RuleSpec
from enforcer.dataplane.rules.base import CacheSpec


class Recorder:
    """Stands in for the rule tools: answers *-save (and ipset's listings) with canned output, keyed by the whole
    command line or by the tool, and records every command and batch; a command in `fail` raises a RuleError."""

    def __init__(self, saved: dict[str, str] | None = None, fail: tuple[str, ...] = ()):
        self.saved = saved or {}
        self.fail = fail
        self.calls: list[tuple[list[str], str | None]] = []

    def __call__(self, argv: list[str], stdin: str | None) -> str:
        self.calls.append((argv, stdin))
        if " ".join(argv) in self.fail:
            raise RuleError(f"{' '.join(argv)} failed")
        return self.saved.get(" ".join(argv), self.saved.get(argv[0], ""))


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
    assert v6.count("-I FORWARD") == 4       # the SYNs, AH and ESP (judged), and unreassembled fragments
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


def test_ipsec_is_judged_by_source_and_unreassembled_first_fragments_are_dropped():
    """AH puts its header before TCP's (nft's protocol match stops at it) and ESP hides the port: every packet of
    either goes to the Judge, past the internal destinations, like a SYN. An IPv6 first fragment the kernel did
    not reassemble (RFC 7112: its TCP header not whole) is dropped before anything else, in both backends."""
    backend = IptablesBackend()
    for version in (4, 6):
        batch = backend.render(SPEC, version, old_jumps=[])
        for p in (50, 51):
            assert f"-I FORWARD -p {p} -m comment --comment port25-enforcer -j P25-ENFORCER" in batch
            assert f"-A P25-ENFORCER -p {p}" not in batch           # not dropped: judged, by the queue below
        fragments = "-A P25-ENFORCER -m frag --fragfirst --fragmore -j DROP"
        assert (fragments in batch) == (version == 6)
        if version == 6:
            assert batch.index(fragments) < batch.index("-j RETURN") < batch.index("-j NFQUEUE")
    nft = NftablesBackend().render(SPEC)
    assert nft.index("frag frag-off 0 frag more-fragments 1 drop") < nft.index("return") < \
        nft.index("meta l4proto { 50, 51 } queue num 25")


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
        ":P25-DEFRAG - [0:0]\n"
        "-D FORWARD -p tcp -m multiport --dports 25 -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -m comment "
        "--comment port25-enforcer -j P25-ENFORCER\n"
        "-I FORWARD -p tcp -m multiport --dports 25 --tcp-flags SYN SYN -m comment "
        "--comment port25-enforcer -j P25-ENFORCER\n"
        "-I FORWARD -p 50 -m comment --comment port25-enforcer -j P25-ENFORCER\n"
        "-I FORWARD -p 51 -m comment --comment port25-enforcer -j P25-ENFORCER\n"
        "-A P25-ENFORCER -d 198.18.1.0/24 -j RETURN\n"
        "-A P25-ENFORCER -j NFQUEUE --queue-num 25\n"
        "-A P25-DEFRAG -m socket -m comment --comment port25-enforcer-defragment\n"
        "COMMIT\n")
    assert restores[1][1] == (
        "*mangle\n"
        ":P25-ENFORCER - [0:0]\n"
        ":P25-DEFRAG - [0:0]\n"
        "-I FORWARD -p tcp -m multiport --dports 25 --tcp-flags SYN SYN -m comment "
        "--comment port25-enforcer -j P25-ENFORCER\n"
        "-I FORWARD -p 50 -m comment --comment port25-enforcer -j P25-ENFORCER\n"
        "-I FORWARD -p 51 -m comment --comment port25-enforcer -j P25-ENFORCER\n"
        "-I FORWARD -m frag --fragfirst --fragmore -m comment --comment port25-enforcer -j P25-ENFORCER\n"
        "-A P25-ENFORCER -m frag --fragfirst --fragmore -j DROP\n"
        "-A P25-ENFORCER -d 2001:db8:1::/64 -j RETURN\n"
        "-A P25-ENFORCER -j NFQUEUE --queue-num 25\n"
        "-A P25-DEFRAG -m socket -m comment --comment port25-enforcer-defragment\n"
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


def test_iptables_remove_deletes_the_defragmentation_chain_too():
    saved = "*mangle\n:P25-ENFORCER - [0:0]\n:P25-DEFRAG - [0:0]\n" \
            "-A P25-DEFRAG -m socket -m comment --comment port25-enforcer-defragment\nCOMMIT\n"
    run = Recorder({"iptables-save": saved})
    IptablesBackend(run).remove()
    batches = [stdin for argv, stdin in run.calls if argv[0] == "iptables-restore"]
    assert batches == ["*mangle\n-F P25-ENFORCER\n-X P25-ENFORCER\n-F P25-DEFRAG\n-X P25-DEFRAG\nCOMMIT\n"]


def test_nftables_install_sends_the_rendered_table_as_one_transaction():
    run = Recorder()
    backend = NftablesBackend(run)
    spec = RuleSpec(25, 1, (25,), SPEC.internal, bypass=False)
    backend.install(spec)
    assert run.calls == [(["nft", "-f", "-"], backend.render(spec))]


CACHED = RuleSpec(25, 1, (25,), SPEC.internal, bypass=False, dropped_protocols=(4,), cache=CacheSpec(300, 65536))
JUMP = "-I FORWARD -p tcp -m multiport --dports 25 --tcp-flags SYN SYN -m comment --comment port25-enforcer " \
       "-j P25-ENFORCER\n-I FORWARD -p 4 -m comment --comment port25-enforcer -j P25-ENFORCER\n" \
       "-I FORWARD -p 50 -m comment --comment port25-enforcer -j P25-ENFORCER\n" \
       "-I FORWARD -p 51 -m comment --comment port25-enforcer -j P25-ENFORCER\n"
FRAGMENTS = "-I FORWARD -m frag --fragfirst --fragmore -m comment --comment port25-enforcer -j P25-ENFORCER\n" \
            "-A P25-ENFORCER -m frag --fragfirst --fragmore -j DROP\n"


def test_iptables_cache_rules_sit_after_the_internal_destinations_before_the_queue():
    backend = IptablesBackend()
    assert backend.render(CACHED, 4, old_jumps=[]) == (
        "*mangle\n:P25-ENFORCER - [0:0]\n:P25-DEFRAG - [0:0]\n" + JUMP +
        "-A P25-ENFORCER -p 4 -j DROP\n"
        "-A P25-ENFORCER -d 198.18.1.0/24 -j RETURN\n"
        "-A P25-ENFORCER -m set --match-set p25-allow4 src -j ACCEPT\n"
        "-A P25-ENFORCER -m set --match-set p25-block4 src -j DROP\n"
        "-A P25-ENFORCER -j NFQUEUE --queue-num 25\n"
        "-A P25-DEFRAG -m socket -m comment --comment port25-enforcer-defragment\n"
        "COMMIT\n")
    assert backend.render(CACHED, 6, old_jumps=[]) == (
        "*mangle\n:P25-ENFORCER - [0:0]\n:P25-DEFRAG - [0:0]\n" + JUMP + FRAGMENTS +
        "-A P25-ENFORCER -p 4 -j DROP\n"
        "-A P25-ENFORCER -d 2001:db8:1::/64 -j RETURN\n"
        "-A P25-ENFORCER -m set --match-set p25-allow6 src -j ACCEPT\n"
        "-A P25-ENFORCER -m set --match-set p25-block6 src -j DROP\n"
        "-A P25-ENFORCER -j NFQUEUE --queue-num 25\n"
        "-A P25-DEFRAG -m socket -m comment --comment port25-enforcer-defragment\n"
        "COMMIT\n")
    without = RuleSpec(25, 1, (25,), SPEC.internal, bypass=False, dropped_protocols=(4,))
    assert "match-set" not in backend.render(without, 4, []) + backend.render(without, 6, [])


def test_iptables_install_with_the_cache_makes_the_sets_before_testing_the_rules():
    run = Recorder()
    IptablesBackend(run).install(CACHED)
    assert [argv for argv, _ in run.calls] == [
        ["iptables-save", "-t", "mangle"], ["ip6tables-save", "-t", "mangle"], ["ipset", "list", "-n"],
        ["ipset", "restore"],
        ["iptables-restore", "--noflush", "--test"], ["ip6tables-restore", "--noflush", "--test"],
        ["iptables-restore", "--noflush"], ["ip6tables-restore", "--noflush"]]
    assert run.calls[3][1] == (
        "create p25-allow4 hash:ip family inet timeout 300 maxelem 65536\n"
        "create p25-block4 hash:ip family inet timeout 300 maxelem 65536\n"
        "create p25-allow6 hash:ip family inet6 timeout 300 maxelem 65536\n"
        "create p25-block6 hash:ip family inet6 timeout 300 maxelem 65536\n")


def test_iptables_install_replaces_existing_sets_by_swapping_in_new_empty_ones():
    """Sets that are there (named by the rules being replaced, or left by a killed daemon) are swapped for new
    ones: ipset allows that while rules name them, and nothing cached under an older table survives."""
    run = Recorder({"ipset list -n": "p25-allow4\np25-block4\np25-allow4-new\nsomeone-else\n"})
    IptablesBackend(run).install(RuleSpec(25, 1, (25,), (), bypass=False, cache=CacheSpec(60, 1000)))
    sets = [stdin for argv, stdin in run.calls if argv == ["ipset", "restore"]]
    assert sets == [
        "destroy p25-allow4-new\n"
        "create p25-allow4-new hash:ip family inet timeout 60 maxelem 1000\n"
        "swap p25-allow4-new p25-allow4\n"
        "destroy p25-allow4-new\n"
        "create p25-block4-new hash:ip family inet timeout 60 maxelem 1000\n"
        "swap p25-block4-new p25-block4\n"
        "destroy p25-block4-new\n"
        "create p25-allow6 hash:ip family inet6 timeout 60 maxelem 1000\n"
        "create p25-block6 hash:ip family inet6 timeout 60 maxelem 1000\n"]


def test_iptables_install_refused_by_the_kernel_destroys_only_the_sets_it_made():
    run = Recorder({"ipset list -n": "p25-allow4\n"}, fail=("ip6tables-restore --noflush --test",))
    with pytest.raises(RuleError):
        IptablesBackend(run).install(CACHED)
    restores = [argv for argv, _ in run.calls if argv[0].endswith("-restore")]
    assert restores == [["iptables-restore", "--noflush", "--test"], ["ip6tables-restore", "--noflush", "--test"]]
    assert run.calls[-1] == (["ipset", "restore"], "destroy p25-block4\ndestroy p25-allow6\ndestroy p25-block6\n")


def test_iptables_install_without_the_cache_destroys_sets_left_by_a_run_with_it():
    run = Recorder({"ipset list -n": "p25-allow4\np25-block6\nsomeone-else\n"})
    IptablesBackend(run).install(SPEC)
    assert [argv for argv, _ in run.calls][-3:] == [["iptables-restore", "--noflush"],
                                                     ["ip6tables-restore", "--noflush"], ["ipset", "restore"]]
    assert run.calls[-1][1] == "destroy p25-allow4\ndestroy p25-block6\n"   # after no rule names them


def test_iptables_remove_destroys_our_sets_after_the_rules_that_name_them():
    ours = "-A FORWARD -p tcp -m multiport --dports 25 -m comment --comment port25-enforcer -j P25-ENFORCER"
    run = Recorder({"iptables-save": f"*mangle\n:P25-ENFORCER - [0:0]\n{ours}\nCOMMIT\n",
                    "ipset list -n": "p25-allow4\np25-block4\np25-allow6\np25-block6\nsomeone-else\n"})
    IptablesBackend(run).remove()
    assert [argv[0] for argv, _ in run.calls] == ["iptables-save", "iptables-restore", "ip6tables-save", "ipset",
                                                   "ipset"]
    assert run.calls[-1] == (["ipset", "restore"], "destroy p25-allow4\ndestroy p25-block4\ndestroy p25-allow6\n"
                                                   "destroy p25-block6\n")


def test_iptables_remove_without_ipset_removes_the_rules():
    run = Recorder(fail=("ipset list -n",))
    IptablesBackend(run).remove()
    assert run.calls[-1] == (["ipset", "list", "-n"], None)


def saved_rules(backend: IptablesBackend, spec: RuleSpec, version: int) -> str:
    """What iptables-save prints once `spec` is installed."""
    jumps = [line.replace("-I FORWARD", "-A FORWARD") for line in backend.render(spec, version, []).splitlines()
             if line.startswith("-I FORWARD")]
    return "\n".join(["*mangle", ":P25-ENFORCER - [0:0]", ":P25-DEFRAG - [0:0]", *jumps,
                      *backend.chain_rules(spec, version), backend.defrag_rule, "COMMIT"])


HEADERS = ("create p25-allow4 hash:ip family inet hashsize 1024 maxelem 65536 timeout 300 bucketsize 12 initval 0x1\n"
           "create p25-block4 hash:ip family inet hashsize 1024 maxelem 65536 timeout 300 bucketsize 12 initval 0x2\n"
           "create p25-allow6 hash:ip family inet6 hashsize 1024 maxelem 65536 timeout 300 bucketsize 12 initval 0x3\n"
           "create p25-block6 hash:ip family inet6 hashsize 1024 maxelem 65536 timeout 300 bucketsize 12 initval 0x4\n")


@pytest.mark.parametrize("headers, spec, expected", [
    (HEADERS, CACHED, True),
    (HEADERS.replace("timeout 300 bucketsize 12 initval 0x3", "timeout 30 bucketsize 12 initval 0x3"), CACHED, False),
    (HEADERS.replace("maxelem 65536 timeout 300 bucketsize 12 initval 0x2", "maxelem 9 timeout 300 bucketsize 12 "
                     "initval 0x2"), CACHED, False),
    (HEADERS.replace("p25-block6 hash:ip", "p25-block6 hash:net"), CACHED, False),
    ("\n".join(HEADERS.splitlines()[:3]), CACHED, False),
    ("", RuleSpec(25, 1, (25,), SPEC.internal, bypass=False, dropped_protocols=(4,)), True),
])
def test_iptables_installed_checks_the_cache_sets(headers, spec, expected):
    backend = IptablesBackend()
    backend.run = Recorder({"iptables-save": saved_rules(backend, spec, 4),
                            "ip6tables-save": saved_rules(backend, spec, 6), "ipset list -t -o save": headers})
    assert backend.installed(spec) is expected


def test_iptables_installed_wants_the_cache_rules_when_the_spec_has_the_cache():
    backend = IptablesBackend()
    without = RuleSpec(25, 1, (25,), SPEC.internal, bypass=False, dropped_protocols=(4,))
    backend.run = Recorder({"iptables-save": saved_rules(backend, without, 4),
                            "ip6tables-save": saved_rules(backend, without, 6), "ipset list -t -o save": HEADERS})
    assert not backend.installed(CACHED)


def test_nftables_table_with_and_without_the_cache():
    spec = RuleSpec(25, 1, (25, 465), SPEC.internal, bypass=False, dropped_protocols=(4, 41), cache=CacheSpec(120, 500))
    head = "add table inet port25_enforcer\ndelete table inet port25_enforcer\n" \
           "table inet port25_enforcer {\n  comment \"port25-enforcer\"\n"
    chain = ("  chain forward {\n"
             "    type filter hook forward priority mangle; policy accept;\n"
             "    ct state invalid counter comment \"port25-enforcer-defragment\"\n"
             "    frag frag-off 0 frag more-fragments 1 drop\n"
             "    meta l4proto { 4, 41 } drop\n"
             "    ip daddr { 198.18.1.0/24 } return\n"
             "    ip6 daddr { 2001:db8:1::/64 } return\n")
    assert NftablesBackend().render(spec) == (
        head +
        "  set allow4 { type ipv4_addr; flags timeout; timeout 120s; size 500; }\n"
        "  set block4 { type ipv4_addr; flags timeout; timeout 120s; size 500; }\n"
        "  set allow6 { type ipv6_addr; flags timeout; timeout 120s; size 500; }\n"
        "  set block6 { type ipv6_addr; flags timeout; timeout 120s; size 500; }\n" + chain +
        "    tcp dport { 25, 465 } tcp flags & syn == syn ip saddr @allow4 accept\n"
        "    tcp dport { 25, 465 } tcp flags & syn == syn ip saddr @block4 drop\n"
        "    tcp dport { 25, 465 } tcp flags & syn == syn ip6 saddr @allow6 accept\n"
        "    tcp dport { 25, 465 } tcp flags & syn == syn ip6 saddr @block6 drop\n"
        "    tcp dport { 25, 465 } tcp flags & syn == syn queue num 25\n"
        "    meta l4proto { 50, 51 } ip saddr @allow4 accept\n"
        "    meta l4proto { 50, 51 } ip saddr @block4 drop\n"
        "    meta l4proto { 50, 51 } ip6 saddr @allow6 accept\n"
        "    meta l4proto { 50, 51 } ip6 saddr @block6 drop\n"
        "    meta l4proto { 50, 51 } queue num 25\n"
        "  }\n}\n")
    plain = RuleSpec(25, 1, (25, 465), SPEC.internal, bypass=False, dropped_protocols=(4, 41))
    assert NftablesBackend().render(plain) == (
        head + chain + "    tcp dport { 25, 465 } tcp flags & syn == syn queue num 25\n"
        "    meta l4proto { 50, 51 } queue num 25\n  }\n}\n")


def test_nftables_installed_wants_the_sets_with_the_cache():
    listing = "table inet port25_enforcer {\n\tset allow4 {\n\t}\n\tset block4 {\n\t}\n\tset allow6 {\n\t}\n" \
              "\tchain forward {\n\t\ttcp dport 25 queue num 25\n\t}\n}\n"
    run = Recorder({"nft": listing})
    backend = NftablesBackend(run)
    assert backend.installed(SPEC)
    assert not backend.installed(CACHED)                                   # block6 is missing
    run.saved["nft"] = listing.replace("\tchain", "\tset block6 {\n\t}\n\tchain")
    assert backend.installed(CACHED)
    assert run.calls[-1] == (["nft", "-t", "list", "table", "inet", "port25_enforcer"], None)  # -t: no elements
