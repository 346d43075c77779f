"""`enforcer subscription ...`: subscriptions and their types; the accounts of other providers, under their words
(`enforcer account|project|tenancy|organization ...` are the same commands), with the attributes their rules read."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import click

from ..core import lifecycle
from ..core.inventory import Inventory
from .complete import subscription_names
from .context import Context, apply_now_option, json_option, pass_ctx
from .output import echo_lines, emit_json, show_table
from .views import one_doc, subscription_doc
from .wait import wait_option


@click.group()
def subscription() -> None:
    """Subscriptions (AWS: accounts, Google: projects, Oracle: tenancies) and their types and attributes."""


# The providers' words for a subscription: the same group under each name (see the profile's `account`).
account = project = tenancy = organization = subscription


F = TypeVar("F", bound=Callable[..., Any])


def attribute_options(f: F) -> F:
    """--created and the flags a profile's rules read; each is left out of the change when not given."""
    for option in reversed([
        click.option("--created", metavar="YYYY-MM-DD", default=None, help="The day the account was created."),
        click.option("--verified/--not-verified", default=None, help="The owner's identity is verified (KYC)."),
        click.option("--first-invoice-paid/--first-invoice-unpaid", "first_invoice_paid", default=None,
                     help="Its first invoice is paid."),
        click.option("--flagged/--not-flagged", default=None,
                     help="The platform's anti-spam system flagged it (reactive blocks)."),
    ]):
        f = option(f)
    return f


def _given(created: str | None, verified: bool | None, first_invoice_paid: bool | None,
           flagged: bool | None) -> dict[str, Any]:
    given = dict(created=created, verified=verified, first_invoice_paid=first_invoice_paid, flagged=flagged)
    return {k: v for k, v in given.items() if v is not None}


@subscription.command("add")
@click.argument("name")
@click.option("--type", "type_word", required=True, help="A subscription type id or alias (see: enforcer profile).")
@attribute_options
@wait_option
@pass_ctx
def subscription_add(c: Context, name: str, type_word: str, created: str | None, verified: bool | None,
                     first_invoice_paid: bool | None, flagged: bool | None) -> None:
    """Add a subscription (an account)."""
    given = _given(created, verified, first_invoice_paid, flagged)
    echo_lines(c.change(lifecycle.add_subscription, name, type_word, **given))


@subscription.command("set")
@click.argument("name", shell_complete=subscription_names)
@attribute_options
@apply_now_option
@wait_option
@pass_ctx
def subscription_set(c: Context, name: str, created: str | None, verified: bool | None,
                     first_invoice_paid: bool | None, flagged: bool | None, apply_now: bool) -> None:
    """Change an account's attributes; running resources see the change as the profile's `change applies` says."""
    given = _given(created, verified, first_invoice_paid, flagged)
    if not given:
        raise click.UsageError("give at least one of --created, --verified, --first-invoice-paid, --flagged "
                               "(or their --not-/--unpaid forms)")
    echo_lines(c.change(lifecycle.set_attributes, name, apply_now=apply_now, **given) or ["no changes"])


@subscription.command("list")
@json_option
@pass_ctx
def subscription_list(c: Context, as_json: bool) -> None:
    """List subscriptions with their port 25 policy."""
    inv, profile = c.read()
    docs = [subscription_doc(inv, profile, n) for n in inv.subscriptions]
    if as_json:
        return emit_json(docs)
    show_table("Subscriptions", ["name", "type", profile.ports_phrase, "exemption", "resources", "pending restart"],
               [[d["name"], d["type_name"], d["port25"], d["exempt_via"] or "-" if d["exempt"] else "-",
                 str(len(d["resources"])), ", ".join(d["pending_restart"]) or "-"] for d in docs])


@subscription.command("show")
@click.argument("name", shell_complete=subscription_names)
@json_option
@pass_ctx
def subscription_show(c: Context, name: str, as_json: bool) -> None:
    """Show one subscription."""
    doc = one_doc(*c.read(), name, Inventory.subscription, subscription_doc)
    if as_json:
        return emit_json(doc)
    for key in ("name", "type", "type_name", "port25", "exempt", "exempt_via", "exemption_method", "created",
                "verified", "first_invoice_paid", "flagged"):
        click.echo(f"{key:18} {doc[key]}")
    click.echo(f"{'resources':18} {', '.join(doc['resources']) or '-'}")
    click.echo(f"{'pending restart':18} {', '.join(doc['pending_restart']) or '-'}")


@subscription.command("set-type")
@click.argument("name", shell_complete=subscription_names)
@click.argument("type_word", metavar="TYPE")
@apply_now_option
@wait_option
@pass_ctx
def subscription_set_type(c: Context, name: str, type_word: str, apply_now: bool) -> None:
    """Change a subscription's type; running resources keep their policy until restarted."""
    echo_lines(c.change(lifecycle.set_type, name, type_word, apply_now=apply_now))


@subscription.command("remove")
@click.argument("name", shell_complete=subscription_names)
@wait_option
@pass_ctx
def subscription_remove(c: Context, name: str) -> None:
    """Remove an empty subscription."""
    echo_lines(c.change(lifecycle.remove_subscription, name))
