"""Native nftables: one table of our own, replaced whole in one transaction. Needs the nft `queue` expression
(CONFIG_NFT_QUEUE), which some kernels lack."""

from __future__ import annotations

import shutil

from .base import DEFRAG_TAG, TAG, RuleBackend, RuleError, RuleSpec


class NftablesBackend(RuleBackend):
    name = "nftables"
    table = "port25_enforcer"

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
        body = [f"table inet {self.table} {{", f"  comment \"{TAG}\"", "  chain forward {",
                "    type filter hook forward priority mangle; policy accept;",
                f"    ct state invalid counter comment \"{DEFRAG_TAG}\""]
        if spec.dropped_protocols:
            body.append(f"    meta l4proto {{ {', '.join(map(str, spec.dropped_protocols))} }} drop")
        if internal4:
            body.append(f"    ip daddr {{ {internal4} }} return")
        if internal6:
            body.append(f"    ip6 daddr {{ {internal6} }} return")
        body += [f"    tcp dport {{ {ports} }} tcp flags & syn == syn queue num {num}{flags}",
                 "  }", "}"]
        # add + delete + define: replaces the table whole, atomically, whether or not it existed
        return f"add table inet {self.table}\ndelete table inet {self.table}\n" + "\n".join(body) + "\n"

    def install(self, spec: RuleSpec) -> None:
        self.run(["nft", "-f", "-"], self.render(spec))

    def installed(self, spec: RuleSpec) -> bool:
        try:
            return "queue" in self.run(["nft", "list", "table", "inet", self.table], None)
        except RuleError:
            return False

    def remove(self) -> None:
        self.run(["nft", "-f", "-"], f"add table inet {self.table}\ndelete table inet {self.table}\n")
