"""`enforcer lab demo`: a lab file's lab in network namespaces, real SMTP deliveries from every resource to ports
25, 465 and 587, a table of what happened next to what the lab file expects, then the profile's exemption story
(story.py), then teardown. `--all` runs every provider's lab in turn and sums them up in one table.
Exits non-zero if any outcome differs from what the lab file expects.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..core import lifecycle
from ..core.converge import converge
from ..core.inventory import Inventory
from ..errors import UserError
from ..state.profiles import load_profile
from . import story
from .files import SINK_PORTS, SMTP_PORTS, dns_of, every_lab, port_expectations, read_lab, relay_of, resources_of
from .namespace_lab import Attempt, LabError, NamespaceLab
from .netns import can_build_namespaces

SPEC_OUTCOME = {"allowed": "delivered", "blocked": "timeout"}
READY_WAIT = 30.0      # seconds the lab may take until every path delivers
LAB_FAULT = "lab fault"  # a time-out the enforcer did not cause
EXIT_DIFFERS, EXIT_LAB_NOT_READY = 1, 3


@dataclass
class Row:
    """One resource's line of the table: what each port did, and whether that is what the lab file expects."""
    resource: str
    type_name: str
    cells: dict[int, str]
    ok: bool


@dataclass
class Findings:
    """What one provider's demo found: its table, its story, and the exit status it ends with."""
    profile: str
    rows: list[Row] = field(default_factory=list)
    story_steps: int = 0
    story_failures: int = 0
    code: int = 0


