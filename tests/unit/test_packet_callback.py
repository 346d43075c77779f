"""The packet path over a table compiled from an inventory: the C callback (Judge) reads the source from raw bytes
and always gives a verdict; the worker counts per verdict and writes the drop log. (The same code runs against a
real queue in tests/integration/test_dataplane.py; the C parts alone in test_fastpath_*.py.)"""

import collections
import io
import json

import pytest
from scapy.all import AH, IP, TCP, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPOption_NOP, Raw, \
    fragment

from enforcer.core import lifecycle
from enforcer.core.inventory import Inventory, Subscription
from enforcer.dataplane.droplog import flow
from enforcer.state.profiles import load_profile
from enforcer.dataplane._fastpath import Judge
from enforcer.dataplane.counters import Counters
from enforcer.dataplane.droplog import DropLog
from enforcer.dataplane.keeper import Keeper

PROFILE = load_profile("azure")


class QueuedPacket:
    """What netfilterqueue hands the callback: a payload, and one verdict to give."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.verdicts: list[str] = []

    def get_payload(self) -> bytes:
        return self.payload

    def accept(self) -> None:
        self.verdicts.append("accept")

    def drop(self) -> None:
        self.verdicts.append("drop")


@pytest.fixture(scope="module")
def table():
    inv = Inventory(subscriptions={"ea": Subscription("ea", "ea"), "pg": Subscription("pg", "payg")})
    inv, _ = lifecycle.add_resource(inv, PROFILE, "ok", "ea", "vm", ["198.18.0.1", "2001:db8::1"])
    inv, _ = lifecycle.add_resource(inv, PROFILE, "no", "pg", "vm", ["198.18.0.2", "2001:db8::2"])
    inv, _ = lifecycle.add_resource(inv, PROFILE, "set", "ea", "vmss", ["198.18.1.0/28"])
    keeper = Keeper(PROFILE)
    keeper.fill(inv)
    return keeper


def judge(keeper, default_allow=False):
    drops = collections.deque()
    return Judge(keeper.view(), default_allow=default_allow, drops=drops), drops


SYN = TCP(sport=40000, dport=25, flags="S")
AH_SYN = AH(nh=6, payloadlen=4, spi=1, seq=1, icv=b"\0" * 12) / SYN  # an Authentication Header, then the SYN
CASES = [
    (IP(src="198.18.0.1", dst="198.19.25.25") / SYN, "accept"),
    (IP(src="198.18.0.2", dst="198.19.25.25") / SYN, "drop"),
    (IP(src="198.18.1.5", dst="198.19.25.25") / SYN, "accept"),                      # inside the scale set
    (IP(src="198.18.9.9", dst="198.19.25.25") / SYN, "drop"),                        # unknown
    (IP(src="198.18.0.1", dst="198.19.25.25", options=[IPOption_NOP()] * 8) / SYN, "accept"),   # options
    (IPv6(src="2001:db8::1", dst="2001:db8:ffff::25") / SYN, "accept"),
    (IPv6(src="2001:db8::2", dst="2001:db8:ffff::25") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / SYN, "drop"),
]


@pytest.mark.parametrize("packet, verdict", CASES, ids=[p.summary() for p, _ in CASES])
def test_judge_reads_the_source_from_raw_bytes(table, packet, verdict):
    callback, _ = judge(table)
    pkt = QueuedPacket(bytes(packet))
    callback(pkt)
    assert pkt.verdicts == [verdict]
    assert callback.malformed == callback.errors == 0


MALFORMED = [b"", b"\x45", bytes(IP(src="198.18.0.1") / SYN)[:19], b"\x44" + bytes(19),  # IHL 4
             b"\x60" + bytes(30), b"\x00" * 40, b"\xff" * 60]


@pytest.mark.parametrize("default_allow, verdict", [(False, "drop"), (True, "accept")])
def test_malformed_payloads_get_the_default_verdict(table, default_allow, verdict):
    callback, _ = judge(table, default_allow)
    for payload in MALFORMED:
        pkt = QueuedPacket(payload)
        callback(pkt)
        assert pkt.verdicts == [verdict], payload
    assert callback.malformed == len(MALFORMED)


def test_a_failing_packet_still_gets_one_verdict(table):
    class Broken(QueuedPacket):
        def get_payload(self):
            raise RuntimeError("the binding failed")
    callback, _ = judge(table)
    pkt = Broken(b"")
    callback(pkt)
    assert pkt.verdicts == ["drop"] and callback.errors == 1


def test_hits_are_counted_per_verdict_across_a_table_swap(table):
    callback, _ = judge(table)
    counters = Counters(callback, table.verdicts.entries)
    for packet, _ in CASES:
        callback(QueuedPacket(bytes(packet)))
    counters.swap(table.view(), table.verdicts.entries)  # what the old table counted is kept
    callback(QueuedPacket(bytes(CASES[0][0])))
    by = {(s, c, v): n for s, c, v, n in counters.snapshot()["by"]}
    assert by == {("ea", "type-not-blocked", "allowed"): 5, ("pg", "blocked-never-exemptible", "blocked"): 2,
                  ("-", "unknown-source", "blocked"): 1}


def test_drop_log_writes_one_line_per_flow(table):
    callback, drops = judge(table)
    blocked = bytes(IP(src="198.18.0.2", dst="198.19.25.25") / SYN)
    for _ in range(3):                                   # a SYN and its retransmissions
        callback(QueuedPacket(blocked))
    callback(QueuedPacket(bytes(IP(src="198.18.0.2", dst="198.19.25.25") / TCP(sport=40001, dport=25, flags="S"))))
    out = io.StringIO()
    log = DropLog(lambda generation: table.verdicts.entries, lambda key: ("no", f"because {key.hex()}"), out=out)
    assert log.drain(drops) == 2
    first = json.loads(out.getvalue().splitlines()[0])
    assert first == {"event": "blocked", "resource": "no", "subscription": "pg", "source": "198.18.0.2",
                     "destination": "198.19.25.25", "port": 25, "source_port": 40000,
                     "code": "blocked-never-exemptible", "reason": "because c6120002"}


def test_flow_reads_ports_past_options_and_extension_headers():
    assert flow(bytes(IP(src="198.18.0.1", dst="198.19.0.1", options=[IPOption_NOP()] * 4) / SYN)) == \
        ("198.18.0.1", "198.19.0.1", 40000, 25)
    assert flow(bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment() /
                      SYN)) == ("2001:db8::1", "2001:db8::2", 40000, 25)
    assert flow(bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrDestOpt() /
                      AH_SYN)) == ("2001:db8::1", "2001:db8::2", 40000, 25)
    assert flow(bytes(IP(src="198.18.0.1", dst="198.19.0.1") / AH_SYN)) == \
        ("198.18.0.1", "198.19.0.1", 40000, 25)
    assert flow(bytes(IP(src="198.18.0.1", dst="198.19.0.1", proto=50) / Raw(b"\0" * 40))) is None   # ESP
    later = fragment(IP(src="198.18.0.1", dst="198.19.0.1") / SYN / Raw(b"x" * 64), fragsize=16)[1]
    assert flow(bytes(later)) is None
    assert flow(b"\x45\x00") is None and flow(b"") is None
