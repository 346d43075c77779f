"""The kernel cache for real: namespaces (a gateway, an internet host with the SMTP sink, two VMs), the project's
rules with the cache installed in the gateway, a bound NFQUEUE whose consumer accepts every SYN, real connect()s
from the VMs to port 25, and KernelCache filling the sets from outside the gateway (a socket opened in its
namespace) or from a process inside it.

What is counted: the SYNs that reach the queue (the kernel's id_sequence of our queue, in the gateway), the SYNs
that reach the internet host (a counting rule in its INPUT chain), and what each connect() met. Needs root,
network namespaces and ipset; skipped with the reason where they are missing.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from enforcer.dataplane.kernelcache import KernelCache
from enforcer.dataplane.queue import kernel_queue_stats
from enforcer.dataplane.rules import IptablesBackend, NftablesBackend, RuleError, RuleSpec
from enforcer.dataplane.rules.base import CacheSpec, Runner
from enforcer.lab.netns import can_build_namespaces, run_in
from support.netlab import NetLab, wait_for
from support.paths import LAB

WHY_NOT = can_build_namespaces() or \
    (None if shutil.which("ipset") else "ipset is not installed (apt-get install ipset)")
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

V4, V6 = yaml.safe_load(LAB.read_text())["lab"]["internet"]["addresses"]
VMS = {"vm": ["198.18.7.10", "2001:db8:7::10"], "other": ["198.18.7.11", "2001:db8:7::11"]}
QUEUE = 25
COUNT = "p25-test-syns"  # the internet host's counting rule

CONSUMER = """
import sys
from enforcer.dataplane.queue import bind_queue, run_until_signalled
nfq = bind_queue(int(sys.argv[1]), lambda packet: packet.accept(), 64, 1 << 20, False)
print("ready", flush=True)
run_until_signalled(nfq)
"""

CONNECT = """
import json, socket, sys
outcomes = []
for destination in sys.argv[2:]:
    for _ in range(int(sys.argv[1])):
        s = socket.socket(socket.AF_INET6 if ":" in destination else socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(0.5)   # below the SYN retransmission timeout (1 s): one SYN per attempt
        try:
            s.connect((destination, 25))
            outcomes.append("connected")
        except OSError:
            outcomes.append("timeout")
        finally:
            s.close()
print(json.dumps(outcomes))
"""


def runner_in(namespace: str) -> Runner:
    """A rule backend's runner that runs the tools inside `namespace`."""
    def run(argv: list[str], stdin: str | None) -> str:
        proc = run_in(namespace, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      text=True)
        out, err = proc.communicate(stdin, timeout=60)
        if proc.returncode != 0:
            raise RuleError(f"{' '.join(argv)} failed: {err.strip() or out.strip()}")
        return out
    return run


def packed(address: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


class CacheLab:
    """The namespaces (NetLab, without a state: no daemon), our rules in the gateway, an accept-all consumer."""

    def __init__(self, lab: NetLab):
        self.lab = lab
        self.gw = lab.topology.gateway.namespace
        self.inet = lab.topology.internet.namespace
        self.gateway = runner_in(self.gw)
        self.backend = IptablesBackend(self.gateway)
        self.internet = runner_in(self.inet)
        for tool in ("iptables", "ip6tables"):
            self.internet([tool, "-I", "INPUT", "-p", "tcp", "--dport", "25", "--syn",
                           "-m", "comment", "--comment", COUNT], None)
        self.consumer: subprocess.Popen[str] | None = None

    def spec(self, timeout: int = 300, maxelem: int = 65536, cache: bool = True) -> RuleSpec:
        return RuleSpec(QUEUE, 1, (25,), (), bypass=False, cache=CacheSpec(timeout, maxelem) if cache else None)

    def bind(self) -> None:
        self.consumer = run_in(self.gw, [sys.executable, "-c", CONSUMER, str(QUEUE)], stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
        self.lab.procs.append(self.consumer)
        assert self.consumer.stdout is not None and self.consumer.stdout.readline().strip() == "ready"

    def queued(self) -> int:
        """SYNs handed to our queue so far (the kernel's counter, read in the gateway's namespace)."""
        assert self.consumer is not None
        stats = kernel_queue_stats(Path(f"/proc/{self.consumer.pid}/net/netfilter/nfnetlink_queue"))
        return stats[QUEUE].id_sequence

    def reached(self) -> int:
        """SYNs to port 25 that reached the internet host, both families."""
        total = 0
        for tool in ("iptables", "ip6tables"):
            out = self.internet([tool, "-nvxL", "INPUT"], None)
            total += sum(int(line.split()[0]) for line in out.splitlines() if COUNT in line)
        return total

    def connect(self, vm: str, destinations: list[str], count: int = 3) -> list[str]:
        proc = run_in(self.lab.topology.vms[vm].namespace, [sys.executable, "-c", CONNECT, str(count), *destinations],
                      stdout=subprocess.PIPE, text=True)
        out, _ = proc.communicate(timeout=60)
        return json.loads(out)

    def attempt(self, vm: str, destination: str, count: int = 3) -> tuple[list[str], int, int]:
        """`count` connects from `vm`: what they met, how many SYNs reached the queue and the internet host."""
        queued, reached = self.queued(), self.reached()
        outcomes = self.connect(vm, [destination], count)
        return outcomes, self.queued() - queued, self.reached() - reached

    def sets(self) -> str:
        return self.gateway(["ipset", "save"], None)


@contextmanager
def cache_lab(workdir: Path) -> Iterator[CacheLab]:
    """The namespaces up, no rules yet; everything removed afterwards (and checked to be gone), also when the test
    fails. The rules, sets and queue live in the gateway's namespace and go with it; the host's own stay as they
    were."""
    host_sets = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True).stdout
    host_mangle = host_rules("mangle")
    lab = NetLab(workdir, [V4, V6])
    try:
        lab.up(VMS)
        cl = CacheLab(lab)
        # a new IPv6 path takes a few seconds to carry traffic: wait until every VM reaches port 25 both ways
        for vm in VMS:
            assert wait_for(lambda vm=vm: cl.connect(vm, [V4, V6], 1) == ["connected"] * 2, timeout=30), vm
        yield cl
    finally:
        lab.close()
        from pyroute2 import netns
        assert not [n for n in netns.listnetns() if n.startswith(lab.tag)]
        assert subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True).stdout == host_sets
        assert host_rules("mangle") == host_mangle, "the host's own rules changed"


def host_rules(table: str) -> list[str]:
    """The host's rules of one table, without iptables-save's dated comments (libvirt's p25mgmt0 rules may be
    there: the host's, not the test's)."""
    out = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if not line.startswith("#")]


