"""How `enforcer apply` grows with the file: a fresh state converged onto inventories of N VMs, timed as a whole
process, per resource, with the smallest size as the baseline measured in the same run.

    .venv/bin/python -m benchmarks.apply [--sizes 1000,4000,20000]

Linear means the time per resource stays flat as N grows (issue 11 measured 1k VMs 0.48 s, 20k VMs 40.5 s:
quadratic).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml


def inventory(n: int) -> dict[str, Any]:
    """N VMs in one VNet, half EA and half Pay-As-You-Go, one in ten leaving through a firewall."""
    vms = [{"name": f"vm{i}", "subscription": "pg" if i % 2 else "ea", "kind": "vm", "vnet": "big",
            "addresses": [f"198.18.{i // 250}.{i % 250 + 1}"], **({"egress": "fw"} if i % 10 == 0 else {})}
           for i in range(n)]
    fw = {"name": "fw", "subscription": "ea", "kind": "azure-firewall", "vnet": "big", "addresses": ["198.19.255.1"]}
    return {"profile": "azure", "subscriptions": [{"name": "ea", "type": "ea"}, {"name": "pg", "type": "payg"}],
            "vnets": [{"name": "big", "subscription": "ea", "prefixes": ["198.18.0.0/15"]}], "resources": [fw, *vms]}


def timed_apply(directory: Path, n: int) -> float:
    source = directory / f"inventory-{n}.yml"
    source.write_text(yaml.safe_dump(inventory(n)))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "enforcer.cli", "--state", str(directory / f"state-{n}" / "state.db"),
                    "apply", str(source)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,4000,20000")
    args = ap.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    with tempfile.TemporaryDirectory(prefix="enforcer-apply-") as tmp:
        seconds = {n: timed_apply(Path(tmp), n) for n in sizes}
    base = seconds[sizes[0]] / sizes[0]
    print(f"{'VMs':>8} {'apply (s)':>10} {'ms per VM':>10} {'vs ' + str(sizes[0]):>9}")
    for n in sizes:
        per = seconds[n] / n
        print(f"{n:8,} {seconds[n]:10.2f} {per * 1000:10.3f} {per / base:8.2f}x")
    worst = max(seconds[n] / n for n in sizes) / base
    print(f"time per VM at the largest size within 1.5x of the smallest: {'PASS' if worst <= 1.5 else 'FAIL'} "
          f"({worst:.2f}x); interpreter start-up is in every figure, so small sizes look dearer per VM")
    return 0


if __name__ == "__main__":
    sys.exit(main())
