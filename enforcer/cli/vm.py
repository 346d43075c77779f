"""`enforcer vm ...`: virtual machines and other resources, and their lifecycle."""

from __future__ import annotations

from typing import Any, Callable

import click

from ..core import lifecycle
from ..core.inventory import Inventory, State
from ..core.profile import Profile
from .complete import resource_names, subscription_names, vnet_names
from .context import Context, json_option, pass_ctx
from .output import echo_lines, emit_json, show_fields, show_table
from .views import doc_of_resource, one_doc, resource_doc
from .wait import wait_option


@click.group()
def vm() -> None:
    """Virtual machines and other resources, and their lifecycle."""


@vm.command("add")
@click.argument("name")
@click.option("--subscription", required=True, shell_complete=subscription_names)
@click.option("--kind", default="vm", show_default=True, help="Resource kind (see: enforcer profile).")
@click.option("--address", "addresses", multiple=True, required=True,
              help="IPv4 or IPv6 address, or a prefix for a scale set; repeat for more.")
@click.option("--vnet", default=None, shell_complete=vnet_names)
@click.option("--subnet", default=None)
@click.option("--mac", default=None, help="Its MAC address: the gateway accepts its addresses only with it.")
@click.option("--interface", default=None,
              help="The gateway interface its packets arrive on: its addresses are accepted only there.")
@click.option("--egress", default=None, help="The appliance (azure-firewall) its internet traffic leaves through.")
@click.option("--deallocated", is_flag=True, help="Create it without starting it.")
@wait_option
@pass_ctx
def vm_add(c: Context, name: str, subscription: str, kind: str, addresses: tuple[str, ...], vnet: str | None,
           subnet: str | None, mac: str | None, interface: str | None, egress: str | None, deallocated: bool) -> None:
    """Create a resource; it starts at once and pulls its subscription's current policy."""
    echo_lines(c.change(lifecycle.add_resource, name, subscription, kind, list(addresses), vnet=vnet, subnet=subnet,
                        mac=mac, egress=egress, state=State.DEALLOCATED if deallocated else State.RUNNING,
                        interface=interface))


@vm.command("bind")
@click.argument("name", shell_complete=resource_names)
@click.option("--interface", default=None, help="The gateway interface its packets arrive on.")
@click.option("--mac", default=None, help="Its MAC address.")
@click.option("--unbind", is_flag=True, help="Accept its addresses from anywhere again.")
@wait_option
@pass_ctx
def vm_bind(c: Context, name: str, interface: str | None, mac: str | None, unbind: bool) -> None:
    """Accept a resource's addresses only from its interface and MAC (a spoofed source is dropped)."""
    if unbind == (interface is not None or mac is not None):
        raise click.UsageError("give --interface and/or --mac, or --unbind alone")
    fields = {"interface": None, "mac": None} if unbind else \
        {k: v for k, v in (("interface", interface), ("mac", mac)) if v is not None}
    echo_lines(c.change(lifecycle.update_resource, name, **fields) or [f"'{name}' is bound so already"])


@vm.command("list")
@click.option("--subscription", default=None, help="Only this subscription's resources.",
              shell_complete=subscription_names)
@json_option
@pass_ctx
def vm_list(c: Context, subscription: str | None, as_json: bool) -> None:
    """List resources with what port 25 to the internet does for each."""
    inv, profile = c.read()
    if subscription:
        inv.subscription(subscription)
    docs = [doc_of_resource(inv, profile, r) for r in inv.resources.values() if subscription in (None, r.subscription)]
    if as_json:
        return emit_json(docs)
    show_table("Resources (why: enforcer vm show NAME)", ["name", "subscription", "kind", "state", "addresses",
                                                          profile.ports_phrase, "code"],
               [[d["name"], d["subscription"], d["kind"], d["state"], " ".join(d["addresses"]), d["port25"],
                 d["code"]] for d in docs])


@vm.command("show")
@click.argument("name", shell_complete=resource_names)
@json_option
@pass_ctx
def vm_show(c: Context, name: str, as_json: bool) -> None:
    """Show one resource and its pulled policy."""
    inv, profile = c.read()
    doc = one_doc(inv, profile, name, Inventory.resource, resource_doc)
    if as_json:
        return emit_json(doc)
    pulled = doc["pulled"]
    doc["pulled"] = "-" if not pulled else \
        f"{profile.types[pulled['type']].name}{', exempt' if pulled['exempt'] else ''}"
    show_fields(doc, ("name", "subscription", "kind", "state", "addresses", "vnet", "subnet", "mac", "interface",
                      "egress", "pulled", "reason"), 13)


def lifecycle_command(name: str, operation: Callable[[Inventory, Profile, str], Any], doc: str) -> None:
    @vm.command(name, help=doc)
    @click.argument("resource", shell_complete=resource_names)
    @wait_option
    @pass_ctx
    def command(c: Context, resource: str) -> None:
        echo_lines(c.change(operation, resource))


def machine_command(name: str, operation: Callable[[Inventory, Profile, str], Any], doc: str, ends: bool,
                    boots: bool) -> None:
    """A command that stops or starts the VM on the platform: in a namespace lab that is up over this state, the
    lab host's processes end as in a shutdown (a mail queue on disk stays), and what the lab made start at a boot
    (a Postfix of `lab mta start`) starts again."""
    said = " In a namespace lab, the VM's processes end, as in a shutdown." if ends else ""
    said += " In a namespace lab, its Postfix (lab mta) starts, as at a boot." if boots else ""

    @vm.command(name, help=doc + said)
    @click.argument("resource", shell_complete=resource_names)
    @click.option("--keep-processes", is_flag=True, help="In a namespace lab, leave the VM's processes alone.")
    @wait_option
    @pass_ctx
    def command(c: Context, resource: str, keep_processes: bool) -> None:
        echo_lines(c.change(operation, resource))
        from ..lab.index import lab_of_state
        record = None if keep_processes else lab_of_state(c.state_path)
        if record is not None:
            from ..lab.manage import reboot
            ended, booted = reboot(record, [resource], end=ends, boot=boots)
            for host in ended:
                click.echo(f"lab: the processes of '{host}' ended, as in a shutdown (--keep-processes keeps them)")
            for host in booted:
                click.echo(f"lab: the Postfix of '{host}' (lab mta) started again with its queue, as at a boot")


machine_command("start", lifecycle.start, "Start; from deallocated it pulls the current policy.", False, True)
machine_command("stop", lifecycle.stop, "Stop, staying allocated: it keeps its policy.", True, False)
machine_command("deallocate", lifecycle.deallocate, "Deallocate: the next start pulls the current policy.", True,
                False)
machine_command("restart", lifecycle.restart, "Stop, deallocate and start: pick up the current policy (rule 5).",
                True, True)
lifecycle_command("remove", lifecycle.remove_resource, "Remove a resource.")
