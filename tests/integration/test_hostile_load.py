"""The data plane under hostile load (issue 19): a blocked VM floods SYNs from random spoofed IPv4 and IPv6 sources
as fast as it can while the policy changes every second and four VMs send theirs (benchmarks/hostile.py at a size
CI can afford). Before the drop log was bounded, such a flood kept the workers' control thread explaining sources,
and a new table could not be handed over at all."""

import statistics

import pytest

from benchmarks.hostile import METRICS, hostile, lab_with_state_of
from enforcer.lab.netns import can_build_namespaces

WHY = can_build_namespaces()


@pytest.mark.skipif(WHY is not None, reason=str(WHY))
def test_a_spoofed_source_flood_freezes_no_policy_change_and_costs_no_verdict():
    with lab_with_state_of(200) as lab:
        lab.start_daemon("--metrics", METRICS)
        r = hostile(lab, seconds=16.0, window=4.0, rate=2_000, flood_rate=0, period=1.0)
    rows = {vm: (entered, arrived, wrong) for vm, _, entered, arrived, wrong in r["rows"]}
    assert r["flood_sent"] > 50_000 and r["flood_arrived"] == 0, r
    assert r["misjudged"] == 0, rows
    assert rows["shop-web"][1] == rows["trial-vm"][1] == 0 and rows["ea-vm"][1] > 0, rows
    quiet, flood = r["reload_ms"][False], r["reload_ms"][True]
    assert len(quiet) >= 6 and len(flood) >= 6, r["reload_ms"]   # every change reached the workers, flood or not
    assert statistics.median(flood) < 2_000, r["reload_ms"]       # in milliseconds: the old freeze took > 10 s
    assert r["status_s"] and not r["status_errors"] and max(r["status_s"]) < 5, r["status_s"]
    scrapes = r["scrapes"]
    assert scrapes and not [s for s in scrapes if isinstance(s[1], str)] and max(s[0] for s in scrapes) < 5
    assert r["summary_lines"] >= 1 and max(s[1] for s in scrapes) > 0     # the flood: summarised, and a metric
    assert r["drop_log"]["summarised"] > 0 and r["drop_log"]["lines"] > 0
