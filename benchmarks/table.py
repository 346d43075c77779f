"""Benchmark of the compiled verdict table (enforcer/core/table.py) at 1,000 / 100,000 / 1,000,000 registered VMs.

A report, not a test: it always exits 0. From the repository root:

    python -m benchmarks.table [--sizes 1000,100000,1000000] [--quick] [--lookups N] [--seed N]

For each size N it builds the synthetic fleet of benchmarks/fleet.py, then measures:

  compile    compile_table(inv, profile), GC enabled as in the daemon; best of 3 (2 runs at 1M, 1 with --quick)
  bytes/VM   tracemalloc around compile_table only (a separate, untimed run), memory still held by the table / N
  lookup     median ns of the packet path's lookup, in the shape PacketCallback.__call__ inlines it:
             `entry = table.exact.get(key)`, then `table.prefix_entry(key)` when that misses; timed in batches of
             1,000 with perf_counter_ns
  get        median ns of a raw table.exact.get(key), the dict lookup alone
  floor      median ns of get() on a plain dict of the same keys and one shared value: the cost of any dict that
             size on this machine, which no change to the table can go below

Lookups use existing addresses, half IPv4 and half IPv6 at every size, shuffled so that consecutive lookups hit
unrelated parts of the table, and every key is a fresh bytes object (its hash not cached), as a source address
cut out of a packet would be. In the same run, in blocks alternating with the table's, the same loop runs over
a plain dict of 1,000 entries with the same kind of keys: the baseline. The machine is shared and noisy,
so lookups are reported as ratios: to the table of 1,000 VMs, and to the baseline measured alongside.
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import ipaddress
import os
import random
import statistics
import sys
import time
import tracemalloc
from typing import Any, Callable

import enforcer.core.table
from enforcer.core.inventory import Inventory, validate
from enforcer.core.policy import assess, decide
from enforcer.core.profile import Profile
from enforcer.core.table import UNKNOWN, VerdictTable, compile_table, pack
from enforcer.state.profiles import load_profile

from .fleet import V4_HOSTS, build_inventory, host_keys, v4, v6

perf_ns = time.perf_counter_ns

DEFAULT_SIZES = (1_000, 100_000, 1_000_000)
REF_N = 1_000
BATCH = 1_000
BLOCK = 25  # batches per block of one kind, see measure_lookups
TARGET_LOOKUP_RATIO = 1.5     # lookup@1M / lookup@1k
TARGET_COMPILE_S = 3.0        # compile of 1M VMs
TARGET_BYTES_PER_VM = 300

Timer = Callable[[list[bytes]], float]  # a batch of keys -> ns per key


# ---------------------------------------------------------------- timing one batch


def time_calls(fn: Callable[[bytes], Any], batch: list[bytes]) -> float:
    """ns per fn(key): a dict's get, bound once (the base, get and floor kinds)."""
    t0 = perf_ns()
    for k in batch:
        fn(k)
    return (perf_ns() - t0) / len(batch)


def time_packet_path(table: VerdictTable, batch: list[bytes]) -> float:
    """ns per lookup as the packet path does it: these two lines are PacketCallback.__call__'s, which inlines
    them rather than calling a method of the table (enforcer/dataplane/callback.py)."""
    t0 = perf_ns()
    for key in batch:
        entry = table.exact.get(key)
        if entry is None:
            entry = table.prefix_entry(key)
    return (perf_ns() - t0) / len(batch)


# ---------------------------------------------------------------- the keys


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