class Demo:
    def __init__(self, lab_file: Path | None, console: Console, timeout: float):
        self.path, self.doc, self.internet, _ = read_lab(lab_file)
        self.resources = resources_of(self.doc)
        self.profile = load_profile(str(self.doc.get("profile", "azure")))
        self.expect = port_expectations(self.path, self.doc)
        self.relay = relay_of(self.path, self.doc)
        self.records = dns_of(self.path, self.doc)
        missing = sorted(set(self.resources) - set(self.expect))
        if missing:
            raise UserError(f"{self.path}: lab.expect says nothing of {', '.join(missing)}; add what the spec "
                            "expects of each (allowed or blocked)")
        self.ready_port = story.open_port(self.profile)  # no policy blocks it: a delivery there proves the path
        self.console = console
        self.timeout = timeout
        self.failures = 0
        self.lab_faults: list[str] = []
        self.outcome = Findings(self.profile.id)

    def run(self) -> int:
        why = can_build_namespaces()
        if why:
            raise UserError(f"enforcer lab demo {why}; run it as root")
        self.outcome.code = self.run_lab()
        return self.outcome.code

    def run_lab(self) -> int:
        with tempfile.TemporaryDirectory(prefix="enforcer-demo-") as tmp:
            os.chmod(tmp, 0o711)  # the lab's Postfix (demo --mta) runs as its own user and must reach its files
            lab = self.make_lab(Path(tmp), f"p25demo{uuid.uuid4().hex[:4]}")
            lab.relay, lab.records = self.relay, self.records
            try:
                self.build(lab)
                not_ready = self.wait_until_ready(lab)
                if not_ready:
                    self.console.print(f"\n[yellow]lab not ready[/]: after {READY_WAIT:g} s these paths still deliver "
                                       f"nothing on port {self.ready_port}, which no policy blocks: "
                                       f"{', '.join(f'{vm} to {dst}' for vm, dst in not_ready)}; this is the lab, "
                                       "not the enforcer: run the demo again")
                    return EXIT_LAB_NOT_READY
                self.show(lab)
            finally:
                lab.close()
        return self.verdict()

    def make_lab(self, directory: Path, tag: str) -> NamespaceLab:
        return NamespaceLab(directory, self.internet, tag=tag)

    def show(self, lab: NamespaceLab) -> None:
        """What the demo shows once the lab is up and ready: every resource's deliveries, then the story."""
        self.table(lab)
        self.exemption_story(lab)

    def verdict(self) -> int:
        if self.lab_faults:
            self.console.print(f"\n[yellow]lab fault[/]: {len(self.lab_faults)} attempt(s) timed out although the "
                               f"enforcer dropped nothing for them ({'; '.join(self.lab_faults[:5])}): the lab lost "
                               "them, not the policy; run the demo again")
            return EXIT_LAB_NOT_READY
        word = "[green]every outcome matches the spec[/]" if not self.failures else \
            f"[red]{self.failures} outcome(s) differ from the spec[/]"
        self.console.print(f"\n{word}")
        return 0 if not self.failures else EXIT_DIFFERS

    def wait_until_ready(self, lab: NamespaceLab) -> list[tuple[str, str]]:
        """Every resource delivers to the internet host on a port no policy blocks, over each of its address
        families, within a bounded wait: a path that is not up yet (an IPv6 neighbour not resolved, say) must
        not be taken for the platform's block. Returns the paths still not ready."""
        pending = sorted({(name, dst) for name, addresses in self.resources.items()
                          for dst in self.destinations(addresses)})
        deadline = time.monotonic() + READY_WAIT
        total = len(pending)
        with self.progress() as p:
            task = p.add_task(f"waiting until every path delivers on port {self.ready_port}", total=total)
            while pending and time.monotonic() < deadline:
                outcomes = lab.smtp_batched([(vm, dst, self.ready_port) for vm, dst in pending],
                                            timeout=self.timeout)
                pending = [path for path, outcome in zip(pending, outcomes, strict=True) if outcome != "delivered"]
                p.update(task, completed=total - len(pending))
                if pending:
                    time.sleep(0.5)
        return pending

    def dropped(self, lab: NamespaceLab) -> set[tuple[str, str, int]]:
        """(source, destination, port) of every SYN the enforcer dropped and logged."""
        time.sleep(0.3)  # the workers write their drop log off the packet path, a few times a second
        found = set()
        for line in (line for log in lab.daemon_logs() for line in log.read_text().splitlines()):
            if line.startswith("{"):
                with contextlib.suppress(ValueError, KeyError):
                    record = json.loads(line)
                    found.add((record["source"], record["destination"], int(record["port"])))
        return found

    def attribute(self, lab: NamespaceLab, attempts: list[Attempt], outcomes: list[str]) -> list[str]:
        """Each time-out stays one only if the enforcer recorded a drop for it; else it is a lab fault."""
        dropped = self.dropped(lab)
        checked = []
        for (vm, dst, port), outcome in zip(attempts, outcomes, strict=True):
            sources = lab.topology.vms[vm].addresses
            if outcome == "timeout" and not any((src, dst, port) in dropped for src in sources) \
                    and not self.counted_blocked(lab, vm):
                self.lab_faults.append(f"{vm} to {dst} port {port}")
                outcome = LAB_FAULT
            checked.append(outcome)
        return checked

    def counted_blocked(self, lab: NamespaceLab, vm: str) -> bool:
        """Whether the enforcer counted a block of `vm` that its drop log did not explain (none here: one gateway
        explains every drop it makes)."""
        return False

    def progress(self) -> Progress:
        return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=self.console, transient=True)

    def build(self, lab: NamespaceLab) -> None:
        with self.progress() as p:
            task = p.add_task("building the lab in network namespaces", total=3)
            lab.apply(self.path, self.doc)
            p.advance(task)
            lab.up(self.resources)
            p.advance(task)
            p.update(task, description="starting the enforcer on the gateway")
            lab.start_daemons()
            p.advance(task)
        ports = ", ".join(map(str, SINK_PORTS[:-1])) + f" and {SINK_PORTS[-1]}"
        n = len(self.resources)
        self.console.print(f"lab up ({self.profile.name}): {n} resource{'s' if n != 1 else ''}, the gateway running "
                           f"[bold]enforcer run[/], an SMTP server on {', '.join(self.internet)} ports {ports}")

    def table(self, lab: NamespaceLab) -> None:
        attempts = [(name, dst, port) for name, addresses in self.resources.items()
                    for dst in self.destinations(addresses) for port in SMTP_PORTS]
        with self.progress() as p:
            task = p.add_task("real SMTP deliveries from every resource", total=len(attempts))
            outcomes = lab.smtp_batched(attempts, timeout=self.timeout,
                                        progress=lambda done: p.update(task, completed=done))
        outcomes = self.attribute(lab, attempts, outcomes)
        results: dict[tuple[str, int], set[str]] = {}
        for (name, _, port), outcome in zip(attempts, outcomes, strict=True):
            results.setdefault((name, port), set()).add(outcome)
        inv_types = self.subscription_types()
        restricted = sorted(self.profile.restricted_ports)
        table = Table(title=f"SMTP from every resource to the internet host (IPv4, and IPv6 where it has one); "
                            f"{self.profile.name} restricts {self.profile.ports_phrase}", title_justify="left")
        fleet = len(lab.topology.routers) > 1  # which gateway judged each resource: a column of its own
        for column in ("resource", *(["gateway"] if fleet else []), f"{self.profile.account_word} type",
                       *map(str, SMTP_PORTS), f"spec says ({', '.join(map(str, restricted))})", ""):
            table.add_column(column)
        for name in self.resources:
            cells = {port: " / ".join(sorted(results[(name, port)])) for port in SMTP_PORTS}
            expected = self.expect[name]
            ok = all(cells[p] == SPEC_OUTCOME[expected[p]] for p in SMTP_PORTS)
            self.failures += not ok
            self.outcome.rows.append(Row(name, inv_types[name], cells, ok))
            table.add_row(name, *([lab.gateway_of(name)] if fleet else []), inv_types[name],
                          *(self.colour(cells[p]) for p in SMTP_PORTS),
                          self.spec_words(expected, restricted),
                          "[green]as the spec says[/]" if ok else "[red]DIFFERS[/]")
        self.console.print(table)

    @staticmethod
    def spec_words(expected: dict[int, str], restricted: list[int]) -> str:
        """What the lab file expects on the profile's restricted ports: one word where they agree."""
        words = {p: expected[p] for p in restricted}
        if len(set(words.values())) == 1:
            return words[restricted[0]]
        return ", ".join(f"{p} {w}" for p, w in words.items())

    def destinations(self, addresses: list[str]) -> list[str]:
        v6 = any(":" in a for a in addresses)
        return [a for a in self.internet if ":" not in a or v6]

    def subscription_types(self) -> dict[str, str]:
        types = {s["name"]: self.profile.type_named(str(s["type"])).name for s in self.doc.get("subscriptions") or []}
        return {str(r["name"]): types.get(r["subscription"], "?") for r in self.doc.get("resources") or []}

    # ------------------------------------------------------------ the exemption story

    def exemption_story(self, lab: NamespaceLab) -> None:
        today = datetime.date.today()
        inv, _ = converge(Inventory(profile=self.profile.id), self.profile, self.doc, self.path, today=today)
        steps = story.plan(self.profile, inv, self.expect, today)
        self.console.print(f"\n[bold]The exemption story[/] ({self.profile.name}: "
                           f"{story.summary(self.profile)}), with real deliveries")
        if not steps:
            self.console.print("  (skipped: no resource of the lab file is blocked by its account)")
        before = self.failures
        for step in steps:
            if isinstance(step, story.Try):
                self.step(lab, step)
            elif isinstance(step, story.Create):
                self.create(lab, step)
            else:
                self.command(lab, step)
        self.outcome.story_steps = sum(isinstance(s, story.Try) for s in steps)
        self.outcome.story_failures = self.failures - before

    def step(self, lab: NamespaceLab, step: story.Try) -> None:
        attempts = [(step.vm, self.internet[0], port) for port in step.ports]
        outcomes = self.attribute(lab, attempts, lab.smtp(attempts, timeout=self.timeout))
        ok = all(outcome == step.expected for outcome in outcomes)
        self.failures += not ok
        mark = "[green]as the spec says[/]" if ok else f"[red]expected {step.expected}[/]"
        said = "  ".join(f"port {port}: {self.colour(o)}" for port, o in zip(step.ports, outcomes, strict=True))
        self.console.print(f"  {step.text:58} {said}  {mark}")

    def command(self, lab: NamespaceLab, run: story.Run) -> None:
        """What `enforcer WORDS` does, done through the lab's store: the line a person would type, then what
        they are told; a step the provider's conditions refuse must fail with its one line."""
        command = f"enforcer {run.words}"
        self.console.print(f"  [bold]$ {command}[/]")
        try:
            lines = lab.change(command, run.operation, *run.args, **run.kwargs)
        except UserError as e:
            mark = "" if run.refused else "  [red]expected it to succeed[/]"
            self.failures += not run.refused
            self.console.print(f"    [dim]refused: {e}[/]{mark}", highlight=False)
            return
        if run.refused:
            self.failures += 1
            self.console.print("    [red]expected a refusal: the account does not meet the provider's "
                               "conditions[/]")
        for line in lines:
            self.console.print(f"    [dim]{line}[/]", highlight=False)
        lab.wait_synced()

    def create(self, lab: NamespaceLab, new: story.Create) -> None:
        link = lab.attach(new.name, [new.address])
        kind = f" --kind {new.kind}" if new.kind != "vm" else ""
        self.command(lab, story.Run(f"vm add {new.name} --subscription {new.subscription}{kind} --address "
                                    f"{new.address} --interface {link}", lifecycle.add_resource,
                                    (new.name, new.subscription, new.kind, [new.address]), {"interface": link}))

    @staticmethod
    def colour(word: str) -> str:
        return {"delivered": "[green]delivered[/]", "timeout": "[red]timeout[/]"}.get(word, f"[yellow]{word}[/]")


