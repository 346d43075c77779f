"""`enforcer lab demo`: the lab in network namespaces, real SMTP deliveries from every resource to ports 25,
465 and 587, a table of what happened next to what the spec expects, then the exemption story, then teardown.
Exits non-zero if any outcome differs from the spec.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..core import lifecycle
from ..core.inventory import Inventory
from ..errors import UserError
from ..state.profiles import load_profile
from .files import SMTP_PORTS, read_lab, resources_of
from .namespace_lab import Attempt, NamespaceLab
from .netns import can_build_namespaces

SPEC_OUTCOME = {"allowed": "delivered", "blocked": "timeout"}
READY_PORT = 587       # never restricted: a delivery there proves the path, whatever the policy
READY_WAIT = 30.0      # seconds the lab may take until every path delivers
LAB_FAULT = "lab fault"  # a time-out the enforcer did not cause
EXIT_DIFFERS, EXIT_LAB_NOT_READY = 1, 3


class Demo:
    def __init__(self, lab_file: Path | None, console: Console, timeout: float):
        self.path, self.doc, self.internet, self.expect = read_lab(lab_file)
        self.resources = resources_of(self.doc)
        missing = sorted(set(self.resources) - set(self.expect))
        if missing:
            raise UserError(f"{self.path}: lab.expect says nothing of {', '.join(missing)}; add what the spec "
                            "expects of each (allowed or blocked)")
        self.console = console
        self.timeout = timeout
        self.failures = 0
        self.lab_faults: list[str] = []

    def run(self) -> int:
        why = can_build_namespaces()
        if why:
            raise UserError(f"enforcer lab demo {why}; run it as root")
        with tempfile.TemporaryDirectory(prefix="enforcer-demo-") as tmp:
            lab = NamespaceLab(Path(tmp), self.internet, tag=f"p25demo{uuid.uuid4().hex[:4]}")
            try:
                self.build(lab)
                not_ready = self.wait_until_ready(lab)
                if not_ready:
                    self.console.print(f"\n[yellow]lab not ready[/]: after {READY_WAIT:g} s these paths still deliver "
                                       f"nothing on port {READY_PORT}, which no policy blocks: "
                                       f"{', '.join(f'{vm} to {dst}' for vm, dst in not_ready)}; this is the lab, "
                                       "not the enforcer: run the demo again")
                    return EXIT_LAB_NOT_READY
                self.table(lab)
                self.exemption_story(lab)
            finally:
                lab.close()
        return self.verdict()

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
            task = p.add_task("waiting until every path delivers on port 587", total=total)
            while pending and time.monotonic() < deadline:
                outcomes = lab.smtp_batched([(vm, dst, READY_PORT) for vm, dst in pending], timeout=self.timeout)
                pending = [path for path, outcome in zip(pending, outcomes, strict=True) if outcome != "delivered"]
                p.update(task, completed=total - len(pending))
                if pending:
                    time.sleep(0.5)
        return pending

    def dropped(self, lab: NamespaceLab) -> set[tuple[str, str, int]]:
        """(source, destination, port) of every SYN the enforcer dropped and logged."""
        time.sleep(0.3)  # the workers write their drop log off the packet path, a few times a second
        found = set()
        for line in lab.daemon_log.read_text().splitlines():
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
            if outcome == "timeout" and not any((src, dst, port) in dropped for src in sources):
                self.lab_faults.append(f"{vm} to {dst} port {port}")
                outcome = LAB_FAULT
            checked.append(outcome)
        return checked

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
            lab.start_daemon()
            p.advance(task)
        self.console.print(f"lab up: {len(self.resources)} resources, the gateway running [bold]enforcer run[/], "
                           f"an SMTP server on {', '.join(self.internet)} ports 25, 465 and 587")

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
        table = Table(title="SMTP from every resource to the internet host (IPv4, and IPv6 where it has one)",
                      title_justify="left")
        for column in ("resource", "subscription type", "25", "465", "587", "spec says (25)", ""):
            table.add_column(column)
        for name in self.resources:
            cells = {port: " / ".join(sorted(results[(name, port)])) for port in SMTP_PORTS}
            expected = self.expect[name]
            ok = cells[25] == SPEC_OUTCOME[expected] and cells[465] == cells[587] == "delivered"
            self.failures += not ok
            table.add_row(name, inv_types[name], *(self.colour(cells[p]) for p in SMTP_PORTS), expected,
                          "[green]as the spec says[/]" if ok else "[red]DIFFERS[/]")
        self.console.print(table)

    def destinations(self, addresses: list[str]) -> list[str]:
        v6 = any(":" in a for a in addresses)
        return [a for a in self.internet if ":" not in a or v6]

    def subscription_types(self) -> dict[str, str]:
        profile = load_profile(self.doc.get("profile", "azure"))
        types = {s["name"]: profile.type_named(str(s["type"])).name for s in self.doc.get("subscriptions") or []}
        return {str(r["name"]): types.get(r["subscription"], "?") for r in self.doc.get("resources") or []}

    def step(self, lab: NamespaceLab, text: str, vm: str, expected: str) -> None:
        attempt = (vm, self.internet[0], 25)
        outcome = self.attribute(lab, [attempt], lab.smtp([attempt], timeout=self.timeout))[0]
        ok = outcome == expected
        self.failures += not ok
        mark = "[green]as the spec says[/]" if ok else f"[red]expected {expected}[/]"
        self.console.print(f"  {text:58} port 25: {self.colour(outcome)}  {mark}")

    def command(self, lab: NamespaceLab, words: str, operation: Callable[..., tuple[Inventory, list[str]]],
                *args: Any, **kwargs: Any) -> None:
        """What `enforcer WORDS` does, done through the lab's store: the line a person would type, then what
        the operation tells them."""
        command = f"enforcer {words}"
        self.console.print(f"  [bold]$ {command}[/]")
        for line in lab.change(command, operation, *args, **kwargs):
            self.console.print(f"    [dim]{line}[/]", highlight=False)
        lab.wait_synced()

    def exemption_story(self, lab: NamespaceLab) -> None:
        self.console.print("\n[bold]The exemption story[/] (rules 4 and 5), with real deliveries")
        if "devtest-vm" not in self.resources or "shop-web" not in self.resources:
            self.console.print("  (skipped: the lab file has no devtest-vm or shop-web)")
            return
        self.step(lab, "devtest-vm (Enterprise Dev/Test), before the diagnostic", "devtest-vm", "timeout")
        self.command(lab, "diagnose devtest-lab", lifecycle.run_diagnostic, "devtest-lab")
        self.step(lab, "devtest-vm, still running with its old policy", "devtest-vm", "timeout")
        self.command(lab, "vm restart devtest-vm", lifecycle.restart, "devtest-vm")
        self.step(lab, "devtest-vm after stop, deallocate, start", "devtest-vm", "delivered")
        link = lab.attach("devtest-new", ["198.18.3.99"])
        self.command(lab, f"vm add devtest-new --subscription devtest-lab --address 198.18.3.99 --interface {link}",
                     lifecycle.add_resource, "devtest-new", "devtest-lab", "vm", ["198.18.3.99"], interface=link)
        self.step(lab, "devtest-new, created after the exemption", "devtest-new", "delivered")
        self.command(lab, "diagnose payg-shop", lifecycle.run_diagnostic, "payg-shop")
        self.command(lab, "vm restart shop-web", lifecycle.restart, "shop-web")
        self.step(lab, "shop-web (Pay-As-You-Go): diagnostic refused, restarted", "shop-web", "timeout")

    @staticmethod
    def colour(word: str) -> str:
        return {"delivered": "[green]delivered[/]", "timeout": "[red]timeout[/]"}.get(word, f"[yellow]{word}[/]")


def run_demo(lab_file: Path | None, console: Console, timeout: float = 2.5) -> int:
    return Demo(lab_file, console, timeout).run()