@pytest.fixture
def cl(tmp_path):
    with cache_lab(tmp_path) as lab:
        yield lab


@pytest.mark.parametrize("family", [4, 6])
def test_cached_sources_are_decided_in_the_kernel(cl, family):
    destination = V4 if family == 4 else V6
    source = packed(VMS["vm"][0 if family == 4 else 1])
    cl.backend.install(cl.spec())
    assert cl.backend.installed(cl.spec())
    cl.bind()
    with KernelCache("iptables", 300, netns=cl.gw) as cache:   # a socket opened in the gateway's namespace
        assert cl.attempt("vm", destination) == (["connected"] * 3, 3, 3)        # every SYN queued, accepted
        assert cache.remember([(source, True)]) == 1
        assert cl.attempt("vm", destination) == (["connected"] * 3, 0, 3)        # accepted in the kernel
        assert cl.attempt("other", destination) == (["connected"] * 3, 3, 3)     # another source: still queued
        assert cache.remember([(source, True)]) == 0 and cache.counts["present"] == 1
        assert cache.remember([(source, False)]) == 1                            # out of allowed, into blocked
        assert cl.attempt("vm", destination) == (["timeout"] * 3, 0, 0)          # dropped in the kernel
        cache.forget([source])
        assert cl.attempt("vm", destination) == (["connected"] * 3, 3, 3)        # judged by the queue again
        cache.remember([(source, False)])
        assert cl.attempt("vm", destination)[1:] == (0, 0)
        cache.flush()
        assert cl.attempt("vm", destination) == (["connected"] * 3, 3, 3)
        assert "add " not in cl.sets()


