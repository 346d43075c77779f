"""The shipped Prometheus files, checked by Debian's promtool: the scrape config and the alert rules are valid
(and lint-clean), and the rules' unit tests (contrib/prometheus/alerts_test.yml, synthetic series) pass."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from support.paths import ROOT

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="Debian's promtool (package prometheus) is not installed; "
                                                         ".ci/run installs it")
PROMETHEUS = ROOT / "contrib" / "prometheus"


@pytest.mark.parametrize("argv", [["check", "config", "prometheus.yml"],   # also checks the rule file it names
                                  ["check", "rules", "alerts.yml"],
                                  ["test", "rules", "alerts_test.yml"]])
def test_promtool_accepts(argv):
    run = subprocess.run([str(PROMTOOL), *argv], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout and "FAILED" not in run.stdout + run.stderr
