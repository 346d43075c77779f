"""Kernel rules through iptables/ip6tables: our own chain in `mangle FORWARD`, tagged jumps into it, each family
installed and removed as one `iptables-restore --noflush` batch.

Every forwarded TCP segment with SYN set (whatever else is set with it) to the restricted ports, and not to
internal destinations, goes to the queue; the profile's tunnel protocols are dropped. A `socket` match in a
second chain of ours (P25-DEFRAG, which nothing jumps to: the rule is never evaluated) makes the kernel reassemble
fragments before any rule sees them (loading the rule turns nf_defrag on in the namespace) without conntrack,
whose per-packet lookup would cost every forwarded packet about a quarter of the gateway's rate. `mangle` runs
before the gateway's own filter rules: a queue verdict of accept resumes at the next table, so what the enforcer
accepts still meets the operator's filtering. Nothing outside our chain is changed, apart from the tagged jumps into it.

With the kernel cache (RuleSpec.cache), four ipsets of our own (hash:ip with a timeout: p25-allow4, p25-block4,
p25-allow6, p25-block6) and, before the queue rule, a rule accepting the family's allowed set and one dropping its
blocked set. An ACCEPT in `mangle` ends only the mangle table's traversal, like a queue verdict of accept, so a
source accepted from the cache still meets the operator's filter rules. The sets exist before the rules that
name them are tested and loaded; they go after the rules that name them.
"""

from __future__ import annotations

import shutil
import socket

from ..netlink import netfilter_socket
from .base import DEFRAG_TAG, TAG, CacheSpec, CacheWriter, RuleBackend, RuleError, RuleSpec
from .ipset import IpsetWriter

# An IPv6 first fragment with more to come, seen in the forward path: the kernel reassembles fragments before any
# rule (P25-DEFRAG), except a first fragment that breaks RFC 7112 (the TCP header not whole in it), which it
# passes on as it came. Its ports may be readable while its flags are not, so no SYN match sees it: dropped.
UNREASSEMBLED = "-m frag --fragfirst --fragmore"
SET_TYPE = "hash:ip"
SET_FAMILY = {4: "inet", 6: "inet6"}


