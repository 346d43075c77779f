"""`enforcer lab ...` and `enforcer probe`: the namespace lab. The modules that need pyroute2 or scapy load only
when one of these commands runs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import click

from ..core.profile import Profile
from ..dataplane.control import ask
from ..errors import UserError
from ..lab.files import LAB_DIR
from .context import json_option
from .output import console, emit_json, show_table
from .params import parse_destination
from .views import show_daemon


@click.group()
def lab() -> None:
    """The example lab."""


lab_dir_option = click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
                              default=LAB_DIR, show_default=True,
                              help="Where the lab keeps its state, logs and record.")
lab_file_option = click.option("--lab", "lab_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                               help="The lab file (default: vagrant/lab.yml of the checkout, or the installed copy).")


@lab.command("demo")
@lab_file_option
@click.option("--profile", "profile", default=None, metavar="NAME",
              help="The provider's lab: vagrant/labs/NAME.yml (azure: vagrant/lab.yml); see: enforcer profile list.")
@click.option("--all", "every", is_flag=True, help="Every provider's lab in turn, then one summary table.")
@click.option("--timeout", type=click.FloatRange(0.5, 30), default=2.5, show_default=True,
              help="Seconds an SMTP attempt waits before it counts as a time-out (a silent drop).")
@click.option("--mta", is_flag=True, help="Tell the exemption story with Debian's Postfix on the resources (deferred "
              "mail, the relay, the restart) instead of the table; needs postfix and swaks (install.sh --mta).")
@click.option("--fleet", is_flag=True, help="The fleet lab: 3 gateways on a 3-member etcd cluster of its own, the "
              "table through every gateway, then the fleet's story (the leader killed, a gateway cut off and healed).")
def lab_demo(lab_file: Path | None, profile: str | None, every: bool, timeout: float, mta: bool,
             fleet: bool) -> None:
    """Build the lab in network namespaces (Azure's, or the provider's of --profile or --lab; --all: each in turn),
    start the enforcer on its gateway, try real SMTP deliveries from every resource to 25, 465 and 587, compare
    with the lab file, walk the provider's exemption story, tear down. Needs root; exits non-zero if any outcome
    differs from the lab file."""
    from ..lab.demo import run_all, run_demo
    from ..lab.files import lab_for_profile
    if sum((lab_file is not None, profile is not None, every)) > 1:
        raise UserError("give one of --lab FILE, --profile NAME or --all, not several")
    if mta and every:
        raise UserError("--mta tells one provider's story: give --profile NAME or --lab FILE, not --all")
    if fleet and (every or mta or profile is not None or lab_file is not None):
        raise UserError("--fleet tells its story on Azure's lab (vagrant/lab.yml) alone: give it without --all, "
                        "--mta, --profile or --lab")
    if fleet:
        from ..lab.fleet_demo import run_fleet_demo
        code = run_fleet_demo(None, console(), timeout)
        if code:
            raise SystemExit(code)
        return
    if profile is not None:
        lab_file = lab_for_profile(profile)
    code = run_all(console(), timeout) if every else run_demo(lab_file, console(), timeout, mta)
    if code:
        raise SystemExit(code)


@lab.command("up")
@lab_file_option
@lab_dir_option
@click.option("--no-daemon", is_flag=True, help="Do not start the enforcer on the gateway.")
@click.option("--gateways", type=int, default=None, metavar="N",
              help="A fleet lab: N gateways, each serving its share of the VNets, on a state in etcd [default with "
                   "--etcd-members: 1].")
@click.option("--etcd-members", "members", type=int, default=None, metavar="M",
              help="A fleet lab: its state in an etcd cluster of M members of its own (odd, 1 to 7) [default with "
                   "--gateways: 3].")
def lab_up(lab_file: Path | None, directory: Path, no_daemon: bool, gateways: int | None,
           members: int | None) -> None:
    """Build the lab of the lab file in network namespaces, with its SMTP server and the enforcer; with --gateways
    or --etcd-members, the fleet lab: an etcd cluster of its own and a gateway per share of the VNets."""
    from ..lab.manage import lab_up
    from ..lab.netns import own_module
    record = lab_up(lab_file, directory, daemon=not no_daemon, gateways=gateways, members=members)
    click.echo(f"lab up: {len(record['hosts'])} hosts from {record['lab_file']}; state {record['state']}")
    if "gateways" in record:
        return _fleet_up_said(record, directory)
    if record.get("earlier"):
        click.echo(f"the earlier lab's mail and logs: {record['earlier']}")
    # the lab's own commands need its directory unless it is the default; the tools, this interpreter (the
    # virtualenv's python3 when one is used, which a bare `python3` inside the namespace would not find)
    where = "" if directory.resolve() == LAB_DIR else f" --dir {directory}"
    click.echo(f"try: enforcer lab exec{where} shop-web -- {' '.join(own_module('enforcer.lab.smtptry'))} "
               f"{record['internet_addresses'][0]} 25")
    click.echo(f"     enforcer --state {record['state']} diagnose devtest-lab")
    click.echo(f"     enforcer --state {record['state']} status --socket {record['socket']}")
    click.echo(f"     enforcer lab status{where}; enforcer lab down{where}")


def _fleet_up_said(record: dict[str, Any], directory: Path) -> None:
    where = "" if directory.resolve() == LAB_DIR else f" --dir {directory}"
    members = record["etcd"]["members"]
    click.echo(f"etcd: {len(members)} member(s) ({', '.join(m['endpoint'] for m in members)}), data in "
               f"{Path(record['dir']) / 'etcd'}; this host reaches them on {record['etcd']['link']} "
               f"({record['etcd']['host']})")
    for name, g in record["gateways"].items():
        click.echo(f"{name}: enforcer run --gateway-name {name}, socket {g['socket']}; serves {', '.join(g['serves'])}")
    click.echo(f"try: enforcer --state {record['state']} vm list")
    click.echo(f"     enforcer status --socket {next(iter(record['gateways'].values()))['socket']}")
    click.echo(f"     enforcer lab partition{where} gw1; enforcer lab heal{where} gw1")
    click.echo(f"     enforcer lab status{where}; enforcer lab down{where}")


@lab.command("down")
@lab_dir_option
@click.option("--purge", is_flag=True, help="Also delete the mail the lab received and its logs.")
def lab_down(directory: Path, purge: bool) -> None:
    """Remove everything `lab up` made (also after a crash of `lab up`); the mail received and the logs stay,
    unless --purge."""
    from ..lab.manage import lab_down
    gone, kept = lab_down(directory, purge)
    click.echo(f"lab down: removed {len(gone)} namespace(s)" if gone else "lab down: nothing was up")
    if kept:
        click.echo(f"kept: {', '.join(kept)} (delete them with: enforcer lab down --purge"
                   f"{'' if directory.resolve() == LAB_DIR else f' --dir {directory}'})")


@lab.command("status")
@lab_dir_option
@json_option
def lab_status(directory: Path, as_json: bool) -> None:
    """What the lab has up: hosts, namespaces, the daemon."""
    from ..lab.manage import lab_record, netns_names
    record = lab_record(directory)
    present = set(netns_names())
    hosts = {name: {"namespace": ns, "up": ns in present, "addresses": record["addresses"][name]}
             for name, ns in record["hosts"].items()}
    hosts["gateway"] = {"namespace": record["gateway"], "up": record["gateway"] in present, "addresses": []}
    hosts["internet"] = {"namespace": record["internet"], "up": record["internet"] in present,
                         "addresses": record["internet_addresses"]}
    live = ask(record["socket"], {"cmd": "status"})
    doc = {**record, "hosts": hosts, "daemon_status": live or {"ok": False, "error": "not running"}}
    if "gateways" in record:
        return _fleet_status(record, doc, present, as_json)
    if as_json:
        return emit_json(doc)
    click.echo(f"lab from {record['lab_file']}; state {record['state']}; mail received in "
               f"{Path(record['state']).parent / 'mail'}")
    _show_hosts(hosts)
    show_daemon(doc["daemon_status"])


def _show_hosts(hosts: dict[str, dict[str, Any]]) -> None:
    show_table("Lab hosts", ["host", "namespace", "up", "addresses"],
               [[n, h["namespace"], "yes" if h["up"] else "NO", " ".join(h["addresses"])] for n, h in hosts.items()])


def _fleet_status(record: dict[str, Any], doc: dict[str, Any], present: set[str], as_json: bool) -> None:
    """A fleet lab's status: its hosts, each gateway's daemon (and whether it is cut off), each etcd member."""
    from ..lab.fleet import cluster_of, is_cut
    hosts = doc["hosts"]
    del hosts["gateway"]
    for name, g in record["gateways"].items():
        hosts[name] = {"namespace": g["namespace"], "up": g["namespace"] in present, "addresses": [g["address"]]}
        g["cut_off"] = g["namespace"] in present and is_cut(g["namespace"])
        g["daemon_status"] = ask(g["socket"], {"cmd": "status"}, timeout=2.0) or {"ok": False, "error": "not running"}
    cluster = cluster_of(record)
    leader = cluster.leader()
    members = [{**m, "running": c.running, "leader": c is leader}
               for m, c in zip(record["etcd"]["members"], cluster.members, strict=True)]
    doc = {**doc, "hosts": hosts, "etcd": {**record["etcd"], "members": members}}
    del doc["daemon_status"]
    if as_json:
        return emit_json(doc)
    click.echo(f"fleet lab from {record['lab_file']}; state {record['state']}; mail received in "
               f"{Path(record['dir']) / 'mail'}")
    _show_hosts(hosts)
    show_table(f"etcd members (control network {record['etcd']['control']}, this host {record['etcd']['host']})",
               ["member", "namespace", "endpoint", "running", "leader"],
               [[m["name"], m["namespace"], m["endpoint"], "yes" if m["running"] else "NO",
                 "leader" if m["leader"] else ""] for m in members])
    for name, g in record["gateways"].items():
        click.echo(f"\n{name}: serves {', '.join(g['serves'])}"
                   f"{'; CUT OFF from etcd (enforcer lab heal ' + name + ')' if g['cut_off'] else ''}")
        show_daemon(g["daemon_status"])


@lab.command("partition")
@lab_dir_option
@click.argument("gateway")
def lab_partition(directory: Path, gateway: str) -> None:
    """Cut a fleet lab's GATEWAY off from etcd (every packet on its control link dropped, as a partition does): it
    keeps judging with its last table, and says it is not connected."""
    from ..lab.fleet import partition
    from ..lab.manage import gateway_namespace
    done = partition(gateway_namespace(directory, gateway), True)
    click.echo(f"{gateway} cut off from etcd" if done else f"{gateway} is cut off already")


@lab.command("heal")
@lab_dir_option
@click.argument("gateway")
def lab_heal(directory: Path, gateway: str) -> None:
    """Heal the cut of `lab partition`: GATEWAY reaches etcd again and catches up."""
    from ..lab.fleet import partition
    from ..lab.manage import gateway_namespace
    done = partition(gateway_namespace(directory, gateway), False)
    click.echo(f"{gateway} reaches etcd again" if done else f"{gateway} was not cut off")


@lab.command("mail")
@lab_dir_option
@json_option
def lab_mail(directory: Path, as_json: bool) -> None:
    """What the lab's internet host received: each message's port, family, sender and recipients."""
    from ..lab.smtpsink import received
    maildir = directory / "mail"
    messages = received(maildir)
    if as_json:
        return emit_json(messages)
    if not messages:
        click.echo(f"no mail received in {maildir}")
        return
    show_table(f"Mail received ({maildir})", ["#", "port", "family", "from", "to", "subject"],
               [[str(i), str(m["port"]), m["family"] or "?", m["from"], " ".join(m["to"]), m["subject"] or ""]
                for i, m in enumerate(messages, 1)])


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@lab_dir_option
@click.argument("host")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def lab_exec(directory: Path, host: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside a lab host's namespace: enforcer lab exec VM -- COMMAND."""
    from ..lab.manage import lab_exec
    code = lab_exec(directory, host, list(command))
    if code:
        raise SystemExit(code)


