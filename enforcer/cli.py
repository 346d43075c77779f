"""The `enforcer` command: for people first, with --json on every listing for scripts.

A thin edge: it parses arguments, runs a pure operation inside one store transaction, and prints.
Every user mistake becomes one line on stderr and exit status 2, with the state untouched.
"""

from __future__ import annotations

import grp
import ipaddress
import logging
import os
import subprocess
import json
import sys
import tomllib
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from . import __version__, ops
from .declarative import converge, read_document
from .demo import run_demo
from .errors import UserError
from .inventory import RUNNING, Inventory, validate
from .policy import decide, judge_pulled, verdict_for
from .profile import Profile, available_profiles, load_profile
from .store import DEFAULT_STATE, Store
from .control import DEFAULT_SOCKET, ask

# Piped output is not cut to 80 columns: scripts and logs get whole rows (or use --json).
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


class Context:
    def __init__(self, state_path: str, argv: list[str]):
        self.state_path = state_path
        self._profiles: dict[str, Profile] = {}
        self.command = " ".join(["enforcer", *argv])  # recorded in the audit log

    def store(self, create: bool = False) -> Store:
        return Store(self.state_path, create=create)

    def profile(self, profile_id: str) -> Profile:
        if profile_id not in self._profiles:
            self._profiles[profile_id] = load_profile(profile_id)
        return self._profiles[profile_id]

    def read(self) -> tuple[Inventory, Profile]:
        inv, _ = self.store().read()
        profile = self.profile(inv.profile)
        validate(inv, profile)  # a profile edited since the state was written would otherwise crash below
        return inv, profile

    def change(self, operation, *args, **kwargs):
        """Run operation(inv, profile, *args) in one transaction; print its lines (or return its result)."""
        def run(inv: Inventory):
            return operation(inv, self.profile(inv.profile), *args, **kwargs)
        result = self.store(create=True).change(self.command, run)
        if isinstance(result, list):
            for line in result:
                click.echo(line)
        return result


pass_ctx = click.make_pass_decorator(Context)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
apply_now_option = click.option("--apply-now", is_flag=True,
                                help="Lab shortcut: running resources pick the change up at once instead of at "
                                     "their next restart. Never the default.")


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=list))


def show_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    table = Table(title=title, title_justify="left", show_edge=False)
    for c in columns:
        table.add_column(c)
    for row in rows:
        table.add_row(*row)
    console.print(table)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--state", "state_path", envvar="ENFORCER_STATE", default=DEFAULT_STATE, show_default=True,
              metavar="PATH", help="The state database (also $ENFORCER_STATE).")
@click.version_option(__version__, prog_name="port25-enforcer")
@click.pass_context
def cli(ctx: click.Context, state_path: str) -> None:
    """Make a Linux lab gateway block outbound SMTP (TCP 25) the way Azure's platform does."""
    ctx.obj = Context(state_path, ctx.obj or [])


# ---------------------------------------------------------------- apply


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@click.option("--prune", is_flag=True, help="Also remove what the file does not name.")
@pass_ctx
def apply(c: Context, file: str, dry_run: bool, prune: bool) -> None:
    """Converge the state onto a declarative YAML inventory (idempotent)."""
    doc = read_document(file)

    def run(inv: Inventory, profile: Profile):
        wanted = doc.get("profile", inv.profile)
        if wanted != inv.profile:
            if inv.subscriptions or inv.resources or inv.vnets:
                raise UserError(f"{file}: profile '{wanted}' differs from the state's profile '{inv.profile}'; "
                                "use a new state (--state PATH) for another profile")
            profile = c.profile(str(wanted))
            inv = inv.with_(profile=profile.id)
        new, lines = converge(inv, profile, doc, file, prune=prune)
        return (inv if dry_run else new), (lines or ["no changes"])

    if dry_run:
        inv, _ = c.store().read()
        for line in run(inv, c.profile(inv.profile))[1]:
            click.echo(f"would: {line}" if line != "no changes" else line)
        return
    c.change(run)


