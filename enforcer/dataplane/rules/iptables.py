"""Kernel rules through iptables/ip6tables: our own chain in `mangle FORWARD`, tagged jumps into it, each family
installed and removed as one `iptables-restore --noflush` batch.

Every forwarded TCP segment with SYN set (whatever else is set with it) to the restricted ports, and not to
internal destinations, goes to the queue; the profile's tunnel protocols are dropped. A conntrack match in our
chain makes the kernel reassemble fragments before the rules see them. `mangle` runs before the gateway's own
filter rules: a queue verdict of accept resumes at the next table, so what the enforcer accepts still meets the
operator's filtering. Nothing outside our chain is changed, apart from the tagged jumps into it.
"""

from __future__ import annotations

import shutil
import socket

from .base import DEFRAG_TAG, TAG, RuleBackend, RuleError, RuleSpec


class IptablesBackend(RuleBackend):
    """iptables/ip6tables through iptables-restore --noflush: our chain in mangle, one tagged jump into it."""

    name = "iptables"
    chain = "P25-ENFORCER"
    TOOLS = ("iptables-restore", "iptables-save", "ip6tables-restore", "ip6tables-save")

    def check_tools(self) -> None:
        missing = [t for t in self.TOOLS if shutil.which(t) is None]
        if missing:
            raise RuleError(f"the iptables backend needs {', '.join(missing)}; install it: apt-get install iptables")

    def jumps(self, spec: RuleSpec) -> list[str]:
        """The tagged jumps into our chain: SYNs to the restricted ports, and each dropped protocol."""
        ports = ",".join(map(str, spec.ports))
        syn = f"FORWARD -p tcp -m multiport --dports {ports} --tcp-flags SYN SYN -m comment --comment {TAG} " \
              f"-j {self.chain}"
        return [syn] + [f"FORWARD -p {p} -m comment --comment {TAG} -j {self.chain}" for p in spec.dropped_protocols]

    def chain_rules(self, spec: RuleSpec, version: int) -> list[str]:
        """Our chain's rules, written the way iptables-save prints them (so that they can be compared)."""
        rules = [f"-A {self.chain} -m conntrack --ctstate INVALID -m comment --comment {DEFRAG_TAG}"]
        rules += [f"-A {self.chain} -p {p} -j DROP" for p in spec.dropped_protocols]
        rules += [f"-A {self.chain} -d {prefix} -j RETURN" for prefix in spec.family(version)]
        target = f"--queue-balance {spec.queue}:{spec.queue + spec.queues - 1}" if spec.queues > 1 \
            else f"--queue-num {spec.queue}"
        return rules + [f"-A {self.chain} -j NFQUEUE {target}{' --queue-bypass' if spec.bypass else ''}"]

    def render(self, spec: RuleSpec, version: int, old_jumps: list[str]) -> str:
        """The batch for one family: our chain defined whole, the jumps into it replaced (ports and protocols
        may have changed), in one transaction."""
        lines = ["*mangle", f":{self.chain} - [0:0]"]
        lines += ["-D" + jump[2:] for jump in old_jumps]
        lines += [f"-I {jump}" for jump in self.jumps(spec)]
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
        """Both families' batches are tested first, so that one the kernel refuses changes neither family."""
        batches = {version: self.render(spec, version, self._jumps(self._saved(version))) for version in (4, 6)}
        for version, batch in batches.items():
            self.run([self._tool(version, "restore"), "--noflush", "--test"], batch)
        for version, batch in batches.items():
            self.run([self._tool(version, "restore"), "--noflush"], batch)

    def installed(self, spec: RuleSpec) -> bool:
        """Both families hold exactly our jumps (one for the SYNs, with the right ports, one per dropped protocol)
        and exactly our chain's rules."""
        ports = f"--dports {','.join(map(str, spec.ports))} "
        wanted_protocols = sorted(spec.dropped_protocols)
        for version in (4, 6):
            saved = [_numeric_protocol(line) for line in self._saved(version)]
            jumps = self._jumps(saved)
            syn = [j for j in jumps if " -p 6 " in j]
            protocols = sorted(int(j.split()[3]) for j in jumps if " -p 6 " not in j)
            chain = [line for line in saved if line.startswith(f"-A {self.chain} ")]
            if len(syn) != 1 or ports not in syn[0] or protocols != wanted_protocols \
                    or chain != [_numeric_protocol(r) for r in self.chain_rules(spec, version)]:
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


def _numeric_protocol(line: str) -> str:
    """iptables-save names protocols from /etc/protocols (`-p gre`); compare by number (`-p 47`)."""
    words = line.split(" ")
    for i, word in enumerate(words[:-1]):
        if word == "-p" and not words[i + 1].isdigit():
            try:
                words[i + 1] = str(socket.getprotobyname(words[i + 1]))
            except OSError:
                pass
    return " ".join(words)
