"""The drop log under a flood of new sources (issue 19, row 1): a blocked VM sending from thousands of spoofed
addresses a second must not hold the worker's control thread, which also hands over new tables and answers for
the status. The Judge runs for real; each explanation costs a millisecond, as a state snapshot does."""

import collections
import io
import ipaddress
import json
import threading
import time

from scapy.all import IPv6, TCP

from enforcer.dataplane._fastpath import Judge
from enforcer.dataplane.droplog import DropLog
from test_packet_callback import PROFILE, QueuedPacket, table  # noqa: F401 - the fixture

SOURCES = ipaddress.ip_network("2001:db8:f00d::/64")
SYN = TCP(sport=40000, dport=25, flags="S")


def spoofed(i: int) -> bytes:
    return bytes(IPv6(src=str(SOURCES[i + 1]), dst="2001:db8:ffff::25") / SYN)


def slow_explain(key: bytes) -> tuple[None, str]:
    time.sleep(0.001)
    return None, "the source address belongs to no registered resource"


def test_a_flood_of_new_sources_never_holds_the_drain(table):  # noqa: F811
    drops: collections.deque = collections.deque()
    judge = Judge(table.view(), drops=drops)
    out = io.StringIO()
    log = DropLog(lambda generation: table.verdicts.entries, slow_explain, out=out, summary_every=0.5)
    sent = 0

    def flood(seconds: float = 2.0) -> None:  # about 3,000 new sources a second
        nonlocal sent
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for _ in range(30):
                judge(QueuedPacket(spoofed(sent)))
                sent += 1
            time.sleep(0.01)

    flooder = threading.Thread(target=flood)
    flooder.start()
    longest = 0.0
    try:
        while flooder.is_alive():  # what the control thread does between two requests of the daemon
            started = time.monotonic()
            log.drain(drops)
            longest = max(longest, time.monotonic() - started)
            time.sleep(0.005)
    finally:
        flooder.join()
    log.drain(drops, budget=None)
    log.summarise()

    assert longest < 0.5, f"one drain() held the control thread {longest:.2f} s"
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    explained = [line for line in lines if line["event"] == "blocked"]
    summaries = [line for line in lines if line["event"] == "blocked-summary"]
    assert summaries and len(explained) < sent / 2
    # nothing lost: every attempt is a line or counted in a summary, and the counts say the same
    assert len(explained) + sum(s["attempts"] for s in summaries) == sent
    assert all(s["codes"] == {"unknown-source": s["attempts"]} for s in summaries)
    assert log.counts() == {"lines": len(explained), "summarised": sent - len(explained)}


def test_a_known_source_is_still_explained_during_a_flood(table):  # noqa: F811
    """The explanations already read cost nothing: a blocked VM's new flows keep their own lines while its
    source's explanation is kept, whatever the flood took of the budget."""
    drops: collections.deque = collections.deque()
    judge = Judge(table.view(), drops=drops)
    out = io.StringIO()
    log = DropLog(lambda generation: table.verdicts.entries, slow_explain, out=out)
    judge(QueuedPacket(bytes(IPv6(src="2001:db8::2", dst="2001:db8:ffff::25") / SYN)))
    log.drain(drops)                                        # explained once, while there is time
    for i in range(2000):                                   # the budget is spent on the flood
        judge(QueuedPacket(spoofed(i)))
    judge(QueuedPacket(bytes(IPv6(src="2001:db8::2", dst="2001:db8:ffff::25") / TCP(sport=40001, dport=25,
                                                                                    flags="S"))))
    while drops:
        log.drain(drops)
    blocked = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [b["source_port"] for b in blocked if b["source"] == "2001:db8::2"] == [40000, 40001]