# ---------------------------------------------------------------- subscriptions


@cli.group()
def subscription() -> None:
    """Subscriptions and their types."""


def subscription_doc(inv: Inventory, profile: Profile, name: str) -> dict:
    sub = inv.subscriptions[name]
    t = profile.types[sub.type]
    allow, _ = judge_pulled(profile, ops.pull(sub))
    return {**asdict(sub), "type_name": t.name, "port25": "allowed" if allow else "blocked",
            "exemption_method": t.exemption,
            "resources": sorted(r.name for r in inv.resources.values() if r.subscription == name),
            "pending_restart": sorted(r.name for r in ops.pending_restart(inv, profile, name))}


@subscription.command("add")
@click.argument("name")
@click.option("--type", "type_word", required=True, help="A subscription type id or alias (see: enforcer profile).")
@pass_ctx
def subscription_add(c: Context, name: str, type_word: str) -> None:
    """Add a subscription."""
    c.change(ops.add_subscription, name, type_word)


@subscription.command("list")
@json_option
@pass_ctx
def subscription_list(c: Context, as_json: bool) -> None:
    """List subscriptions with their port 25 policy."""
    inv, profile = c.read()
    docs = [subscription_doc(inv, profile, n) for n in inv.subscriptions]
    if as_json:
        return emit_json(docs)
    show_table("Subscriptions", ["name", "type", "port 25", "exemption", "resources", "pending restart"],
               [[d["name"], d["type_name"], d["port25"], d["exempt_via"] or "-" if d["exempt"] else "-",
                 str(len(d["resources"])), ", ".join(d["pending_restart"]) or "-"] for d in docs])


@subscription.command("show")
@click.argument("name")
@json_option
@pass_ctx
def subscription_show(c: Context, name: str, as_json: bool) -> None:
    """Show one subscription."""
    inv, profile = c.read()
    inv.subscription(name)
    doc = subscription_doc(inv, profile, name)
    if as_json:
        return emit_json(doc)
    for key in ("name", "type", "type_name", "port25", "exempt", "exempt_via", "exemption_method"):
        click.echo(f"{key:17} {doc[key]}")
    click.echo(f"{'resources':17} {', '.join(doc['resources']) or '-'}")
    click.echo(f"{'pending restart':17} {', '.join(doc['pending_restart']) or '-'}")


@subscription.command("set-type")
@click.argument("name")
@click.argument("type_word", metavar="TYPE")
@apply_now_option
@pass_ctx
def subscription_set_type(c: Context, name: str, type_word: str, apply_now: bool) -> None:
    """Change a subscription's type; running resources keep their policy until restarted."""
    c.change(ops.set_type, name, type_word, apply_now=apply_now)


@subscription.command("remove")
@click.argument("name")
@pass_ctx
def subscription_remove(c: Context, name: str) -> None:
    """Remove an empty subscription."""
    c.change(ops.remove_subscription, name)


# ---------------------------------------------------------------- virtual networks


@cli.group()
def vnet() -> None:
    """Virtual networks and their subnets."""


@vnet.command("add")
@click.argument("name")
@click.option("--subscription", required=True)
@click.option("--prefix", "prefixes", multiple=True, required=True, help="Address prefix; repeat for more.")
@pass_ctx
def vnet_add(c: Context, name: str, subscription: str, prefixes: tuple[str, ...]) -> None:
    """Add a virtual network (destinations inside it are never blocked)."""
    c.change(ops.add_vnet, name, subscription, list(prefixes))


@vnet.command("list")
@json_option
@pass_ctx
def vnet_list(c: Context, as_json: bool) -> None:
    """List virtual networks and subnets."""
    inv, _ = c.read()
    if as_json:
        return emit_json([asdict(v) for v in inv.vnets.values()])
    show_table("Virtual networks", ["name", "subscription", "prefixes", "subnets"],
               [[v.name, v.subscription, ", ".join(v.prefixes),
                 ", ".join(f"{s.name} {s.prefix}{' (delegated)' if s.delegated else ''}" for s in v.subnets) or "-"]
                for v in inv.vnets.values()])


