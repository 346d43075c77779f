"""`enforcer lab demo --fleet`: the fleet lab (3 gateways on a 3-member etcd cluster of its own), every resource's
deliveries as its own gateway judges them, then the fleet's story with real deliveries: an exemption granted once
is live on every gateway after the restart, committed while the etcd leader lies killed; a gateway cut off from
etcd keeps judging with its last table, misses a change, and catches up within seconds of the cut being healed,
after a compaction during the cut. Each step says what happened and how long it took, and checks that it did: a
failed check is named, and the demo exits 1.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from ..core import lifecycle
from ..core.inventory import Inventory
from ..errors import Failure
from . import story
from .demo import Demo
from .explain import drops
from .fleet import FleetLab, check_fleet, shares
from .namespace_lab import Attempt, NamespaceLab, wait_for

GATEWAYS, MEMBERS = 3, 3
ACCOUNT, VM = "devtest-lab", "devtest-vm"  # the story's account (Enterprise Dev/Test: exempted by the diagnostic)
EXPLAINED = 2.0                            # seconds the gateways may take to log the drops they explain
CUT_NOTICED = 15.0                         # seconds a cut gateway may take to say it is not connected
WATCH_LOST = 30.0                          # seconds gRPC's keepalive may take to end a silent watch stream
CATCH_UP = 15.0                            # seconds a healed gateway may take to hold the state's last change


class FleetDemo(Demo):
    def __init__(self, lab_file: Path | None, console: Console, timeout: float,
                 gateways: int = GATEWAYS, members: int = MEMBERS):
        super().__init__(lab_file, console, timeout)
        check_fleet(gateways, members, self.doc)
        self.gateways, self.members = gateways, members
        self.failed: list[str] = []
        resources = {str(r["name"]): r for r in self.doc.get("resources") or []}
        # the account a resource's SYN is judged by: its own, or that of the appliance it leaves through
        self.judged_by = {name: str(resources.get(str(r.get("egress")), r)["subscription"])
                          for name, r in resources.items()}
        self.blocked_counts: dict[str, set[str]] = {}

    def make_lab(self, directory: Path, tag: str) -> NamespaceLab:
        return FleetLab(directory, self.internet, tag, self.gateways, self.members, shares(self.doc, self.gateways))

    def show(self, lab: NamespaceLab) -> None:
        assert isinstance(lab, FleetLab)
        for g in lab.gateways:
            self.console.print(f"  {g.name} ({g.namespace}): serves {', '.join(sorted(self.served(lab, g.name)))}")
        self.console.print(f"  etcd: {', '.join(f'{m.name} {m.endpoint}' for m in lab.cluster.members)}; the state "
                           f"{lab.state}")
        self.table(lab)
        self.judged_once(lab)
        self.fleet_story(lab)
        if self.failed:
            self.console.print(f"\n[red]failed check(s)[/]: {'; '.join(self.failed)}")

    @staticmethod
    def served(lab: FleetLab, gateway: str) -> list[str]:
        return [vm for vm, g in lab.topology.serving.items() if g.name == gateway]

    def attribute(self, lab: NamespaceLab, attempts: list[Attempt], outcomes: list[str]) -> list[str]:
        """As Demo's, once every time-out's drop is in its gateway's log or a few seconds passed: a gateway explains
        its drops off the packet path, reading the state from etcd, a little later than one on SQLite."""
        timeouts = [a for a, outcome in zip(attempts, outcomes, strict=True) if outcome == "timeout"]

        def explained() -> bool:
            dropped = self.dropped(lab)
            return all(any((src, dst, port) in dropped for src in lab.topology.vms[vm].addresses)
                       for vm, dst, port in timeouts)
        wait_for(explained, EXPLAINED)
        assert isinstance(lab, FleetLab)
        self.blocked_counts = {g.name: {v["subscription"] for v in (lab.status_of(g.name) or {}).get("verdicts", [])
                                        if v["verdict"] == "blocked"} for g in lab.gateways}
        return super().attribute(lab, attempts, outcomes)

    def counted_blocked(self, lab: NamespaceLab, vm: str) -> bool:
        """A gateway explains its drops within a time budget (each explanation reads the state, from etcd here):
        past it, a drop is counted, not explained. A time-out is the enforcer's too where the VM's own gateway
        counted a block of the account it is judged by."""
        return self.judged_by[vm] in self.blocked_counts.get(lab.gateway_of(vm), set())

    # ------------------------------------------------------------ checks

    def check(self, name: str, ok: bool, said: str = "") -> bool:
        """One check of the story: said when it holds, named (and counted) when it does not."""
        if ok:
            self.console.print(f"    [green]ok[/] {name}{f': {said}' if said else ''}", highlight=False)
        else:
            self.failures += 1
            self.failed.append(name)
            self.console.print(f"    [red]FAILED[/] {name}{f': {said}' if said else ''}", highlight=False)
        return ok

    def judged_once(self, lab: FleetLab) -> None:
        """Each SYN crossed one gateway's queue, its own: every drop a gateway logged is of a resource it serves,
        and every account it counted a verdict for is one of its resources'."""
        accounts = self.judged_by
        for g in lab.gateways:
            mine = set(self.served(lab, g.name))
            dropped = {str(record.get("resource")) for record in drops(lab.log_of(g.name))}
            live = lab.status_of(g.name) or {}
            counted = {v["subscription"] for v in live.get("verdicts", [])}
            strangers = sorted((dropped - mine) | (counted - {accounts[vm] for vm in mine}))
            self.check(f"{g.name} judged only its own resources' SYNs", not strangers and bool(counted),
                       f"{len(dropped)} resource(s) dropped, {len(counted)} account(s) judged"
                       + (f"; not its own: {', '.join(strangers)}" if strangers else ""))

    # ------------------------------------------------------------ the story

    def fleet_story(self, lab: FleetLab) -> None:
        gateway = lab.gateway_of(VM)
        self.console.print(f"\n[bold]The fleet's story[/]: one policy in etcd, {len(lab.gateways)} gateways "
                           f"following it; {VM} is behind {gateway}")
        self.step(lab, story.Try(f"{VM} ({ACCOUNT}), before the diagnostic", VM, (25,), "timeout"))
        self.change(lab, f"diagnose {ACCOUNT}", lifecycle.run_diagnostic, ACCOUNT)
        self.step(lab, story.Try(f"{VM}, still running with its old policy", VM, (25,), "timeout"))

        self.console.print("\n  [bold]the etcd leader killed (SIGKILL)[/]")
        leader = lab.cluster.leader()
        if not self.check("the cluster has a leader", leader is not None):
            return
        assert leader is not None
        lab.cluster.kill(leader)
        self.console.print(f"    {leader.name} killed; the change sent at once, while the others elect a leader")
        # committed once a new leader is elected: the store tries the next member again (etcd_client)
        self.change(lab, f"vm restart {VM}", lifecycle.restart, VM)
        successor = wait_for(lambda: lab.cluster.leader(), 15.0)
        self.check("a new leader is elected", successor is not None and successor is not leader,
                   f"{successor.name if successor else 'none'} ({leader.name} killed)")
        self.step(lab, story.Try(f"{VM} after the restart: the exemption, live on every gateway", VM, (25,),
                                 "delivered"))
        started = time.monotonic()
        lab.cluster.start_member(leader)
        try:
            lab.cluster.wait_healthy(30.0, [leader])
            self.check(f"{leader.name} started again on its data", True,
                       f"healthy in {time.monotonic() - started:.2f} s")
        except Failure as e:
            self.check(f"{leader.name} started again on its data", False, str(e))

        self.cut_story(lab, gateway)

    def cut_story(self, lab: FleetLab, gateway: str) -> None:
        self.console.print(f"\n  [bold]{gateway} cut off from etcd[/] (enforcer lab partition {gateway}: every packet "
                           "on its control link dropped)")
        before = lab.status_of(gateway) or {}
        started = time.monotonic()
        lab.partition(gateway, True)
        noticed = wait_for(lambda: (lab.status_of(gateway) or {}).get("connected") is False, CUT_NOTICED)
        self.check(f"{gateway} says it is not connected", bool(noticed),
                   f"after {time.monotonic() - started:.2f} s (no word from etcd)" if noticed else
                   f"still connected after {CUT_NOTICED:g} s")
        # silence alone leaves the watch stream open (a short cut resumes it, nothing missed); gRPC's keepalive
        # ends it: only then does the gateway have to watch again, from a revision the compaction below removes
        log, lines = lab.log_of(gateway), lost_lines(lab.log_of(gateway))
        lost = wait_for(lambda: lost_lines(log) > lines, WATCH_LOST)
        self.check(f"{gateway} lost its watch", bool(lost),
                   f"after {time.monotonic() - started:.2f} s (its log: etcd: connected=false)" if lost else
                   f"its log says nothing of it after {WATCH_LOST:g} s")
        self.change(lab, f"exemption revoke {ACCOUNT}", lifecycle.revoke_exemption, ACCOUNT,
                    gateways=[g.name for g in lab.gateways if g.name != gateway])
        self.change(lab, f"vm restart {VM}", lifecycle.restart, VM,
                    gateways=[g.name for g in lab.gateways if g.name != gateway])
        generation = lab.generation()
        live = lab.status_of(gateway) or {}
        self.check(f"{gateway} missed it, and says it is stale",
                   live.get("generation") == before.get("generation") and live.get("generation", 0) < generation
                   and live.get("connected") is False and live.get("stale_seconds", 0) > 0,
                   f"its table at generation {live.get('generation')}, the state at {generation}; connected="
                   f"{str(live.get('connected')).lower()}, stale {live.get('stale_seconds')} s")
        self.step(lab, story.Try(f"{VM} behind the cut {gateway}: its last table still exempts it", VM, (25,),
                                 "delivered"))
        compacted = lab.cluster.compact()
        self.check("etcd compacted during the cut", True, f"history up to revision {compacted} gone")
        relists = live.get("relists", 0)
        started = time.monotonic()
        lab.partition(gateway, False)
        took = lab.wait_gateways(generation, [gateway], CATCH_UP)[gateway]
        live = lab.status_of(gateway) or {}
        self.check(f"{gateway} caught up once the cut healed", took is not None and live.get("connected") is True,
                   f"in {time.monotonic() - started:.2f} s, at generation {live.get('generation')}, after a relist "
                   f"({live.get('relists', 0) - relists} more)" if took is not None else
                   f"not within {CATCH_UP:g} s: its table at generation {live.get('generation')}, the state at "
                   f"{generation}")
        self.check(f"{gateway} relisted after the compaction", live.get("relists", 0) > relists)
        self.step(lab, story.Try(f"{VM} behind {gateway}, caught up: the revocation enforced", VM, (25,),
                                 "timeout"))

    def change(self, lab: FleetLab, words: str, operation: Callable[..., tuple[Inventory, list[str]]], *args: Any,
               gateways: list[str] | None = None) -> None:
        """`enforcer WORDS` on the fleet's state in etcd, then the wait until every gateway (or those named) holds
        it, each gateway's time said."""
        self.console.print(f"  [bold]$ enforcer --state {lab.state} {words}[/]")
        started = time.monotonic()
        lines = lab.change(f"enforcer {words}", operation, *args)
        committed = time.monotonic() - started
        for line in lines:
            self.console.print(f"    [dim]{line}[/]", highlight=False)
        generation = lab.generation()
        took = lab.wait_gateways(generation, gateways)
        late = sorted(name for name, seconds in took.items() if seconds is None)
        self.check(f"'{words}' committed and applied by {'every gateway' if gateways is None else ', '.join(gateways)}",
                   not late, f"committed in {committed:.2f} s (revision {generation}); applied by "
                   + ", ".join(f"{name} in {seconds:.2f} s" if seconds is not None else f"{name} NOT in time"
                               for name, seconds in sorted(took.items())))


def lost_lines(log: Path) -> int:
    """How many times a gateway's log says its watch was lost."""
    return log.read_text(errors="replace").count("etcd: connected=false (") if log.exists() else 0


def run_fleet_demo(lab_file: Path | None, console: Console, timeout: float = 2.5) -> int:
    return FleetDemo(lab_file, console, timeout).run()
