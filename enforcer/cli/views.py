"""What the listings show of a subscription, a resource and the running daemon: plain documents, printed as
tables for people or as JSON for scripts."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Callable

import click

from ..core.inventory import Inventory, Resource, pull
from ..core.lifecycle import pending_restart
from ..core.policy import assess_pulled, verdict_for, verdict_word
from ..core.profile import Profile
from ..state.etcd_gateways import Gateway
from .output import show_table


def one_doc(inv: Inventory, profile: Profile, name: str, find: Callable[[Inventory, str], object],
            make: Callable[[Inventory, Profile, str], dict[str, Any]]) -> dict[str, Any]:
    """The document of one named thing; `find` raises the UserError naming the choices when there is none."""
    find(inv, name)
    return make(inv, profile, name)


def subscription_doc(inv: Inventory, profile: Profile, name: str) -> dict[str, Any]:
    sub = inv.subscriptions[name]
    t = profile.types[sub.type]
    allow, _ = assess_pulled(profile, pull(sub))
    return {**asdict(sub), "type_name": t.name, "port25": verdict_word(allow), "exemption_method": t.exemption,
            "resources": sorted(r.name for r in inv.resources_of(name)),
            "pending_restart": sorted(r.name for r in pending_restart(inv, profile, name))}


def resource_doc(inv: Inventory, profile: Profile, name: str) -> dict[str, Any]:
    return doc_of_resource(inv, profile, inv.resources[name])


def doc_of_resource(inv: Inventory, profile: Profile, r: Resource) -> dict[str, Any]:
    """A resource's document, from its row in hand (a listing's: not read again by name)."""
    v = verdict_for(inv, profile, r)
    return {**asdict(r), "port25": v.word, "code": v.code, "reason": v.reason}


def gateway_doc(g: Gateway, generation: int) -> dict[str, Any]:
    """A gateway of an etcd state as status shows it: what it holds, how far behind the state's generation."""
    return {"name": g.name, "alive": g.alive, "status": "alive" if g.alive else "lease expired",
            "revision": g.revision, "applied_revision": g.applied_revision, "lag": g.lag(generation),
            "current": g.lag(generation) == 0, "last_seen": g.at, "last_seen_unix": g.seen, "pid": g.pid,
            "version": g.version}


def show_gateways(docs: list[dict[str, Any]], now: float) -> None:
    """The gateways as a table; `now` (this host's clock) tells how long ago an expired one was last seen."""
    if not docs:
        click.echo(f"{'gateways':17} none follows this state (enforcer run --state ... on each gateway)")
        return

    def seen(d: dict[str, Any]) -> str:
        if d["alive"]:
            return "now (lease held)"
        ago = f" ({max(0, now - d['last_seen_unix']):.0f} s ago)" if d["last_seen_unix"] is not None else ""
        return f"{d['last_seen']}{ago}"
    show_table("Gateways (lag: revisions behind the state's generation)",
               ["name", "status", "holds", "lag", "last seen", "version"],
               [[d["name"], d["status"], str(d["revision"]), "0 (current)" if d["current"] else f"{d['lag']} behind",
                 seen(d), d["version"]] for d in docs])


def show_daemon(live: dict[str, Any]) -> None:
    if not live.get("ok"):
        click.echo(f"{'daemon':17} {live.get('error')}")
        return
    click.echo(f"{'daemon':17} running {live['uptime_s']} s, {live['backend']} backend, queues "
               f"{', '.join(map(str, live['queues']))}, table generation {live['generation']}, "
               f"when down: {live['when_down']}, queue full: {live['queue_full']}")
    for q, d in live["kernel_queues"].items():
        click.echo(f"{'queue ' + q:17} waiting {d.get('waiting', '?')}, dropped when full "
                   f"{d.get('queue_dropped', '?')}, failed to send {d.get('user_dropped', '?')}")
    if "connected" in live:
        click.echo(f"{'state':17} etcd, gateway {live['gateway_name']}: connected={str(live['connected']).lower()}, "
                   f"applied revision {live['applied_revision']}, stale {live['stale_seconds']} s; "
                   f"{live['compiles']} compile(s), {live['patches']} patch(es), {live['relists']} relist(s)")
    click.echo(f"{'malformed':17} {live['malformed']}; rules put back {live['rule_repairs']} time(s)")
    summarised = live.get("drop_log", {}).get("summarised", 0)
    if summarised:  # a flood of new sources: most of its attempts are in the drop log's summary lines
        click.echo(f"{'drop log':17} {live['drop_log']['lines']} lines; {summarised} attempts from new sources "
                   "counted in summary lines, not explained one by one (many source addresses: spoofing?)")
    if live["verdicts"]:
        show_table("SYNs judged", ["subscription", "verdict", "reason code", "count"],
                   [[v["subscription"], v["verdict"], v["code"], str(v["count"])] for v in live["verdicts"]])