@vnet.command("remove")
@click.argument("name")
@pass_ctx
def vnet_remove(c: Context, name: str) -> None:
    """Remove an empty virtual network."""
    c.change(ops.remove_vnet, name)


@vnet.command("subnet-add")
@click.argument("vnet_name", metavar="VNET")
@click.argument("name")
@click.argument("prefix")
@click.option("--delegated", is_flag=True, help="A subnet delegated to a service (an App Service Environment).")
@pass_ctx
def vnet_subnet_add(c: Context, vnet_name: str, name: str, prefix: str, delegated: bool) -> None:
    """Add a subnet to a virtual network."""
    c.change(ops.add_subnet, vnet_name, name, prefix, delegated)


@vnet.command("subnet-remove")
@click.argument("vnet_name", metavar="VNET")
@click.argument("name")
@pass_ctx
def vnet_subnet_remove(c: Context, vnet_name: str, name: str) -> None:
    """Remove a subnet; resources in the VNet's delegated subnets then pick up their policy."""
    c.change(ops.remove_subnet, vnet_name, name)


@vnet.command("refresh-delegated")
@click.argument("vnet_name", metavar="VNET")
@pass_ctx
def vnet_refresh_delegated(c: Context, vnet_name: str) -> None:
    """Add and remove a temporary subnet, so delegated subnets pick up an exemption (rule 6)."""
    c.change(ops.refresh_delegated, vnet_name)


# ---------------------------------------------------------------- resources


@cli.group()
def vm() -> None:
    """Virtual machines and other resources, and their lifecycle."""


def resource_doc(inv: Inventory, profile: Profile, name: str) -> dict:
    r = inv.resources[name]
    v = verdict_for(inv, profile, r)
    return {**asdict(r), "port25": v.word, "code": v.code, "reason": v.reason}


@vm.command("add")
@click.argument("name")
@click.option("--subscription", required=True)
@click.option("--kind", default="vm", show_default=True, help="Resource kind (see: enforcer profile).")
@click.option("--address", "addresses", multiple=True, required=True,
              help="IPv4 or IPv6 address, or a prefix for a scale set; repeat for more.")
@click.option("--vnet", default=None)
@click.option("--subnet", default=None)
@click.option("--mac", default=None)
@click.option("--egress", default=None, help="The appliance (azure-firewall) its internet traffic leaves through.")
@click.option("--deallocated", is_flag=True, help="Create it without starting it.")
@pass_ctx
def vm_add(c: Context, name, subscription, kind, addresses, vnet, subnet, mac, egress, deallocated) -> None:
    """Create a resource; it starts at once and pulls its subscription's current policy."""
    c.change(ops.add_resource, name, subscription, kind, list(addresses), vnet=vnet, subnet=subnet, mac=mac,
             egress=egress, state="deallocated" if deallocated else RUNNING)


@vm.command("list")
@click.option("--subscription", default=None, help="Only this subscription's resources.")
@json_option
@pass_ctx
def vm_list(c: Context, subscription: str | None, as_json: bool) -> None:
    """List resources with what port 25 to the internet does for each."""
    inv, profile = c.read()
    if subscription:
        inv.subscription(subscription)
    docs = [resource_doc(inv, profile, n) for n, r in inv.resources.items()
            if subscription in (None, r.subscription)]
    if as_json:
        return emit_json(docs)
    show_table("Resources (why: enforcer vm show NAME)", ["name", "subscription", "kind", "state", "addresses",
                                                          "port 25", "code"],
               [[d["name"], d["subscription"], d["kind"], d["state"], " ".join(d["addresses"]), d["port25"],
                 d["code"]] for d in docs])


