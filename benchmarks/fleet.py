"""The synthetic fleet both benchmarks register: an Inventory of N VMs, built directly from the dataclasses
(lifecycle's add_resource validates the whole inventory on every call, far too slow for 1M).

9 subscriptions of 7 types (two exempt, one of them exempted after its VMs pulled their policy), VMs of a few
kinds (mostly "vm"; some PaaS that is never allowed), ~4% stopped, ~3% deallocated, 2.5% egressing through one
of two appliances, 0.5% holding a policy pulled before their subscription changed, 10% dual-stack, plus 8 scale
sets registered as prefixes (5 IPv4 and 3 IPv6 prefix lengths). 198.18.0.0/15 holds only 131,072 addresses, so
VMs past the first ~127,000 get an IPv6 address from 2001:db8::/32 only. 198.19.240.0/20 is kept for the scale
sets and the appliances (198.19.250.0/24); the rest of it is in no one's hands.
"""

from __future__ import annotations

import random
import time

from enforcer.core.inventory import Inventory, Pulled, Resource, State, Subscription
from enforcer.core.verdicts import Verdict, pack
from enforcer.dataplane.keeper import Keeper
from enforcer.state.profiles import load_profile

# 198.18.0.0/15 = 198.18.0.0 - 198.19.255.255; the last /20 (198.19.240.0/20) is kept for scale-set prefixes.
V4_HOSTS = (1 << 17) - 4096

SUBSCRIPTIONS = (
    # name, type, exempt, exempt_via, weight (share of the VMs)
    ("ea-prod", "ea", False, None, 4),
    ("mcae-data", "mca-e", False, None, 2),
    ("devtest-mail", "devtest", True, "diagnostic", 1),
    ("devtest-lab", "devtest", False, None, 3),
    ("devtest-late", "devtest", True, "diagnostic", 1),  # exempted after its VMs started: they pulled exempt=False
    ("payg-web", "payg", False, None, 4),
    ("msdn-dev", "msdn", False, None, 1),
    ("csp-tenant", "csp", False, None, 2),
    ("trial-1", "free-trial", False, None, 1),
)

# scale sets registered as prefixes in the reserved 198.19.240.0/20 (the appliances sit in its 198.19.250.0/24)
SCALE_SETS = (
    ("vmss-web", "payg-web", ("198.19.240.0/24", "2001:db8:ff00::/64")),
    ("vmss-batch", "ea-prod", ("198.19.241.0/24",)),
    ("vmss-mail", "devtest-mail", ("198.19.242.0/26", "2001:db8:ff01::/64")),
    ("vmss-ci", "devtest-lab", ("198.19.242.64/26",)),
    ("vmss-api", "csp-tenant", ("198.19.243.0/28", "2001:db8:ff02:1::/80")),
    ("vmss-jobs", "mcae-data", ("198.19.243.16/28",)),
    ("vmss-trial", "trial-1", ("198.19.244.0/23",)),
    ("vmss-dev", "msdn-dev", ("198.19.246.0/25", "2001:db8:ff03::/48")),
)

KINDS = ["vm"] * 44 + ["app-service-vnet", "functions-vnet", "ase-v3", "paas", "app-service", "functions"]


def v4(offset: int) -> str:
    return f"198.{18 + (offset >> 16)}.{(offset >> 8) & 255}.{offset & 255}"


def v6(i: int) -> str:
    # groups 2001:db8:1:X:0:0:0:Y with X, Y non-zero (Y <= 0x8000): the canonical text ipaddress would give
    return f"2001:db8:1:{(i >> 15) + 1:x}::{(i & 0x7fff) + 1:x}"


def _fixtures(pulled_now: dict[str, Pulled]) -> dict[str, Resource]:
    """The two appliances others egress through (rule 7), one per side of the policy, and the scale sets."""
    resources = {
        "fw-hub": Resource("fw-hub", "ea-prod", "azure-firewall", ("198.19.250.1",), state=State.RUNNING,
                           pulled=pulled_now["ea-prod"]),
        "nva-edge": Resource("nva-edge", "payg-web", "nva", ("198.19.250.2",), state=State.RUNNING,
                             pulled=pulled_now["payg-web"]),
    }
    for name, sub, prefixes in SCALE_SETS:
        resources[name] = Resource(name, sub, "vmss", prefixes, state=State.RUNNING, pulled=pulled_now[sub])
    return resources


