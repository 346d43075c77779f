"""Prometheus metrics (prometheus-client), collected from the daemon's live view at each scrape."""

from __future__ import annotations

from typing import Any, Iterator, Protocol

from prometheus_client import start_http_server
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily,
                                   Metric)
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
        yield CounterMetricFamily("enforcer_drop_log_lines", "Blocked attempts the drop log explained, a line each",
                                  value=s["drop_log"]["lines"])
        yield CounterMetricFamily("enforcer_drop_log_summarised",
                                  "Blocked attempts from new sources counted in a summary line, not explained one by "
                                  "one (a flood of sources, e.g. spoofed)", value=s["drop_log"]["summarised"])
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
        # The kernel counts nothing when it lets a SYN pass unjudged (a full queue with its fail-open flag counts
        # no drop; --queue-bypass with no worker bound counts nothing at all), so what alerts can see is the setting.
        fail_open = GaugeMetricFamily("enforcer_fail_open", "1 where a setting lets port 25 SYNs pass unjudged: "
                                      "queue_full (--queue-full accept), when_down (--when-down allow)",
                                      labels=["setting"])
        fail_open.add_metric(["queue_full"], 1 if s["queue_full"] == "accept" else 0)
        fail_open.add_metric(["when_down"], 1 if s["when_down"] == "allow" else 0)
        yield fail_open
        if "connected" in s:  # a state followed by watch (etcd)
            yield GaugeMetricFamily("enforcer_state_connected", "1 while the watch of the etcd state is connected "
                                    "and answering", value=1 if s["connected"] else 0)
            yield GaugeMetricFamily("enforcer_state_applied_revision", "The etcd revision the table is current to",
                                    value=s["applied_revision"])
            yield GaugeMetricFamily("enforcer_state_stale_seconds", "Seconds since the daemon last knew its table "
                                    "was current with the etcd state (0 while connected)", value=s["stale_seconds"])
            follow = CounterMetricFamily("enforcer_state_loads", "Tables loaded from the etcd state, by how: "
                                         "compile (whole), patch (incremental), relist (after a compaction)",
                                         labels=["how"])
            for how, key in (("compile", "compiles"), ("patch", "patches"), ("relist", "relists")):
                follow.add_metric([how], s[key])
            yield follow
            yield from _fleet(s)
        yield GaugeMetricFamily("enforcer_state_error", "1 while the state's newest generation cannot be loaded "
                                "(the daemon judges with its last good table)", value=1 if s["state_error"] else 0)


def _fleet(s: dict[str, Any]) -> Iterator[Metric]:
    """What a gateway of a fleet says of itself: its --gateway-name (`gateway_name`: the scrape config's target
    label `gateway` is the operator's), and the delay from each change's commit to its table (the fleet's: the max
    over gateways, contrib/prometheus/alerts.yml)."""
    yield InfoMetricFamily("enforcer_gateway", "The name this gateway publishes its applied revision under",
                           value={"gateway_name": s["gateway_name"]})
    delay = s["apply_delay"]
    buckets = [(str(bound), n) for bound, n in delay["buckets"]] + [("+Inf", delay["count"])]
    yield HistogramMetricFamily("enforcer_state_apply_delay_seconds", "Seconds from a change's commit (the "
                                "writer's clock) to this gateway's table holding it (its clock)", buckets=buckets,
                                sum_value=delay["sum"])
    if delay["last"] is not None:
        yield GaugeMetricFamily("enforcer_state_last_apply_delay_seconds", "The apply delay of the last change this "
                                "gateway applied", value=delay["last"])
    yield CounterMetricFamily("enforcer_state_apply_delay_skewed", "Changes whose commit time lay ahead of this "
                              "gateway's clock (clock skew): their delay is measured from the watch's receipt",
                              value=delay["skewed"])


def parse_metrics_address(address: str) -> tuple[str, int]:
    """'127.0.0.1:9125' or '[::1]:9125' -> (host, port), or a UserError saying how to write it."""
    host, _, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535 or "[" in host or "]" in host:
        raise UserError(f"--metrics {address!r}: write ADDRESS:PORT with a port from 1 to 65535, "
                        "e.g. 127.0.0.1:9125 or [::1]:9125")
    return host, int(port)


def serve_metrics(address: str, daemon: LiveView) -> None:
    host, port = parse_metrics_address(address)
    registry = CollectorRegistry()
    registry.register(DaemonCollector(daemon))
    try:
        start_http_server(port, addr=host, registry=registry)
    except (OSError, UnicodeError) as e:
        raise UserError(f"--metrics {address}: cannot listen: {getattr(e, 'strerror', None) or e}") from None


__all__ = ["serve_metrics"]