@vm.command("show")
@click.argument("name")
@json_option
@pass_ctx
def vm_show(c: Context, name: str, as_json: bool) -> None:
    """Show one resource and its pulled policy."""
    inv, profile = c.read()
    inv.resource(name)
    doc = resource_doc(inv, profile, name)
    if as_json:
        return emit_json(doc)
    pulled = doc["pulled"]
    doc["pulled"] = "-" if not pulled else \
        f"{profile.types[pulled['type']].name}{', exempt' if pulled['exempt'] else ''}"
    for key in ("name", "subscription", "kind", "state", "addresses", "vnet", "subnet", "mac", "egress", "pulled",
                "reason"):
        value = doc[key]
        click.echo(f"{key:13} {', '.join(value) if isinstance(value, (list, tuple)) else (value or '-')}")


def lifecycle_command(name: str, operation, doc: str) -> None:
    @vm.command(name, help=doc)
    @click.argument("resource")
    @pass_ctx
    def command(c: Context, resource: str) -> None:
        c.change(operation, resource)


lifecycle_command("start", ops.start, "Start; from deallocated it pulls the current policy.")
lifecycle_command("stop", ops.stop, "Stop, staying allocated: it keeps its policy.")
lifecycle_command("deallocate", ops.deallocate, "Deallocate: the next start pulls the current policy.")
lifecycle_command("restart", ops.restart, "Stop, deallocate and start: pick up the current policy (rule 5).")
lifecycle_command("remove", ops.remove_resource, "Remove a resource.")


# ---------------------------------------------------------------- exemptions


@cli.command()
@click.argument("name", metavar="SUBSCRIPTION")
@apply_now_option
@json_option
@pass_ctx
def diagnose(c: Context, name: str, apply_now: bool, as_json: bool) -> None:
    """Azure's "Cannot send email (SMTP-Port 25)" diagnostic: grants the exemption where the profile allows."""
    result = c.change(ops.diagnose, name, apply_now=apply_now)
    if as_json:
        return emit_json(asdict(result))
    for line in result.lines:
        click.echo(line)


@cli.group()
def exemption() -> None:
    """Exemptions from the port 25 block."""


@exemption.command("list")
@json_option
@pass_ctx
def exemption_list(c: Context, as_json: bool) -> None:
    """List exempt subscriptions and the resources still waiting for a restart."""
    inv, profile = c.read()
    docs = [subscription_doc(inv, profile, s.name) for s in inv.subscriptions.values() if s.exempt]
    if as_json:
        return emit_json(docs)
    show_table("Exemptions", ["subscription", "type", "via", "pending restart"],
               [[d["name"], d["type_name"], d["exempt_via"], ", ".join(d["pending_restart"]) or "-"] for d in docs])


@exemption.command("revoke")
@click.argument("name", metavar="SUBSCRIPTION")
@apply_now_option
@pass_ctx
def exemption_revoke(c: Context, name: str, apply_now: bool) -> None:
    """Revoke an exemption; running resources keep it until their next restart."""
    c.change(ops.revoke_exemption, name, apply_now=apply_now)


@exemption.command("grant")
@click.argument("name", metavar="SUBSCRIPTION")
@click.option("--case", required=True, help="The support case that approved it.")
@apply_now_option
@pass_ctx
def exemption_grant(c: Context, name: str, case: str, apply_now: bool) -> None:
    """Grant an exemption approved through a support case (profiles with such types, e.g. azure-2017)."""
    c.change(ops.grant_exemption, name, case, apply_now=apply_now)


# ---------------------------------------------------------------- check, audit, status, profile


def parse_destination(text: str) -> tuple[str, int]:
    """'198.51.100.25', '198.51.100.25:587', '2001:db8::25', '[2001:db8::25]:587' -> (address, port)."""
    host, port = text, "25"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ("25" if not rest else "bad")
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise UserError(f"--to {text!r}: not an address; write 198.51.100.25:25 or [2001:db8::25]:25") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserError(f"--to {text!r}: the port must be a number from 1 to 65535")
    return address, int(port)


