"""`enforcer lab demo`: the example lab, judged port by port against what the spec expects.

This release judges with the policy core through a throw-away state (no packets are sent); the namespace lab
with real SMTP deliveries builds on it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import ops
from .declarative import converge, read_document
from .errors import UserError
from .policy import decide
from .profile import load_profile
from .store import Store

DEFAULT_LAB = Path(__file__).resolve().parent.parent / "vagrant" / "lab.yml"
PORTS = (25, 465, 587)


def expectations(doc: dict, path: str) -> tuple[list[str], dict[str, str]]:
    lab = doc.get("lab") or {}
    try:
        internet = [str(a) for a in lab["internet"]["addresses"]]
        expect = {str(k): str(v) for k, v in lab["expect"].items()}
    except (KeyError, TypeError, AttributeError):
        raise UserError(f"{path}: the demo needs lab.internet.addresses and lab.expect; see vagrant/lab.yml") \
            from None
    return internet, expect


class Demo:
    def __init__(self, lab_file: Path, console: Console):
        self.path = str(lab_file)
        self.doc = read_document(self.path)
        self.internet, self.expect = expectations(self.doc, self.path)
        self.console = console
        self.failures = 0
        self._tmp = tempfile.TemporaryDirectory(prefix="enforcer-demo-")
        self.store = Store(Path(self._tmp.name) / "state.db", create=True)
        self.profile = load_profile(self.doc.get("profile", "azure"))

    def change(self, operation, *args, **kwargs):
        return self.store.change("enforcer lab demo",
                                 lambda inv: operation(inv.with_(profile=self.profile.id), self.profile,
                                                       *args, **kwargs))

    def verdict(self, source: str, port: int, destination: str | None = None):
        inv, _ = self.store.read()
        return decide(inv, self.profile, inv.resource(source), destination or self.internet[0], port)

    def run(self) -> int:
        try:
            self.change(lambda inv, profile: converge(inv, profile, self.doc, self.path))
            self.table()
            self.exemption_story()
        finally:
            self.store.close()
            self._tmp.cleanup()
        word = "[green]every outcome matches the spec[/]" if not self.failures else \
            f"[red]{self.failures} outcome(s) differ from the spec[/]"
        self.console.print(f"\n{word}")
        return 0 if not self.failures else 1

    def table(self) -> None:
        inv, _ = self.store.read()
        table = Table(title=f"Port 25/465/587 to the internet ({', '.join(self.internet)}), judged by the policy "
                            "core", title_justify="left")
        for column in ("resource", "subscription type", "25", "465", "587", "spec says (25)", ""):
            table.add_column(column)
        for name, r in inv.resources.items():
            results = {}
            for port in PORTS:
                words = {decide(inv, self.profile, r, dst, port).word for dst in self.internet}
                results[port] = words.pop() if len(words) == 1 else "IPv4 and IPv6 differ"
            expected = self.expect.get(name, "?")
            ok = results[25] == expected and results[465] == results[587] == "allowed"
            self.failures += not ok
            table.add_row(name, self.profile.types[inv.subscriptions[r.subscription].type].name,
                          *(self._colour(results[p]) for p in PORTS), expected,
                          "[green]as the spec says[/]" if ok else "[red]DIFFERS[/]")
        self.console.print(table)

    def step(self, text: str, source: str, expected: str) -> None:
        v = self.verdict(source, 25)
        ok = v.word == expected
        self.failures += not ok
        mark = "[green]ok[/]" if ok else f"[red]expected {expected}[/]"
        self.console.print(f"  {text:58} {self._colour(v.word)}  {mark}")
        self.console.print(f"    [dim]{v.reason}[/]")

    def exemption_story(self) -> None:
        c = self.console
        c.print("\n[bold]The exemption story[/] (rules 4, 5 and 6)")
        self.step("devtest-vm, Enterprise Dev/Test, before the diagnostic", "devtest-vm", "blocked")
        diagnosis = self.change(ops.diagnose, "devtest-lab")
        c.print(f"  $ enforcer diagnose devtest-lab  -> {diagnosis.outcome}")
        self.step("devtest-vm still running with its old policy", "devtest-vm", "blocked")
        self.change(ops.restart, "devtest-vm")
        c.print("  $ enforcer vm restart devtest-vm")
        self.step("devtest-vm after stop, deallocate, start", "devtest-vm", "allowed")
        self.change(ops.add_resource, "devtest-new", "devtest-lab", "vm", ["198.18.3.99"], vnet="devnet")
        c.print("  $ enforcer vm add devtest-new --subscription devtest-lab --address 198.18.3.99")
        self.step("a VM created after the exemption", "devtest-new", "allowed")
        self.step("devtest-ase in the delegated subnet", "devtest-ase", "blocked")
        self.change(ops.refresh_delegated, "devnet")
        c.print("  $ enforcer vnet refresh-delegated devnet")
        self.step("devtest-ase after the temporary subnet step", "devtest-ase", "allowed")
        diagnosis = self.change(ops.diagnose, "payg-shop")
        c.print(f"  $ enforcer diagnose payg-shop  -> {diagnosis.outcome}")
        self.change(ops.restart, "shop-web")
        self.step("shop-web, Pay-As-You-Go, after diagnose and restart", "shop-web", "blocked")

    @staticmethod
    def _colour(word: str) -> str:
        return {"allowed": "[green]allowed[/]", "blocked": "[red]blocked[/]"}.get(word, word)


def run_demo(lab_file: Path | None, console: Console) -> int:
    path = lab_file or DEFAULT_LAB
    if not path.exists():
        raise UserError(f"no lab file at {path}; pass one: enforcer lab demo --lab vagrant/lab.yml")
    return Demo(path, console).run()
