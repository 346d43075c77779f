"""One of the 4 concurrent writers of test_etcd_faults.py: `python etcd_fault_writer.py URL INDEX N`, N changes on
one resource set every writer shares; prints each command it ran, its exit code and whether it changed the state
(JSON), for the test to find every change that was told it succeeded in the audit log, in order.

Its commands, in turn: a VM of its own on an address of a small shared pool (refused while another holds it), a
shared VM stopped or started (another writer may have done it: "already" changes nothing), a shared Dev/Test
subscription exempted by its diagnostic or its exemption revoked (the same: "already", or refused), a subnet on
the shared VNet (a read-modify-write of one row), and the subscription `doomed` removed and added back (writers 0
and 2) while writers 1 and 3 make a VM in it and remove it (a resource must never be left in a removed
subscription); its own VM removed again two rounds later.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys



def run(url: str, *args: str) -> tuple[int, str]:
    from enforcer.cli.main import main
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(["--state", url, *args])
    if code not in (0, 2):
        raise SystemExit(f"enforcer {' '.join(args)} -> {code}: {err.getvalue()}")
    return code, out.getvalue()


def commands(index: int, n: int) -> list[list[str]]:
    """What writer `index` runs, n commands (pure: the test knows them too)."""
    out: list[list[str]] = []
    k = 0
    while len(out) < n:
        name = f"w{index}-{k}"
        out.append(["vm", "add", name, "--subscription", "shared", "--address", f"198.18.1.{(index * 7 + k) % 12}"])
        out.append(["vm", "stop" if (index + k) % 2 else "start", f"sv{(index + k) % 3}"])
        exempted = f"dt{(index + k // 2) % 2}"
        out.append(["diagnose", exempted] if k % 2 == 0 else ["exemption", "revoke", exempted])
        out.append(["vnet", "subnet-add", "net", f"s{index}-{k}", f"198.18.{64 + index * 48 + k}.0/24"])
        if index % 2 == 0:
            out.append(["subscription", "remove" if k % 2 == index // 2 else "add", "doomed", "--type", "payg"][
                       :3 if k % 2 == index // 2 else 5])
        else:
            out.append(["vm", "add", f"d{name}", "--subscription", "doomed", "--address", f"198.18.3.{index}"])
            out.append(["vm", "remove", f"d{name}"])
        if k >= 2:
            out.append(["vm", "remove", f"w{index}-{k - 2}"])
        k += 1
    return out[:n]


def main_() -> None:
    import etcd_writer  # counts the conflicts (EtcdStore._attempt wrapped): in the writer's process only
    url, index, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    done = []
    for args in commands(index, n):
        code, said = run(url, *args)
        done.append({"args": args, "code": code, "changed": code == 0 and "already" not in said})
    print(json.dumps({"done": done, "conflicts": etcd_writer.CONFLICTS}))


if __name__ == "__main__":
    main_()
