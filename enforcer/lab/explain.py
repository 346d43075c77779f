"""`enforcer lab explain HOST`: what a user sees in their mail log, mapped to the provider's rule. For one lab
resource: its account and the verdict on port 25 now (the rule, in the enforcer's words), the SYNs the enforcer
dropped for it (its drop log), what its Postfix holds deferred and why (each reason read: a time-out is the block,
a refusal or a name error is not), and the provider's way out for this account."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from ..core.policy import decide
from ..core.preflight import judge
from ..state.profiles import load_profile
from . import mta
from .manage import daemon_log, lab_record, postfix_of
from .namespace_lab import read_inventory

PORT = 25


def drops(daemon_log: Path, resource: str | None = None) -> list[dict[str, Any]]:
    """The enforcer's drop log records (for `resource`, or all): one JSON line per blocked SYN it explained."""
    found = []
    with contextlib.suppress(OSError):
        for line in daemon_log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("event") == "blocked" and resource in (None, record.get("resource")):
                        found.append(record)
    return found


def explain(directory: Path, host: str) -> dict[str, Any]:
    namespace, instance = postfix_of(directory, host)  # an unknown host: one line naming the known ones
    record = lab_record(directory)
    inv = read_inventory(record["state"])
    profile = load_profile(inv.profile)
    resource = inv.resources.get(host)
    if resource is None:
        return {"resource": host, "registered": False,
                "verdict": f"'{host}' is no registered resource: the enforcer drops its SYNs to port {PORT}"}
    sub = inv.subscriptions[resource.subscription]
    verdict = decide(inv, profile, resource, record["internet_addresses"][0], PORT)
    account = profile.types.get(sub.type)
    says, way_out = judge(profile, PORT, "connected" if verdict.allow else "timeout", account)
    dropped = drops(daemon_log(record, host), host)
    deferred = []
    if mta.running(instance):
        for message in mta.queue(namespace, instance):
            for r in message.get("recipients", []):
                reason = r.get("delay_reason", "")
                means, port = mta.deferral(reason)
                deferred.append({"queue_id": message.get("queue_id"), "recipient": r.get("address"),
                                 "reason": reason, "means": means, "port": port})
    return {"resource": host, "registered": True, "subscription": sub.name,
            "type": account.name if account else sub.type, "allowed": verdict.allow, "verdict": verdict.reason,
            "provider_says": says, "way_out": way_out, "dropped": len(dropped),
            "last_drop": dropped[-1] if dropped else None, "postfix": mta.running(instance), "deferred": deferred}


def lines(found: dict[str, Any]) -> list[str]:
    """The report in words, what the reader looks for first first."""
    if not found["registered"]:
        return [found["verdict"]]
    said = [f"{found['resource']}: {found['subscription']} ({found['type']})",
            f"port {PORT} now: {found['verdict']}"]
    if found["dropped"]:
        last = found["last_drop"]
        said.append(f"the enforcer dropped {found['dropped']} SYN(s) from it to port {PORT}; the last: "
                    f"{last['source']} -> {last['destination']}:{last['port']}")
    for d in found["deferred"]:
        said.append(f"its Postfix holds {d['queue_id']} to {d['recipient']} deferred: {d['reason']}")
        said.append(f"    that is {d['means']}")
    if not found["postfix"]:
        said.append(f"(no Postfix runs on it; start one: enforcer lab mta start {found['resource']})")
    said.append(f"the provider: {found['provider_says']}")
    said.append(f"the way out: {found['way_out']}")
    return said
