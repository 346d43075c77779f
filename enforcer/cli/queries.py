"""`enforcer check|audit|status|state check`: asking the state and the running daemon."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import asdict
from typing import Any

import click

from ..core.inventory import Inventory, Pulled, State
from ..core.lifecycle import LISTED, listed, pending_names
from ..core.policy import Code, decide
from ..core.profile import Profile
from ..core.validate import check_row
from ..core.verdicts import Judged, judged_alike
from ..dataplane.control import ask
from ..errors import UserError
from ..state.backend import copy_rows
from ..state.etcd_copy import copy_in
from ..state.etcd_store import EtcdStore
from ..state.settings import DEFAULT_SOCKET
from .complete import resource_names
from .context import Context, json_option, pass_ctx
from .output import emit_json, show_table
from .params import parse_destination
from .views import gateway_doc, show_daemon, show_gateways
from .wait import wait_option


@click.command()
@click.option("--from", "source", required=True, metavar="VM|ADDRESS", help="A resource name or a source address.",
              shell_complete=resource_names)
@click.option("--to", "destination", required=True, metavar="ADDRESS[:PORT]", help="Port 25 unless given.")
@json_option
@pass_ctx
def check(c: Context, source: str, destination: str, as_json: bool) -> None:
    """What the enforcer would do with a connection, and why."""
    inv, profile = c.read()
    address, port = parse_destination(destination)
    src: Any
    try:
        src = str(ipaddress.ip_address(source))
    except ValueError:
        src = inv.resource(source)
    verdict = decide(inv, profile, src, address, port)
    if as_json:
        return emit_json({**asdict(verdict), "verdict": verdict.word, "destination": address, "port": port})
    click.echo(verdict.reason)


@click.command()
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100000))
@json_option
@pass_ctx
def audit(c: Context, limit: int, as_json: bool) -> None:
    """The audit log: when, which uid, what changed, before and after."""
    with c.opened() as store:
        rows = store.audit(limit)
    if as_json:
        return emit_json(rows)

    def brief(doc: Any) -> str:
        if doc is None:
            return "-"
        if isinstance(doc, dict):
            keep = ("type", "exempt", "state", "pulled")
            return ", ".join(f"{k}={doc[k]}" for k in keep if k in doc) or "..."
        return str(doc)
    show_table("Audit log", ["when", "uid", "command", "what", "before", "after"],
               [[r["at"], str(r["uid"]), r["command"], f"{r['kind']} {r['name']}", brief(r["before"]),
                 brief(r["after"])] for r in rows])


@click.command()
@click.option("--socket", "socket_path", default=DEFAULT_SOCKET, show_default=True, help="The daemon's socket.")
@json_option
@pass_ctx
def status(c: Context, socket_path: str, as_json: bool) -> None:
    """A summary of the state, and the running daemon's live view."""
    inv, profile = c.read()
    path, exists, generation = c.store.path, c.store.exists, c.store.generation()
    pending, waiting = [], 0
    for sub in inv.subscriptions:
        names, n = pending_names(inv, profile, sub, None if as_json else LISTED)  # a person reads a few
        pending += names
        waiting += n
    # counted through the state's indexes, each group of alike resources judged once: no resource is read
    groups = inv.running(("subscription", "kind", "egress", "pulled"))
    running = sum(groups.values())
    allowed = sum(n for group, n in groups.items() if _judged(inv, profile, *group)[0])
    doc: dict[str, Any] = {
        "state": str(path), "exists": exists, "profile": profile.id, "generation": generation,
        "subscriptions": len(inv.subscriptions), "vnets": len(inv.vnets), "resources": len(inv.resources),
        "running": running, "port25_allowed": allowed, "port25_blocked": running - allowed,
        "pending_restart": sorted(pending), "internal_prefixes": list(inv.internal_prefixes)}
    fleet = c.store.fleet() if isinstance(c.store, EtcdStore) else None
    if fleet is not None:  # an etcd state: the gateways that follow it (generation read with them: one revision)
        doc["generation"], gateways = fleet
        doc["gateways"] = [gateway_doc(g, doc["generation"]) for g in gateways]
    live = ask(socket_path, {"cmd": "status"})
    doc["daemon"] = live if live is not None else {"ok": False, "error": f"not running (no answer on {socket_path})"}
    if as_json:
        return emit_json(doc)
    if not exists:
        click.echo(f"state: {path} (none yet: start with enforcer apply FILE)")
    doc["pending_restart"] = listed(doc["pending_restart"], waiting)
    for key, value in doc.items():
        if key not in ("daemon", "gateways"):
            click.echo(f"{key:17} {', '.join(value) if isinstance(value, list) else value}")
    if "gateways" in doc:
        show_gateways(doc["gateways"], time.time())
    show_daemon(doc["daemon"])


