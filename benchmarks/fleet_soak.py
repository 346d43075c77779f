"""Fleet soak: three gateways following one policy in a real 3-member etcd cluster, a SYN stream through each, a
policy change every second, the etcd leader killed every minute and one gateway cut off from etcd for 20 s every
two; every SYN counted against the policy the gateway that judged it says it holds. Not a test (bounded, not in CI);
run as root:

    .venv/bin/python -m benchmarks.fleet_soak [--minutes 10] [--rate 200] [--quick]

It builds the fleet lab of vagrant/lab.yml (enforcer.lab.fleet.FleetLab: `lab up --gateways 3 --etcd-members 3`,
in network namespaces, addresses from 198.18.0.0/15 and 2001:db8::/32 only, all removed at the end). Behind each
gateway, VMs whose policy never changes send SYNs to the internet host's port 25 the whole time (`--rate` per
second each), and one probe VM whose policy the soak changes: mcae-vm (gw1: stopped, started), shop-relay (gw2:
stopped, started) and devtest-vm (gw3: the diagnostic or the exemption revoked, then its restart). Every second
one probe's policy changes, in turns, through the store as the CLI changes it. The soak waits (3 s at most) until
each gateway that is not cut off holds the change, then asks every gateway which generation it holds, sends a burst
from each probe, and asks again: a burst judged while its gateway held one generation has one right verdict, the
probe's at that generation. A counter per source address in the internet host's namespace sees every SYN that
arrives.

stale = SYNs of a burst whose verdict is not the one of the generation its gateway held (a gateway judging with a
table older, or newer, than it says); misjudged = SYNs of the steady VMs against their one verdict. The figures to
reach are 0 and 0, with 0 kernel queue drops on every gateway, while the cut-off gateway keeps its last table (its
bursts are judged by its old generation, and checked against it) and catches up after each heal.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from enforcer.core import lifecycle
from enforcer.errors import Failure, UserError
from enforcer.lab.files import DEFAULT_LAB, resources_of
from enforcer.lab.fleet import FleetLab, shares

from .soak import Sender, arrivals, count_arrivals, namespaces_missing

GATEWAYS = ("gw1", "gw2", "gw3")
# per gateway: the VMs whose verdict never changes (VM -> allowed), and its probe with the changes that flip it
STEADY = {"gw1": {"ea-vm": True}, "gw2": {"shop-web": False}, "gw3": {"devtest-ase": False}}
PROBE = {"gw1": "mcae-vm", "gw2": "shop-relay", "gw3": "devtest-vm"}
INITIAL = {"mcae-vm": True, "shop-relay": True, "devtest-vm": False}
LEADER_EVERY, LEADER_DOWN = 60.0, 10.0      # seconds between leader kills; how long the killed member stays down
CUT_EVERY, CUT_FOR = 120.0, 20.0            # seconds between partitions of one gateway; how long each lasts
BURST, BURST_RATE = 50, 1000.0              # SYNs per probe burst, sent at this rate
APPLIED_WAIT = 3.0                           # seconds the soak waits for the connected gateways to apply a change


Step = tuple[str, Callable[..., Any], tuple[Any, ...]]  # a command's words, its operation, its arguments


def change_of(probe: str, allow: bool) -> list[Step]:
    """The commands that give `probe` the verdict `allow`. The Dev/Test VM the platform's way: the diagnostic (or the
    exemption revoked), then its restart, which alone picks the new policy up (devtest-ase, never restarted, keeps
    the policy it pulled: blocked throughout)."""
    if probe == "devtest-vm":
        first: Step = ("enforcer diagnose devtest-lab", lifecycle.run_diagnostic, ("devtest-lab",)) if allow else \
            ("enforcer exemption revoke devtest-lab", lifecycle.revoke_exemption, ("devtest-lab",))
        return [first, ("enforcer vm restart devtest-vm", lifecycle.restart, (probe,))]
    if allow:
        return [(f"enforcer vm start {probe}", lifecycle.start, (probe,))]
    return [(f"enforcer vm stop {probe}", lifecycle.stop, (probe,))]


@dataclass
class History:
    """The probes' verdicts from each generation on (the soak is the only writer: a change's generation is the
    store's right after it)."""
    steps: list[tuple[int, dict[str, bool]]] = field(default_factory=list)

    def record(self, generation: int, verdicts: dict[str, bool]) -> None:
        self.steps.append((generation, dict(verdicts)))

    def at(self, generation: int) -> dict[str, bool] | None:
        """The probes' verdicts at `generation`; None before the first recorded one."""
        found = None
        for g, verdicts in self.steps:
            if g > generation:
                break
            found = verdicts
        return found


