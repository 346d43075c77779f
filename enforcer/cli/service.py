"""`enforcer service install`: the systemd unit and its config file."""

from __future__ import annotations

from pathlib import Path

import click

from .output import echo_lines


@click.group()
def service() -> None:
    """The systemd service."""


@service.command("install")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("/"), show_default=True,
              help="Install below this directory instead of / (for packaging).")
@click.option("--executable", default=None, help="The enforcer executable ExecStart runs (default: this one).")
@click.option("--force", is_flag=True, help="Replace a unit file that differs.")
def service_install(root: Path, executable: str | None, force: bool) -> None:
    """Install systemd/enforcer.service and /etc/enforcer/enforcer.toml (never overwriting the config)."""
    from ..dataplane.service import install
    echo_lines(install(root, executable, force))
