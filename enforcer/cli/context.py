"""What every command shares: the state path, loaded profiles, and the transaction seam."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import click

from ..core.inventory import Inventory, validate
from ..core.profile import Profile
from ..state.profiles import load_profile
from ..state.store import Store

T = TypeVar("T")
Operation = Callable[..., tuple[Inventory, T]]


class Context:
    def __init__(self, state_path: str, argv: list[str]):
        self.state_path = state_path
        self._profiles: dict[str, Profile] = {}
        self.command = " ".join(["enforcer", *argv])  # recorded in the audit log

    @contextmanager
    def opened(self, create: bool = False) -> Iterator[Store]:
        """The state, closed when the command is done with it (SQLite then folds its -wal back into the file)."""
        store = Store(self.state_path, create=create)
        try:
            yield store
        finally:
            store.close()

    def profile(self, profile_id: str) -> Profile:
        if profile_id not in self._profiles:
            self._profiles[profile_id] = load_profile(profile_id)
        return self._profiles[profile_id]

    def read(self) -> tuple[Inventory, Profile]:
        with self.opened() as store:
            inv, _ = store.read()
        profile = self.profile(inv.profile)
        validate(inv, profile)  # a profile edited since the state was written would otherwise crash below
        return inv, profile

    def change(self, operation: Operation[T], *args: Any, **kwargs: Any) -> T:
        """Run operation(inv, profile, *args) in one transaction; returns what it says (the caller prints it)."""
        def run(inv: Inventory) -> tuple[Inventory, T]:
            return operation(inv, self.profile(inv.profile), *args, **kwargs)
        with self.opened(create=True) as store:
            return store.change(self.command, run)


pass_ctx = click.make_pass_decorator(Context)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
apply_now_option = click.option("--apply-now", is_flag=True,
                                help="Lab shortcut: running resources pick the change up at once instead of at "
                                     "their next restart. Never the default.")
