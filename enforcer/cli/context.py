"""What every command shares: the state's location, loaded profiles, the state for the command's length, and the
transaction seam."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, TypeVar

import click

from ..core.inventory import Inventory
from ..core.profile import Profile
from ..state.backend import StateBackend, open_state
from ..state.etcd_client import EtcdOptions
from ..state.profiles import load_profile

T = TypeVar("T")
Operation = Callable[..., tuple[Inventory, T]]


def etcd_options(values: Mapping[str, str | None]) -> EtcdOptions:
    """The --etcd-* options (and their environment variables); the password only from the environment: a command
    line is visible to every user of the machine."""
    return EtcdOptions(cacert=values.get("etcd_cacert"), cert=values.get("etcd_cert"), key=values.get("etcd_key"),
                       user=values.get("etcd_user"), password=os.environ.get("ENFORCER_ETCD_PASSWORD"))


class Context:
    def __init__(self, state_path: str, argv: list[str], etcd: EtcdOptions | None = None):
        self.state_path = state_path
        self.etcd = etcd or EtcdOptions()
        self._profiles: dict[str, Profile] = {}
        self._store: StateBackend | None = None
        self.command = " ".join(["enforcer", *argv])  # recorded in the audit log
        self.committed: tuple[str, int] | None = None  # (where, generation) of its change: what --wait waits for

    @property
    def store(self) -> StateBackend:
        """The state, open until the command is done (close(): SQLite then folds its -wal back into the file)."""
        if self._store is None:
            self._store = open_state(self.state_path, self.etcd)
        return self._store

    def open(self, location: str) -> StateBackend:
        """Another state than --state's (enforcer state copy), with the same etcd options."""
        return open_state(location, self.etcd)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    @contextmanager
    def opened(self) -> Iterator[StateBackend]:
        """The state for a block of the command: closed after it."""
        try:
            yield self.store
        finally:
            self.close()

    def profile(self, profile_id: str) -> Profile:
        if profile_id not in self._profiles:
            self._profiles[profile_id] = load_profile(profile_id)
        return self._profiles[profile_id]

    def read(self) -> tuple[Inventory, Profile]:
        """The state as one snapshot, read as the command asks for rows: each row read is checked against the
        profile (one edited since the state was written would otherwise crash what reads it)."""
        inv = self.store.snapshot(self.profile)
        return inv, self.profile(inv.profile)

    def change(self, operation: Operation[T], *args: Any, **kwargs: Any) -> T:
        """Run operation(inv, profile, *args) in one transaction; returns what it says (the caller prints it)."""
        def run(inv: Inventory) -> tuple[Inventory, T]:
            return operation(inv, self.profile(inv.profile), *args, **kwargs)
        result = self.store.change(self.command, run, profiles=self.profile)
        self.changed(self.state_path, self.store)
        return result

    def changed(self, location: str, store: StateBackend) -> None:
        """Note the change a command just made in `store` (for --wait): the generation it committed (etcd says
        which; SQLite's is the file's, read at once), or the state's generation when it changed nothing."""
        committed = getattr(store, "committed", None)  # EtcdStore's: its own commit's revision
        self.committed = (location, committed if committed is not None else store.generation())


pass_ctx = click.make_pass_decorator(Context)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
apply_now_option = click.option("--apply-now", is_flag=True,
                                help="Lab shortcut: running resources pick the change up at once instead of at "
                                     "their next restart. Never the default.")