@lab.command("explain")
@lab_dir_option
@click.argument("host")
@json_option
def lab_explain(directory: Path, host: str, as_json: bool) -> None:
    """What blocks HOST's mail and the provider's way out: the verdict on port 25, the enforcer's drops, and what
    its Postfix (lab mta) holds deferred, each reason read."""
    from ..lab.explain import explain, lines
    found = explain(directory, host)
    if as_json:
        return emit_json(found)
    for line in lines(found):
        click.echo(line)


@lab.group("mta")
def lab_mta() -> None:
    """Debian's Postfix inside lab hosts, an instance of each host's own (its config, queue and log in the lab's
    directory): mail taken on the host's 127.0.0.1:25 goes out by MX on port 25, or through the lab's relay."""


@lab_mta.command("start")
@lab_dir_option
@click.argument("host")
@click.option("--relay/--direct", default=False, show_default=True,
              help="Send everything through the lab's authenticated relay (relayhost = [relay.lab]:587, SASL over "
                   "required TLS), or by MX on port 25.")
def lab_mta_start(directory: Path, host: str, relay: bool) -> None:
    """Start HOST's Postfix, or reconfigure the one that runs (its deferred mail is retried at once)."""
    from ..lab.manage import postfix_of, start_postfix
    done = start_postfix(directory, host, relay)
    _, instance = postfix_of(directory, host)
    where = "" if directory.resolve() == LAB_DIR else f" --dir {directory}"
    click.echo(f"postfix {done} on {host} ({'through relay.lab' if relay else 'by MX on port 25'}); its config "
               f"{instance.config}, its log {instance.log}")
    click.echo(f"try: enforcer lab exec{where} {host} -- swaks --server 127.0.0.1 --to someone@gmail.com")
    click.echo(f"     enforcer lab mta queue{where} {host}; enforcer lab explain{where} {host}")


