"""Debian's real Prometheus scrapes the namespace lab's real daemon, with the scrape config and the alert rules
the project ships (contrib/prometheus), in the gateway's namespace; real SMTP attempts from the lab's VMs are
judged, and Prometheus' HTTP API must count as many allowed and blocked SYNs as were sent. The endpoint passes
`promtool check metrics`, and every metric the Grafana dashboard (contrib/grafana) names is one this scrape has.

One lab, daemon and Prometheus serve the module (they take seconds to start); all of it, with its directory, is
removed afterwards, also when a test fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from enforcer.lab.netns import can_build_namespaces, run_in
from support.netlab import NetLab
from support.paths import LAB, ROOT

PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
WHY_NOT = can_build_namespaces() or (None if PROMETHEUS and PROMTOOL else
                                     "Debian's prometheus (prometheus, promtool) is not installed; .ci/run installs it")
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

CONTRIB = ROOT / "contrib"
DASHBOARD = CONTRIB / "grafana" / "port25-enforcer.json"
METRICS = "127.0.0.1:9125"      # the shipped scrape config's target
PROMETHEUS_AT = "127.0.0.1:19090"
DOC = yaml.safe_load(LAB.read_text())
V4, V6 = DOC["lab"]["internet"]["addresses"]
# A few VMs are enough (each one is a namespace to build): two allowed subscriptions, two blocked ones.
VMS = ("ea-vm", "mcae-vm", "shop-web", "trial-vm")
# A blocked attempt gives up before the kernel's first SYN retransmission (1 s), so each sends exactly one SYN.
ONE_SYN = 0.8


class Gateway:
    def __init__(self, lab: NetLab, log: Path):
        self.lab = lab
        self.log = log

    def get(self, url: str) -> str:
        """GET from inside the gateway's namespace, where the daemon and Prometheus listen on loopback."""
        fetch = self.lab.in_gateway([sys.executable, "-c", "import sys, urllib.request; sys.stdout.write("
                                     "urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())", url])
        assert fetch.returncode == 0, f"{url}: {fetch.stderr}\n{self.log.read_text()}"
        return fetch.stdout

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until Prometheus serves queries: its API answers 503 while its storage starts (seconds on a busy
        machine: a first query then failed the whole module)."""
        deadline = time.monotonic() + timeout
        probe = [sys.executable, "-c", "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)",
                 f"http://{PROMETHEUS_AT}/-/ready"]
        while self.lab.in_gateway(probe).returncode != 0:
            assert time.monotonic() < deadline, f"Prometheus not ready after {timeout:.0f} s\n{self.log.read_text()}"
            time.sleep(0.25)

    def api(self, path: str, **params: str) -> Any:
        answer = json.loads(self.get(f"http://{PROMETHEUS_AT}/api/v1/{path}?{urllib.parse.urlencode(params)}"))
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> dict[tuple[str, ...], float]:
        """An instant query: {the series' label values (not its name), in label-name order: value}."""
        return {tuple(v for k, v in sorted(r["metric"].items()) if k != "__name__"): float(r["value"][1])
                for r in self.api("query", query=expr)["result"]}

    def wait_for(self, expr: str, wanted: Any, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while (got := self.query(expr)) != wanted and time.monotonic() < deadline:
            time.sleep(0.5)
        return got


def prometheus_config(directory: Path) -> Path:
    """The shipped scrape config, scraping and evaluating every second (the shipped 15 s would make this test
    slow), with the shipped rules by their absolute path."""
    config = yaml.safe_load((CONTRIB / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(CONTRIB / "prometheus" / name) for name in config["rule_files"]]
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    with tempfile.TemporaryDirectory(prefix="p25-prometheus-") as tmp:
        workdir = Path(tmp)
        lab = NetLab(workdir, DOC["lab"]["internet"]["addresses"])
        assert lab.cli("apply", str(LAB)) == 0
        try:
            lab.up({r["name"]: r["addresses"] for r in DOC["resources"] if r["name"] in VMS})
            lab.start_daemon("--metrics", METRICS)
            log = workdir / "prometheus.log"
            with open(log, "w") as out:
                # close() stops every process in lab.procs, Prometheus among them
                lab.procs.append(run_in(lab.topology.gateway.namespace,
                                        [PROMETHEUS, f"--config.file={prometheus_config(workdir)}",
                                         f"--storage.tsdb.path={workdir / 'data'}",
                                         f"--web.listen-address={PROMETHEUS_AT}"],
                                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
            gw = Gateway(lab, log)
            gw.wait_ready()
            # the daemon is scraped (a target's first scrape comes within one interval of its discovery)
            up = gw.wait_for('up{job="port25-enforcer"}', {("lab-gateway", METRICS, "port25-enforcer"): 1.0})
            assert up == {("lab-gateway", METRICS, "port25-enforcer"): 1.0}, log.read_text()
            yield gw
        finally:
            lab.close()
            from pyroute2 import netns
            assert not [n for n in netns.listnetns() if n.startswith(lab.tag)]


def test_prometheus_counts_the_syns_that_were_sent(gateway):
    lab = gateway.lab
    allowed = [("ea-vm", V4, 25), ("ea-vm", V6, 25), ("mcae-vm", V4, 25)]
    blocked = [("shop-web", V4, 25), ("trial-vm", V4, 25), ("shop-web", V4, 25)]
    assert lab.smtp(allowed) == ["delivered"] * len(allowed)
    assert lab.smtp(blocked, timeout=ONE_SYN) == ["timeout"] * len(blocked)
    sent = {("payg-shop", "blocked"): 2.0, ("trial-eval", "blocked"): 1.0,
            ("ea-prod", "allowed"): 2.0, ("mcae-corp", "allowed"): 1.0}
    counted = gateway.wait_for("sum by (subscription, verdict) (enforcer_syn_verdicts_total)", sent)
    assert counted == sent, gateway.log.read_text()
    assert gateway.query("sum by (verdict) (enforcer_syn_verdicts_total)") == {("allowed",): 3.0, ("blocked",): 3.0}
    # the daemon's own view agrees
    live: dict[tuple[str, str], float] = {}
    for v in lab.live()["verdicts"]:
        live[(v["subscription"], v["verdict"])] = live.get((v["subscription"], v["verdict"]), 0) + v["count"]
    assert live == sent


def test_the_shipped_alert_rules_load_and_none_fires(gateway):
    groups = gateway.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert [g["name"] for g in groups] == ["port25-enforcer", "port25-enforcer-fleet"]
    assert {r["name"] for r in rules} == {"enforcer_down", "enforcer_state_error", "enforcer_kernel_queue_drops",
                                          "enforcer_fail_open", "enforcer_state_stale", "enforcer_state_apply_slow",
                                          "enforcer:fleet_apply_delay_seconds:max",
                                          "enforcer:fleet_apply_delay_seconds:p99_10m"}
    assert all(r["health"] == "ok" for r in rules), rules
    # a healthy daemon with the default settings (--when-down block, --queue-full drop): nothing pending
    assert gateway.query("enforcer_fail_open") == {("lab-gateway", METRICS, "port25-enforcer", "queue_full"): 0.0,
                                                   ("lab-gateway", METRICS, "port25-enforcer", "when_down"): 0.0}
    assert gateway.api("alerts")["alerts"] == []


def test_the_endpoint_passes_promtool_check_metrics(gateway):
    exposition = gateway.get(f"http://{METRICS}/metrics")
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=exposition, capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check


# ------------------------------------------------------------ the Grafana dashboard

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset"}
PROMETHEUS_OWN = {"up"}  # series Prometheus writes for every target
# what only a daemon on an etcd state exports: tests/integration/test_fleet_status.py checks the rules against one
ETCD_ONLY = {"enforcer_state_stale_seconds", "enforcer_state_apply_delay_seconds_bucket",
             "enforcer_state_last_apply_delay_seconds"}


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: its panels' targets (rows' nested panels too) and its query
    variables."""
    panels = list(dashboard["panels"])
    found = []
    while panels:
        panel = panels.pop()
        panels += panel.get("panels", [])
        found += [t["expr"] for t in panel.get("targets", []) if "expr" in t]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found.append(re.fullmatch(r"label_values\((.*), *\w+\)", variable["definition"]).group(1))
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers outside label matchers, strings, ranges and
    grouping clauses that are not function calls or PromQL keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    return {name for name in re.findall(r"(?<![\w:])[A-Za-z_:][\w:]*(?![\w:]|\s*\()", expr)
            if name not in PROMQL_WORDS and not re.fullmatch(r"\d.*", name)}


def grafana_to_promql(expr: str) -> str:
    """Grafana's variables as one gateway's dashboard would fill them in."""
    return expr.replace("$__rate_interval", "1m").replace("$instance", ".*")


def exported(gateway: Gateway) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in gateway.get(f"http://{METRICS}/metrics").splitlines()
            if line and not line.startswith("#")}


def test_every_dashboard_metric_is_one_the_daemon_exports(gateway):
    dashboard = json.loads(DASHBOARD.read_text())
    named = {name for expr in expressions(dashboard) for name in metric_names(expr)}
    assert "enforcer_syn_verdicts_total" in named and "enforcer_table_generation" in named
    assert named - exported(gateway) - PROMETHEUS_OWN == set()
    # and every expression is one the real Prometheus evaluates
    for expr in expressions(dashboard):
        gateway.api("query", query=grafana_to_promql(expr))


def test_every_alert_rule_metric_is_one_the_daemon_exports(gateway):
    rules = yaml.safe_load((CONTRIB / "prometheus" / "alerts.yml").read_text())
    named = {name for group in rules["groups"] for rule in group["rules"] for name in metric_names(rule["expr"])}
    assert "enforcer_fail_open" in named
    assert named - exported(gateway) - PROMETHEUS_OWN - ETCD_ONLY == set()
