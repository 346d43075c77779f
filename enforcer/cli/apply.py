"""`enforcer apply FILE`: converge the state onto a declarative YAML inventory."""

from __future__ import annotations

import datetime

import click

from ..core.converge import converge, wanted_profile
from ..core.inventory import Inventory
from ..core.profile import Profile
from ..state.documents import read_document
from ..state.files import shown
from .context import Context, pass_ctx
from .output import echo_lines
from .wait import wait_option


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@click.option("--prune", is_flag=True, help="Also remove what the file does not name.")
@wait_option
@pass_ctx
def apply(c: Context, file: str, dry_run: bool, prune: bool) -> None:
    """Converge the state onto a declarative YAML inventory (idempotent)."""
    doc = read_document(file)
    where = shown(file)  # messages name the file: on one line, whatever its name holds

    def run(inv: Inventory, _: Profile) -> tuple[Inventory, list[str]]:
        new, lines = converge(inv, c.profile(wanted_profile(inv, doc, where)), doc, where, prune=prune,
                              today=datetime.date.today())
        return (inv if dry_run else new), (lines or ["no changes"])

    if dry_run:
        inv, profile = c.read()
        echo_lines(f"would: {line}" if line != "no changes" else line for line in run(inv, profile)[1])
        return
    echo_lines(c.change(run))