@lab_mta.command("stop")
@lab_dir_option
@click.argument("host")
def lab_mta_stop(directory: Path, host: str) -> None:
    """Stop HOST's Postfix (its queue stays; `start` runs it again)."""
    from ..lab.manage import postfix_of
    from ..lab.mta import stop
    namespace, instance = postfix_of(directory, host)
    click.echo(f"postfix stopped on {host}" if stop(namespace, instance) else f"no Postfix runs on {host}")


@lab_mta.command("flush")
@lab_dir_option
@click.argument("host")
def lab_mta_flush(directory: Path, host: str) -> None:
    """Retry HOST's queued mail now (postqueue -f)."""
    from ..lab.manage import postfix_of
    from ..lab.mta import flush, running
    namespace, instance = postfix_of(directory, host)
    if not running(instance):
        raise UserError(f"no Postfix runs on {host}; start it: enforcer lab mta start {host}")
    flush(namespace, instance)
    click.echo(f"postfix on {host}: queue retried; see: enforcer lab mta queue {host}")


@lab_mta.command("queue")
@lab_dir_option
@click.argument("host")
@json_option
def lab_mta_queue(directory: Path, host: str, as_json: bool) -> None:
    """HOST's Postfix queue (postqueue -j), each deferral's reason read: a time-out is the provider's block."""
    from ..lab.manage import postfix_of
    from ..lab.mta import deferral, queue
    namespace, instance = postfix_of(directory, host)
    messages = queue(namespace, instance)
    if as_json:
        return emit_json(messages)
    if not messages:
        click.echo(f"{host}'s Postfix queue is empty")
        return
    show_table(f"{host}'s Postfix queue", ["id", "queue", "to", "reason", "that is"],
               [[m["queue_id"], m["queue_name"], r["address"], r.get("delay_reason", ""),
                 deferral(r.get("delay_reason", ""))[0] if r.get("delay_reason") else ""]
                for m in messages for r in m.get("recipients", [])])