def _stale(subs: dict[str, Subscription]) -> dict[str, Pulled]:
    """What a VM pulled before its subscription changed: the other exemption where the type allows one, else
    another type (set-type without --apply-now)."""
    return {name: Pulled(s.type, not s.exempt) if s.type == "devtest" else
            Pulled("payg" if s.type in ("ea", "mca-e") else "ea", False) for name, s in subs.items()}


def build_inventory(n: int, seed: int) -> Inventory:
    rng = random.Random(seed)
    subs = {name: Subscription(name, typ, exempt, via) for name, typ, exempt, via, _ in SUBSCRIPTIONS}
    # shared Pulled values, like the store would produce after interning; a wheel of subscription names by weight
    pulled_now = {name: Pulled(s.type, s.exempt) for name, s in subs.items()}
    pulled_now["devtest-late"] = Pulled("devtest", False)
    wheel = [name for name, _, _, _, w in SUBSCRIPTIONS for _ in range(w)]
    resources = _fixtures(pulled_now)
    stale = _stale(subs)

    # IPv4 offsets handed out in a shuffled order so neighbouring VMs do not get neighbouring addresses
    v4_offsets = list(range(V4_HOSTS))
    rng.shuffle(v4_offsets)
    r_sub = rng.choices(wheel, k=n)
    r_kind = rng.choices(KINDS, k=n)
    r_roll = [rng.random() for _ in range(n)]
    for i in range(n):
        sub = r_sub[i]
        roll = r_roll[i]
        if i < V4_HOSTS:
            addrs = (v4(v4_offsets[i]), v6(i)) if i % 10 == 0 else (v4(v4_offsets[i]),)
        else:
            addrs = (v6(i),)
        if roll < 0.04:
            state, pulled = State.STOPPED, pulled_now[sub]
        elif roll < 0.07:
            state, pulled = State.DEALLOCATED, None
        else:
            state, pulled = State.RUNNING, (stale[sub] if roll > 0.995 else pulled_now[sub])
        egress = ("fw-hub" if i & 1 else "nva-edge") if 0.07 <= roll < 0.095 else None
        name = f"vm-{i:07d}"
        resources[name] = Resource(name, sub, r_kind[i], addrs, egress=egress, state=state, pulled=pulled)
    return Inventory("azure", subs, {}, resources)


def host_keys(inv: Inventory) -> tuple[list[bytes], list[bytes]]:
    """The packed host addresses of the VMs (not the appliances, not the scale-set prefixes): IPv4, IPv6."""
    k4: list[bytes] = []
    k6: list[bytes] = []
    for r in inv.resources.values():
        if r.name.startswith("vm-"):
            for a in r.addresses:
                (k6 if ":" in a else k4).append(pack(a))
    return k4, k6


def compiled_fleet(n: int, seed: int) -> tuple[Inventory, Keeper, float]:
    """The fleet, and the daemon's table filled from it with the azure profile (Keeper.fill), and the seconds
    both took."""
    t0 = time.perf_counter()
    inv = build_inventory(n, seed)
    keeper = Keeper(load_profile("azure"))
    keeper.fill(inv)
    return inv, keeper, time.perf_counter() - t0


def pick_sources(inv: Inventory, keeper: Keeper, seed: int, count: int = 1) -> list[tuple[str, str, Verdict]]:
    """Sources for the data-plane generator: `count` running VMs, each with one IPv4 address in 198.18.0.0/16
    (not the lab gateway's 198.18.0.1), allowed on 25 by the table. Each is (address, resource name, verdict)."""
    rng = random.Random(seed)
    view = keeper.view()
    names = [name for name in inv.resources if name.startswith("vm-")]
    found: dict[str, tuple[str, str, Verdict]] = {}
    for _ in range(10_000 * count):
        r = inv.resources[rng.choice(names)]
        if len(r.addresses) != 1 or ":" in r.addresses[0] or not r.addresses[0].startswith("198.18."):
            continue
        if r.addresses[0] in ("198.18.0.1",):
            continue
        verdict = keeper.verdict(view, pack(r.addresses[0]))
        if verdict.allow:
            found.setdefault(r.addresses[0], (r.addresses[0], r.name, verdict))
            if len(found) == count:
                return list(found.values())
    raise RuntimeError(f"fewer than {count} allowed IPv4 VMs found in the synthetic fleet")