def test_cached_entries_expire(cl):
    cl.backend.install(cl.spec(timeout=2))
    cl.bind()
    with KernelCache("iptables", 2, netns=cl.gw) as cache:
        cache.remember([(packed(VMS["vm"][0]), False), (packed(VMS["other"][0]), True)])
        assert cl.attempt("vm", V4, 1) == (["timeout"], 0, 0)
        assert cl.attempt("other", V4, 1) == (["connected"], 0, 1)
        time.sleep(2.5)
        assert cl.attempt("vm", V4, 1) == (["connected"], 1, 1)
        assert cl.attempt("other", V4, 1) == (["connected"], 1, 1)


def test_operator_filter_rules_still_apply_to_kernel_cached_allowed_sources(cl):
    """The cache's ACCEPT is in mangle: it ends only mangle's traversal, like a queue verdict of accept, so the
    operator's filter FORWARD DROP still drops a source accepted from the cache."""
    cl.backend.install(cl.spec())
    cl.bind()
    cl.gateway(["iptables", "-A", "FORWARD", "-d", V4, "-p", "tcp", "--dport", "25", "-j", "DROP"], None)
    with KernelCache("iptables", 300, netns=cl.gw) as cache:
        cache.remember([(packed(VMS["vm"][0]), True), (packed(VMS["vm"][1]), True)])
        assert cl.attempt("vm", V4) == (["timeout"] * 3, 0, 0)      # not queued, accepted in mangle, dropped in filter
        assert cl.attempt("vm", V6) == (["connected"] * 3, 0, 3)    # the operator's rule is IPv4 only
    accepted = [line for line in cl.gateway(["iptables", "-t", "mangle", "-nvxL", "P25-ENFORCER"], None).splitlines()
                if "match-set p25-allow4 src" in line]
    assert int(accepted[0].split()[0]) == 3                         # it was the cache that accepted them


def test_a_full_set_leaves_the_rest_to_the_queue(cl):
    cl.backend.install(cl.spec(maxelem=1))
    cl.bind()
    with KernelCache("iptables", 300, netns=cl.gw) as cache:
        assert cache.remember([(packed(VMS["vm"][0]), True), (packed(VMS["other"][0]), True)]) == 1
        assert cache.counts == {"added": 1, "present": 0, "full": 1}
        assert cl.attempt("vm", V4, 1) == (["connected"], 0, 1)
        assert cl.attempt("other", V4, 1) == (["connected"], 1, 1)


REMEMBER_INSIDE = """
import socket, sys
from enforcer.dataplane.kernelcache import KernelCache
with KernelCache("iptables", 300) as cache:
    print(cache.remember([(socket.inet_aton(sys.argv[1]), False)]))
"""


def test_the_cache_works_from_a_process_in_the_gateway_namespace(cl):
    """As the worker runs it: a process inside the gateway's namespace, its socket opened there."""
    cl.backend.install(cl.spec())
    cl.bind()
    proc = run_in(cl.gw, [sys.executable, "-c", REMEMBER_INSIDE, VMS["vm"][0]], stdout=subprocess.PIPE, text=True)
    assert proc.communicate(timeout=30)[0].strip() == "1"
    assert cl.attempt("vm", V4, 2) == (["timeout"] * 2, 0, 0)
    assert f"add p25-block4 {VMS['vm'][0]} timeout" in cl.sets()