@cli.command()
@click.option("--from", "source", required=True, metavar="VM|ADDRESS", help="A resource name or a source address.")
@click.option("--to", "destination", required=True, metavar="ADDRESS[:PORT]", help="Port 25 unless given.")
@json_option
@pass_ctx
def check(c: Context, source: str, destination: str, as_json: bool) -> None:
    """What the enforcer would do with a connection, and why."""
    inv, profile = c.read()
    address, port = parse_destination(destination)
    try:
        src = str(ipaddress.ip_address(source))
    except ValueError:
        src = inv.resource(source)
    verdict = decide(inv, profile, src, address, port)
    if as_json:
        return emit_json({**asdict(verdict), "verdict": verdict.word, "destination": address, "port": port})
    click.echo(verdict.reason)


@cli.command()
@click.option("--to", "destination", required=True, metavar="ADDRESS[:PORT]", help="Port 25 unless given.")
@click.option("--in", "host", default=None, metavar="VM", help="Send from this host of the namespace lab.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/run/enforcer-lab"), show_default=True, help="The namespace lab's directory.")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=2.0, show_default=True)
@json_option
def probe(destination: str, host: str | None, directory: Path, timeout: float, as_json: bool) -> None:
    """Send one TCP SYN and report SYN-ACK, RST or silence, with the time it took (scapy; needs root)."""
    from .probe import describe, probe as send_probe
    address, port = parse_destination(destination)
    if os.geteuid() != 0:
        raise UserError("enforcer probe sends a raw SYN and needs root; run it with sudo")
    if host is None:
        result = send_probe(address, port, timeout)
    else:
        from .lab import host_namespace
        from .netns import run_in
        proc = run_in(host_namespace(directory, host), [sys.executable, "-m", "enforcer.probe", address, str(port), "--timeout",
                                  str(timeout), "--json"], stdout=subprocess.PIPE, text=True)
        out, _ = proc.communicate(timeout=timeout + 60)
        if proc.returncode != 0:
            raise UserError(f"the probe failed inside {host}'s namespace")
        result = json.loads(out)
    if as_json:
        return emit_json(result)
    click.echo(describe(result))


@cli.command()
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100000))
@json_option
@pass_ctx
def audit(c: Context, limit: int, as_json: bool) -> None:
    """The audit log: when, which uid, what changed, before and after."""
    rows = c.store().audit(limit)
    if as_json:
        return emit_json(rows)

    def brief(doc):
        if doc is None:
            return "-"
        if isinstance(doc, dict):
            keep = ("type", "exempt", "state", "pulled")
            return ", ".join(f"{k}={doc[k]}" for k in keep if k in doc) or "..."
        return str(doc)
    show_table("Audit log", ["when", "uid", "command", "what", "before", "after"],
               [[r["at"], str(r["uid"]), r["command"], f"{r['kind']} {r['name']}", brief(r["before"]),
                 brief(r["after"])] for r in rows])


@cli.command()
@click.option("--socket", "socket_path", default=DEFAULT_SOCKET, show_default=True, help="The daemon's socket.")
@json_option
@pass_ctx
def status(c: Context, socket_path: str, as_json: bool) -> None:
    """A summary of the state, and the running daemon's live view."""
    store = c.store()
    inv, generation = store.read()
    profile = c.profile(inv.profile)
    validate(inv, profile)
    running = [r for r in inv.resources.values() if r.state == RUNNING]
    allowed = [r.name for r in running if verdict_for(inv, profile, r).allow]
    pending = sorted(r.name for s in inv.subscriptions for r in ops.pending_restart(inv, profile, s))
    doc = {"state": str(store.path), "exists": store.exists, "profile": profile.id, "generation": generation,
           "subscriptions": len(inv.subscriptions), "vnets": len(inv.vnets), "resources": len(inv.resources),
           "running": len(running), "port25_allowed": len(allowed), "port25_blocked": len(running) - len(allowed),
           "pending_restart": pending, "internal_prefixes": list(inv.internal_prefixes)}
    live = ask(socket_path, {"cmd": "status"})
    doc["daemon"] = live if live is not None else {"ok": False, "error": f"not running (no answer on {socket_path})"}
    if as_json:
        return emit_json(doc)
    if not store.exists:
        click.echo(f"state: {store.path} (none yet: start with enforcer apply FILE)")
    for key, value in doc.items():
        if key != "daemon":
            click.echo(f"{key:17} {', '.join(value) if isinstance(value, list) else value}")
    show_daemon(doc["daemon"])


