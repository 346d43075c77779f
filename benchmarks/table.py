"""Benchmark of the verdict table (the C Table/View of enforcer/dataplane/_fastpath.c, filled by
enforcer.dataplane.keeper.Keeper) at 1,000 / 100,000 / 1,000,000 registered VMs.

A report, not a test: it exits 0 once it has run (1 if the table disagrees with the policy). From the repository
root:

    python -m benchmarks.table [--sizes 1000,100000,1000000] [--quick] [--lookups N] [--seed N]

For each size N it builds the synthetic fleet of benchmarks/fleet.py, then measures:

  fill       Keeper.fill(inv): every resource judged (assess) and its addresses put into the C table; best of 3
             (1 with --quick). The daemon compiles from the state's address rows instead (Keeper.compile, one
             judgement per group of alike rows): its time to READY is benchmarks.control's
  bytes/addr the image's size (what the daemon publishes in a memfd and every worker maps, shared) / the
             registered addresses
  lookup     median ns of View.lookup(key), the packet path's one lookup (the Judge does the same in C on the
             address it reads from the payload), timed in batches of 1,000 with perf_counter_ns
  dict       median ns of get() on a plain dict of the same keys: what the Python table before it cost
  prefixes   median ns of an unknown source's lookup (an exact miss, then the scale sets' prefixes) in the
             1,000-VM table's addresses with 10,000 prefixes of 12 lengths registered, against the same table
             with none, in alternating blocks: a flood of spoofed sources pays it on every SYN

Lookups use existing addresses, half IPv4 and half IPv6 at every size, shuffled so that consecutive lookups hit
unrelated parts of the table, and every key is a fresh bytes object, as a source address cut out of a packet
would be. The baseline is the table of 1,000 VMs, kept alive for the whole run: at every size its lookups run in
blocks alternating with the size's own, so a noisy moment of this shared machine hits both, and the target is
the ratio of the two medians measured side by side.
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
from collections.abc import Callable
from typing import Any

from enforcer.core.policy import decide
from enforcer.core.verdicts import judged, pack
from enforcer.dataplane._fastpath import Table, View
from enforcer.dataplane.keeper import Keeper
from enforcer.state.profiles import load_profile

from .fleet import build_inventory, host_keys

perf_ns = time.perf_counter_ns

DEFAULT_SIZES = (1_000, 100_000, 1_000_000)
REF_N = 1_000
BATCH = 1_000
BLOCK = 25  # batches per block of one kind, see measure_lookups
TARGET_LOOKUP_RATIO = 1.5     # lookup@1M / lookup@1k
TARGET_BYTES_PER_ADDRESS = 64
PREFIXES = 10_000
TARGET_PREFIX_RATIO = 1.5     # an unknown source's lookup with PREFIXES prefixes / with none


def time_lookups(lookup: Callable[[bytes], Any], batch: list[bytes]) -> float:
    """ns per lookup(key)."""
    t0 = perf_ns()
    for k in batch:
        lookup(k)
    return (perf_ns() - t0) / len(batch)


def draw(rng: random.Random, k4: list[bytes], k6: list[bytes], count: int) -> list[bytes]:
    """`count` existing keys, half IPv4 half IPv6, shuffled, each a fresh bytes object allocated in lookup order
    (as packets arrive)."""
    half = count // 2
    out: list[bytes] = []
    for pool, want in ((k4, half), (k6, count - half)):
        out += rng.sample(pool, want) if len(pool) >= want else rng.choices(pool, k=want)
    rng.shuffle(out)
    return [bytes(bytearray(k)) for k in out]


def batches(keys: list[bytes]) -> list[list[bytes]]:
    return [keys[i:i + BATCH] for i in range(0, len(keys) - BATCH + 1, BATCH)]


class Sized:
    """One size's fleet, its table and its image as a worker maps it."""

    def __init__(self, n: int, seed: int, fills: int):
        self.n = n
        t0 = time.perf_counter()
        self.inv = build_inventory(n, seed + n)
        self.built = time.perf_counter() - t0
        self.k4, self.k6 = host_keys(self.inv)
        self.fills: list[float] = []
        self.keeper = Keeper(load_profile("azure"))
        for _ in range(fills):
            gc.collect()
            t = perf_ns()
            self.keeper.fill(self.inv)
            self.fills.append((perf_ns() - t) / 1e9)
        self.view = View(self.keeper.table.image(1))
        self.addresses = self.keeper.table.stats()["addresses"]

    def check(self, rng: random.Random) -> None:
        """The image holds every address and agrees with assess() (and, when small, decide())."""
        inv, keeper, profile = self.inv, self.keeper, self.keeper.profile
        hosts = sum(1 for r in inv.resources.values() for a in r.addresses if "/" not in a)
        if self.addresses != hosts:
            raise SystemExit(f"the table holds {self.addresses:,} addresses, the fleet {hosts:,}")
        for name in rng.sample(list(inv.resources), min(300, len(inv.resources))):
            r = inv.resources[name]
            (allow, subscription, code), _ = judged(inv, profile, r)
            for a in r.addresses:
                got = keeper.verdict(self.view, pack(a.partition("/")[0]))
                if (got.allow, got.subscription, got.code) != (allow, subscription, code):
                    raise SystemExit(f"{name} {a}: the table says {got}, assess() {(allow, subscription, code)}")
        if self.n <= 10_000:
            for key in rng.sample(self.k4, 10) + rng.sample(self.k6, 10):
                addr = str(ipaddress.ip_address(key))
                v = decide(inv, profile, addr, "203.0.113.25", 25)
                if keeper.verdict(self.view, key).allow != v.allow:
                    raise SystemExit(f"{addr}: the table and decide() disagree ({v})")