def test_reinstall_replaces_the_sets_while_rules_name_them_and_remove_leaves_nothing(cl):
    cl.backend.install(cl.spec())
    cl.bind()
    with KernelCache("iptables", 300, netns=cl.gw) as cache:
        cache.remember([(packed(VMS["vm"][0]), False)])
        assert not cl.backend.installed(cl.spec(timeout=30))            # a set with another timeout is not ours
        cl.backend.install(cl.spec(timeout=30))                         # swapped in, empty, while rules name it
        assert cl.backend.installed(cl.spec(timeout=30))
        assert cl.attempt("vm", V4, 1) == (["connected"], 1, 1)         # nothing cached survived
        cache.remember([(packed(VMS["vm"][0]), False)])                # the same socket writes the new sets
        assert cl.attempt("vm", V4, 1)[1:] == (0, 0)
    cl.gateway(["ipset", "create", "someone-else", "hash:ip"], None)
    cl.backend.install(cl.spec(cache=False))                             # without the cache: our sets go
    assert cl.backend.installed(cl.spec(cache=False))
    assert cl.gateway(["ipset", "list", "-n"], None).split() == ["someone-else"]
    assert cl.attempt("vm", V4, 1) == (["connected"], 1, 1)
    cl.backend.install(cl.spec())
    cl.backend.remove()
    assert cl.lab.project_rules() == ""
    assert cl.gateway(["ipset", "list", "-n"], None).split() == ["someone-else"]


def test_a_rule_batch_the_kernel_refuses_leaves_no_set_behind(cl):
    """The sets go in before the rules are tested; when the test fails (here: a queue-balance range iptables
    refuses), the sets made for it are destroyed and nothing else changed."""
    bad = RuleSpec(65535, 2, (25,), (), bypass=False, cache=CacheSpec())
    with pytest.raises(RuleError):
        cl.backend.install(bad)
    assert cl.gateway(["ipset", "list", "-n"], None) == ""
    assert cl.lab.project_rules() == ""


needs_nft = pytest.mark.skipif(shutil.which("nft") is None, reason="nft is not installed (apt-get install nftables)")


def nft_table(spec: RuleSpec) -> str:
    """Our nftables table for `spec`, its queue rule made an accept: this kernel lacks the queue expression, and
    everything before it (the cache's sets and rules) is what is tested here."""
    return NftablesBackend().render(spec).replace(f"queue num {spec.queue}", "accept")


@needs_nft
def test_nftables_cache_sets_decide_in_the_kernel(cl):
    run = cl.gateway
    spec = cl.spec(timeout=2)
    run(["nft", "-f", "-"], nft_table(spec))
    with KernelCache("nftables", 2, netns=cl.gw) as cache:
        assert cl.connect("vm", [V4, V6], 1) == ["connected", "connected"]
        assert cache.remember([(packed(VMS["vm"][0]), False), (packed(VMS["vm"][1]), False)]) == 2
        assert cl.connect("vm", [V4, V6], 1) == ["timeout", "timeout"]
        listing = run(["nft", "list", "set", "inet", "port25_enforcer", "block6"], None)
        assert VMS["vm"][1] in listing and "expires" in listing
        cache.forget([packed(VMS["vm"][0])])
        assert cl.connect("vm", [V4, V6], 1) == ["connected", "timeout"]
        cache.remember([(packed(VMS["vm"][0]), True), (packed(VMS["vm"][0]), False)])
        assert cl.connect("vm", [V4], 1) == ["timeout"]                  # the later verdict wins
        cache.flush()
        assert cl.connect("vm", [V4, V6], 1) == ["connected", "connected"]
        cache.remember([(packed(VMS["vm"][0]), False)])
        assert wait_for(lambda: cl.connect("vm", [V4], 1) == ["connected"], timeout=5, interval=0.5)  # expired
    run(["nft", "delete", "table", "inet", "port25_enforcer"], None)