class IptablesBackend(RuleBackend):
    """iptables/ip6tables through iptables-restore --noflush: our chain in mangle, one tagged jump into it."""

    name = "iptables"
    chain = "P25-ENFORCER"
    defrag_chain = "P25-DEFRAG"
    # iptables-save's form of it; xt_socket turns reassembly on when the rule is loaded, wherever it sits
    defrag_rule = f"-A {defrag_chain} -m socket -m comment --comment {DEFRAG_TAG}"
    TOOLS = ("iptables-restore", "iptables-save", "ip6tables-restore", "ip6tables-save")
    cache_sets = {(4, True): "p25-allow4", (4, False): "p25-block4", (6, True): "p25-allow6", (6, False): "p25-block6"}

    def check_tools(self) -> None:
        missing = [t for t in self.TOOLS if shutil.which(t) is None]
        if missing:
            raise RuleError(f"the iptables backend needs {', '.join(missing)}; install it: apt-get install iptables")

    def jumps(self, spec: RuleSpec, version: int) -> list[str]:
        """The tagged jumps into our chain: SYNs to the restricted ports, each dropped and each judged protocol,
        and (IPv6) first fragments that reach the forward path whole: the kernel did not reassemble them."""
        ports = ",".join(map(str, spec.ports))
        syn = f"FORWARD -p tcp -m multiport --dports {ports} --tcp-flags SYN SYN -m comment --comment {TAG} " \
              f"-j {self.chain}"
        protocols = [*spec.dropped_protocols, *spec.judged_protocols]
        jumps = [syn] + [f"FORWARD -p {p} -m comment --comment {TAG} -j {self.chain}" for p in protocols]
        if version == 6:
            jumps.append(f"FORWARD {UNREASSEMBLED} -m comment --comment {TAG} -j {self.chain}")
        return jumps

    def chain_rules(self, spec: RuleSpec, version: int) -> list[str]:
        """Our chain's rules, written the way iptables-save prints them (so that they can be compared)."""
        rules = [f"-A {self.chain} {UNREASSEMBLED} -j DROP"] if version == 6 else []
        rules += [f"-A {self.chain} -p {p} -j DROP" for p in spec.dropped_protocols]
        rules += [f"-A {self.chain} -d {prefix} -j RETURN" for prefix in spec.family(version)]
        if spec.cache is not None:
            rules += [f"-A {self.chain} -m set --match-set {self.cache_sets[version, True]} src -j ACCEPT",
                      f"-A {self.chain} -m set --match-set {self.cache_sets[version, False]} src -j DROP"]
        target = f"--queue-balance {spec.queue}:{spec.queue + spec.queues - 1}" if spec.queues > 1 \
            else f"--queue-num {spec.queue}"
        return rules + [f"-A {self.chain} -j NFQUEUE {target}{' --queue-bypass' if spec.bypass else ''}"]

    def render(self, spec: RuleSpec, version: int, old_jumps: list[str]) -> str:
        """The batch for one family: our chain defined whole, the jumps into it replaced (ports and protocols
        may have changed), in one transaction."""
        lines = ["*mangle", f":{self.chain} - [0:0]", f":{self.defrag_chain} - [0:0]"]
        lines += ["-D" + jump[2:] for jump in old_jumps]
        lines += [f"-I {jump}" for jump in self.jumps(spec, version)]
        lines += self.chain_rules(spec, version)
        lines += [self.defrag_rule, "COMMIT"]
        return "\n".join(lines) + "\n"

    def render_sets(self, cache: CacheSpec, existing: list[str]) -> str:
        """The `ipset restore` batch that puts our four sets in place, empty and with the spec's timeout and size.
        A set that exists already (left by a killed daemon, or named by the rules being replaced) is replaced by
        swapping a new one in, which ipset allows while rules name the set: nothing cached under an older table
        survives an install. `ipset restore` runs its lines in order and stops at the first that fails."""
        lines = []
        for (version, _), name in self.cache_sets.items():
            header = f"{SET_TYPE} family {SET_FAMILY[version]} timeout {cache.timeout} maxelem {cache.maxelem}"
            if name not in existing:
                lines.append(f"create {name} {header}")
                continue
            spare = f"{name}-new"
            if spare in existing:
                lines.append(f"destroy {spare}")
            lines += [f"create {spare} {header}", f"swap {spare} {name}", f"destroy {spare}"]
        return "\n".join(lines) + "\n"

    def _set_names(self) -> list[str]:
        """The ipsets of this network namespace; none where ipset is missing or the kernel has no ipset (then
        there can be none of ours either)."""
        try:
            return self.run(["ipset", "list", "-n"], None).split()
        except RuleError:
            return []

    def _destroy_sets(self, names: list[str]) -> None:
        if names:
            self.run(["ipset", "restore"], "".join(f"destroy {name}\n" for name in names))

    def _sets_match(self, cache: CacheSpec) -> bool:
        """Whether our four sets exist with the spec's type, family, timeout and size (`ipset list -t -o save`:
        one `create` line per set, no members)."""
        try:
            saved = self.run(["ipset", "list", "-t", "-o", "save"], None).splitlines()
        except RuleError:
            return False
        headers = {}
        for line in saved:
            words = line.split()
            if len(words) >= 3 and words[0] == "create":
                headers[words[1]] = (words[2], dict(zip(words[3::2], words[4::2], strict=False)))
        for (version, _), name in self.cache_sets.items():
            kind, options = headers.get(name, ("", {}))
            if kind != SET_TYPE or options.get("family") != SET_FAMILY[version] \
                    or options.get("timeout") != str(cache.timeout) or options.get("maxelem") != str(cache.maxelem):
                return False
        return True

    @staticmethod
    def _tool(version: int, what: str) -> str:
        return f"{'ip6tables' if version == 6 else 'iptables'}-{what}"

    def _saved(self, version: int) -> list[str]:
        return self.run([self._tool(version, "save"), "-t", "mangle"], None).splitlines()

    def _jumps(self, saved: list[str]) -> list[str]:
        return [line for line in saved if line.startswith("-A FORWARD") and f"-j {self.chain}" in line]

    def install(self, spec: RuleSpec) -> None:
        """Both families' batches are tested first, so that one the kernel refuses changes neither family. With
        the cache, our sets go in (empty) before the test, which needs them; if the test fails, the sets it made
        are destroyed again (sets that were there stay, emptied: an empty cache is always safe). Without the
        cache, sets left from a run with it are destroyed once no rule names them."""
        batches = {version: self.render(spec, version, self._jumps(self._saved(version))) for version in (4, 6)}
        existing = self._set_names()
        ours = [name for name in self.cache_sets.values() if name in existing]
        if spec.cache is not None:
            self.run(["ipset", "restore"], self.render_sets(spec.cache, existing))
        try:
            for version, batch in batches.items():
                self.run([self._tool(version, "restore"), "--noflush", "--test"], batch)
        except RuleError:
            if spec.cache is not None:
                self._destroy_sets([name for name in self.cache_sets.values() if name not in ours])
            raise
        for version, batch in batches.items():
            self.run([self._tool(version, "restore"), "--noflush"], batch)
        if spec.cache is None:
            self._destroy_sets(ours)

    def installed(self, spec: RuleSpec) -> bool:
        """Both families hold exactly our jumps (one for the SYNs, with the right ports, one per dropped and judged
        protocol, IPv6's for unreassembled fragments) and exactly our chain's rules; with the cache, our four sets
        exist as the spec says."""
        ports = f"--dports {','.join(map(str, spec.ports))} "
        wanted_protocols = sorted([*spec.dropped_protocols, *spec.judged_protocols])
        for version in (4, 6):
            saved = [_numeric_protocol(line) for line in self._saved(version)]
            jumps = self._jumps(saved)
            syn = [j for j in jumps if " -p 6 " in j]
            fragments = [j for j in jumps if UNREASSEMBLED in j]
            protocols = sorted(int(j.split()[3]) for j in jumps if " -p 6 " not in j and j not in fragments)
            chain = [line for line in saved if line.startswith(f"-A {self.chain} ")]
            defrag = [line for line in saved if line.startswith(f"-A {self.defrag_chain} ")]
            if len(syn) != 1 or ports not in syn[0] or protocols != wanted_protocols \
                    or len(fragments) != (version == 6) \
                    or chain != [_numeric_protocol(r) for r in self.chain_rules(spec, version)] \
                    or defrag != [self.defrag_rule]:
                return False
        return spec.cache is None or self._sets_match(spec.cache)

    def remove(self) -> None:
        for version in (4, 6):
            saved = self._saved(version)
            jumps = self._jumps(saved)
            chains = [c for c in (self.chain, self.defrag_chain) if any(line.startswith(f":{c} ") for line in saved)]
            if not jumps and not chains:
                continue
            batch = ["*mangle"] + ["-D" + line[2:] for line in jumps]
            for chain in chains:
                batch += [f"-F {chain}", f"-X {chain}"]
            self.run([self._tool(version, "restore"), "--noflush"], "\n".join(batch + ["COMMIT"]) + "\n")
        existing = self._set_names()  # the kernel cache's sets, once no rule of ours names them
        self._destroy_sets([name for name in self.cache_sets.values() if name in existing])

    def cache_writer(self, timeout: int, netns: str | None = None, sock: socket.socket | None = None) -> CacheWriter:
        return IpsetWriter(self.cache_sets, timeout, sock or netfilter_socket(netns))


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