def show_daemon(live: dict) -> None:
    if not live.get("ok"):
        click.echo(f"{'daemon':17} {live.get('error')}")
        return
    click.echo(f"{'daemon':17} running {live['uptime_s']} s, {live['backend']} backend, queues "
               f"{', '.join(map(str, live['queues']))}, table generation {live['generation']}, "
               f"when down: {live['when_down']}, queue full: {live['queue_full']}")
    for q, d in live["kernel_queues"].items():
        click.echo(f"{'queue ' + q:17} waiting {d.get('waiting', '?')}, dropped when full "
                   f"{d.get('queue_dropped', '?')}, failed to send {d.get('user_dropped', '?')}")
    click.echo(f"{'malformed':17} {live['malformed']}; rules put back {live['rule_repairs']} time(s)")
    if live["verdicts"]:
        show_table("SYNs judged", ["subscription", "verdict", "reason code", "count"],
                   [[v["subscription"], v["verdict"], v["code"], str(v["count"])] for v in live["verdicts"]])


@cli.command("profile")
@click.argument("profile_id", required=False)
@json_option
@pass_ctx
def profile_cmd(c: Context, profile_id: str | None, as_json: bool) -> None:
    """List the policy profiles, or show one's subscription types and resource kinds."""
    if profile_id is None:
        found = available_profiles()
        if as_json:
            return emit_json({k: str(v) for k, v in found.items()})
        for k, v in found.items():
            click.echo(f"{k:12} {v}")
        return
    p = c.profile(profile_id)
    if as_json:
        return emit_json({"id": p.id, "name": p.name, "restricted_ports": sorted(p.restricted_ports),
                          "types": {k: asdict(t) for k, t in p.types.items()},
                          "kinds": {k: asdict(v) for k, v in p.kinds.items()}})
    show_table(f"{p.name}: subscription types", ["type", "name", "aliases", "port 25", "exemption"],
               [[t.id, t.name, ", ".join(t.aliases) or "-", "blocked" if t.blocked_by_default else "allowed",
                 t.exemption] for t in p.types.values()])
    show_table("resource kinds", ["kind", "name", "port 25"],
               [[k.id, k.name, "follows its subscription" if k.follows_subscription else "never",
                 ] for k in p.kinds.values()])


# ---------------------------------------------------------------- the daemon


DEFAULT_CONFIG = "/etc/enforcer/enforcer.toml"
# config file key -> `enforcer run` parameter (values are checked by the parameter's own click type)
CONFIG_KEYS = {"backend": "backend", "queue": "queue_num", "queues": "queues", "when_down": "when_down",
               "queue_full": "queue_full", "queue_length": "queue_length", "socket_buffer": "socket_buffer",
               "socket": "socket_path", "socket_group": "socket_group", "metrics": "metrics",
               "check_interval": "check_interval"}


def read_config(ctx: click.Context, path: str | None) -> dict:
    """The config file's settings, each validated like the command-line option it stands for."""
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG):
            return {}
        path = DEFAULT_CONFIG
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise UserError(f"{path}: cannot read the config: {e.strerror}; check the path") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}; fix the syntax") from None
    params = {p.name: p for p in ctx.command.params}
    settings = {}
    for key, value in doc.items():
        if key == "state":
            if not isinstance(value, str) or not value:
                raise UserError(f"{path}: state: expected a path; write state = \"/var/lib/enforcer/state.db\"")
            settings["state"] = value
            continue
        if key not in CONFIG_KEYS:
            raise UserError(f"{path}: unknown key '{key}'; use one of: state, {', '.join(CONFIG_KEYS)}")
        param = params[CONFIG_KEYS[key]]
        try:
            settings[param.name] = param.type.convert(value, param, ctx)
        except click.BadParameter as e:
            raise UserError(f"{path}: {key}: {e.message.rstrip('.')}; fix it or remove the key") from None
    return settings