def baseline_dict(rng: random.Random) -> tuple[dict, list[bytes], list[bytes]]:
    """A plain dict of 1,000 entries with the same kind of keys and values as the table: half IPv4, half IPv6."""
    b4 = [pack(v4(o)) for o in rng.sample(range(V4_HOSTS), REF_N // 2)]
    b6 = [pack(v6(i)) for i in rng.sample(range(1 << 20), REF_N - REF_N // 2)]
    d = {k: (bool(i & 1), f"vm-{i:07d}", "payg-web", "blocked-never-exemptible") for i, k in enumerate(b4 + b6)}
    return d, b4, b6


# ---------------------------------------------------------------- measuring


def measure_lookups(table: VerdictTable, k4, k6, base: dict, b4, b6, lookups: int, rounds: int,
                    rng: random.Random) -> dict:
    """Median ns per key of the packet path's lookup, table.exact.get, the 1,000-entry baseline's get and the
    floor's get.

    The floor is a plain dict holding the table's keys with one shared value: what any dict of this size costs on
    this machine. The kinds run in alternating blocks of BLOCK batches (not batch by batch: a batch over a large
    table would evict the small baseline from the caches and slow it down); a noisy moment then hits every kind,
    and the one cold batch at the start of each block does not move the median.
    """
    floor = dict.fromkeys(table.exact, UNKNOWN)
    kinds: tuple[tuple[str, Timer, list[bytes], list[bytes]], ...] = (
        ("base", functools.partial(time_calls, base.get), b4, b6),
        ("lookup", functools.partial(time_packet_path, table), k4, k6),
        ("get", functools.partial(time_calls, table.exact.get), k4, k6),
        ("floor", functools.partial(time_calls, floor.get), k4, k6))
    samples: dict[str, list[float]] = {name: [] for name, *_ in kinds}
    per_round = lookups // rounds
    for _ in range(rounds):
        # an independent draw per kind: one kind's batch must not find the lines another's just brought in
        work = [(name, timer, batches(fresh(draw(rng, p4, p6, per_round)))) for name, timer, p4, p6 in kinds]
        for start in range(0, len(work[0][2]), BLOCK):
            for name, timer, bs in work:
                sink = samples[name]
                for batch in bs[start:start + BLOCK]:
                    sink.append(timer(batch))
        del work
    del floor
    out: dict[str, Any] = {name: statistics.median(v) for name, v in samples.items()}
    out["samples"] = len(samples["lookup"])
    return out


def measure_slow_paths(table: VerdictTable, rng: random.Random, count: int = 60_000) -> dict:
    """Sources the exact dict misses: inside a scale-set prefix (longest-prefix match) and unknown ones."""
    inside = [pack(f"198.19.{240 + rng.randrange(4)}.{rng.randrange(16)}") for _ in range(count // 2)] + \
             [pack(f"2001:db8:ff00::{rng.randrange(1, 65535):x}") for _ in range(count // 2)]
    unknown = [pack(f"203.0.113.{rng.randrange(256)}") for _ in range(count // 2)] + \
              [pack(f"2001:db8:eeee::{rng.randrange(1, 65535):x}") for _ in range(count // 2)]
    rng.shuffle(inside)
    rng.shuffle(unknown)
    assert all(table.lookup(k) is not UNKNOWN for k in inside[:200])
    assert all(table.lookup(k) is UNKNOWN for k in unknown[:200])
    return {label: statistics.median(time_packet_path(table, b) for b in batches(fresh(keys)))
            for label, keys in (("prefix", inside), ("unknown", unknown))}


def check_table(inv: Inventory, profile: Profile, table: VerdictTable, rng: random.Random, k4, k6,
                small: bool) -> None:
    """Sanity: the table holds every address and agrees with assess() (and, when small, decide())."""
    hosts = sum(len(r.addresses) for r in inv.resources.values()) - sum(
        1 for r in inv.resources.values() for a in r.addresses if "/" in a)
    assert len(table.exact) == hosts, (len(table.exact), hosts)
    names = rng.sample(list(inv.resources), min(300, len(inv.resources)))
    for name in names:
        r = inv.resources[name]
        allow, code, decider = assess(inv, profile, r)
        for a in r.addresses:
            if "/" not in a:
                assert tuple(table.lookup(pack(a))) == (allow, r.name, decider.subscription, code), (name, a)
    if small:
        for key in rng.sample(k4, 10) + rng.sample(k6, 10):
            addr = str(ipaddress.ip_address(key))
            v = decide(inv, profile, addr, "203.0.113.25", 25)
            e = tuple(table.lookup(key))
            assert (v.allow, v.resource, v.code) == (e[0], e[1], e[3]), (addr, v, e)


def time_compiles(inv: Inventory, profile: Profile, runs: int) -> tuple[VerdictTable, list[float]]:
    """compile_table `runs` times, GC enabled as in the daemon: the last table, and each run's seconds."""
    times = []
    table = None
    for _ in range(runs):
        table = None
        gc.collect()
        t = perf_ns()
        table = compile_table(inv, profile)
        times.append((perf_ns() - t) / 1e9)
    assert table is not None
    return table, times


def measure_memory(inv: Inventory, profile: Profile) -> tuple[VerdictTable, int, int]:
    """A separate, untimed compile under tracemalloc (which slows it), the inventory already built: the table,
    the bytes it still holds, the peak during the compile."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table = compile_table(inv, profile)
    gc.collect()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return table, held - before, peak - before


def run_size(n: int, profile: Profile, args: argparse.Namespace, base: dict, b4, b6, rng: random.Random) -> dict:
    t0 = time.perf_counter()
    inv = build_inventory(n, args.seed + n)
    built = time.perf_counter() - t0
    if n <= 100_000:
        validate(inv, profile)  # the synthetic inventory is one the CLI would accept
    k4, k6 = host_keys(inv)
    gc.collect()

    runs = 1 if args.quick else (2 if n >= 1_000_000 else 3)
    table, times = time_compiles(inv, profile, runs)
    check_table(inv, profile, table, rng, k4, k6, small=n <= 10_000)
    del table
    table, held, peak = measure_memory(inv, profile)

    lookups = args.lookups // (4 if args.quick else 1)
    res = measure_lookups(table, k4, k6, base, b4, b6, lookups, rounds=1 if args.quick else 2, rng=rng)
    slow = measure_slow_paths(table, rng, 10_000 if args.quick else 60_000)
    row = {"n": n, "built": built, "compile": min(times), "compile_runs": times, "entries": len(table),
           "exact": len(table.exact), "v4": len(k4), "v6": len(k6), "bytes_vm": held / n, "peak_vm": peak / n,
           **res, **slow}
    del table, inv, k4, k6
    gc.collect()
    return row


# ---------------------------------------------------------------- the report


def print_header(profile: Profile, sizes: list[int], args: argparse.Namespace) -> None:
    path = enforcer.core.table.__file__
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    print(f"python {sys.version.split()[0]} on {os.cpu_count()} cpus; profile {profile.id} ({profile.source}); "
          f"{os.path.relpath(path)} sha256 {digest}")
    print(f"sizes {', '.join(f'{n:,}' for n in sizes)}; {args.lookups // (4 if args.quick else 1):,} lookups "
          f"per size and kind in batches of {BATCH}; quick={args.quick}")
    print()


def print_size(row: dict) -> None:
    print(f"N={row['n']:>9,}: inventory built in {row['built']:.2f} s ({row['v4']:,} IPv4 + {row['v6']:,} IPv6 VM "
          f"addresses, {row['entries']:,} table entries)")
    print(f"    compile runs {', '.join(f'{t:.3f}' for t in row['compile_runs'])} s; held {row['bytes_vm']:.1f} "
          f"B/VM (peak during compile {row['peak_vm']:.1f} B/VM)")
    print(f"    median ns: lookup {row['lookup']:.1f}, exact.get {row['get']:.1f}, baseline dict(1000).get "
          f"{row['base']:.1f}, floor dict({row['exact']:,}).get {row['floor']:.1f} "
          f"({row['samples']} batches of {BATCH} each)")
    print(f"    median ns of the lookup for sources the exact dict misses: in a scale-set prefix "
          f"{row['prefix']:.1f}, unknown {row['unknown']:.1f}")
    sys.stdout.flush()


def print_table(rows: list[dict], ref: dict) -> None:
    print()
    print(f"{'N':>10} {'compile s':>10} {'bytes/VM':>9} {'lookup ns':>10} {'x@1k':>6} {'x@1k norm':>10} "
          f"{'get ns':>7} {'get x@1k':>9} {'get/base':>9} {'base ns':>8} {'floor ns':>9} {'get/floor':>10}")
    for r in rows:
        x = r["lookup"] / ref["lookup"]
        xn = (r["lookup"] / r["base"]) / (ref["lookup"] / ref["base"])
        print(f"{r['n']:>10,} {r['compile']:>10.3f} {r['bytes_vm']:>9.1f} {r['lookup']:>10.1f} {x:>6.2f} {xn:>10.2f} "
              f"{r['get']:>7.1f} {r['get'] / ref['get']:>9.2f} {r['get'] / r['base']:>9.2f} {r['base']:>8.1f} "
              f"{r['floor']:>9.1f} {r['get'] / r['floor']:>10.2f}")
    print("  lookup: the packet path's inlined lookup (exact.get, prefix_entry on a miss); get: exact.get alone")
    print("  x@1k: lookup@N / lookup@1,000; x@1k norm: the same, each first divided by its own size's baseline")
    print("  base: a plain 1,000-entry dict's get, timed in blocks alternating with the table's (noise control)")
    print("  floor: a plain dict of the table's keys with one shared value, same blocks: what any dict of N costs here")
    print()


def print_targets(rows: list[dict], ref: dict) -> None:
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


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.table", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                    help="comma-separated VM counts (default 1000,100000,1000000)")
    ap.add_argument("--quick", action="store_true", help="one compile run per size and a quarter of the lookups")
    ap.add_argument("--lookups", type=int, default=200_000, help="lookups timed per size and kind (default 200000)")
    ap.add_argument("--seed", type=int, default=25)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sorted({int(float(s.replace("_", ""))) for s in args.sizes.split(",") if s.strip()})
    if REF_N not in sizes:
        sizes.insert(0, REF_N)  # the reference for "ratio to 1,000"

    profile = load_profile("azure")
    rng = random.Random(args.seed)
    base, b4, b6 = baseline_dict(rng)
    print_header(profile, sizes, args)
    rows = []
    t_all = time.perf_counter()
    for n in sizes:
        rows.append(run_size(n, profile, args, base, b4, b6, rng))
        print_size(rows[-1])
    ref = next(r for r in rows if r["n"] == REF_N)
    print_table(rows, ref)
    print_targets(rows, ref)
    print(f"\ntotal {time.perf_counter() - t_all:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
