"""Kill and restart cycles: does a blocked VM get through while the daemon is killed, and does a clean stop leave
any rule behind? Not a test (bounded, not in CI); run as root:

    .venv/bin/python -m benchmarks.cycles [--kills 20] [--stops 60] [--syns 300]

The lab of vagrant/lab.yml in network namespaces (NamespaceLab; removed at the end). Kill cycles, with
`--when-down block`: start the daemon, kill it with SIGKILL, and while it is down send `--syns` SYNs from
shop-web (Pay-As-You-Go, blocked) and from ea-vm (EA, allowed): with the rules left in place and nobody behind
them, none of either may arrive. Stop cycles: start the daemon, stop it with SIGTERM, and count the project's
rule lines left in the gateway (none may be).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time


from enforcer.lab.namespace_lab import NamespaceLab
from enforcer.lab.netns import can_build_namespaces

from .soak import Sender, arrivals, count_arrivals, default_lab


def project_rules(lab: NamespaceLab) -> list[str]:
    lines = []
    for tool in ("iptables-save", "ip6tables-save"):
        lines += [line for line in lab.in_gateway([tool]).stdout.splitlines()
                  if "P25-ENFORCER" in line or "P25-DEFRAG" in line or "port25-enforcer" in line]
    return lines


def stop(lab: NamespaceLab, sig: int) -> int:
    proc, lab.daemon = lab.daemon, None
    assert proc is not None
    proc.send_signal(sig)
    return proc.wait(30)


def kill_cycles(lab: NamespaceLab, cycles: int, syns: int) -> dict[str, int]:
    senders = {vm: Sender(lab, vm, i) for i, vm in enumerate(("shop-web", "ea-vm"))}
    count_arrivals(lab, [s.src for s in senders.values()])
    rules_missing = 0
    for _ in range(cycles):
        lab.start_daemon("--when-down", "block")
        stop(lab, signal.SIGKILL)
        time.sleep(0.3)  # the worker follows its parent (PR_SET_PDEATHSIG)
        rules_missing += not project_rules(lab)
        for s in senders.values():
            s.start(syns, 2000)
        for s in senders.values():
            s.wait()
    time.sleep(0.5)
    seen = arrivals(lab)
    return {"cycles": cycles, "rules_missing_after_kill": rules_missing,
            **{f"{vm}_sent": s.sent for vm, s in senders.items()},
            **{f"{vm}_arrived": seen.get(s.src, 0) for vm, s in senders.items()}}


def stop_cycles(lab: NamespaceLab, cycles: int) -> dict[str, int]:
    leaked = nonzero = 0
    for _ in range(cycles):
        lab.start_daemon()
        nonzero += stop(lab, signal.SIGTERM) != 0
        leaked += len(project_rules(lab))
    return {"cycles": cycles, "rule_lines_left": leaked, "unclean_exits": nonzero}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--stops", type=int, default=60)
    ap.add_argument("--syns", type=int, default=300, help="SYNs from each VM while the daemon is down, per cycle")
    args = ap.parse_args(argv)
    why = can_build_namespaces()
    if why:
        print(f"python -m benchmarks.cycles {why}", file=sys.stderr)
        return 2
    with default_lab("enforcer-cycles-") as lab:
        kills = kill_cycles(lab, args.kills, args.syns)
        stops = stop_cycles(lab, args.stops)
    print("kill -9 cycles (--when-down block):", ", ".join(f"{k} {v:,}" for k, v in kills.items()))
    print("start/stop cycles (SIGTERM):", ", ".join(f"{k} {v:,}" for k, v in stops.items()))
    held = kills["shop-web_arrived"] == 0 and kills["ea-vm_arrived"] == 0 and not kills["rules_missing_after_kill"]
    clean = stops["rule_lines_left"] == 0 and stops["unclean_exits"] == 0
    print(f"{'PASS' if held and clean else 'FAIL'}: nothing passed while the daemon was down; "
          f"{stops['rule_lines_left']} rule lines left after clean stops")
    return 0 if held and clean else 1


if __name__ == "__main__":
    sys.exit(main())