@cli.command()
@click.option("--config", "config_path", default=None, metavar="PATH",
              help=f"Settings file (default {DEFAULT_CONFIG} when it exists); options given here override it.")
@click.option("--backend", type=click.Choice(["auto", "iptables", "nftables"]), default="auto", show_default=True,
              help="Kernel rules: native nftables where the kernel has the queue expression, else iptables.")
@click.option("--queue", "queue_num", type=click.IntRange(0, 65535), default=25, show_default=True,
              help="The (first) NFQUEUE number.")
@click.option("--queues", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Queues balanced across worker processes, one per queue.")
@click.option("--when-down", type=click.Choice(["block", "allow"]), default="block", show_default=True,
              help="What port 25 SYNs meet while the daemon is down (killed, crashed) and its rules remain.")
@click.option("--queue-full", type=click.Choice(["drop", "accept"]), default="drop", show_default=True,
              help="What the kernel does with a SYN when the queue is full.")
@click.option("--queue-length", type=click.IntRange(16, 1 << 20), default=4096, show_default=True,
              help="Packets the kernel keeps waiting per queue.")
@click.option("--socket-buffer", type=click.IntRange(1 << 16, 1 << 30), default=4 << 20, show_default=True,
              help="Receive buffer of the queue's netlink socket, bytes.")
@click.option("--socket", "socket_path", default=DEFAULT_SOCKET, show_default=True, help="The control socket.")
@click.option("--socket-group", default=None, help="A group that may also use the control socket.")
@click.option("--metrics", default=None, metavar="ADDRESS:PORT", help="Serve Prometheus metrics there.")
@click.option("--check-interval", type=click.FloatRange(0.1, 3600), default=2.0, show_default=True,
              help="Seconds between checks that our rules are still in place.")
@click.pass_context
def run(ctx: click.Context, config_path: str | None, **options) -> None:
    """Run the enforcer daemon: judge forwarded port 25 SYNs through NFQUEUE."""
    from .daemon import Daemon, Options
    c: Context = ctx.obj
    settings = read_config(ctx, config_path)
    for name, value in settings.items():
        if name == "state":
            if ctx.parent.get_parameter_source("state_path") == click.core.ParameterSource.DEFAULT:
                c.state_path = value
        elif ctx.get_parameter_source(name) == click.core.ParameterSource.DEFAULT:
            options[name] = value
    if options["socket_group"]:
        try:
            grp.getgrnam(options["socket_group"])
        except KeyError:
            raise UserError(f"socket group {options['socket_group']!r}: no such group; create it "
                            "(groupadd) or leave it out") from None
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    o = options
    opts = Options(c.state_path, o["backend"], o["queue_num"], o["queues"], o["when_down"], o["queue_full"],
                   o["queue_length"], o["socket_buffer"], o["socket_path"], o["socket_group"], o["metrics"],
                   o["check_interval"])
    code = Daemon(opts).run()
    if code:
        raise SystemExit(code)


@cli.group()
def service() -> None:
    """The systemd service."""


@service.command("install")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("/"), show_default=True,
              help="Install below this directory instead of / (for packaging).")
@click.option("--executable", default=None, help="The enforcer executable ExecStart runs (default: this one).")
@click.option("--force", is_flag=True, help="Replace a unit file that differs.")
def service_install(root: Path, executable: str | None, force: bool) -> None:
    """Install systemd/enforcer.service and /etc/enforcer/enforcer.toml (never overwriting the config)."""
    from .service import install
    for line in install(root, executable, force):
        click.echo(line)


# ---------------------------------------------------------------- lab


@cli.group()
def lab() -> None:
    """The example lab."""


