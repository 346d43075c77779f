"""State files for the benchmarks and the tests: the example lab (vagrant/lab.yml), and as many more VMs beside it
as asked, written through the store as the CLI would (one change for the lab, one for the fleet)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from enforcer.core.converge import converge
from enforcer.core.inventory import Inventory, Resource, State, pull
from enforcer.lab.files import DEFAULT_LAB
from enforcer.state.documents import read_document
from enforcer.state.profiles import load_profile
from enforcer.state.store import Store

TODAY = datetime.date(2026, 12, 4)
# The extra VMs' addresses: one each, from here up (inside 2001:db8::/32, beside no lab address)
FLEET_BASE = int(ipaddress.IPv6Address("2001:db8:1000::"))


def fleet_address(i: int) -> str:
    return str(ipaddress.IPv6Address(FLEET_BASE + i + 1))


def lab_state(path: Path, extra: int = 0) -> Store:
    """The example lab, and `extra` more running VMs spread over its subscriptions, in no VNet (vm-00000, ...)."""
    profile = load_profile("azure")
    store = Store(path, create=True)
    doc = read_document(str(DEFAULT_LAB))
    store.change("lab", lambda inv: converge(inv, profile, doc, "lab.yml", today=TODAY))

    def fleet(inv: Inventory) -> tuple[Inventory, None]:
        inv = inv.grown()
        names = sorted(inv.subscriptions)
        pulled = {name: pull(sub) for name, sub in inv.subscriptions.items()}
        for i in range(extra):
            sub = names[i % len(names)]
            inv.grow(Resource(f"vm-{i:05d}", sub, "vm", (fleet_address(i),), state=State.RUNNING,
                              pulled=pulled[sub]))
        return inv, None
    if extra:
        store.change("fleet", fleet)
    return store
