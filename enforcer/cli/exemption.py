"""`enforcer diagnose` and `enforcer exemption ...`: exemptions from the port 25 block, by each provider's path:
the owner's own (Azure's diagnostic, Scaleway's switch, lifting OVH's reactive block: `diagnose` or `exemption
request`), or a request the operator grants or refuses (`exemption grant|refuse`); refused where the provider
never exempts."""

from __future__ import annotations

import datetime
from dataclasses import asdict

import click

from ..core import lifecycle
from .complete import subscription_names
from .context import Context, apply_now_option, json_option, pass_ctx
from .output import echo_lines, emit_json, show_table
from .views import subscription_doc
from .wait import wait_option


@click.command()
@click.argument("name", metavar="SUBSCRIPTION", shell_complete=subscription_names)
@apply_now_option
@json_option
@wait_option
@pass_ctx
def diagnose(c: Context, name: str, apply_now: bool, as_json: bool) -> None:
    """Azure's "Cannot send email (SMTP-Port 25)" diagnostic: grants the exemption where the profile allows."""
    _request(c, name, apply_now, as_json)


def _request(c: Context, name: str, apply_now: bool, as_json: bool) -> None:
    result = c.change(lifecycle.diagnose, name, apply_now=apply_now, today=datetime.date.today())
    if as_json:
        return emit_json(asdict(result))
    echo_lines(result.lines)


@click.group()
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
@click.argument("name", metavar="SUBSCRIPTION", shell_complete=subscription_names)
@apply_now_option
@wait_option
@pass_ctx
def exemption_revoke(c: Context, name: str, apply_now: bool) -> None:
    """Revoke an exemption; running resources keep it until their next restart."""
    echo_lines(c.change(lifecycle.revoke_exemption, name, apply_now=apply_now))


@exemption.command("request")
@click.argument("name", metavar="ACCOUNT", shell_complete=subscription_names)
@apply_now_option
@json_option
@wait_option
@pass_ctx
def exemption_request(c: Context, name: str, apply_now: bool, as_json: bool) -> None:
    """Take the provider's path for an account: the owner's own (a diagnostic, a switch, lifting a reactive block)
    is done at once; a request the operator decides is described; where the provider never exempts, refused."""
    _request(c, name, apply_now, as_json)


@exemption.command("grant")
@click.argument("name", metavar="ACCOUNT", shell_complete=subscription_names)
@click.option("--case", required=True, help="The support case, ticket or request that approved it.")
@apply_now_option
@wait_option
@pass_ctx
def exemption_grant(c: Context, name: str, case: str, apply_now: bool) -> None:
    """The operator grants a request the provider decides by hand (a support case or ticket, a request form, a
    service-limit request), where the account meets the provider's conditions."""
    echo_lines(c.change(lifecycle.grant_exemption, name, case, apply_now=apply_now, today=datetime.date.today()))


@exemption.command("refuse")
@click.argument("name", metavar="ACCOUNT", shell_complete=subscription_names)
@click.option("--case", required=True, help="The support case, ticket or request refused.")
@pass_ctx
def exemption_refuse(c: Context, name: str, case: str) -> None:
    """The operator refuses such a request: the account stays as it is, and is told the provider's advice."""
    inv, profile = c.read()
    echo_lines(lifecycle.refuse_exemption(inv, profile, name, case)[1])