@click.command()
@click.option("--to", "destination", default=None, metavar="ADDRESS[:PORT]",
              help="One raw SYN to this address (port 25 unless given); needs root.")
@click.option("--preflight", "target", default=None, metavar="HOST",
              help="The preflight: connect to your relay or MX on ports 25, 465 and 587 over IPv4 and IPv6.")
@click.option("--port", "ports", type=click.IntRange(1, 65535), multiple=True,
              help="With --preflight: these ports instead (repeat for more).")
@click.option("--profile", "profile_id", default=None, metavar="NAME",
              help="With --preflight: what this provider's rules say of each outcome, and the next step.")
@click.option("--in", "host", default=None, metavar="VM", help="Send from this host of the namespace lab.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=LAB_DIR, show_default=True, help="The namespace lab's directory.")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=None,
              help="Seconds to wait for an answer [default: 2 for --to, 5 for --preflight].")
@json_option
def probe(destination: str | None, target: str | None, ports: tuple[int, ...], profile_id: str | None,
          host: str | None, directory: Path, timeout: float | None, as_json: bool) -> None:
    """Try the way out to a destination you name. --to: send one TCP SYN and report SYN-ACK, RST or silence, with
    the time it took (scapy; needs root). --preflight: on the machine you are about to send mail from, connect to
    your relay or MX on 25, 465 and 587 over IPv4 and IPv6; with --profile, what the provider says and what next."""
    if (destination is None) == (target is None):
        raise UserError("enforcer probe needs one destination you name, and picks none itself: --preflight HOST "
                        "(your relay or MX: ports 25, 465, 587, IPv4 and IPv6) or --to ADDRESS[:PORT] (one raw SYN)")
    if target is None and (ports or profile_id):
        raise UserError(f"{'--port' if ports else '--profile'} goes with --preflight HOST; with --to, write the "
                        "port as ADDRESS:PORT")
    if target is not None:
        return _preflight(target, ports, profile_id, host, directory, 5.0 if timeout is None else timeout, as_json)
    assert destination is not None
    _raw_probe(destination, host, directory, 2.0 if timeout is None else timeout, as_json)


