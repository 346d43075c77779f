"""One of the concurrent writers of test_etcd_state.py: `python etcd_writer.py URL INDEX N`, N rounds of changes on
the resources, addresses, VNet and subscription every writer shares; prints what it was told succeeded (JSON).

Round k: a VM on an address of a small shared pool (refused when another holds it), a subnet on the shared VNet
(a read-modify-write of one row: a lost update would drop one), and a VM in the subscription `doomed` made and
removed again while writer 0 removes and adds `doomed` back (a resource must never be left in a removed one).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

from enforcer.cli.main import main
from enforcer.state.etcd_store import EtcdStore

CONFLICTS = 0


def counted(attempt):  # type: ignore[no-untyped-def]
    """EtcdStore._attempt, counting the transactions that met a conflict (and were run again): the test asks that
    the writers did collide."""
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        global CONFLICTS
        outcome = attempt(*args, **kwargs)
        CONFLICTS += outcome is None
        return outcome
    return wrapper


EtcdStore._attempt = counted(EtcdStore._attempt)  # type: ignore[method-assign]


def run(url: str, *args: str) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(["--state", url, *args])
    if code not in (0, 2):
        raise SystemExit(f"enforcer {' '.join(args)} -> {code}: {err.getvalue()}")
    return code


def main_() -> None:
    url, index, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    done: dict[str, list[str] | int] = {"added": [], "subnets": [], "refused": 0}
    for k in range(rounds):
        name = f"w{index}-{k}"
        if run(url, "vm", "add", name, "--subscription", "shared", "--address", f"198.18.1.{(index * 7 + k) % 20}"):
            done["refused"] += 1  # type: ignore[operator]
        else:
            done["added"].append(name)  # type: ignore[union-attr]
        subnet = f"s{index}-{k}"
        if run(url, "vnet", "subnet-add", "net", subnet, f"198.18.{128 + index * rounds + k}.0/24") == 0:
            done["subnets"].append(subnet)  # type: ignore[union-attr]
        if index == 0:
            run(url, "subscription", "remove", "doomed")
            run(url, "subscription", "add", "doomed", "--type", "payg")
        elif run(url, "vm", "add", f"d{name}", "--subscription", "doomed", "--address", f"198.18.3.{index}") == 0:
            run(url, "vm", "remove", f"d{name}")
    print(json.dumps({**done, "conflicts": CONFLICTS}))


if __name__ == "__main__":
    main_()
