"""Benchmark of the compiled verdict table (enforcer/table.py) at 1,000 / 100,000 / 1,000,000 registered VMs.

A report, not a test: it always exits 0.

    .venv/bin/python benchmarks/bench_table.py [--sizes 1000,100000,1000000] [--quick] [--seed N]

For each size N it builds a synthetic Inventory directly from the dataclasses (ops.add_resource validates the
whole inventory on every call, far too slow for 1M), then measures:

  compile    compile_table(inv, profile), GC enabled as in the daemon; best of 3 (2 runs at 1M, 1 with --quick)
  bytes/VM   tracemalloc around compile_table only (a separate, untimed run), memory still held by the table / N
  lookup     median ns of table.judge(key), the packet path's lookup (exact dict, then prefixes), timed in
             batches of 1,000 with perf_counter_ns
  get        median ns of a raw table.exact.get(key), what the packet path will call
  floor      median ns of get() on a plain dict of the same keys and one shared value: the cost of any dict that
             size on this machine, which no change to the table can go below

Lookups use existing addresses, half IPv4 and half IPv6 at every size, shuffled so that consecutive lookups hit
unrelated parts of the table, and every key is a fresh bytes object (its hash not cached), as a source address
cut out of a packet would be. In the same run, in blocks alternating with the table's, the same loop runs over
a plain dict of 1,000 entries with the same kind of keys: the baseline. The machine is shared and noisy,
so lookups are reported as ratios: to the table of 1,000 VMs, and to the baseline measured alongside.

The synthetic fleet: 9 subscriptions of 7 types (two exempt, one of them exempted after its VMs pulled their
policy), VMs of a few kinds (mostly "vm"; some PaaS that is never allowed), ~4% stopped, ~3% deallocated, 2.5%
egressing through one of two appliances, 0.5% holding a policy pulled before their subscription changed, 10%
dual-stack, plus 8 scale sets registered as prefixes (5 IPv4 and 3 IPv6 prefix lengths). 198.18.0.0/15 holds
only 131,072 addresses, so VMs past the first ~127,000 get an IPv6 address from 2001:db8::/32 only.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import os
import random
import statistics
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from enforcer.inventory import (DEALLOCATED, RUNNING, STOPPED, Inventory, Pulled, Resource,  # noqa: E402
                                Subscription, validate)
from enforcer.policy import decide, judge  # noqa: E402
from enforcer.profile import load_profile  # noqa: E402
from enforcer.table import UNKNOWN, compile_table, pack  # noqa: E402

perf_ns = time.perf_counter_ns

DEFAULT_SIZES = (1_000, 100_000, 1_000_000)
REF_N = 1_000
BATCH = 1_000
BLOCK = 25  # batches per block of one kind, see measure_lookups
TARGET_LOOKUP_RATIO = 1.5     # lookup@1M / lookup@1k
TARGET_COMPILE_S = 3.0        # compile of 1M VMs
TARGET_BYTES_PER_VM = 300

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


# ---------------------------------------------------------------- the synthetic inventory


def v4(offset: int) -> str:
    return f"198.{18 + (offset >> 16)}.{(offset >> 8) & 255}.{offset & 255}"


def v6(i: int) -> str:
    # groups 2001:db8:1:X:0:0:0:Y with X, Y non-zero (Y <= 0x8000): the canonical text ipaddress would give
    return f"2001:db8:1:{(i >> 15) + 1:x}::{(i & 0x7fff) + 1:x}"


def build_inventory(n: int, seed: int) -> Inventory:
    rng = random.Random(seed)
    subs = {name: Subscription(name, typ, exempt, via) for name, typ, exempt, via, _ in SUBSCRIPTIONS}
    pulled_now = {name: Pulled(s.type, s.exempt) for name, s in subs.items()}
    pulled_now["devtest-late"] = Pulled("devtest", False)
    # shared Pulled values, like the store would produce after interning; a wheel of subscription names by weight
    wheel = [name for name, _, _, _, w in SUBSCRIPTIONS for _ in range(w)]

    resources: dict[str, Resource] = {}
    # two appliances that others egress through (rule 7), one per side of the policy
    appliances = (
        Resource("fw-hub", "ea-prod", "azure-firewall", ("198.19.250.1",), state=RUNNING, pulled=pulled_now["ea-prod"]),
        Resource("nva-edge", "payg-web", "nva", ("198.19.250.2",), state=RUNNING, pulled=pulled_now["payg-web"]),
    )
    for a in appliances:
        resources[a.name] = a
    # scale sets registered as prefixes in the reserved 198.19.240.0/20 (the appliances sit in its 198.19.250.0/24)
    scale_sets = (
        ("vmss-web", "payg-web", ("198.19.240.0/24", "2001:db8:ff00::/64")),
        ("vmss-batch", "ea-prod", ("198.19.241.0/24",)),
        ("vmss-mail", "devtest-mail", ("198.19.242.0/26", "2001:db8:ff01::/64")),
        ("vmss-ci", "devtest-lab", ("198.19.242.64/26",)),
        ("vmss-api", "csp-tenant", ("198.19.243.0/28", "2001:db8:ff02:1::/80")),
        ("vmss-jobs", "mcae-data", ("198.19.243.16/28",)),
        ("vmss-trial", "trial-1", ("198.19.244.0/23",)),
        ("vmss-dev", "msdn-dev", ("198.19.246.0/25", "2001:db8:ff03::/48")),
    )
    for name, sub, prefixes in scale_sets:
        resources[name] = Resource(name, sub, "vmss", prefixes, state=RUNNING, pulled=pulled_now[sub])

    # IPv4 offsets handed out in a shuffled order so neighbouring VMs do not get neighbouring addresses
    v4_offsets = list(range(V4_HOSTS))
    rng.shuffle(v4_offsets)
    kinds = ["vm"] * 44 + ["app-service-vnet", "functions-vnet", "ase-v3", "paas", "app-service", "functions"]
    # what a VM pulled before its subscription changed: the other exemption where the type allows one, else
    # another type (set-type without --apply-now)
    stale = {name: Pulled(s.type, not s.exempt) if s.type == "devtest" else
             Pulled("payg" if s.type in ("ea", "mca-e") else "ea", False) for name, s in subs.items()}
    r_sub = rng.choices(wheel, k=n)
    r_kind = rng.choices(kinds, k=n)
    r_roll = [rng.random() for _ in range(n)]
    for i in range(n):
        sub = r_sub[i]
        roll = r_roll[i]
        if i < V4_HOSTS:
            addrs = (v4(v4_offsets[i]), v6(i)) if i % 10 == 0 else (v4(v4_offsets[i]),)
        else:
            addrs = (v6(i),)
        if roll < 0.04:
            state, pulled = STOPPED, pulled_now[sub]
        elif roll < 0.07:
            state, pulled = DEALLOCATED, None
        else:
            state, pulled = RUNNING, (stale[sub] if roll > 0.995 else pulled_now[sub])
        egress = ("fw-hub" if i & 1 else "nva-edge") if 0.07 <= roll < 0.095 else None
        name = f"vm-{i:07d}"
        resources[name] = Resource(name, sub, r_kind[i], addrs, egress=egress, state=state, pulled=pulled)
    return Inventory("azure", subs, {}, resources)


def host_keys(inv: Inventory) -> tuple[list[bytes], list[bytes]]:
    """The packed host addresses of the VMs (not the appliances, not the scale-set prefixes): IPv4, IPv6."""
    k4, k6 = [], []
    for r in inv.resources.values():
        if r.name.startswith("vm-"):
            for a in r.addresses:
                (k6 if ":" in a else k4).append(pack(a))
    return k4, k6


# ---------------------------------------------------------------- measuring


def fresh(keys: list[bytes]) -> list[bytes]:
    """Copies with no cached hash, allocated in lookup order (as packets arrive)."""
    return [bytes(bytearray(k)) for k in keys]


def draw(rng: random.Random, k4: list[bytes], k6: list[bytes], count: int) -> list[bytes]:
    """`count` existing keys, half IPv4 half IPv6, shuffled; without replacement where there are enough."""
    half = count // 2
    out = []
    for pool, want in ((k4, half), (k6, count - half)):
        out += rng.sample(pool, want) if len(pool) >= want else rng.choices(pool, k=want)
    rng.shuffle(out)
    return out


def batches(keys: list[bytes]) -> list[list[bytes]]:
    return [keys[i:i + BATCH] for i in range(0, len(keys) - BATCH + 1, BATCH)]


def time_batch(fn, batch: list[bytes]) -> float:
    t0 = perf_ns()
    for k in batch:
        fn(k)
    return (perf_ns() - t0) / len(batch)


def measure_lookups(table, k4, k6, base: dict, b4, b6, lookups: int, rounds: int, rng: random.Random) -> dict:
    """Median ns per call of table.judge, table.exact.get, the 1,000-entry baseline's get and the floor's get.

    The floor is a plain dict holding the table's keys with one shared value: what any dict of this size costs on
    this machine. The kinds run in alternating blocks of BLOCK batches (not batch by batch: a batch over a large
    table would evict the small baseline from the caches and slow it down); a noisy moment then hits every kind,
    and the one cold batch at the start of each block does not move the median.
    """
    floor = dict.fromkeys(table.exact, UNKNOWN)
    kinds = (("base", base.get, b4, b6), ("lookup", table.judge, k4, k6), ("get", table.exact.get, k4, k6),
             ("floor", floor.get, k4, k6))
    samples: dict[str, list[float]] = {name: [] for name, *_ in kinds}
    per_round = lookups // rounds
    for _ in range(rounds):
        # an independent draw per kind: one kind's batch must not find the lines another's just brought in
        work = [(name, fn, batches(fresh(draw(rng, p4, p6, per_round)))) for name, fn, p4, p6 in kinds]
        for start in range(0, len(work[0][2]), BLOCK):
            for name, fn, bs in work:
                sink = samples[name]
                for batch in bs[start:start + BLOCK]:
                    sink.append(time_batch(fn, batch))
        del work
    del floor
    out = {name: statistics.median(v) for name, v in samples.items()}
    out["samples"] = len(samples["lookup"])
    return out


def measure_slow_paths(table, rng: random.Random, count: int = 60_000) -> dict:
    """Sources the exact dict misses: inside a scale-set prefix (longest-prefix match) and unknown ones."""
    inside = [pack(f"198.19.{240 + rng.randrange(4)}.{rng.randrange(16)}") for _ in range(count // 2)] + \
             [pack(f"2001:db8:ff00::{rng.randrange(1, 65535):x}") for _ in range(count // 2)]
    unknown = [pack(f"203.0.113.{rng.randrange(256)}") for _ in range(count // 2)] + \
              [pack(f"2001:db8:eeee::{rng.randrange(1, 65535):x}") for _ in range(count // 2)]
    rng.shuffle(inside)
    rng.shuffle(unknown)
    assert all(table.lookup(k) is not UNKNOWN for k in inside[:200])
    assert all(table.lookup(k) is UNKNOWN for k in unknown[:200])
    out = {}
    for label, keys in (("prefix", inside), ("unknown", unknown)):
        out[label] = statistics.median(time_batch(table.judge, b) for b in batches(fresh(keys)))
    return out


def baseline_dict(rng: random.Random) -> tuple[dict, list[bytes], list[bytes]]:
    """A plain dict of 1,000 entries with the same kind of keys and values as the table: half IPv4, half IPv6."""
    b4 = [pack(v4(o)) for o in rng.sample(range(V4_HOSTS), REF_N // 2)]
    b6 = [pack(v6(i)) for i in rng.sample(range(1 << 20), REF_N - REF_N // 2)]
    d = {k: (bool(i & 1), f"vm-{i:07d}", "payg-web", "blocked-never-exemptible") for i, k in enumerate(b4 + b6)}
    return d, b4, b6


def check_table(inv: Inventory, profile, table, rng: random.Random, k4, k6, small: bool) -> None:
    """Sanity: the table holds every address and agrees with judge() (and, when small, decide())."""
    hosts = sum(len(r.addresses) for r in inv.resources.values()) - sum(
        1 for r in inv.resources.values() for a in r.addresses if "/" in a)
    assert len(table.exact) == hosts, (len(table.exact), hosts)
    names = rng.sample(list(inv.resources), min(300, len(inv.resources)))
    for name in names:
        r = inv.resources[name]
        allow, code, decider = judge(inv, profile, r)
        for a in r.addresses:
            if "/" not in a:
                # tuple(): an entry is a tuple or an iterable Entry object, depending on the table.py version
                assert tuple(table.lookup(pack(a))) == (allow, r.name, decider.subscription, code), (name, a)
    if small:
        for key in rng.sample(k4, 10) + rng.sample(k6, 10):
            addr = str(ipaddress.ip_address(key))
            v = decide(inv, profile, addr, "203.0.113.25", 25)
            e = tuple(table.lookup(key))
            assert (v.allow, v.resource, v.code) == (e[0], e[1], e[3]), (addr, v, e)


def run_size(n: int, profile, args, base, b4, b6, rng: random.Random) -> dict:
    t0 = time.perf_counter()
    inv = build_inventory(n, args.seed + n)
    built = time.perf_counter() - t0
    if n <= 100_000:
        validate(inv, profile)  # the synthetic inventory is one the CLI would accept
    k4, k6 = host_keys(inv)
    gc.collect()

    runs = 1 if args.quick else (2 if n >= 1_000_000 else 3)
    times = []
    table = None
    for _ in range(runs):
        table = None
        gc.collect()
        t = perf_ns()
        table = compile_table(inv, profile)
        times.append((perf_ns() - t) / 1e9)
    check_table(inv, profile, table, rng, k4, k6, small=n <= 10_000)

    # memory: a separate untimed compile under tracemalloc (which slows it), the inventory already built
    table = None
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table = compile_table(inv, profile)
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    held -= before
    peak -= before

    lookups = args.lookups // (4 if args.quick else 1)
    res = measure_lookups(table, k4, k6, base, b4, b6, lookups, rounds=1 if args.quick else 2, rng=rng)
    slow = measure_slow_paths(table, rng, 10_000 if args.quick else 60_000)
    row = {"n": n, "built": built, "compile": min(times), "compile_runs": times, "entries": len(table),
           "exact": len(table.exact), "v4": len(k4), "v6": len(k6), "bytes_vm": held / n, "peak_vm": peak / n,
           **res, **slow}
    del table, inv, k4, k6
    gc.collect()
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                    help="comma-separated VM counts (default 1000,100000,1000000)")
    ap.add_argument("--quick", action="store_true", help="one compile run per size and a quarter of the lookups")
    ap.add_argument("--lookups", type=int, default=200_000, help="lookups timed per size and kind (default 200000)")
    ap.add_argument("--seed", type=int, default=25)
    args = ap.parse_args(argv)
    sizes = sorted({int(float(s.replace("_", ""))) for s in args.sizes.split(",") if s.strip()})
    if REF_N not in sizes:
        sizes.insert(0, REF_N)  # the reference for "ratio to 1,000"

    profile = load_profile("azure")
    rng = random.Random(args.seed)
    base, b4, b6 = baseline_dict(rng)
    import hashlib
    import enforcer.table
    with open(enforcer.table.__file__, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    print(f"python {sys.version.split()[0]} on {os.cpu_count()} cpus; profile {profile.id} ({profile.source}); "
          f"{os.path.relpath(enforcer.table.__file__)} sha256 {digest}")
    print(f"sizes {', '.join(f'{n:,}' for n in sizes)}; {args.lookups // (4 if args.quick else 1):,} lookups "
          f"per size and kind in batches of {BATCH}; quick={args.quick}")
    print()

    rows = []
    t_all = time.perf_counter()
    for n in sizes:
        row = run_size(n, profile, args, base, b4, b6, rng)
        rows.append(row)
        print(f"N={n:>9,}: inventory built in {row['built']:.2f} s ({row['v4']:,} IPv4 + {row['v6']:,} IPv6 VM "
              f"addresses, {row['entries']:,} table entries)")
        print(f"    compile runs {', '.join(f'{t:.3f}' for t in row['compile_runs'])} s; held {row['bytes_vm']:.1f} "
              f"B/VM (peak during compile {row['peak_vm']:.1f} B/VM)")
        print(f"    median ns: lookup {row['lookup']:.1f}, exact.get {row['get']:.1f}, baseline dict(1000).get "
              f"{row['base']:.1f}, floor dict({row['exact']:,}).get {row['floor']:.1f} "
              f"({row['samples']} batches of {BATCH} each)")
        print(f"    median ns of lookup() for sources the exact dict misses: in a scale-set prefix "
              f"{row['prefix']:.1f}, unknown {row['unknown']:.1f}")
        sys.stdout.flush()

    ref = next(r for r in rows if r["n"] == REF_N)
    print()
    print(f"{'N':>10} {'compile s':>10} {'bytes/VM':>9} {'lookup ns':>10} {'x@1k':>6} {'x@1k norm':>10} "
          f"{'get ns':>7} {'get x@1k':>9} {'get/base':>9} {'base ns':>8} {'floor ns':>9} {'get/floor':>10}")
    for r in rows:
        x = r["lookup"] / ref["lookup"]
        xn = (r["lookup"] / r["base"]) / (ref["lookup"] / ref["base"])
        print(f"{r['n']:>10,} {r['compile']:>10.3f} {r['bytes_vm']:>9.1f} {r['lookup']:>10.1f} {x:>6.2f} {xn:>10.2f} "
              f"{r['get']:>7.1f} {r['get'] / ref['get']:>9.2f} {r['get'] / r['base']:>9.2f} {r['base']:>8.1f} "
              f"{r['floor']:>9.1f} {r['get'] / r['floor']:>10.2f}")
    print("  x@1k: lookup@N / lookup@1,000; x@1k norm: the same, each first divided by its own size's baseline")
    print("  base: a plain 1,000-entry dict's get, timed in blocks alternating with the table's (noise control)")
    print("  floor: a plain dict of the table's keys with one shared value, same blocks: what any dict of N costs here")
    print()

    big = next((r for r in rows if r["n"] == 1_000_000), None)
    print("targets:")
    if big is None:
        print(f"  lookup@1M <= {TARGET_LOOKUP_RATIO}x lookup@1k: SKIP (1,000,000 not among the sizes)")
        print(f"  compile of 1M VMs < {TARGET_COMPILE_S} s: SKIP (1,000,000 not among the sizes)")
    else:
        x = big["lookup"] / ref["lookup"]
        xn = (big["lookup"] / big["base"]) / (ref["lookup"] / ref["base"])
        verdict = "PASS" if xn <= TARGET_LOOKUP_RATIO else "FAIL"
        print(f"  lookup@1M <= {TARGET_LOOKUP_RATIO}x lookup@1k: {verdict} ({xn:.2f}x baseline-normalised, "
              f"{x:.2f}x raw; exact.get {big['get'] / ref['get']:.2f}x)")
        verdict = "PASS" if big["compile"] < TARGET_COMPILE_S else "FAIL"
        print(f"  compile of 1M VMs < {TARGET_COMPILE_S} s: {verdict} ({big['compile']:.3f} s, best of "
              f"{len(big['compile_runs'])})")
    worst = max(rows, key=lambda r: r["bytes_vm"])
    verdict = "PASS" if worst["bytes_vm"] < TARGET_BYTES_PER_VM else "FAIL"
    print(f"  < {TARGET_BYTES_PER_VM} bytes per VM at every size: {verdict} (worst {worst['bytes_vm']:.1f} at "
          f"N={worst['n']:,})")
    print(f"\ntotal {time.perf_counter() - t_all:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
