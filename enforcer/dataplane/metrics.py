"""Prometheus metrics (prometheus-client), collected from the daemon's live view at each scrape."""

from __future__ import annotations

from typing import Any, Iterator, Protocol

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from ..errors import UserError


class LiveView(Protocol):
    def stats(self) -> dict[str, Any]: ...


class DaemonCollector:
    def __init__(self, daemon: LiveView):
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        s = self.daemon.stats()
        verdicts = CounterMetricFamily("enforcer_syn_verdicts", "Port 25 SYNs judged, per subscription and reason",
                                       labels=["subscription", "code", "verdict"])
        for v in s["verdicts"]:
            verdicts.add_metric([v["subscription"], v["code"], v["verdict"]], v["count"])
        yield verdicts
        yield CounterMetricFamily("enforcer_malformed_packets", "Queued packets whose source could not be read",
                                  value=s["malformed"])
        dropped = CounterMetricFamily("enforcer_kernel_queue_dropped",
                                      "Packets the kernel dropped at a queue (full, or failed to send)",
                                      labels=["queue", "why"])
        for q, d in s["kernel_queues"].items():
            dropped.add_metric([q, "queue_full"], d.get("queue_dropped", 0))
            dropped.add_metric([q, "user"], d.get("user_dropped", 0))
        yield dropped
        yield GaugeMetricFamily("enforcer_table_generation", "State generation of the compiled table",
                                value=s["generation"])
        yield CounterMetricFamily("enforcer_rule_repairs", "Times our rules were found removed and put back",
                                  value=s["rule_repairs"])
        yield GaugeMetricFamily("enforcer_uptime_seconds", "Seconds since the daemon started", value=s["uptime_s"])


def serve_metrics(address: str, daemon: LiveView) -> None:
    host, _, port = address.rpartition(":")
    if not port.isdigit() or not host:
        raise UserError(f"--metrics {address!r}: write ADDRESS:PORT, e.g. 127.0.0.1:9125")
    registry = CollectorRegistry()
    registry.register(DaemonCollector(daemon))
    try:
        start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    except OSError as e:
        raise UserError(f"--metrics {address}: cannot listen: {e.strerror}") from None


__all__ = ["serve_metrics"]
