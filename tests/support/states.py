"""State files for tests: the example lab, and more VMs beside it, written through the store."""

from __future__ import annotations

import datetime
from pathlib import Path

from enforcer.core.converge import converge
from enforcer.core.inventory import Inventory, Resource, State, pull
from enforcer.state.documents import read_document
from enforcer.state.profiles import load_profile
from enforcer.state.store import Store

from .paths import LAB

TODAY = datetime.date(2026, 12, 4)


def lab_state(path: Path, extra: int = 0) -> Store:
    """The example lab, and `extra` more VMs spread over its subscriptions (one store change), in no VNet."""
    profile = load_profile("azure")
    store = Store(path, create=True)
    doc = read_document(str(LAB))
    store.change("lab", lambda inv: converge(inv, profile, doc, "lab.yml", today=TODAY))

    def fleet(inv: Inventory) -> tuple[Inventory, None]:
        inv = inv.grown()
        names = sorted(inv.subscriptions)
        for i in range(extra):
            sub = names[i % len(names)]
            inv.grow(Resource(f"vm-{i:05d}", sub, "vm", (f"2001:db8:1000::{i + 1:x}",), state=State.RUNNING,
                              pulled=pull(inv.subscriptions[sub])))
        return inv, None
    if extra:
        store.change("fleet", fleet)
    return store
