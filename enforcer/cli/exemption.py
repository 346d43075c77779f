"""`enforcer diagnose` and `enforcer exemption ...`: exemptions from the port 25 block."""

from __future__ import annotations

from dataclasses import asdict

import click

from ..core import lifecycle
from .context import Context, apply_now_option, json_option, pass_ctx
from .output import echo_lines, emit_json, show_table
from .views import subscription_doc


@click.command()
@click.argument("name", metavar="SUBSCRIPTION")
@apply_now_option
@json_option
@pass_ctx
def diagnose(c: Context, name: str, apply_now: bool, as_json: bool) -> None:
    """Azure's "Cannot send email (SMTP-Port 25)" diagnostic: grants the exemption where the profile allows."""
    result = c.change(lifecycle.diagnose, name, apply_now=apply_now)
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
@click.argument("name", metavar="SUBSCRIPTION")
@apply_now_option
@pass_ctx
def exemption_revoke(c: Context, name: str, apply_now: bool) -> None:
    """Revoke an exemption; running resources keep it until their next restart."""
    echo_lines(c.change(lifecycle.revoke_exemption, name, apply_now=apply_now))


@exemption.command("grant")
@click.argument("name", metavar="SUBSCRIPTION")
@click.option("--case", required=True, help="The support case that approved it.")
@apply_now_option
@pass_ctx
def exemption_grant(c: Context, name: str, case: str, apply_now: bool) -> None:
    """Grant an exemption approved through a support case (profiles with such types, e.g. azure-2017)."""
    echo_lines(c.change(lifecycle.grant_exemption, name, case, apply_now=apply_now))
