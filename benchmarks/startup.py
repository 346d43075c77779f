"""How fast a plain command starts: `enforcer check` as a whole process on a state of the example lab, beside the
bare interpreter measured in the same run (these machines are shared and noisy, so runs alternate).

    .venv/bin/python -m benchmarks.startup [--runs 40]

The target (issue 11): `enforcer check` within 120 ms, whole process, at lab size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from enforcer.lab.files import DEFAULT_LAB

TARGET_MS = 120.0


# As installed: with the modules' bytecode written once (PYTHONDONTWRITEBYTECODE, set in some shells, would make
# every run compile every module again: +50 ms here).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=ENV)
    return (time.perf_counter() - started) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="enforcer-startup-") as tmp:
        state = str(Path(tmp) / "state.db")
        enforcer = [sys.executable, "-m", "enforcer.cli", "--state", state]
        subprocess.run([*enforcer, "apply", str(DEFAULT_LAB)], stdout=subprocess.DEVNULL, check=True, env=ENV)
        bare, check = [], []
        for _ in range(args.runs):
            bare.append(timed([sys.executable, "-c", "pass"]))
            check.append(timed([*enforcer, "check", "--from", "devtest-vm", "--to", "198.19.25.25"]))
    b, c = statistics.median(bare), statistics.median(check)
    print(f"bare interpreter        p50 {b:6.1f} ms  (min {min(bare):.1f})")
    print(f"enforcer check          p50 {c:6.1f} ms  (min {min(check):.1f}); {c / b:.1f}x the bare interpreter")
    print(f"target: enforcer check <= {TARGET_MS:.0f} ms whole process: {'PASS' if c <= TARGET_MS else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