lab_dir_option = click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
                              default=Path("/run/enforcer-lab"), show_default=True,
                              help="Where the lab keeps its state, logs and record.")
lab_file_option = click.option("--lab", "lab_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                               help="The lab file (default: vagrant/lab.yml of this checkout).")


@lab.command("demo")
@lab_file_option
@click.option("--timeout", type=click.FloatRange(0.5, 30), default=2.5, show_default=True,
              help="Seconds an SMTP attempt waits before it counts as a time-out (a silent drop).")
def lab_demo(lab_file: Path | None, timeout: float) -> None:
    """Build the lab in network namespaces, start the enforcer on its gateway, try real SMTP deliveries from
    every resource to 25, 465 and 587, compare with the spec, walk the exemption story, tear down.
    Needs root; exits non-zero if any outcome differs from the spec."""
    code = run_demo(lab_file, console, timeout)
    if code:
        raise SystemExit(code)


@lab.command("up")
@lab_file_option
@lab_dir_option
@click.option("--no-daemon", is_flag=True, help="Do not start the enforcer on the gateway.")
def lab_up_cmd(lab_file: Path | None, directory: Path, no_daemon: bool) -> None:
    """Build the lab of the lab file in network namespaces, with its SMTP server and the enforcer."""
    from .lab import lab_up
    record = lab_up(lab_file, directory, daemon=not no_daemon)
    click.echo(f"lab up: {len(record['hosts'])} hosts from {record['lab_file']}; state {record['state']}")
    click.echo(f"try: enforcer lab exec shop-web -- python3 -m enforcer.smtptry {record['internet_addresses'][0]} 25")
    click.echo(f"     enforcer --state {record['state']} diagnose devtest-lab")
    click.echo(f"     enforcer --state {record['state']} status --socket {record['socket']}")


@lab.command("down")
@lab_dir_option
def lab_down_cmd(directory: Path) -> None:
    """Remove everything `lab up` made (also after a crash of `lab up`)."""
    from .lab import lab_down
    gone = lab_down(directory)
    click.echo(f"lab down: removed {len(gone)} namespace(s)" if gone else "lab down: nothing was up")


@lab.command("status")
@lab_dir_option
@json_option
def lab_status_cmd(directory: Path, as_json: bool) -> None:
    """What the lab has up: hosts, namespaces, the daemon."""
    from .control import ask
    from .lab import lab_record, netns_names
    record = lab_record(directory)
    present = set(netns_names())
    hosts = {name: {"namespace": ns, "up": ns in present, "addresses": record["addresses"][name]}
             for name, ns in record["hosts"].items()}
    live = ask(record["socket"], {"cmd": "status"})
    doc = {**record, "hosts": hosts, "daemon_status": live or {"ok": False, "error": "not running"}}
    if as_json:
        return emit_json(doc)
    click.echo(f"lab from {record['lab_file']}; state {record['state']}")
    show_table("Lab hosts", ["host", "namespace", "up", "addresses"],
               [[n, h["namespace"], "yes" if h["up"] else "NO", " ".join(h["addresses"])] for n, h in hosts.items()])
    show_daemon(doc["daemon_status"])


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@lab_dir_option
@click.argument("host")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def lab_exec_cmd(directory: Path, host: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside a lab host's namespace: enforcer lab exec VM -- COMMAND."""
    from .lab import lab_exec
    code = lab_exec(directory, host, list(command))
    if code:
        raise SystemExit(code)


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cli.main(args=argv, prog_name="enforcer", standalone_mode=False, obj=argv)
    except UserError as e:
        click.echo(f"enforcer: error: {e}", err=True)
        return 2
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx else "enforcer"
        click.echo(f"{where}: error: {e.format_message()} (see: {where} --help)", err=True)
        return 2
    except click.ClickException as e:
        click.echo(f"enforcer: error: {e.format_message()}", err=True)
        return e.exit_code
    except click.Abort:
        click.echo("enforcer: aborted", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