def run_demo(lab_file: Path | None, console: Console, timeout: float = 2.5, mta: bool = False) -> int:
    if mta:
        from .mta_demo import MtaDemo
        return MtaDemo(lab_file, console, timeout).run()
    return Demo(lab_file, console, timeout).run()


def run_all(console: Console, timeout: float = 2.5) -> int:
    """Every provider's demo in turn, each in a lab of its own torn down after it, then one summary table.
    Non-zero if any provider's outcomes differ (1), else if any lab was not ready or lost attempts (3)."""
    why = can_build_namespaces()
    if why:
        raise UserError(f"enforcer lab demo {why}; run it as root")
    demos = [Demo(path, console, timeout) for path in every_lab().values()]  # every file read before any lab
    started = time.monotonic()
    for demo in demos:
        console.rule(f"[bold]{demo.profile.name}[/] ({demo.path})")
        try:
            demo.run()
        except LabError as e:  # one provider's lab failing to come up does not hide the others' results
            console.print(f"[yellow]lab error[/]: {e}; this is the lab, not the enforcer")
            demo.outcome.code = EXIT_LAB_NOT_READY
    console.print()
    console.print(summary_table([d.outcome for d in demos], time.monotonic() - started))
    return overall([d.outcome.code for d in demos])


def overall(codes: list[int]) -> int:
    """One exit status for many demos: any outcome that differs wins over a lab that was not ready."""
    return EXIT_DIFFERS if EXIT_DIFFERS in codes else EXIT_LAB_NOT_READY if EXIT_LAB_NOT_READY in codes else 0


def summary_table(outcomes: list[Findings], seconds: float) -> Table:
    """Provider x port x outcome: each resource's deliveries per port, and each provider's story."""
    table = Table(title=f"Every provider's lab ({len(outcomes)}, {seconds:.0f} s): SMTP per port, and the exemption "
                        "story", title_justify="left")
    for column in ("provider", "resource", "type", *map(str, SMTP_PORTS), "", "exemption story"):
        table.add_column(column)
    for o in outcomes:
        if not o.rows:
            table.add_row(o.profile, "-", "-", *("-" for _ in SMTP_PORTS), "[yellow]lab not ready[/]", "-",
                          end_section=True)
            continue
        told = f"{o.story_steps - o.story_failures} of {o.story_steps} steps as the spec says" \
            if o.story_steps else "no story"
        for i, row in enumerate(o.rows):
            last = i == len(o.rows) - 1
            table.add_row(o.profile if i == 0 else "", row.resource, row.type_name,
                          *(Demo.colour(row.cells[p]) for p in SMTP_PORTS),
                          "[green]as the spec says[/]" if row.ok else "[red]DIFFERS[/]",
                          ("[green]" if not o.story_failures else "[red]") + told + "[/]" if i == 0 else "",
                          end_section=last)
    return table
