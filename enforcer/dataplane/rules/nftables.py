"""Native nftables: one table of our own, replaced whole in one transaction. Needs the nft `queue` expression
(CONFIG_NFT_QUEUE), which some kernels lack.

With the kernel cache (RuleSpec.cache), four sets inside our table (allow4, block4, allow6, block6, with a timeout
and a size) and, before the queue rule, a rule per set accepting or dropping the SYNs it would queue. Our chain is
a base chain of mangle priority: its accept ends only this chain, so the operator's own filter chains still apply.
Replacing the table whole replaces the sets too, empty."""

from __future__ import annotations

import shutil
import socket

from .base import DEFRAG_TAG, TAG, CacheWriter, RuleBackend, RuleError, RuleSpec
from .nftsets import NftSetWriter


class NftablesBackend(RuleBackend):
    name = "nftables"
    table = "port25_enforcer"
    cache_sets = {(4, True): "allow4", (4, False): "block4", (6, True): "allow6", (6, False): "block6"}

    def check_tools(self) -> None:
        if shutil.which("nft") is None:
            raise RuleError("the nftables backend needs nft; install it: apt-get install nftables")
        if not self.supported():
            raise RuleError("this kernel lacks the nftables 'queue' expression (CONFIG_NFT_QUEUE); "
                            "use --backend iptables (or auto)")

    def supported(self) -> bool:
        """Ask the kernel, without changing anything (nft --check), whether a queue rule would load."""
        probe = (f"table inet {self.table}_probe {{\n chain c {{\n  type filter hook forward priority mangle;\n"
                 f"  tcp dport 25 queue num 0 bypass\n }}\n}}\n")
        if shutil.which("nft") is None:
            return False
        try:
            self.run(["nft", "--check", "-f", "-"], probe)
        except RuleError:
            return False
        return True

    def render(self, spec: RuleSpec) -> str:
        ports = ", ".join(map(str, spec.ports))
        num = f"{spec.queue}-{spec.queue + spec.queues - 1}" if spec.queues > 1 else str(spec.queue)
        flags = " bypass" if spec.bypass else ""
        internal4 = ", ".join(spec.family(4))
        internal6 = ", ".join(spec.family(6))
        body = [f"table inet {self.table} {{", f"  comment \"{TAG}\""]
        if spec.cache is not None:
            for (version, _), name in self.cache_sets.items():
                body.append(f"  set {name} {{ type ipv{version}_addr; flags timeout; timeout {spec.cache.timeout}s; "
                            f"size {spec.cache.maxelem}; }}")
        body += ["  chain forward {", "    type filter hook forward priority mangle; policy accept;",
                f"    ct state invalid counter comment \"{DEFRAG_TAG}\"",
                # an IPv6 first fragment the kernel passed on unreassembled (RFC 7112: its TCP header not whole)
                "    frag frag-off 0 frag more-fragments 1 drop"]
        if spec.dropped_protocols:
            body.append(f"    meta l4proto {{ {', '.join(map(str, spec.dropped_protocols))} }} drop")
        if internal4:
            body.append(f"    ip daddr {{ {internal4} }} return")
        if internal6:
            body.append(f"    ip6 daddr {{ {internal6} }} return")
        judged = [f"tcp dport {{ {ports} }} tcp flags & syn == syn"]  # what the Judge sees
        if spec.judged_protocols:
            judged.append(f"meta l4proto {{ {', '.join(map(str, spec.judged_protocols))} }}")
        for match in judged:
            if spec.cache is not None:
                for (version, allowed), name in self.cache_sets.items():
                    verdict = "accept" if allowed else "drop"
                    body.append(f"    {match} {'ip' if version == 4 else 'ip6'} saddr @{name} {verdict}")
            body.append(f"    {match} queue num {num}{flags}")
        body += ["  }", "}"]
        # add + delete + define: replaces the table whole, atomically, whether or not it existed
        return f"add table inet {self.table}\ndelete table inet {self.table}\n" + "\n".join(body) + "\n"

    def install(self, spec: RuleSpec) -> None:
        self.run(["nft", "-f", "-"], self.render(spec))

    def installed(self, spec: RuleSpec) -> bool:
        """Our table holds a queue rule and, with the cache, its four sets (listed tersely: without their
        elements)."""
        try:
            listing = self.run(["nft", "-t", "list", "table", "inet", self.table], None)
        except RuleError:
            return False
        sets = () if spec.cache is None else self.cache_sets.values()
        return "queue" in listing and all(f"set {name} {{" in listing for name in sets)

    def remove(self) -> None:
        self.run(["nft", "-f", "-"], f"add table inet {self.table}\ndelete table inet {self.table}\n")

    def cache_writer(self, timeout: int, netns: str | None = None, sock: socket.socket | None = None) -> CacheWriter:
        return NftSetWriter(self.cache_sets, timeout, self.table, self.run)
