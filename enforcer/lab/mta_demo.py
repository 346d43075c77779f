"""`enforcer lab demo --mta`: the exemption story (story.py) told by Debian's Postfix instead of single SMTP
attempts. A Postfix of its own runs on three resources of the lab file (one its account lets send, the first one
whose account has a way out, the first whose account never has one); swaks hands each a message to a gmail.com
address; then each of the story's deliveries is the next attempt of that message (a queue run, `postqueue -f`),
read from the instance's mail log: a time-out on port 25 is a deferral, as in production. The account that is never
exempted takes the provider's advice at the end (relayhost = [relay.lab]:587 with SASL and TLS), and its deferred
message leaves through the relay on the next queue run. Every deferral is explained next to it (the rule, the way
out), as `enforcer lab explain` does. Exits non-zero if any step differs from the lab file's expectations.
"""

from __future__ import annotations

import datetime
import subprocess
import time
from dataclasses import dataclass

from rich.markup import escape

from ..core import lifecycle
from ..core.converge import converge
from ..core.inventory import Inventory, Resource
from ..core.policy import verdict_for
from ..core.preflight import judge
from . import mta, story
from .demo import Demo
from .namespace_lab import LabError, NamespaceLab, read_inventory
from .netns import end_processes, exec_in
from .smtpsink import received

RECIPIENT = "postmaster@gmail.com"
ATTEMPT_WAIT = 60.0  # seconds a queue run may take: a deferral waits out a connect time-out per address


@dataclass
class Sender:
    """A resource whose Postfix holds the story's message: its instance, the message's queue id, and how many of
    its delivery attempts the story has read."""
    resource: Resource
    namespace: str
    instance: mta.Instance
    queue_id: str = ""
    read: int = 0


