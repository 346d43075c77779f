"""The benchmarks still run: each in a small, quick form (they are reports, timed by hand, never by CI; this only
proves that they start, measure and print their targets). The control benchmark's form is in
test_reload_under_load.py."""

import re
import subprocess
import sys

import pytest
from pyroute2 import netns

from benchmarks.etcd_fleet import TAG
from enforcer.lab.netns import can_build_namespaces
from support.etcd import need_etcd
from support.paths import ROOT

WHY = can_build_namespaces()


def bench(*argv: str, timeout: float = 300) -> str:
    r = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_the_table_benchmark_runs_and_checks_the_table_against_the_policy():
    out = bench("benchmarks.table", "--quick", "--sizes", "1000,20000", "--lookups", "20000")
    assert re.search(r"^\s+20,000\s+[\d.]+\s+[\d,]+\s+[\d.]+\s+[\d.]+", out, re.M), out
    assert "lookup@1M <= 1.5x lookup@1k: SKIP" in out, out
    assert re.search(r"<= 64 bytes per address .*: (PASS|FAIL) \(worst [\d.]+ at", out), out


@pytest.mark.skipif(WHY is not None, reason=str(WHY))
def test_the_data_plane_benchmark_runs_the_judge_in_namespaces_and_cleans_up():
    out = bench("benchmarks.dataplane", "--quick", "--vms", "2000", "--reps", "1", "--extra", "0", "--seconds",
                "0.3", "--connects", "8", "--fifo", "0", "--queues", "2")
    assert re.search(r"worker / accept-all\s+[\d.]+\s+target >= 0\.95: (PASS|FAIL)", out), out
    assert "bound source accepted: yes" in out, out  # every SYN of the bound source passed the spoofing check
    assert re.search(r"worker --queues / worker\s+[\d.]+\s+target >= 1\.60: (PASS|FAIL)", out), out
    assert re.search(r"kernel cache / no queue\s+[\d.]+\s+target >= 0\.80: (PASS|FAIL)", out), out
    assert re.search(r"cleanup: namespaces of p25b\w+ left: none", out), out


@pytest.mark.skipif(WHY is not None, reason=str(WHY))
def test_the_etcd_fleet_benchmark_runs_three_gateways_on_etcd_and_cleans_up():
    need_etcd()
    out = bench("benchmarks.etcd_fleet", "--quick", "--rounds", "1", "--own-rounds", "1")
    for target in ("commit to verdict, slowest of 3", "start from etcd to READY", "own work against etcd",
                   "relist after a compaction"):
        assert re.search(rf"^target: {target}.*: .* (PASS|FAIL)$", out, re.M), out
    assert re.search(r"relists \+1, compiles \+0", out), out   # caught up by the relist, not a recompile
    assert re.search(r"ea-vm \(allowed\) \d+ accepted, 0 not .*shop-web \(blocked\) 0 accepted", out), out
    assert [n for n in netns.listnetns() if n.startswith(TAG)] == []   # every namespace it made is gone