@dataclass
class Tally:
    bursts: int = 0
    straddled: int = 0         # a burst during which its gateway's generation moved: no single right verdict
    sent: int = 0
    stale: int = 0
    behind: int = 0            # bursts judged by a cut-off gateway's older generation (checked, and allowed)
    changes: int = 0
    failed_changes: list[str] = field(default_factory=list)
    apply_ms: list[float] = field(default_factory=list)   # commit to the slowest connected gateway's apply
    catch_up_s: list[float] = field(default_factory=list)  # heal to the cut gateway's holding the head
    leader_kills: int = 0
    cuts: int = 0


@contextmanager
def fleet_lab(prefix: str) -> Iterator[FleetLab]:
    doc = yaml.safe_load(DEFAULT_LAB.read_text())
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        internet = [str(a) for a in doc["lab"]["internet"]["addresses"]]
        lab = FleetLab(Path(tmp), internet, f"p25s{int(time.time()) % 100000}", len(GATEWAYS), 3,
                       shares(doc, len(GATEWAYS)))
        try:
            lab.apply(str(DEFAULT_LAB), doc)
            lab.up(resources_of(doc))
            lab.start_daemons()
            yield lab
        finally:
            lab.close()


def check_topology(lab: FleetLab) -> None:
    serving = {vm: g.name for vm, g in lab.topology.serving.items()}
    for gw in GATEWAYS:
        for vm in [*STEADY[gw], PROBE[gw]]:
            if serving.get(vm) != gw:
                raise SystemExit(f"fleet_soak: {vm} is behind {serving.get(vm)}, not {gw}: the lab file's VNets "
                                 "changed; update STEADY and PROBE")


def generations(lab: FleetLab) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for gw in GATEWAYS:
        live = lab.status_of(gw)
        out[gw] = None if live is None else int(live["generation"])
    return out


class Faults:
    """The leader SIGKILLed every LEADER_EVERY s (started again on its data LEADER_DOWN s later); one gateway cut
    off from every member CUT_FOR s every CUT_EVERY s, the gateways in turns (the time it takes to hold the head
    again after each heal measured)."""

    def __init__(self, lab: FleetLab, started: float, tally: Tally):
        self.lab, self.tally = lab, tally
        self.next_kill, self.next_cut = started + LEADER_EVERY, started + CUT_EVERY / 2
        self.killed: tuple[Any, float] | None = None   # (member, when to start it again)
        self.cut: tuple[str, float] | None = None      # (gateway, when to heal it)

    @property
    def cut_off(self) -> str | None:
        return self.cut[0] if self.cut else None

    def step(self, now: float) -> None:
        lab, tally = self.lab, self.tally
        if self.killed is None and now >= self.next_kill:
            leader = lab.cluster.leader()
            if leader is not None:
                lab.cluster.kill(leader)
                self.killed, tally.leader_kills = (leader, now + LEADER_DOWN), tally.leader_kills + 1
            self.next_kill += LEADER_EVERY
        elif self.killed is not None and now >= self.killed[1]:
            lab.cluster.start_member(self.killed[0])
            self.killed = None
        if self.cut is None and now >= self.next_cut:
            gw = GATEWAYS[tally.cuts % len(GATEWAYS)]
            lab.partition(gw, True)
            self.cut, tally.cuts, self.next_cut = (gw, now + CUT_FOR), tally.cuts + 1, self.next_cut + CUT_EVERY
        elif self.cut is not None and now >= self.cut[1]:
            self.heal()

    def heal(self) -> None:
        assert self.cut is not None
        gw, self.cut = self.cut[0], None
        self.lab.partition(gw, False)
        healed = time.monotonic()
        if self.lab.wait_gateways(gateways=[gw], timeout=30.0)[gw] is not None:
            self.tally.catch_up_s.append(time.monotonic() - healed)

    def end(self) -> None:
        if self.cut is not None:
            self.heal()
        if self.killed is not None:
            self.lab.cluster.start_member(self.killed[0])
            self.killed = None


def change_probe(lab: FleetLab, gw: str, verdicts: dict[str, bool], history: History, tally: Tally,
                 cut_off: str | None, since: float) -> None:
    """Flip `gw`'s probe through the store, record the generation it committed at, and wait (briefly) for every
    gateway that is not cut off to hold it."""
    probe = PROBE[gw]
    steps = change_of(probe, not verdicts[probe])
    for i, (words, operation, args) in enumerate(steps):
        try:
            lab.change(f"soak: {words}", operation, *args)
        except (Failure, UserError) as e:  # the next turn flips it from wherever it is
            tally.failed_changes.append(f"{time.monotonic() - since:.0f} s: {words}: {e}")
            return
        if i == len(steps) - 1:
            verdicts[probe] = not verdicts[probe]
        generation = lab.generation()
        history.record(generation, verdicts)
        tally.changes += 1
    took = lab.wait_gateways(generation, [g for g in GATEWAYS if g != cut_off], timeout=APPLIED_WAIT)
    if all(t is not None for t in took.values()):
        tally.apply_ms.append(max(t for t in took.values() if t is not None) * 1000)


