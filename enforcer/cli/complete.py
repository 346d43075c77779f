"""Shell completion of the names in the state (click's own mechanism: `_ENFORCER_COMPLETE=bash_source enforcer`).

A completion runs at every Tab, as the user who pressed it, against whatever --state or $ENFORCER_STATE says:
it reads one range of names and, whatever goes wrong (no state, a state this user may not read, a damaged one),
offers nothing rather than print into the user's command line.
"""

from __future__ import annotations

from typing import Callable

import click
from click.shell_completion import CompletionItem

from ..state.settings import DEFAULT_STATE

Completer = Callable[[click.Context, click.Parameter, str], list[CompletionItem]]


def state_names(table: str) -> Completer:
    """A shell_complete= for an argument or option naming a row of `table` (subscriptions, vnets, resources)."""
    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        # the group's callback (which makes the Context object) does not run while completing: read --state here
        params = ctx.find_root().params
        state = params.get("state_path") or DEFAULT_STATE
        try:
            from ..state.backend import open_state
            from .context import etcd_options
            store = open_state(state, etcd_options(params))
            try:
                return [CompletionItem(name) for name in store.names(table, incomplete)]
            finally:
                store.close()
        except Exception:  # noqa: BLE001 - a completion offers nothing rather than fail in the user's shell
            return []
    return complete


subscription_names = state_names("subscriptions")
vnet_names = state_names("vnets")
resource_names = state_names("resources")
