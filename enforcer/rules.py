"""Kernel rules, one backend per tool, each installed and removed as one atomic batch for IPv4 and IPv6.

Only pure SYNs (SYN set; ACK, RST, FIN clear) of forwarded TCP to the restricted ports, and not to internal
destinations, go to the queue. The rules sit before the gateway's own filter rules (iptables `mangle FORWARD`,
an nft chain of mangle priority): a queue verdict of accept resumes at the next table, so what the enforcer
accepts still meets the operator's filtering. Nothing outside the project's own chain or table is changed,
apart from the one tagged jump into that chain.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from dataclasses import dataclass

from .errors import UserError

TAG = "port25-enforcer"


@dataclass(frozen=True)
class RuleSpec:
    queue: int                  # first queue number
    queues: int                 # how many queues (balanced across them)
    ports: tuple[int, ...]      # the profile's restricted ports
    internal: tuple[str, ...]   # destinations never judged (VNet prefixes, declared ranges)
    bypass: bool                # --when-down allow: accept when no process is bound to the queue

    def family(self, version: int) -> tuple[str, ...]:
        return tuple(p for p in self.internal if ipaddress.ip_network(p).version == version)


class RuleError(UserError):
    pass


def _run(argv: list[str], stdin: str | None = None) -> str:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise RuleError(f"{argv[0]} is missing; install it (apt-get install iptables nftables)") from None
    if done.returncode != 0:
        raise RuleError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


class IptablesBackend:
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
        return _run([self._tool(version, "save"), "-t", "mangle"]).splitlines()

    def _jumps(self, saved: list[str]) -> list[str]:
        return [line for line in saved if line.startswith("-A FORWARD") and f"-j {self.chain}" in line]

    def install(self, spec: RuleSpec) -> None:
        for version in (4, 6):
            old_jumps = self._jumps(self._saved(version))
            _run([self._tool(version, "restore"), "--noflush"], self.render(spec, version, old_jumps))

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
            _run([self._tool(version, "restore"), "--noflush"], "\n".join(batch + ["COMMIT"]) + "\n")


class NftablesBackend:
    """Native nftables: one table of our own, replaced whole in one transaction. Needs the nft `queue`
    expression (CONFIG_NFT_QUEUE), which some kernels lack."""

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
        return subprocess.run(["nft", "--check", "-f", "-"], input=probe, capture_output=True, text=True,
                              timeout=30).returncode == 0

    def render(self, spec: RuleSpec) -> str:
        ports = ", ".join(map(str, spec.ports))
        num = f"{spec.queue}-{spec.queue + spec.queues - 1}" if spec.queues > 1 else str(spec.queue)
        flags = " bypass" if spec.bypass else ""
        internal4 = ", ".join(spec.family(4))
        internal6 = ", ".join(spec.family(6))
        body = [f"table inet {self.table} {{", f"  comment \"{TAG}\"", "  chain forward {",
                "    type filter hook forward priority mangle; policy accept;"]
        if internal4:
            body.append(f"    ip daddr {{ {internal4} }} return")
        if internal6:
            body.append(f"    ip6 daddr {{ {internal6} }} return")
        body += [f"    tcp dport {{ {ports} }} tcp flags & (syn | ack | rst | fin) == syn queue num {num}{flags}",
                 "  }", "}"]
        # add + delete + define: replaces the table whole, atomically, whether or not it existed
        return f"add table inet {self.table}\ndelete table inet {self.table}\n" + "\n".join(body) + "\n"

    def install(self, spec: RuleSpec) -> None:
        _run(["nft", "-f", "-"], self.render(spec))

    def installed(self, spec: RuleSpec) -> bool:
        out = subprocess.run(["nft", "list", "table", "inet", self.table], capture_output=True, text=True)
        return out.returncode == 0 and "queue" in out.stdout

    def remove(self) -> None:
        _run(["nft", "-f", "-"], f"add table inet {self.table}\ndelete table inet {self.table}\n")


BACKENDS = {"iptables": IptablesBackend, "nftables": NftablesBackend}


def choose_backend(name: str) -> IptablesBackend | NftablesBackend:
    """`auto` takes native nftables only where the kernel has the queue expression, else iptables."""
    if name == "auto":
        nft = NftablesBackend()
        backend = nft if nft.supported() else IptablesBackend()
    elif name in BACKENDS:
        backend = BACKENDS[name]()
    else:
        raise UserError(f"unknown backend '{name}'; use auto, iptables or nftables")
    backend.check_tools()
    return backend