def soak(lab: FleetLab, seconds: float, rate: float) -> tuple[Tally, dict[str, tuple[int, int, bool]]]:
    check_topology(lab)
    steady = {vm: Sender(lab, vm, i) for i, vm in enumerate(vm for gw in GATEWAYS for vm in STEADY[gw])}
    probes = {gw: Sender(lab, PROBE[gw], 90 + i) for i, gw in enumerate(GATEWAYS)}
    count_arrivals(lab, [s.src for s in [*steady.values(), *probes.values()]])
    history, tally, verdicts = History(), Tally(), dict(INITIAL)
    history.record(lab.generation(), verdicts)
    started = time.monotonic()
    faults = Faults(lab, started, tally)
    turn = 0
    while (now := time.monotonic()) < started + seconds:
        for s in steady.values():  # one second of the steady stream, across the change and the faults
            s.start(int(rate), rate)
        faults.step(now)
        change_probe(lab, GATEWAYS[turn % len(GATEWAYS)], verdicts, history, tally, faults.cut_off, started)
        turn += 1
        burst(lab, probes, history, tally)
        for s in steady.values():
            s.wait()
        time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
    faults.end()
    time.sleep(1.0)  # the last SYNs on their way
    seen = arrivals(lab)
    counted = {vm: (steady[vm].sent, seen.get(steady[vm].src, 0), allowed)
               for gw in GATEWAYS for vm, allowed in STEADY[gw].items()}
    return tally, counted


def burst(lab: FleetLab, probes: dict[str, Sender], history: History, tally: Tally) -> None:
    """A burst from every probe, each checked against the generation its gateway held throughout."""
    before, seen0 = generations(lab), arrivals(lab)
    for s in probes.values():
        s.start(BURST, BURST_RATE)
    sent = {gw: s.wait() for gw, s in probes.items()}
    time.sleep(0.05)  # the last SYN of the burst through the gateway
    seen1, after = arrivals(lab), generations(lab)
    head = history.steps[-1][0]
    for gw, s in probes.items():
        tally.bursts += 1
        tally.sent += sent[gw]
        g = before[gw]
        if g is None or g != after[gw]:
            tally.straddled += 1
            continue
        verdicts = history.at(g)
        if verdicts is None:
            tally.straddled += 1
            continue
        if g < head:
            tally.behind += 1
        arrived = seen1.get(s.src, 0) - seen0.get(s.src, 0)
        tally.stale += abs((sent[gw] if verdicts[s.vm] else 0) - arrived)


def report(tally: Tally, counted: dict[str, tuple[int, int, bool]], lab_live: dict[str, Any], seconds: float) -> int:
    print(f"{'steady source':14} {'sent':>9} {'expected':>9} {'arrived':>9} {'misjudged':>9}")
    misjudged = 0
    for vm, (sent, arrived, allowed) in counted.items():
        expected = sent if allowed else 0
        misjudged += abs(expected - arrived)
        print(f"{vm:14} {sent:9,} {expected:9,} {arrived:9,} {abs(expected - arrived):9,}")
    drops = sum(q.get("queue_dropped", 0) + q.get("user_dropped", 0)
                for live in lab_live.values() for q in (live or {}).get("kernel_queues", {}).values())
    print(f"duration {seconds:.0f} s; {tally.changes} policy changes ({len(tally.failed_changes)} failed), "
          f"{tally.leader_kills} leader kills, {tally.cuts} gateway cuts")
    print(f"probe bursts: {tally.bursts} ({tally.sent:,} SYNs), {tally.straddled} straddling a generation change "
          f"(not judged), {tally.behind} judged by a cut-off gateway's older table")
    if tally.apply_ms:
        ms = sorted(tally.apply_ms)
        print(f"commit to the slowest connected gateway's apply (ms): p50 {statistics.median(ms):.0f}, "
              f"p99 {ms[min(len(ms) - 1, int(len(ms) * 0.99))]:.0f}, max {ms[-1]:.0f}")
    if tally.catch_up_s:
        print(f"heal to the cut gateway holding the head (s): max {max(tally.catch_up_s):.2f}")
    for line in tally.failed_changes[:10]:
        print(f"  change failed at {line}")
    print(f"kernel queue drops: {drops}")
    ok = tally.stale == 0 and misjudged == 0 and drops == 0
    print(f"stale: {tally.stale}, misjudged: {misjudged}  ({'PASS' if ok else 'FAIL'}: the figures to reach are 0)")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=200.0, help="SYNs per second from each steady VM")
    ap.add_argument("--quick", action="store_true", help="two and a half minutes (a leader kill and a cut)")
    args = ap.parse_args(argv)
    if namespaces_missing("benchmarks.fleet_soak"):
        return 2
    seconds = 150.0 if args.quick else args.minutes * 60
    with fleet_lab("enforcer-fleet-soak-") as lab:
        tally, counted = soak(lab, seconds, args.rate)
        live = {gw: lab.status_of(gw) for gw in GATEWAYS}
    return report(tally, counted, live, seconds)


if __name__ == "__main__":
    sys.exit(main())
