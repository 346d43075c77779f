"""How the daemon follows its state, whichever backend holds it: a Follower compiles the first table, says which
generation the state is at, and patches the table with what changed since (Keeper.patch, the incremental path).

SqliteFollower polls the SQLite store's generation and reads its audit log (what the daemon always did);
EtcdFollower (etcd_follow.py) watches an etcd prefix in a thread and turns its events into the same Changed rows.
The daemon's loop asks `newest()` every round and calls `patch()` when it differs from the table's generation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

from ..core.inventory import Inventory
from ..core.profile import Profile
from ..errors import UserError
from ..state.profiles import load_profile
from ..state.store import Store
from .keeper import PATCH_LIMIT, Keeper, Patch
from .rules import RuleSpec

if TYPE_CHECKING:
    from ..state.etcd_client import EtcdOptions
    from ..state.settings import Settings

SpecOf = Callable[[Inventory, Profile], RuleSpec]  # the rules a table needs (the daemon's _spec)


class Follower(Protocol):
    where: str

    def check(self) -> None:
        """Before any rule is touched: the state is there and readable (a UserError says what is wrong)."""

    def profile_name(self) -> str:
        """The state's profile (for the rules that fail closed when the state cannot be compiled)."""

    def before_fork(self) -> None: ...

    def after_fork(self) -> None: ...

    def compile(self, spec_of: SpecOf) -> tuple[Keeper, RuleSpec]:
        """The whole table at the state's current generation, and the rules it needs."""

    def newest(self) -> int:
        """The generation the state is at, as far as this follower knows (called every round of the loop)."""

    def patch(self, keeper: Keeper, spec_of: SpecOf) -> tuple[Patch, RuleSpec | None]:
        """What changed since the keeper's generation, applied to it (the rules too, when they change); a Patch
        with `full` set when only a whole compile can bring it up to date."""

    def handed_over(self, generation: int, whole: bool) -> None:
        """The workers judge with the table of `generation` now."""

    def live(self) -> dict[str, Any]:
        """What `status`, the metrics and the log say of following the state ({} for SQLite)."""

    def close(self) -> None: ...


class SqliteFollower:
    """The SQLite state: its generation polled, its audit log read since the table's position."""

    def __init__(self, path: str):
        self.where = path
        self.store: Store

    def check(self) -> None:
        store = Store(self.where)
        if not store.exists:
            raise UserError(f"no state at {self.where}; create it first: enforcer --state "
                            f"{self.where} apply FILE")
        self.store = store

    def profile_name(self) -> str:
        try:
            return self.store.snapshot().profile
        finally:
            self.store.end_snapshot()

    def before_fork(self) -> None:
        self.store.close()  # reopened after the fork: SQLite handles must not cross it

    def after_fork(self) -> None:
        self.store = Store(self.where)

    def compile(self, spec_of: SpecOf) -> tuple[Keeper, RuleSpec]:
        inv = self.store.snapshot(load_profile)  # the profile is read afresh: SIGHUP may follow an edit
        try:
            keeper = Keeper(load_profile(inv.profile))
            generation, position = self.store.generation(), self.store.audit_position()
            keeper.compile(self.store, inv)
            keeper.generation, keeper.position = generation, position
            spec = spec_of(inv, keeper.profile)
        finally:
            self.store.end_snapshot()
        return keeper, spec

    def newest(self) -> int:
        return self.store.generation()

    def patch(self, keeper: Keeper, spec_of: SpecOf) -> tuple[Patch, RuleSpec | None]:
        """The audit log since the table's position; the whole table compiled afresh when the log does not cover
        the change (a write that left no audit row) or holds more than a patch is worth."""
        inv = self.store.snapshot(lambda _: keeper.profile)
        spec = None
        try:
            position = self.store.audit_position()
            changes = self.store.changed_since(keeper.position, PATCH_LIMIT) if position != keeper.position else None
            patch = keeper.patch(inv, changes) if changes else Patch(full=True)
            if not patch.full:
                if patch.rules:
                    spec = spec_of(inv, keeper.profile)
                keeper.generation, keeper.position = self.store.generation(), position
        finally:
            self.store.end_snapshot()
        return patch, spec

    def handed_over(self, generation: int, whole: bool) -> None:
        pass

    def live(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        if hasattr(self, "store"):
            self.store.close()


def follower_for(settings: Settings, etcd: EtcdOptions | None = None) -> Follower:
    from ..state.etcd_client import is_etcd
    if is_etcd(settings.state):
        from .etcd_follow import EtcdFollower
        return EtcdFollower(settings, etcd)
    return SqliteFollower(settings.state)
