"""`enforcer lab ...` and `enforcer probe`: the namespace lab. The modules that need pyroute2 or scapy load only
when one of these commands runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click

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
def lab_demo(lab_file: Path | None, profile: str | None, every: bool, timeout: float) -> None:
    """Build a provider's lab in network namespaces, start the enforcer on its gateway, try real SMTP deliveries
    from every resource to 25, 465 and 587, compare with the lab file, walk the provider's exemption story, tear
    down. Azure's lab unless --lab, --profile or --all says otherwise. Needs root; exits non-zero if any outcome
    differs from the lab file."""
    from ..lab.demo import run_all, run_demo
    from ..lab.files import lab_for_profile
    if sum((lab_file is not None, profile is not None, every)) > 1:
        raise UserError("give one of --lab FILE, --profile NAME or --all, not several")
    if profile is not None:
        lab_file = lab_for_profile(profile)
    code = run_all(console(), timeout) if every else run_demo(lab_file, console(), timeout)
    if code:
        raise SystemExit(code)


@lab.command("up")
@lab_file_option
@lab_dir_option
@click.option("--no-daemon", is_flag=True, help="Do not start the enforcer on the gateway.")
def lab_up(lab_file: Path | None, directory: Path, no_daemon: bool) -> None:
    """Build the lab of the lab file in network namespaces, with its SMTP server and the enforcer."""
    from ..lab.manage import lab_up
    record = lab_up(lab_file, directory, daemon=not no_daemon)
    click.echo(f"lab up: {len(record['hosts'])} hosts from {record['lab_file']}; state {record['state']}")
    click.echo(f"try: enforcer lab exec shop-web -- python3 -m enforcer.lab.smtptry "
               f"{record['internet_addresses'][0]} 25")
    click.echo(f"     enforcer --state {record['state']} diagnose devtest-lab")
    click.echo(f"     enforcer --state {record['state']} status --socket {record['socket']}")


@lab.command("down")
@lab_dir_option
def lab_down(directory: Path) -> None:
    """Remove everything `lab up` made (also after a crash of `lab up`)."""
    from ..lab.manage import lab_down
    gone = lab_down(directory)
    click.echo(f"lab down: removed {len(gone)} namespace(s)" if gone else "lab down: nothing was up")


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
def lab_exec(directory: Path, host: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside a lab host's namespace: enforcer lab exec VM -- COMMAND."""
    from ..lab.manage import lab_exec
    code = lab_exec(directory, host, list(command))
    if code:
        raise SystemExit(code)


@click.command()
@click.option("--to", "destination", required=True, metavar="ADDRESS[:PORT]", help="Port 25 unless given.")
@click.option("--in", "host", default=None, metavar="VM", help="Send from this host of the namespace lab.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=LAB_DIR, show_default=True, help="The namespace lab's directory.")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=2.0, show_default=True)
@json_option
def probe(destination: str, host: str | None, directory: Path, timeout: float, as_json: bool) -> None:
    """Send one TCP SYN and report SYN-ACK, RST or silence, with the time it took (scapy; needs root)."""
    from ..lab.probe import describe, probe as send_probe
    address, port = parse_destination(destination)
    if os.geteuid() != 0:
        raise UserError("enforcer probe sends a raw SYN and needs root; run it with sudo")
    if host is None:
        result = send_probe(address, port, timeout)
    else:
        from ..lab.manage import host_namespace
        from ..lab.netns import run_in
        proc = run_in(host_namespace(directory, host),
                      [sys.executable, "-m", "enforcer.lab.probe", address, str(port), "--timeout", str(timeout),
                       "--json"], stdout=subprocess.PIPE, text=True)
        out, _ = proc.communicate(timeout=timeout + 60)
        if proc.returncode != 0:
            raise UserError(f"the probe failed inside {host}'s namespace")
        result = json.loads(out)
    if as_json:
        return emit_json(result)
    click.echo(describe(result))
