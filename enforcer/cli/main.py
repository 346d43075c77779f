"""The entry point: the command tree, and every error mapped to one line and an exit status.

A user mistake (UserError, a click usage error) is one line on stderr and exit status 2, with the state
untouched; a traceback means a bug.
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..errors import Failure, UserError
from ..state.settings import DEFAULT_STATE
from .context import Context, etcd_options

# Each command's module, imported only when the command runs (or help lists it), so that a plain command does
# not pay for the YAML reader, the lab or the daemon.
COMMANDS = {
    "apply": "apply", "subscription": "subscription", "vnet": "vnet", "vm": "vm", "diagnose": "exemption",
    "exemption": "exemption", "check": "queries", "audit": "queries", "status": "queries", "state": "queries",
    "profile": "profile", "gateway": "queries",
    "probe": "lab", "lab": "lab", "run": "daemon", "service": "service",
    # the providers' words for a subscription: the same commands
    "account": "subscription", "project": "subscription", "tenancy": "subscription", "organization": "subscription",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module = importlib.import_module(f"{__package__}.{COMMANDS[cmd_name]}")
        command: click.Command = getattr(module, cmd_name.replace("-", "_"))
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--state", "state_path", envvar="ENFORCER_STATE", default=DEFAULT_STATE, show_default=True,
              metavar="PATH|etcd://HOST:PORT[,...]/PREFIX",
              help="The state: an SQLite file, or a prefix in etcd (also $ENFORCER_STATE).")
@click.option("--etcd-cacert", envvar="ENFORCER_ETCD_CACERT", metavar="PEM",
              help="etcd: the CA that signed the members' certificates (TLS).")
@click.option("--etcd-cert", envvar="ENFORCER_ETCD_CERT", metavar="PEM", help="etcd: our client certificate.")
@click.option("--etcd-key", envvar="ENFORCER_ETCD_KEY", metavar="PEM", help="etcd: our client certificate's key.")
@click.option("--etcd-user", envvar="ENFORCER_ETCD_USER", metavar="NAME",
              help="etcd: the user to authenticate as; its password in $ENFORCER_ETCD_PASSWORD.")
@click.version_option(__version__, prog_name="port25-enforcer")
@click.pass_context
def cli(ctx: click.Context, /, state_path: str, **etcd: str | None) -> None:
    """Make a Linux lab gateway block outbound SMTP (TCP 25) the way Azure's platform does."""
    ctx.obj = Context(state_path, ctx.obj or [], etcd_options(etcd))
    ctx.call_on_close(ctx.obj.close)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cli.main(args=argv, prog_name="enforcer", standalone_mode=False, obj=argv)
    except UserError as e:
        click.echo(f"enforcer: error: {e}", err=True)
        return 2
    except Failure as e:
        click.echo(f"enforcer: failed: {e}", err=True)
        return 1
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx else "enforcer"
        click.echo(f"{where}: error: {_negative_wait(e) or e.format_message()} (see: {where} --help)", err=True)
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


def _negative_wait(e: click.UsageError) -> str | None:
    """--wait's value is optional, so click's parser reads `--wait=-1` as a bare --wait and an option -1: say what
    it is instead."""
    if isinstance(e, click.NoSuchOption) and e.ctx is not None and e.option_name[1:2].isdigit() \
            and any(p.name == "wait_seconds" for p in e.ctx.command.params):
        return "Invalid value for '--wait': a negative number is not a number of seconds (0 or more): write " \
               "--wait=SECONDS"
    return None
