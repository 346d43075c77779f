"""The data-plane benchmark's lab: one namespace topology (a VM, the gateway, an internet host), the children
running in it (benchmarks.roles), the queue rule, and the two measurements: one throughput window, and the
connect() latency phase."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
import uuid
from typing import Any

from enforcer.lab.netns import Topology, remove_tagged

from .child import Child
from .kernel import clock_ticks, cpu_ticks, dev_counters, rt_throttle, softnet_drops, steal_ticks, task_ticks
from .params import DISTURBED, INTERNET4, PORT, QUEUE_ACCEPT, QUEUE_BOUND, QUEUE_MULTI, QUEUE_WORKER, TAG_PREFIX, \
    TAIL, WARMUP
from .report import window_row


class Lab:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tag = f"{TAG_PREFIX}{uuid.uuid4().hex[:6]}"
        self.children: list[Child] = []
        self.log_dir = tempfile.mkdtemp(prefix="p25bench-")
        self.topology: Topology | None = None
        self.consumers: dict[str, Child] = {}
        self.multi: list[Child] = []  # --queues N: N workers on queues QUEUE_MULTI.., one rule balancing them
        self.queues = {"worker": QUEUE_WORKER, "bound": QUEUE_BOUND, "accept": QUEUE_ACCEPT}
        self.ready: dict[str, dict] = {}
        self.cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
        multi = len(self.cpus) >= 2
        self.sender_cpu = self.cpus[0] if multi else -1
        self.consumer_cpu = self.cpus[-1] if multi else -1

    def child(self, name: str, namespace: str, role: str, *options: str) -> Child:
        c = Child(name, namespace, role, list(options), self.log_dir)
        self.children.append(c)
        return c

    # ------------------------------------------------------------ up and down

    def up(self, source: str, more: list[str]) -> None:
        """The topology, the rule agents of the gateway and the internet host, and the consumers, bound. `more`:
        the generator's other sources, for the --queues configuration."""
        self.source, self.sources = source, ",".join([source, *more])
        self.topology = Topology(self.tag, [INTERNET4])
        self.topology.add_vm("gen", [source, *more])
        self.topology.up()
        self.gw = self.topology.gateway.namespace
        self.inet = self.topology.internet.namespace
        self.vm = self.topology.vms["gen"].namespace
        self.vm_link = self.topology.vms["gen"].link
        self.vm_mac, self.gw_mac = self._macs()
        life = str(self.args.lifetime)
        self.gw_agent = self.child("gw-agent", self.gw, "agent", "--lifetime", life)
        self.inet_agent = self.child("inet-agent", self.inet, "agent", "--lifetime", life)
        for agent in (self.gw_agent, self.inet_agent):
            agent.read()
        for config, queue in self.queues.items():
            kind = "accept" if config == "accept" else "worker"
            options = ["--kind", kind, "--queue", str(queue), "--cpu", str(self.consumer_cpu), "--lifetime", life]
            if kind == "worker":
                options += ["--vms", str(self.args.vms), "--seed", str(self.args.seed), "--source", source]
            if config == "bound":
                # where the generator's SYNs really come from: they arrive on the gateway's end of the VM's link
                # and carry eth0's MAC (the ring sender writes it into every frame; the raw sender's kernel does)
                options += ["--bind-interface", self.vm_link, "--bind-mac", self.vm_mac]
            self.consumers[config] = self.child(f"consumer-{config}", self.gw, "consumer", *options)
        for i in range(self.args.queues if self.args.queues > 1 else 0):
            # one per CPU from the last; the first shares no CPU with the generator, the second does on two cores
            cpu = self.cpus[-1 - i % len(self.cpus)]
            self.multi.append(self.child(f"consumer-multi-{i}", self.gw, "consumer", "--kind", "worker", "--queue",
                                         str(QUEUE_MULTI + i), "--cpu", str(cpu), "--lifetime", life, "--vms",
                                         str(self.args.vms), "--seed", str(self.args.seed), "--source", source))
        self.ready = {kind: c.read(120) for kind, c in self.consumers.items()}
        self.ready |= {f"multi-{i}": c.read(120) for i, c in enumerate(self.multi)}
        self.bound = self.queues | {f"multi-{i}": QUEUE_MULTI + i for i in range(len(self.multi))}
        for kind, r in self.ready.items():
            if "error" in r:
                raise RuntimeError(f"consumer {kind}: {r['error']}")

    def _macs(self) -> tuple[str, str]:
        """The VM's eth0 and the gateway's end of the VM's link: the generator's Ethernet header."""
        from pyroute2 import NetNS
        assert self.topology is not None
        with NetNS(self.vm) as v:
            vm_mac = v.get_links(ifname="eth0")[0].get_attr("IFLA_ADDRESS")
        with NetNS(self.gw) as g:
            gw_mac = g.get_links(ifname=self.topology.vms["gen"].link)[0].get_attr("IFLA_ADDRESS")
        return vm_mac, gw_mac

    def down(self) -> None:
        for c in reversed(self.children):
            try:
                c.stop()
            except (OSError, subprocess.SubprocessError):
                pass   # keep cleaning: remove_tagged ends whatever is left in the namespaces
        if self.topology is not None:
            remove_tagged(self.tag)

    # ------------------------------------------------------------ rules

    def rule(self, config: str) -> None:
        """Install the project's queue rule naming this configuration's queue, or remove it (no queue)."""
        if config == "none":
            answer = self.gw_agent.ask("remove")
        elif config == "multi":
            answer = self.gw_agent.ask(f"install {QUEUE_MULTI} {len(self.multi)}")
        elif config == "cached":
            answer = self.gw_agent.ask(f"install-cached {self.queues['worker']} {self.source}")
        else:
            answer = self.gw_agent.ask(f"install {self.queues[config]}")
        if not answer.get("ok"):
            raise RuntimeError(f"rule for {config}: {answer}")

    def inet_drop(self, on: bool) -> None:
        argv = ["iptables", "-w", "-t", "raw", "-A" if on else "-D", "PREROUTING", "-p", "tcp", "--dport",
                str(PORT), "-j", "DROP"]
        answer = self.inet_agent.ask("run " + json.dumps(argv))
        if not answer.get("ok"):
            raise RuntimeError(f"internet drop rule: {answer}")

    def priority(self, consumer: Child, high: bool) -> None:
        """SCHED_FIFO for the consumer's packet thread (its main thread) during a window, unless --fifo 0: other
        tasks on a shared machine then cannot take the consumer's CPU away (the kernel still leaves them 5% of it,
        sched_rt_runtime_us). Back to SCHED_OTHER afterwards (the latency phase runs at normal priority)."""
        if not self.args.fifo:
            return
        pid = consumer.proc.pid
        try:
            for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
                if not high:
                    os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                else:
                    # the other threads (the one answering "mark") one step above the packet thread: a FIFO thread
                    # of the same priority would wait for the packet thread to block, which it never does
                    prio = self.args.fifo + (0 if tid == pid else 1)
                    os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(prio))
        except (OSError, AttributeError) as e:
            print(f"  (cannot change the consumer's scheduling: {e}; continuing at normal priority)")
            self.args.fifo = 0

    # ------------------------------------------------------------ throughput

    def throughput_phase(self, config: str, source: str) -> dict:
        """One window of `config` (worker, bound, accept, none) under the generator's SYNs: its row
        (report.window_row)."""
        self.rule(config)
        consumer = self.consumers.get(config)
        group = self.multi if config == "multi" else [consumer] if consumer is not None else []
        if consumer is not None:
            # the --queues workers stay at normal priority: on two CPUs one of them shares its CPU with the
            # generator, which a SCHED_FIFO consumer would starve
            self.priority(consumer, True)
        try:
            m0, m1 = self._window(config, group, source)
            for c in group:
                self._drain(c)
        finally:
            if consumer is not None:
                self.priority(consumer, False)
        idle_limit = DISTURBED + (rt_throttle() if self.args.fifo else 0.0)
        row = window_row(config, m0, m1, len(self.cpus), idle_limit)
        if row.get("spoofed"):
            raise RuntimeError(f"{config}: the callback dropped {row['spoofed']:,} of the generator's SYNs as "
                               "spoofed-source; the window would measure drops, not accepts")
        if m1["fwd"] - m0["fwd"] < 0.01 * max(1, m1["vm_tx"] - m0["vm_tx"]):
            raise RuntimeError(f"{config}: the gateway forwarded {m1['fwd'] - m0['fwd']} of "
                               f"{m1['vm_tx'] - m0['vm_tx']} packets the VM sent; the lab is broken")
        return row

    def _start_sender(self, config: str, source: str) -> Child:
        """The generator, ready to go; falls back to the raw-socket sender when the TX ring cannot be set up. For
        the --queues configuration it sends from all its sources in turn, so that the rule spreads the SYNs."""
        a = self.args
        if config == "multi":
            source = self.sources
        while True:
            sender = self.child(f"sender-{config}", self.vm, "sender", "--sender", a.sender, "--source", source,
                                "--dst", INTERNET4, "--src-mac", self.vm_mac, "--dst-mac", self.gw_mac,
                                "--seconds", str(WARMUP + a.seconds + TAIL), "--rate", str(a.rate),
                                "--max-packets", str(a.max_packets), "--seed", str(a.seed),
                                "--cpu", str(self.sender_cpu))
            hello = sender.read()
            if "error" not in hello:
                return sender
            sender.stop()
            if a.sender == "raw":
                raise RuntimeError(f"sender: {hello['error']}")
            print(f"  (sender: {hello['error']}; falling back to the raw-socket sender)")
            a.sender = "raw"

    def _window(self, config: str, group: list[Child], source: str) -> tuple[dict, dict]:
        """Send, warm up, and mark the start and the end of the window."""
        sender = self._start_sender(config, source)
        try:
            sender.send("go")
            time.sleep(WARMUP)
            m0 = self.mark(group, sender.proc.pid)
            time.sleep(self.args.seconds)
            m1 = self.mark(group, sender.proc.pid)
        finally:
            if sender.proc.poll() is None:
                sender.proc.terminate()   # the window is closed: no need to send on until the sender's deadline
            sender.stop()
        return m0, m1

    @staticmethod
    def _drain(consumer: Child) -> None:
        """Let the queue drain before the next phase, so that it starts from empty."""
        for _ in range(50):
            q = consumer.ask("mark")["q"]
            if q and q["waiting"] == 0:
                break
            time.sleep(0.05)

    def mark(self, group: list[Child], sender_pid: int) -> dict:
        """The counters at one end of a window: the consumers' (their queues', their own counts, added up), the
        gateway's forwarded packets, the VM's sent ones, backlog drops, steal time, the consumers' ticks and
        their CPU's (all CPUs' for a group of several)."""
        m: dict[str, Any] = {"c": summed([c.ask("mark") for c in group]) if group else None}
        m["t"] = time.monotonic()
        m["fwd"] = dev_counters(self.gw_agent.proc.pid, "inet")[1]
        m["vm_tx"] = dev_counters(sender_pid, "eth0")[1]
        m["softnet"] = softnet_drops()
        m["steal"] = steal_ticks()
        m["cpu"] = sum(task_ticks(c.proc.pid) for c in group)
        ticks = [cpu_ticks(cpu) for cpu in (self.cpus if len(group) > 1 else [max(0, self.consumer_cpu)])]
        m["ccpu"] = {k: sum(t[k] for t in ticks) for k in ticks[0]}
        return m

    # ------------------------------------------------------------ latency

    def latency(self, blocks: int, per_block: int) -> dict:
        """`blocks` blocks of `per_block` sequential connect()s, alternating between the worker's queue rule and
        no rule: the connect() times in us and the failures of each, and how busy each CPU was meanwhile."""
        listener = self.child("listener", self.inet, "listener", "--address", INTERNET4,
                              "--lifetime", str(self.args.lifetime))
        listener.read()
        out: dict[str, list[float]] = {"worker": [], "none": []}
        failures = {"worker": 0, "none": 0}
        t0, c0 = time.monotonic(), {cpu: cpu_ticks(cpu) for cpu in self.cpus}
        try:
            for b in range(blocks):
                for config in (("worker", "none") if b % 2 == 0 else ("none", "worker")):
                    r = self._connects(config, b, per_block)
                    out[config] += r["us"]
                    failures[config] += r["failures"]
        finally:
            listener.stop()
        wall, ticks = time.monotonic() - t0, clock_ticks()
        busy = {}
        for cpu, before in c0.items():
            after = cpu_ticks(cpu)
            busy[cpu] = (after["task"] + after["irq"] - before["task"] - before["irq"]) / ticks / wall
        return {"us": out, "failures": failures, "busy": busy, "wall": wall, "blocks": blocks,
                "per_block": per_block}

    def _connects(self, config: str, block: int, count: int) -> dict:
        """One block: the rule of `config` in place, a connector in the VM (and the worker at high priority)."""
        self.rule(config)
        conn = self.child(f"connect-{config}-{block}", self.vm, "connector", "--dst", INTERNET4,
                          "--count", str(count), "--cpu", str(self.sender_cpu), "--fifo", str(self.args.fifo))
        worker = self.consumers["worker"]
        if config == "worker":
            self.priority(worker, True)
        try:
            return conn.read(count * 4 + 30)
        finally:
            conn.stop()
            if config == "worker":
                self.priority(worker, False)


def summed(marks: list[dict]) -> dict:
    """Several consumers' marks as one: their counts and their queues' counters added up, the latest time."""
    if len(marks) == 1:
        return marks[0]
    out: dict[str, Any] = {"t": max(m["t"] for m in marks)}
    for key in ("own", "allowed", "spoofed"):
        out[key] = None if any(m[key] is None for m in marks) else sum(m[key] for m in marks)
    qs = [m["q"] for m in marks]
    out["q"] = None if None in qs else {k: sum(q[k] for q in qs) for k in qs[0]}
    return out
