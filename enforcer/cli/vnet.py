"""`enforcer vnet ...`: virtual networks and their subnets."""

from __future__ import annotations

from dataclasses import asdict

import click

from ..core import lifecycle
from .complete import subscription_names, vnet_names
from .context import Context, json_option, pass_ctx
from .output import echo_lines, emit_json, show_table
from .wait import wait_option


@click.group()
def vnet() -> None:
    """Virtual networks and their subnets."""


@vnet.command("add")
@click.argument("name")
@click.option("--subscription", required=True, shell_complete=subscription_names)
@click.option("--prefix", "prefixes", multiple=True, required=True, help="Address prefix; repeat for more.")
@click.option("--interface", default=None,
              help="The gateway's interface on its segment: its resources' addresses are accepted only there.")
@wait_option
@pass_ctx
def vnet_add(c: Context, name: str, subscription: str, prefixes: tuple[str, ...], interface: str | None) -> None:
    """Add a virtual network (destinations inside it are never blocked)."""
    echo_lines(c.change(lifecycle.add_vnet, name, subscription, list(prefixes), interface))


@vnet.command("bind")
@click.argument("name", shell_complete=vnet_names)
@click.option("--interface", default=None, help="The gateway's interface on its segment.")
@click.option("--unbind", is_flag=True, help="Bind its resources to no interface.")
@wait_option
@pass_ctx
def vnet_bind(c: Context, name: str, interface: str | None, unbind: bool) -> None:
    """Accept the addresses of a VNet's resources only from the gateway's interface on its segment."""
    if unbind == (interface is not None):
        raise click.UsageError("give --interface IF, or --unbind")
    echo_lines(c.change(lifecycle.set_vnet_interface, name, interface) or [f"'{name}' is bound so already"])


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
@click.argument("name", shell_complete=vnet_names)
@wait_option
@pass_ctx
def vnet_remove(c: Context, name: str) -> None:
    """Remove an empty virtual network."""
    echo_lines(c.change(lifecycle.remove_vnet, name))


@vnet.command("subnet-add")
@click.argument("vnet_name", metavar="VNET", shell_complete=vnet_names)
@click.argument("name")
@click.argument("prefix")
@click.option("--delegated", is_flag=True, help="A subnet delegated to a service (an App Service Environment).")
@wait_option
@pass_ctx
def vnet_subnet_add(c: Context, vnet_name: str, name: str, prefix: str, delegated: bool) -> None:
    """Add a subnet to a virtual network."""
    echo_lines(c.change(lifecycle.add_subnet, vnet_name, name, prefix, delegated))


@vnet.command("subnet-remove")
@click.argument("vnet_name", metavar="VNET", shell_complete=vnet_names)
@click.argument("name")
@wait_option
@pass_ctx
def vnet_subnet_remove(c: Context, vnet_name: str, name: str) -> None:
    """Remove a subnet; resources in the VNet's delegated subnets then pick up their policy."""
    echo_lines(c.change(lifecycle.remove_subnet, vnet_name, name))


@vnet.command("refresh-delegated")
@click.argument("vnet_name", metavar="VNET", shell_complete=vnet_names)
@wait_option
@pass_ctx
def vnet_refresh_delegated(c: Context, vnet_name: str) -> None:
    """Add and remove a temporary subnet, so delegated subnets pick up an exemption (rule 6)."""
    echo_lines(c.change(lifecycle.refresh_delegated, vnet_name))