class MtaDemo(Demo):
    def show(self, lab: NamespaceLab) -> None:
        today = datetime.date.today()
        inv, _ = converge(Inventory(profile=self.profile.id), self.profile, self.doc, self.path, today=today)
        self.inv = read_inventory(lab.state)  # the lab's own state, as the enforcer judges it (explain() reads it)
        candidate, never = story.cast(self.profile, inv, self.expect)
        sending = next((r for r in inv.resources.values() if r.kind == "vm" and r.name in lab.topology.vms
                        and self.expect[r.name][25] == "allowed"), None)
        cast = [r for r in (sending, candidate, never) if r is not None]
        self.console.print(f"\n[bold]The story with Debian's Postfix[/] ({self.profile.name}: "
                           f"{story.summary(self.profile)}): a Postfix of its own on "
                           f"{', '.join(r.name for r in cast)}; swaks hands each a message to {RECIPIENT}")
        self.senders = {r.name: self.start(lab, r) for r in cast}
        if sending is not None:
            self.expect_attempt(sending.name, f"{sending.name}, its account lets it send", "delivered")
        steps = story.plan(self.profile, inv, self.expect, today)
        for step in steps:
            if isinstance(step, story.Try) and step.vm in self.senders and 25 in step.ports:
                self.expect_attempt(step.vm, step.text, step.expected)
            elif isinstance(step, story.Run):
                self.command(lab, step)
                if step.operation is lifecycle.restart:
                    self.reboot(step.args[0])
        if never is not None:
            self.take_relay(lab, never.name)

    def start(self, lab: NamespaceLab, r: Resource) -> Sender:
        host = lab.topology.vms[r.name]
        sender = Sender(r, host.namespace, mta.Instance(lab.workdir, r.name))
        mta.start(sender.namespace, sender.instance, {6 if ":" in a else 4 for a in host.addresses}, None)
        answer = self.swaks(sender)
        queued = mta.queue_id(answer)
        if queued is None:
            raise LabError(f"{r.name}'s Postfix did not take the message: {answer.strip().splitlines()[-1:]}")
        sender.queue_id = queued
        return sender

    def swaks(self, sender: Sender) -> str:
        name = sender.resource.name
        argv = ["swaks", "--server", "127.0.0.1", "--from", f"app@{name.lower()}.lab", "--to", RECIPIENT,
                "--h-Subject", f"lab demo --mta from {name}", "--hide-informational"]
        proc = exec_in(sender.namespace, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = proc.communicate(timeout=60)
        return str(out)

    def next_attempt(self, sender: Sender) -> mta.Delivery | None:
        """The message's next delivery attempt: the one Postfix made on its own since the last one read, else one
        it makes now (a queue run); None if none ends within ATTEMPT_WAIT."""
        if self.attempts(sender) <= sender.read:
            mta.flush(sender.namespace, sender.instance)
        deadline = time.monotonic() + ATTEMPT_WAIT
        while self.attempts(sender) <= sender.read:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)
        sender.read += 1
        return mta.deliveries(sender.instance.log.read_text(errors="replace"), sender.queue_id)[sender.read - 1]

    @staticmethod
    def attempts(sender: Sender) -> int:
        log = sender.instance.log
        return len(mta.deliveries(log.read_text(errors="replace"), sender.queue_id)) if log.exists() else 0

    def expect_attempt(self, name: str, text: str, expected: str, port: int = 25) -> None:
        """The next attempt of `name`'s message must end as `expected` (delivered: sent on `port`; timeout:
        deferred by a connect time-out on port 25, explained)."""
        sender = self.senders[name]
        attempt = self.next_attempt(sender)
        if attempt is None:
            got, said = "no attempt", f"none ended within {ATTEMPT_WAIT:g} s"
        elif attempt.status == "sent":
            got, said = ("delivered" if attempt.port == port else "sent elsewhere"), f"sent via {attempt.relay}"
        else:
            timed_out = "timed out" in attempt.said and attempt.port == 25
            got, said = ("timeout" if timed_out else attempt.status), f"{attempt.status}: {attempt.said}"
        ok = got == expected
        self.failures += not ok
        mark = "[green]as the spec says[/]" if ok else f"[red]expected {expected}[/]"
        self.console.print(f"  {text:58} {self.colour(got)}  {mark}")
        self.console.print(f"    [dim]postfix: {sender.queue_id} {escape(said)}[/]", highlight=False)
        if got == "timeout":
            self.explain(sender.resource)

    def explain(self, r: Resource) -> None:
        """What the deferral means: the enforcer's rule for this resource now, and the provider's way out."""
        sub = self.inv.subscriptions[r.subscription]
        verdict = verdict_for(self.inv, self.profile, r)
        _, way_out = judge(self.profile, 25, "timeout", self.profile.types.get(sub.type))
        self.console.print(f"    [dim]that is the block: {escape(verdict.reason)}[/]", highlight=False)
        self.console.print(f"    [dim]the way out: {escape(way_out)}[/]", highlight=False)

    def command(self, lab: NamespaceLab, run: story.Run) -> None:
        super().command(lab, run)
        self.inv = read_inventory(lab.state)

    def reboot(self, name: str) -> None:
        """The platform's restart of a resource: its processes end, it boots, and its Postfix starts again (the
        queue on its disk kept)."""
        sender = self.senders.get(name)
        if sender is not None:
            end_processes([sender.namespace])
            mta.boot(sender.namespace, sender.instance)
            self.console.print(f"    [dim]{name} rebooted: its processes ended, its Postfix started again with its "
                               "queue[/]", highlight=False)

    def take_relay(self, lab: NamespaceLab, name: str) -> None:
        """The provider's advice, taken: relayhost = [relay.lab]:PORT with SASL over TLS, then a queue run."""
        sender = self.senders[name]
        port = story.open_port(self.profile)
        via = mta.RelayHost(port, lab.relay.user, lab.relay.password, str(lab.ca))
        families = {6 if ":" in a else 4 for a in lab.topology.vms[name].addresses}
        self.console.print(f"  [bold]{name}: relayhost = {escape(via.nexthop)}[/] with SASL ({via.user}) and TLS "
                           "required, as the advice says; postfix reload; postqueue -f")
        mta.start(sender.namespace, sender.instance, families, via)
        self.expect_attempt(name, f"{name}'s deferred message, through the relay", "delivered", port)
        arrived = [m for m in received(lab.maildir) if m["subject"] == f"lab demo --mta from {name}"]
        if arrived:
            self.console.print(f"    [dim]arrived on port {arrived[-1]['port']} over {arrived[-1]['family']}, "
                               f"authenticated: {'yes' if arrived[-1]['authenticated'] else 'no'}[/]", highlight=False)

