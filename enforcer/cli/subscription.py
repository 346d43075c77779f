"""`enforcer subscription ...`: subscriptions and their types."""

from __future__ import annotations

import click

from ..core import lifecycle
from ..core.inventory import Inventory
from .context import Context, apply_now_option, json_option, pass_ctx
from .output import echo_lines, emit_json, show_table
from .views import one_doc, subscription_doc


@click.group()
def subscription() -> None:
    """Subscriptions and their types."""


@subscription.command("add")
@click.argument("name")
@click.option("--type", "type_word", required=True, help="A subscription type id or alias (see: enforcer profile).")
@pass_ctx
def subscription_add(c: Context, name: str, type_word: str) -> None:
    """Add a subscription."""
    echo_lines(c.change(lifecycle.add_subscription, name, type_word))


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
    doc = one_doc(*c.read(), name, Inventory.subscription, subscription_doc)
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
    echo_lines(c.change(lifecycle.set_type, name, type_word, apply_now=apply_now))


@subscription.command("remove")
@click.argument("name")
@pass_ctx
def subscription_remove(c: Context, name: str) -> None:
    """Remove an empty subscription."""
    echo_lines(c.change(lifecycle.remove_subscription, name))
