"""`--wait[=SECONDS]` on every command that changes the state: once the change is committed, wait until every live
gateway's table holds it (exit 0), or say which did not in time (exit 3; the change stays committed).

On an etcd state the gateways are those whose leased key /PREFIX/gateways/NAME is there (alive), and one holds the
change once the generation it publishes is at least the change's commit revision; the keys are read once, then
watched from the next revision (no polling). On an SQLite state the one gateway is the daemon answering on the
control socket (a namespace lab's over that state; the default socket for the default state), asked every 50 ms.
What the wait says is one line on stderr (stdout stays the command's own: --json stays JSON). Nobody to wait for
(no live gateway, no daemon answering) is said so and is exit 0: the change is in the state, and every gateway
that starts or comes back compiles it (docs/architecture.md, "Several gateways").
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from typing import Any, Callable

import click

from ..errors import Failure, UserError
from ..state.etcd_client import is_etcd
from ..state.etcd_gateways import Gateway, behind, gateways_of
from .context import Context

DEFAULT_WAIT = 30.0  # seconds, for a bare --wait
LATE = 3             # the exit status when a live gateway did not apply the change in time
POLL = 0.05          # seconds between questions to an SQLite state's daemon


class Seconds(click.ParamType):  # type: ignore[type-arg]  # generic only in some click releases
    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = math.nan
        if not math.isfinite(seconds) or seconds < 0:
            self.fail(f"{value!r} is not a number of seconds (0 or more): write --wait=SECONDS, or a bare --wait "
                      f"({DEFAULT_WAIT:g} s) after the command's arguments", param, ctx)
        return seconds


def wait_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """The --wait option on a command that changes the state: the command runs, then the wait (if asked)."""
    @click.option("--wait", "wait_seconds", type=Seconds(), is_flag=False, flag_value=DEFAULT_WAIT, default=None,
                  metavar="[=SECONDS]",
                  help=f"Once the change is committed, wait until every live gateway has applied it (a bare "
                       f"--wait: {DEFAULT_WAIT:.0f} s); exit {LATE} naming those that did not in time.")
    @functools.wraps(command)
    def with_wait(*args: Any, wait_seconds: float | None, **kwargs: Any) -> Any:
        result = command(*args, **kwargs)
        if wait_seconds is not None:
            wait_for_gateways(click.get_current_context().find_object(Context), wait_seconds)
        return result
    return with_wait


def wait_for_gateways(c: Context | None, seconds: float) -> None:
    """Wait for the change the command committed (nothing to wait for when it committed none: --dry-run)."""
    if c is None or c.committed is None:
        return
    location, generation = c.committed
    fleet = is_etcd(location)
    started = time.monotonic()
    try:
        if fleet:
            late, live = _wait_etcd(c, location, generation, started + seconds)
        else:
            late, live = _wait_daemon(location, generation, started + seconds)
    except (UserError, Failure) as e:  # etcd lost meanwhile: whether the gateways have it is unknown
        click.echo(f"enforcer: --wait: cannot tell whether the gateways applied generation {generation}: {e}; the "
                   "change is committed and stays", err=True)
        raise SystemExit(LATE) from None
    if not live:
        nobody = f"no live gateway follows {location}" if fleet else f"no daemon follows {location} here"
        click.echo(f"enforcer: --wait: {nobody}: nothing to wait for (the change is committed)", err=True)
        return
    of = f" (of {len(live)} live gateway(s))" if fleet else ""
    if late:
        click.echo(f"enforcer: --wait: {', '.join(late)} did not apply generation {generation} within {seconds:g} s"
                   f"{of}; the change is committed and stays: enforcer status shows the fleet", err=True)
        raise SystemExit(LATE)
    who = f"{len(live)} live gateway(s)" if fleet else live[0]
    click.echo(f"enforcer: --wait: applied by {who} within {time.monotonic() - started:.2f} s (generation "
               f"{generation})", err=True)


def _wait_etcd(c: Context, location: str, generation: int, until: float) -> tuple[list[str], list[str]]:
    """(the live gateways still behind `generation` at `until` or once none is, the live gateways then)."""
    from ..state.etcd_client import Compacted
    from ..state.etcd_store import EtcdStore
    store = c.store if location == c.state_path else c.open(location)  # the command's channel, when it is one
    assert isinstance(store, EtcdStore)
    try:
        while True:
            revision, keys = store.gateway_keys()
            fleet = gateways_of(keys)
            late = behind(fleet, generation)
            if not late or time.monotonic() >= until:
                return late, _alive(fleet)
            try:
                with contextlib.closing(store.gateway_events(revision + 1, until)) as events:
                    for batch in events:
                        for key, value in batch:
                            if value is None:
                                keys.pop(key, None)
                            else:
                                keys[key] = value
                        fleet = gateways_of(keys)
                        late = behind(fleet, generation)
                        if not late:
                            return late, _alive(fleet)
            except Compacted:
                continue  # compacted since our read: read the keys again
            if time.monotonic() >= until:
                return late, _alive(fleet)
    finally:
        if store is not c.store:
            store.close()


def _alive(fleet: list[Gateway]) -> list[str]:
    return [g.name for g in fleet if g.alive]


def _wait_daemon(location: str, generation: int, until: float) -> tuple[list[str], list[str]]:
    """An SQLite state: (['the daemon on SOCKET'] while it is behind at `until`, [] once it holds `generation`;
    the daemon following this state, [] for none). The daemon that follows it: a namespace lab's over it, or the
    default socket's for the default state (its daemon does not say which file it follows)."""
    from ..dataplane.control import ask
    from ..lab.index import lab_of_state
    from ..state.settings import DEFAULT_SOCKET, DEFAULT_STATE
    record = lab_of_state(location)
    if record is not None:
        socket = str(record["socket"])
    elif os.path.realpath(location) == os.path.realpath(DEFAULT_STATE):
        socket = DEFAULT_SOCKET
    else:
        return [], []
    name = f"the daemon on {socket}"
    while True:
        live = ask(socket, {"cmd": "status"}, timeout=max(0.1, until - time.monotonic()))
        if live is None or live.get("state_backend", "sqlite") != "sqlite":
            return [], []  # nobody listens there, or a daemon of an etcd state
        held = live.get("generation") if live.get("ok") else None  # a hung daemon: an error, not an answer
        if held is not None and int(held) >= generation:
            return [], [name]
        if time.monotonic() >= until:
            return [f"{name} ({f'holds generation {held}' if held is not None else live.get('error')})"], [name]
        time.sleep(POLL)