@click.group()
def gateway() -> None:
    """The gateways that follow an etcd state (enforcer status lists them)."""


@gateway.command("forget")
@click.argument("name")
@pass_ctx
def gateway_forget(c: Context, name: str) -> None:
    """Forget a gateway that is gone for good: delete the record its lease left (status lists it until then)."""
    if not isinstance(c.store, EtcdStore):
        raise UserError(f"gateway forget: {c.store.path} is an SQLite state, followed by its own host's daemon; "
                        "gateways are an etcd state's (--state etcd://HOST:PORT/PREFIX)")
    gone = c.store.forget_gateway(name)
    click.echo(f"forgot gateway {name!r} (last seen {gone.at}, holding generation {gone.revision})")


@click.group()
def state() -> None:
    """The state itself: checked whole, or copied to another backend."""


@state.command("check")
@pass_ctx
def state_check(c: Context) -> None:
    """Check the whole state, whatever its size: every page, every row, the inventory against its profile.
    (A command checks what it reads; past 16 MiB a change does not check the whole file first.)"""
    counts = c.store.verify(c.profile)
    click.echo(f"{c.store.path}: ok (" + ", ".join(f"{n:,} {what}" for what, n in counts.items()) + ")")


@state.command("copy")
@click.argument("source", metavar="FROM")
@click.argument("target", metavar="TO")
@click.option("--replace", is_flag=True, help="Overwrite a target that already holds a state.")
@wait_option
@pass_ctx
def state_copy(c: Context, source: str, target: str, replace: bool) -> None:
    """Copy a whole state (rows and settings) to another: an SQLite file or etcd://HOST:PORT/PREFIX, either way.
    The target's audit log records the copy, one row per row written. Into an etcd prefix holding no state it is
    written in batches, and exists only once complete (interrupted: run it again); --replace of an etcd state is
    one transaction."""
    if source == target:
        raise UserError(f"state copy: {source} is both FROM and TO; name two states")
    origin = c.open(source)
    try:
        if not origin.exists:
            raise UserError(f"state copy: no state at {source}")
        inv, _ = origin.read()
    finally:
        origin.close()
    destination = c.open(target)
    try:
        if isinstance(destination, EtcdStore) and not destination.exists:  # in batches: nothing exists till done
            counts = copy_in(destination, inv, c.command)
        else:  # one change: a state replaced is replaced at once (etcd: in one transaction)
            counts = destination.change(c.command, copy_rows(inv, replace, target))
        c.changed(target, destination)
    finally:
        destination.close()
    click.echo(f"copied {source} to {target} (" + ", ".join(f"{n:,} {what}" for what, n in counts.items()) + ")")


def _judged(inv: Inventory, profile: Profile, sub: str, kind: str, egress: str | None,
            pulled: Pulled | None) -> tuple[bool, str | None, Code]:
    """The verdict of a group of running resources alike; a group the profile cannot judge (edited since) is told
    by the first resource of it, whose row is checked as it is read."""
    key = Judged(sub, kind, State.RUNNING, egress, pulled)
    try:
        check_row(profile, "resources", key.resource("?"))
    except UserError:
        for name in inv.running_names(sub, {"kind": kind, "egress": egress, "pulled": pulled}, 1):
            inv.resources[name]
        raise
    return judged_alike(inv, profile, key)
