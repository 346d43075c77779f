"""`enforcer run`: the daemon, with its settings from the command line and the config file."""

from __future__ import annotations

import dataclasses
import grp
import logging
import os
from typing import Any, Callable

import click
from click.core import ParameterSource

from ..errors import UserError
from ..state.etcd_client import EtcdOptions, is_etcd, parse_url
from ..state.settings import DEFAULT_CONFIG, ETCD_KEYS, SETTINGS, Settings, read_settings_file
from .context import Context


def settings_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One option per setting, named, typed and documented as the setting is."""
    for s in reversed(SETTINGS):
        command = click.option(s.option, s.name, type=s.type, default=s.default, show_default=s.default is not None,
                               metavar=s.metavar, help=s.help)(command)
    return command


def merged_settings(ctx: click.Context, config_path: str | None,
                    options: dict[str, Any]) -> tuple[Settings, EtcdOptions]:
    """The command line's settings (and the global --state, --etcd-*) over the config file's over the defaults."""
    c: Context = ctx.obj
    values = {"state": c.state_path, **options}
    etcd = dataclasses.asdict(c.etcd)
    if config_path is None and os.path.exists(DEFAULT_CONFIG):
        config_path = DEFAULT_CONFIG
    from_file = read_settings_file(config_path) if config_path else {}
    assert ctx.parent is not None
    for name, value in from_file.items():
        if name == "state" or name in ETCD_KEYS:  # the CLI's global options
            given = ctx.parent.get_parameter_source("state_path" if name == "state" else name)
        else:
            given = ctx.get_parameter_source(name)
        if given not in (ParameterSource.DEFAULT, None):
            continue
        if name in ETCD_KEYS:
            etcd[name.removeprefix("etcd_")] = value
        else:
            values[name] = value
    if values["socket_group"]:
        try:
            grp.getgrnam(values["socket_group"])
        except KeyError:
            raise UserError(f"socket group {values['socket_group']!r}: no such group; create it "
                            "(groupadd) or leave it out") from None
    return Settings.of(values), EtcdOptions(**etcd)


@click.command()
@click.option("--config", "config_path", default=None, metavar="PATH",
              help=f"Settings file (default {DEFAULT_CONFIG} when it exists); options given here override it.")
@settings_options
@click.pass_context
def run(ctx: click.Context, /, config_path: str | None, **options: Any) -> None:
    """Run the enforcer daemon: judge forwarded port 25 SYNs through NFQUEUE."""
    from ..dataplane.daemon import Daemon
    settings, etcd_options = merged_settings(ctx, config_path, options)
    etcd = is_etcd(settings.state)
    if etcd:
        parse_url(settings.state)  # a malformed location is one line before anything else
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    code = (Daemon(settings, etcd_options) if etcd else Daemon(settings)).run()
    if code:
        raise SystemExit(code)
