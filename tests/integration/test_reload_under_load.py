"""A reload under a steady SYN stream loses no verdict: the lab in network namespaces with the real daemon, four VMs
sending SYNs the whole time, a policy change every 100 ms, every SYN counted in the kernel (entering the gateway,
arriving at the internet host, the queue's statistics) and held against what the policy says of its source
(benchmarks/control.py, part 2, at a size and rate CI can afford). And the control benchmark's --quick form runs."""

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.control import lab_with_state, reload_under_load
from benchmarks.soak import unbind_senders
from benchmarks.states import lab_state
from enforcer.lab.netns import can_build_namespaces
from support.paths import ROOT

WHY = can_build_namespaces()


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reload") / "state.db"
    lab_state(path, 2_000).close()
    return path


@pytest.mark.skipif(WHY is not None, reason=str(WHY))
@pytest.mark.parametrize("queue_full", ["drop", "accept"])
@pytest.mark.parametrize("kernel_cache", [False, True], ids=["queue", "kernel-cache"])
def test_a_change_every_100_ms_under_a_steady_syn_stream_costs_no_verdict(state, queue_full, kernel_cache):
    """With --kernel-cache the senders are unbound, so that all but each source's first SYN are judged in the
    kernel: a cached verdict that outlived its change would show as misjudged SYNs of the toggled VM."""
    with lab_with_state(state) as lab:
        if kernel_cache:
            unbind_senders(lab)
        lab.start_daemon("--queue-full", queue_full, *(["--kernel-cache"] if kernel_cache else []))
        result = reload_under_load(lab, seconds=4.0, rate=8_000, period=0.1)
    rows = {vm: (sent, entered, expected, arrived) for vm, sent, entered, expected, arrived in result["rows"]}
    assert all(sent > 5_000 for vm, (sent, *_) in rows.items() if vm != "devtest-vm"), rows
    assert rows["ea-vm"][3] == rows["ea-vm"][1] > 0 and rows["shop-web"][3] == 0, rows  # allowed in, blocked not
    assert rows["devtest-vm"][0] == rows["devtest-vm"][1] > 0, rows  # every burst sent whole before the next flip
    assert len(result["reload_ms"]) >= 20, "the changes did not keep coming"
    assert result["drops"] == 0, result
    assert result["misjudged"] == 0, rows
    entered = sum(row[1] for row in rows.values())
    if kernel_cache:  # the kernel judged nearly all of them: the cache was really in the path
        assert result["judged"] < 0.1 * entered, (result["judged"], entered)
    else:
        assert result["judged"] >= 0.9 * entered, (result["judged"], entered)


def test_the_control_benchmark_runs_in_its_quick_form():
    r = subprocess.run([sys.executable, "-m", "benchmarks.control", "--quick", "--cli-only", "--rounds", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("target: ") == 2 and "vm restart" in r.stdout, r.stdout