def measure_lookups(size: Sized, ref: Sized, lookups: int, rng: random.Random) -> dict[str, Any]:
    """Median ns per key of the size's View.lookup, the 1,000-VM table's (the baseline), the size's table over
    only 1,000 of its addresses (hot: what the same code costs when the lines it reads are cached) and a plain
    dict of the size's keys. The kinds run in alternating blocks of BLOCK batches (not batch by batch: a batch
    over a large table would evict the small baseline from the caches and slow it down), each with a draw of its
    own."""
    plain = dict.fromkeys(size.k4 + size.k6, 0)
    few = rng.sample(size.k4, min(len(size.k4), REF_N // 2)), rng.sample(size.k6, min(len(size.k6), REF_N // 2))
    kinds: list[tuple[str, Callable[[bytes], Any], tuple[list[bytes], list[bytes]]]] = [
        ("base", ref.view.lookup, (ref.k4, ref.k6)), ("lookup", size.view.lookup, (size.k4, size.k6)),
        ("hot", size.view.lookup, few), ("dict", plain.get, (size.k4, size.k6))]
    work = [(name, fn, batches(draw(rng, *pools, lookups))) for name, fn, pools in kinds]
    samples: dict[str, list[float]] = {name: [] for name, _, _ in kinds}
    for start in range(0, len(work[0][2]), BLOCK):
        for name, fn, bs in work:
            samples[name] += [time_lookups(fn, batch) for batch in bs[start:start + BLOCK]]
    del plain, work
    return {name: statistics.median(v) for name, v in samples.items()} | {"samples": len(samples["lookup"])}


def measure_slow_paths(size: Sized, rng: random.Random, count: int) -> dict[str, float]:
    """Sources no exact entry holds: inside a scale-set prefix (longest-prefix match) and unknown ones."""
    inside = [pack(f"198.19.{240 + rng.randrange(4)}.{rng.randrange(16)}") for _ in range(count // 2)] + \
             [pack(f"2001:db8:ff00::{rng.randrange(1, 65535):x}") for _ in range(count // 2)]
    unknown = [pack(f"203.0.113.{rng.randrange(256)}") for _ in range(count // 2)] + \
              [pack(f"2001:db8:eeee::{rng.randrange(1, 65535):x}") for _ in range(count // 2)]
    out = {}
    for label, keys, registered in (("prefix", inside, True), ("unknown", unknown, False)):
        if any((size.view.lookup(k) >= 0) != registered for k in keys[:200] + keys[-200:]):
            raise SystemExit(f"a {label} source is judged wrongly")
        rng.shuffle(keys)
        out[label] = statistics.median(time_lookups(size.view.lookup, b) for b in batches(keys))
    return out


def scale_set_prefixes(rng: random.Random, count: int) -> list[tuple[bytes, int]]:
    """`count` prefixes as scale sets register them: IPv4 /24 to /29 in 10.0.0.0/8, IPv6 /56 to /64 in
    2001:db8:4000::/34, half each, as networks (host bits zero)."""
    out = []
    for i in range(count):
        if i % 2:
            plen, bits = 24 + i % 6, rng.getrandbits(32) & 0x00FFFFFF | 0x0A000000
            out.append(((bits >> (32 - plen) << (32 - plen)).to_bytes(4, "big"), plen))
        else:
            plen, bits = 56 + i % 5 * 2, rng.getrandbits(128) & ((1 << 94) - 1) | (0x20010DB84 << 94)
            out.append(((bits >> (128 - plen) << (128 - plen)).to_bytes(16, "big"), plen))
    return out


def measure_prefix_cost(ref: Sized, rng: random.Random, lookups: int) -> dict[str, float]:
    """Median ns of an unknown source's lookup with no prefix and with PREFIXES of them, the same addresses
    besides, in alternating blocks."""
    nets = scale_set_prefixes(rng, PREFIXES)
    views = []
    for with_prefixes in (False, True):
        t = Table()
        for key in ref.k4 + ref.k6:
            t.put(key, 0)
        for net, plen in nets if with_prefixes else ():
            t.put_prefix(net, plen, 0)
        t.set_allowed(b"\0")
        views.append(View(t.image(1)))
    none, many = views
    unknown = draw(rng, [pack(f"203.0.113.{i}") for i in range(256)],
                   [pack(f"2001:db8:eeee::{i:x}") for i in range(1, 4096)], lookups)
    inside = [net[:-1] + bytes([net[-1] | 1]) for net, _ in nets[:2000]]
    if any(many.lookup(k) != -1 for k in unknown[:2000]) or any(many.lookup(k) != 0 for k in inside):
        raise SystemExit("the prefix table judges a source wrongly")
    samples: dict[str, list[float]] = {"none": [], "many": []}
    work = batches(unknown)
    for start in range(0, len(work), BLOCK):
        for name, view in (("none", none), ("many", many)):
            samples[name] += [time_lookups(view.lookup, b) for b in work[start:start + BLOCK]]
    return {"unknown_none": statistics.median(samples["none"]), "unknown_many": statistics.median(samples["many"])}


def run_size(size: Sized, ref: Sized, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    size.check(rng)
    lookups = args.lookups // (4 if args.quick else 1)
    row = {"n": size.n, "built": size.built, "fill": min(size.fills), "fills": size.fills,
           "addresses": size.addresses, "v4": len(size.k4), "v6": len(size.k6), "image": size.keeper.table.nbytes,
           "stats": size.keeper.table.stats(), **measure_lookups(size, ref, lookups, rng),
           **measure_slow_paths(size, rng, 10_000 if args.quick else 60_000)}
    row["per_address"] = row["image"] / row["addresses"]
    return row


# ---------------------------------------------------------------- the report


def print_size(row: dict[str, Any]) -> None:
    st = row["stats"]
    print(f"N={row['n']:>9,}: fleet built in {row['built']:.2f} s ({row['v4']:,} IPv4 + {row['v6']:,} IPv6 VM "
          f"addresses, {row['addresses']:,} in the table)")
    print(f"    fill runs {', '.join(f'{t:.3f}' for t in row['fills'])} s; image {row['image']:,} bytes = "
          f"{row['per_address']:.1f} B/address ({st['pages']:,} pages, {st['exact4'] + st['exact6']:,} exact "
          f"entries, {st['prefixes']} prefixes)")
    print(f"    median ns: lookup {row['lookup']:.1f}, baseline (the 1,000-VM table, same blocks) {row['base']:.1f}, "
          f"hot (this table, 1,000 of its addresses) {row['hot']:.1f}, dict of the same keys {row['dict']:.1f} "
          f"({row['samples']} batches of {BATCH})")
    print(f"    median ns of a lookup no exact entry answers: in a scale-set prefix {row['prefix']:.1f}, "
          f"unknown {row['unknown']:.1f}")
    sys.stdout.flush()


def print_table(rows: list[dict[str, Any]]) -> None:
    print()
    print(f"{'N':>10} {'fill s':>7} {'image B':>11} {'B/addr':>7} {'lookup ns':>10} {'base ns':>8} {'x base':>7} "
          f"{'hot ns':>7} {'hot x base':>10} {'dict ns':>8} {'dict/lookup':>12}")
    for r in rows:
        print(f"{r['n']:>10,} {r['fill']:>7.3f} {r['image']:>11,} {r['per_address']:>7.1f} {r['lookup']:>10.1f} "
              f"{r['base']:>8.1f} {r['lookup'] / r['base']:>7.2f} {r['hot']:>7.1f} {r['hot'] / r['base']:>10.2f} "
              f"{r['dict']:>8.1f} {r['dict'] / r['lookup']:>12.2f}")
    print("  x base: lookup@N / lookup@1,000, both medians of the same alternating blocks")
    print("  hot: the table of N looked up at only 1,000 of its addresses: the same code with the lines it reads "
          "cached; lookup - hot is what reading the image from memory costs")
    print("  dict: a plain dict of the same keys (what a Python table of N costs here)")
    print()


def print_targets(rows: list[dict[str, Any]]) -> None:
    big = next((r for r in rows if r["n"] == 1_000_000), None)
    print("targets:")
    if big is None:
        print(f"  lookup@1M <= {TARGET_LOOKUP_RATIO}x lookup@1k: SKIP (1,000,000 not among the sizes)")
    else:
        x = big["lookup"] / big["base"]
        print(f"  lookup@1M <= {TARGET_LOOKUP_RATIO}x lookup@1k: {'PASS' if x <= TARGET_LOOKUP_RATIO else 'FAIL'} "
              f"({x:.2f}x: {big['lookup']:.1f} vs {big['base']:.1f} ns)")
    if "unknown_many" in rows[0]:
        x = rows[0]["unknown_many"] / rows[0]["unknown_none"]
        print(f"  unknown source with {PREFIXES:,} prefixes <= {TARGET_PREFIX_RATIO}x with none: "
              f"{'PASS' if x <= TARGET_PREFIX_RATIO else 'FAIL'} ({x:.2f}x: {rows[0]['unknown_many']:.1f} vs "
              f"{rows[0]['unknown_none']:.1f} ns)")
    worst = max(rows, key=lambda r: r["per_address"])
    verdict = "PASS" if worst["per_address"] <= TARGET_BYTES_PER_ADDRESS else "FAIL"
    print(f"  <= {TARGET_BYTES_PER_ADDRESS} bytes per address across all workers (one shared image): {verdict} "
          f"(worst {worst['per_address']:.1f} at N={worst['n']:,})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.table", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                    help="comma-separated VM counts (default 1000,100000,1000000)")
    ap.add_argument("--quick", action="store_true", help="one fill per size and a quarter of the lookups")
    ap.add_argument("--lookups", type=int, default=200_000, help="lookups timed per size and kind (default 200000)")
    ap.add_argument("--seed", type=int, default=25)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sorted({int(float(s.replace("_", ""))) for s in args.sizes.split(",") if s.strip()} | {REF_N})
    rng = random.Random(args.seed)
    fills = 1 if args.quick else 3
    print(f"python {sys.version.split()[0]} on {os.cpu_count()} cpus; sizes {', '.join(f'{n:,}' for n in sizes)}; "
          f"{args.lookups // (4 if args.quick else 1):,} lookups per size and kind in batches of {BATCH}; "
          f"quick={args.quick}\n")
    t_all = time.perf_counter()
    ref = Sized(REF_N, args.seed, fills)
    rows = []
    for n in sizes:
        size = ref if n == REF_N else Sized(n, args.seed, fills)
        rows.append(run_size(size, ref, args, rng))
        if size is ref:
            rows[-1].update(measure_prefix_cost(ref, rng, args.lookups // (4 if args.quick else 1)))
            print(f"    median ns of an unknown source's lookup: {rows[-1]['unknown_many']:.1f} with {PREFIXES:,} "
                  f"prefixes of 12 lengths, {rows[-1]['unknown_none']:.1f} with none (same blocks)")
        print_size(rows[-1])
        if size is not ref:
            del size
            gc.collect()
    print_table(rows)
    print_targets(rows)
    print(f"\ntotal {time.perf_counter() - t_all:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