def _in_lab_host(directory: Path, host: str, argv: list[str], wait: float) -> dict[str, Any]:
    """Run a lab tool (python -m enforcer.lab.TOOL ...) inside a lab host's namespace, as `ip netns exec` runs it
    (the lab's DNS in its resolv.conf: a preflight names a host); its one JSON line."""
    from ..lab.manage import host_namespace
    from ..lab.netns import exec_in, own_module
    proc = exec_in(host_namespace(directory, host), own_module(*argv), stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=wait + 60)
    if proc.returncode != 0:
        raise UserError(f"the probe failed inside {host}'s namespace")
    result: dict[str, Any] = json.loads(out)
    return result


def _raw_probe(destination: str, host: str | None, directory: Path, timeout: float, as_json: bool) -> None:
    from ..lab.probe import describe, probe as send_probe
    address, port = parse_destination(destination)
    if os.geteuid() != 0:
        raise UserError("enforcer probe sends a raw SYN and needs root; run it with sudo")
    if host is None:
        result = send_probe(address, port, timeout)
    else:
        result = _in_lab_host(directory, host, ["enforcer.lab.probe", address, str(port), "--timeout", str(timeout),
                                                "--json"], timeout)
    if as_json:
        return emit_json(result)
    click.echo(describe(result))


def _judge_report(report: dict[str, Any], profile: Profile, directory: Path, host: str | None) -> None:
    """What the profile's rules say of each outcome; from a lab VM, by its own account's rule and way out."""
    from ..core.preflight import judge
    account = None
    if host is not None:
        from ..lab.manage import account_type
        account = account_type(directory, host, profile)
    for r in report["results"]:
        r["provider_says"], r["next_step"] = judge(profile, r["port"], r["outcome"], account)
    report["profile"] = profile.id


def _preflight(target: str, ports: tuple[int, ...], profile_id: str | None, host: str | None, directory: Path,
               timeout: float, as_json: bool) -> None:
    from ..core.preflight import outcome_line
    from ..lab.preflight import PREFLIGHT_PORTS, TargetError, preflight
    from ..state.profiles import load_profile
    profile = load_profile(profile_id) if profile_id else None  # a wrong name fails before anything is sent
    ports = ports or PREFLIGHT_PORTS
    if host is None:
        try:
            report = preflight(target, ports, timeout)
        except TargetError as e:
            raise UserError(str(e)) from None
    else:
        report = _in_lab_host(directory, host, ["enforcer.lab.preflight", target, "--timeout", str(timeout),
                                                *[x for p in ports for x in ("--port", str(p))]], timeout)
        if "error" in report:
            raise UserError(report["error"])
    if profile is not None:
        _judge_report(report, profile, directory, host)
    if as_json:
        return emit_json(report)
    found = report["addresses"]
    click.echo(f"preflight to {report['target']}: " + ", ".join(f"{f} {a or 'none'}" for f, a in found.items()))
    for family, address in found.items():
        if address is None:
            given = any(report["target"] == a for a in found.values())  # an address, not a name, was given
            click.echo(f"{family}: nothing tried: " + (f"{report['target']} is an address of the other family; "
                       "name the host to try both" if given else f"{report['target']} has no {family} address"))
        for r in (r for r in report["results"] if r["family"] == family):
            click.echo(outcome_line(r))
            if profile is not None:
                click.echo(f"    {r['provider_says']}")
                click.echo(f"    next: {r['next_step']}")
    if profile is None:
        click.echo("add --profile NAME (see: enforcer profile list) to hear what your provider's rules say of it")
