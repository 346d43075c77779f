"""The contract every rule backend keeps, and what they share.

A backend renders the rules for a RuleSpec (pure: `render`, tested without root by asserting the exact batch),
sends them as one atomic batch per family, checks that they are still in place, and removes exactly them.
Every command goes through `run`, so that a test can hand a backend a recorder instead of the real tools.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar

from ...errors import UserError

TAG = "port25-enforcer"
# Why every backend turns on the kernel's defragmentation (iptables: a socket match, which loads nf_defrag alone;
# nftables: conntrack, which brings it): it runs before any rule, so a SYN split into fragments (the first too
# short to hold the TCP flags) is whole again when the rules look at it.
DEFRAG_TAG = f"{TAG}-defragment"
# IPsec: ESP (50) hides the port it carries, and AH (51) puts its header before the TCP header, where nft's
# protocol match stops (iptables-nft too: `-p tcp` does not see a SYN behind AH). No profile documents a rule for
# either, so none can be judged by port: their packets are judged by source, like a SYN to a restricted port. A
# blocked account's resources send neither to the internet; an allowed one's pass (stricter than a platform that
# does not look, never looser).
JUDGED_PROTOCOLS = (50, 51)


@dataclass(frozen=True)
class CacheSpec:
    """The kernel cache (--kernel-cache): per family, a set of allowed and a set of blocked sources that the
    worker fills once it has judged a source; the rules accept or drop a SYN from a source in them in the kernel,
    before the queue rule. A full set only means that more SYNs reach the queue."""
    timeout: int = 300     # seconds an entry lives (kernel_cache_timeout)
    maxelem: int = 65536   # entries per set


@dataclass(frozen=True)
class RuleSpec:
    queue: int                  # first queue number
    queues: int                 # how many queues (balanced across them)
    ports: tuple[int, ...]      # the profile's restricted ports
    internal: tuple[str, ...]   # destinations never judged (VNet prefixes, declared ranges)
    bypass: bool                # --when-down allow: accept when no process is bound to the queue
    dropped_protocols: tuple[int, ...] = ()  # IP protocols (tunnels) dropped whatever they carry
    judged_protocols: tuple[int, ...] = JUDGED_PROTOCOLS  # IP protocols judged by source, every packet
    cache: CacheSpec | None = None  # the kernel cache's sets and the rules that read them, else none

    def family(self, version: int) -> tuple[str, ...]:
        return tuple(p for p in self.internal if ipaddress.ip_network(p).version == version)


class RuleError(UserError):
    pass


Runner = Callable[[list[str], "str | None"], str]


def runner_in(netns: str | None) -> Runner:
    """Run the tools in the named network namespace (ip netns exec), else in this process's own."""
    if netns is None:
        return run_tool
    name = netns

    def run(argv: list[str], stdin: str | None) -> str:
        return run_tool(["ip", "netns", "exec", name, *argv], stdin)
    return run


def run_tool(argv: list[str], stdin: str | None = None) -> str:
    """Run a rule tool; its output, or a RuleError saying what failed."""
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        package = {"ipset": "ipset", "nft": "nftables"}.get(argv[0], "iptables")
        raise RuleError(f"{argv[0]} is missing; install it: apt-get install {package}") from None
    if done.returncode != 0:
        raise RuleError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


class CacheError(RuntimeError):
    """The kernel refused a change to the cache (a set is missing, say). The packet's own verdict is unaffected:
    the caller logs it and goes on; the source's SYNs simply keep reaching the queue."""


class CacheWriter(ABC):
    """What writes a backend's kernel cache sets (`sets`: (IP version, allowed?) -> the set's name), each entry
    living `timeout` seconds; `counts` keeps what remember() did since the start: added, already there (left as
    they were), refused as the set is full. Entries are (IP version, packed address[, allowed?])."""

    def __init__(self, sets: dict[tuple[int, bool], str], timeout: int):
        self.sets, self.timeout = sets, timeout
        self.counts = {"added": 0, "present": 0, "full": 0}

    @abstractmethod
    def remember(self, entries: list[tuple[int, bytes, bool]]) -> int:
        """Into the allowed or blocked set, out of the other one; how many were added."""

    @abstractmethod
    def forget(self, keys: list[tuple[int, bytes]]) -> None:
        """Out of both sets of their family."""

    @abstractmethod
    def flush(self) -> None:
        """Every set emptied."""

    @abstractmethod
    def close(self) -> None:
        """Release what the writer holds (a socket)."""


class RuleBackend(ABC):
    name: ClassVar[str]
    # the kernel cache's sets: (IP version, allowed?) -> the set's name (cache_writer() fills them)
    cache_sets: ClassVar[dict[tuple[int, bool], str]]

    def __init__(self, run: Runner = run_tool):
        self.run = run

    @abstractmethod
    def check_tools(self) -> None:
        """Raise a RuleError saying what to install when this backend cannot work here."""

    @abstractmethod
    def install(self, spec: RuleSpec) -> None:
        """Put the rules for `spec` in place, replacing ours, as one transaction per family."""

    @abstractmethod
    def installed(self, spec: RuleSpec) -> bool:
        """Whether exactly the rules for `spec` are in place."""

    @abstractmethod
    def remove(self) -> None:
        """Remove our rules, and nothing else."""

    @abstractmethod
    def cache_writer(self, timeout: int, netns: str | None = None, sock: socket.socket | None = None) -> CacheWriter:
        """The writer of this backend's kernel cache sets, in the named network namespace (else this process's):
        through `self.run`, or over netlink (`sock`: a NETLINK_NETFILTER socket already open, which the writer
        then owns)."""
