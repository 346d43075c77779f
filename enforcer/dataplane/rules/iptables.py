"""Kernel rules through iptables/ip6tables: our own chain in `mangle FORWARD`, one tagged jump into it, each
family installed and removed as one `iptables-restore --noflush` batch.

Only pure SYNs (SYN set; ACK, RST, FIN clear) of forwarded TCP to the restricted ports, and not to internal
destinations, go to the queue. `mangle` runs before the gateway's own filter rules: a queue verdict of accept
resumes at the next table, so what the enforcer accepts still meets the operator's filtering. Nothing outside
our chain is changed, apart from the one tagged jump into it.
"""

from __future__ import annotations

import shutil

from .base import TAG, RuleBackend, RuleError, RuleSpec


class IptablesBackend(RuleBackend):
    """iptables/ip6tables through iptables-restore --noflush: our chain in mangle, one tagged jump into it."""

    name = "iptables"
    chain = "P25-ENFORCER"
    TOOLS = ("iptables-restore", "iptables-save", "ip6tables-restore", "ip6tables-save")

    def check_tools(self) -> None:
        missing = [t for t in self.TOOLS if shutil.which(t) is None]
        if missing:
            raise RuleError(f"the iptables backend needs {', '.join(missing)}; install it: apt-get install iptables")

    def _jump(self, spec: RuleSpec) -> str:
        ports = ",".join(map(str, spec.ports))
        return (f"FORWARD -p tcp -m multiport --dports {ports} --tcp-flags SYN,ACK,RST,FIN SYN "
                f"-m comment --comment {TAG} -j {self.chain}")

    def chain_rules(self, spec: RuleSpec, version: int) -> list[str]:
        """Our chain's rules, written the way iptables-save prints them (so that they can be compared)."""
        rules = [f"-A {self.chain} -d {prefix} -j RETURN" for prefix in spec.family(version)]
        target = f"--queue-balance {spec.queue}:{spec.queue + spec.queues - 1}" if spec.queues > 1 \
            else f"--queue-num {spec.queue}"
        return rules + [f"-A {self.chain} -j NFQUEUE {target}{' --queue-bypass' if spec.bypass else ''}"]

    def render(self, spec: RuleSpec, version: int, old_jumps: list[str]) -> str:
        """The batch for one family: our chain defined whole, the jump into it replaced (its ports may have
        changed), in one transaction."""
        lines = ["*mangle", f":{self.chain} - [0:0]"]
        lines += ["-D" + jump[2:] for jump in old_jumps]
        lines.append(f"-I {self._jump(spec)}")
        lines += self.chain_rules(spec, version)
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _tool(version: int, what: str) -> str:
        return f"{'ip6tables' if version == 6 else 'iptables'}-{what}"

    def _saved(self, version: int) -> list[str]:
        return self.run([self._tool(version, "save"), "-t", "mangle"], None).splitlines()

    def _jumps(self, saved: list[str]) -> list[str]:
        return [line for line in saved if line.startswith("-A FORWARD") and f"-j {self.chain}" in line]

    def install(self, spec: RuleSpec) -> None:
        for version in (4, 6):
            old_jumps = self._jumps(self._saved(version))
            self.run([self._tool(version, "restore"), "--noflush"], self.render(spec, version, old_jumps))

    def installed(self, spec: RuleSpec) -> bool:
        """Both families hold exactly one jump, for the right ports, and exactly our chain's rules."""
        ports = f"--dports {','.join(map(str, spec.ports))} "
        for version in (4, 6):
            saved = self._saved(version)
            jumps = self._jumps(saved)
            chain = [line for line in saved if line.startswith(f"-A {self.chain} ")]
            if len(jumps) != 1 or ports not in jumps[0] or chain != self.chain_rules(spec, version):
                return False
        return True

    def remove(self) -> None:
        for version in (4, 6):
            saved = self._saved(version)
            jumps = self._jumps(saved)
            has_chain = any(line.startswith(f":{self.chain} ") for line in saved)
            if not jumps and not has_chain:
                continue
            batch = ["*mangle"] + ["-D" + line[2:] for line in jumps]
            if has_chain:
                batch += [f"-F {self.chain}", f"-X {self.chain}"]
            self.run([self._tool(version, "restore"), "--noflush"], "\n".join(batch + ["COMMIT"]) + "\n")
