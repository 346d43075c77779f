"""The fleet lab (`enforcer lab up --gateways N --etcd-members M`, `lab demo --fleet`): the namespace lab with its
state in a real M-member etcd cluster and N gateways, each running `enforcer run --state etcd://...` for its share
of the VNets (all the VMs of a VNet behind one gateway), all following the one policy by watch.

    member  <tag>-etcdK  ctl 198.19.253.1K/24 ─┐
    gateway <tag>-gwK    ctl 198.19.253.10K/24 ─┤ bridge in <tag>-ctl (the lab's control network)
    this host's <tag>-ctl link 198.19.253.1/24 ─┘ (the operator's CLI; more specific than the host's unreachable
                                                   198.18.0.0/15, so only this /24 is reachable, and only here)
    gateway <tag>-gwK  inet 198.19.25.K/24 ──── bridge in <tag>-inet, the internet host's 198.19.25.25/24
                                                (its route back to each VM: via that VM's gateway)

Everything carries the lab's tag: `lab down` (netns.remove_tagged) ends the members with everything else, and the
host's control link goes with the <tag>-ctl namespace. docs/architecture.md, "The fleet lab", says why.
"""

from __future__ import annotations

import ipaddress
import itertools
import subprocess
import time
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, NetNS

from ..dataplane.control import ask
from ..errors import UserError
from .etcd_cluster import EtcdCluster, Member, need_binaries
from .namespace_lab import LabError, NamespaceLab
from .files import host_address
from .netns import IFA_F_NODAD, Host, Topology, guard_lab_ranges

CONTROL = ipaddress.ip_network("198.19.253.0/24")  # the control network: in no lab file, not Vagrant's 198.19.254
HOST_ADDRESS = CONTROL.network_address + 1
MEMBER_BASE, GATEWAY_BASE = 10, 100               # etcdK is .1K, gwK .10K
CLIENT_PORT, PEER_PORT = 2379, 2380
PREFIX = "lab"                                    # the state's prefix in the lab's etcd
MAX_MEMBERS = 7
# A lab's etcd kept small: history compacted to the last 1000 revisions (checked every 5 minutes by etcd 3.4), a
# snapshot every 10,000 entries rather than 100,000 (less memory), a 256 MiB quota (the lab file's state is ~100
# KB; a runaway loop is stopped long before the disk fills). docs/architecture.md, "The fleet lab".
ETCD_OPTIONS = ("--auto-compaction-mode", "revision", "--auto-compaction-retention", "1000",
                "--snapshot-count", "10000", "--quota-backend-bytes", str(256 * 2**20))
PARTITION = "enforcer lab partition"              # the comment on a cut's rules
APPLY_WAIT = 15.0                                 # seconds the lab waits for every gateway to apply a change


def check_fleet(gateways: int, members: int, doc: dict[str, Any]) -> None:
    """The fleet's sizes, and what it needs of this host, refused in one line before anything is made."""
    vnets = vnet_count(doc)
    if gateways < 1:
        raise UserError(f"--gateways {gateways}: give 1 or more")
    if gateways > vnets:
        raise UserError(f"--gateways {gateways}: the lab file has {vnets} VNet(s), and each gateway serves whole "
                        f"VNets; give at most {vnets}")
    if members < 1 or members > MAX_MEMBERS or members % 2 == 0:
        raise UserError(f"--etcd-members {members}: give an odd number from 1 to {MAX_MEMBERS} (an even one "
                        "survives no more member failures than one less)")
    need_binaries()
    taken = control_in_use()
    if taken is not None:
        raise UserError(f"the fleet lab's control network {CONTROL} is on this host's link {taken} already: another "
                        "fleet lab is up (enforcer lab status --dir DIR); take it down first")


def shares(doc: dict[str, Any], gateways: int) -> dict[str, list[str]]:
    """Which resources each gateway serves: the lab file's VNets dealt out in turn (a VNet's resources all behind
    one gateway); a resource in no VNet behind the first."""
    vnets = [str(v["name"]) for v in doc.get("vnets") or []]
    served: dict[str, list[str]] = {f"gw{k}": [] for k in range(1, gateways + 1)}
    for r in doc.get("resources") or []:
        vnet = r.get("vnet")
        k = vnets.index(vnet) % gateways + 1 if vnet in vnets else 1
        served[f"gw{k}"].append(str(r["name"]))
    return served


def vnet_count(doc: dict[str, Any]) -> int:
    return len(doc.get("vnets") or [])


def control_in_use() -> str | None:
    """The host's link already on the control network (another fleet lab is up), or None."""
    with IPRoute() as host:
        for a in host.get_addr(family=2):
            if ipaddress.ip_address(a.get_attr("IFA_ADDRESS")) in CONTROL:
                return str(a.get_attr("IFA_LABEL"))
    return None


def in_namespace(namespace: str, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """A command in a lab namespace, as `ip netns exec` runs it (no Python between fork and exec: this process may
    hold a gRPC channel)."""
    return subprocess.run(["ip", "netns", "exec", namespace, *argv], input=stdin, capture_output=True, text=True,
                          timeout=30)


def side(address: str, k: int, taken: list[str]) -> tuple[str, int]:
    """Gateway k's address on the internet host's network: the k-th of its /24 (/64) that no host holds."""
    ip = ipaddress.ip_address(address)
    plen = 24 if ip.version == 4 else 64
    net = ipaddress.ip_network(f"{address}/{plen}", strict=False)
    held = {ipaddress.ip_address(a) for a in taken}
    free = (a for a in itertools.islice(net.hosts(), 2**16) if a not in held)
    return str(next(itertools.islice(free, k - 1, None))), plen


class FleetTopology(Topology):
    """N gateways, each serving its VMs; M etcd members; the control network joining them and this host."""

    def __init__(self, tag: str, internet: list[str], gateways: int, members: int):
        super().__init__(tag, internet)
        self.gateways = [Host(f"gw{k}", [str(CONTROL.network_address + GATEWAY_BASE + k)],
                              namespace=f"{tag}-gw{k}") for k in range(1, gateways + 1)]
        self.gateway = self.gateways[0]
        self.members = [Host(f"etcd{k}", [str(CONTROL.network_address + MEMBER_BASE + k)],
                             namespace=f"{tag}-etcd{k}") for k in range(1, members + 1)]
        self.control = f"{tag}-ctl"
        self.control_link = f"{tag}-ctl"  # this host's end (at most 15 characters: tags are at most 11)
        self.serving: dict[str, Host] = {}  # VM name -> its gateway

    @property
    def routers(self) -> list[Host]:
        return self.gateways

    def gateway_of(self, host: Host) -> Host:
        return self.serving.get(host.name, self.gateway)

    def serve(self, served: dict[str, list[str]]) -> None:
        by_name = {g.name: g for g in self.gateways}
        self.serving = {vm: by_name[gw] for gw, vms in served.items() for vm in vms}

    # ------------------------------------------------------------ the control network

    def control_up(self) -> None:
        """The control network's bridge, this host's link to it, and each member's namespace on it (what etcd
        needs before the rest of the lab exists: the lab file is applied to it first)."""
        guard_lab_ranges()
        try:
            self._create(self.control)
            with NetNS(self.control) as c:
                c.link("add", ifname="br0", kind="bridge")
                c.link("set", index=c.link_lookup(ifname="br0")[0], state="up")
            with IPRoute() as host:
                host.link("add", ifname=self.control_link, kind="veth",
                          peer={"ifname": "host", "net_ns_fd": self.control})
                hi = host.link_lookup(ifname=self.control_link)[0]
                host.addr("add", index=hi, address=str(HOST_ADDRESS), prefixlen=CONTROL.prefixlen)
                host.link("set", index=hi, state="up")
            self._bridge("host")
            for m in self.members:
                self._create(m.namespace)
                self._join(m)
        except BaseException:
            self.down()
            raise

    def _bridge(self, port: str) -> None:
        with NetNS(self.control) as c:
            c.link("set", index=c.link_lookup(ifname=port)[0], master=c.link_lookup(ifname="br0")[0], state="up")

    def _join(self, host: Host) -> None:
        """`host` on the control network: its interface ctl, the bridge's port named after it."""
        with NetNS(self.control) as c:
            c.link("add", ifname=host.name, kind="veth", peer={"ifname": "ctl", "net_ns_fd": host.namespace})
        self._bridge(host.name)
        with NetNS(host.namespace) as h:
            i = h.link_lookup(ifname="ctl")[0]
            h.addr("add", index=i, address=host.addresses[0], prefixlen=CONTROL.prefixlen)
            h.link("set", index=i, state="up")

    # ------------------------------------------------------------ building

    def up(self) -> None:
        """The lab's hosts (Topology.up, with a gateway per share), then each gateway on the control network, where
        it forwards nothing: a VM never reaches etcd."""
        super().up()
        try:
            for g in self.gateways:
                self._join(g)
                done = in_namespace(g.namespace, ["iptables", "-I", "FORWARD", "-o", "ctl", "-j", "DROP"])
                if done.returncode:
                    raise LabError(f"iptables in {g.namespace}: {done.stderr.strip()}")
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        super().down()
        remove_control_link(self.tag)

    def _wire_internet(self) -> None:
        """The internet host on a bridge of its own with every gateway's inet link; its default route through the
        first gateway, and a route to each VM through that VM's gateway (the way back crosses the way out)."""
        inet = self.internet
        with NetNS(inet.namespace) as i:
            i.link("add", ifname="br0", kind="bridge")
            bridge = i.link_lookup(ifname="br0")[0]
            for address in inet.addresses:
                _, plen = side(address, 1, inet.addresses)
                i.addr("add", index=bridge, address=address, prefixlen=plen, flags=IFA_F_NODAD if ":" in address else 0)
            i.link("set", index=bridge, state="up")
        for k, g in enumerate(self.gateways, 1):
            with NetNS(g.namespace) as gw:
                gw.link("add", ifname="inet", kind="veth", peer={"ifname": g.name, "net_ns_fd": inet.namespace})
                gi = gw.link_lookup(ifname="inet")[0]
                for address in inet.addresses:
                    mine, plen = side(address, k, inet.addresses)
                    gw.addr("add", index=gi, address=mine, prefixlen=plen, flags=IFA_F_NODAD if ":" in mine else 0)
                gw.link("set", index=gi, state="up")
            with NetNS(inet.namespace) as i:
                i.link("set", index=i.link_lookup(ifname=g.name)[0], master=bridge, state="up")
        with NetNS(inet.namespace) as i:
            for address in inet.addresses:
                six = ":" in address
                i.route("add", dst="::/0" if six else "0.0.0.0/0", gateway=side(address, 1, inet.addresses)[0])
            for vm in self.vms.values():
                k = self.gateways.index(self.gateway_of(vm)) + 1
                for a in vm.addresses:
                    six = ":" in a
                    via = next((x for x in inet.addresses if (":" in x) == six), None)
                    if via is not None:
                        i.route("add", dst=f"{host_address(a)}/{128 if six else 32}",
                                gateway=side(via, k, inet.addresses)[0])


class FleetLab(NamespaceLab):
    """The namespace lab with its state in an etcd cluster of its own and a daemon on each of its gateways."""

    def __init__(self, workdir: Path, internet: list[str], tag: str, gateways: int, members: int,
                 served: dict[str, list[str]]):
        super().__init__(workdir, internet, tag=tag)
        self.topology: FleetTopology = FleetTopology(self.tag, internet, gateways, members)
        self.topology.serve(served)
        self.cluster = EtcdCluster([Member(m.name, m.addresses[0], CLIENT_PORT, PEER_PORT, workdir / "etcd" / m.name,
                                           namespace=m.namespace) for m in self.topology.members],
                                   token=self.tag, options=ETCD_OPTIONS)
        self.state = self.cluster.url(PREFIX)
        self.logs = workdir / "gateway-logs"
        self.socket = self.control_socket(self.topology.gateway.name)
        self.store_up = False

    @property
    def gateways(self) -> list[Host]:
        return self.topology.gateways

    def control_socket(self, gateway: str) -> str:
        return str(self.workdir / f"control-{gateway}.sock")

    def log_of(self, gateway: str) -> Path:
        return self.logs / f"{gateway}.log"

    def daemon_logs(self) -> list[Path]:
        return [self.log_of(g.name) for g in self.gateways]

    # ------------------------------------------------------------ building

    def start_store(self) -> None:
        """The control network and the etcd cluster on it, healthy with a leader."""
        need_binaries()
        self.topology.control_up()
        self.cluster.start()
        self.store_up = True

    def apply(self, path: str, doc: dict[str, Any]) -> list[str]:
        if not self.store_up:
            self.start_store()
        return super().apply(path, doc)

    def start_daemons(self) -> None:
        """`enforcer run --state etcd://... --gateway-name gwK` on every gateway, each ready before the next."""
        self.logs.mkdir(parents=True, exist_ok=True)
        for g in self.gateways:
            self.start_enforcer(g, self.control_socket(g.name), self.log_of(g.name), [], "--gateway-name", g.name)

    # ------------------------------------------------------------ the gateways' view

    def status_of(self, gateway: str) -> dict[str, Any] | None:
        answer = ask(self.control_socket(gateway), {"cmd": "status"}, timeout=2.0)
        return answer if answer and answer.get("ok") else None

    def generation(self) -> int:
        store = self.open_state()
        try:
            return store.generation()
        finally:
            store.close()

    def wait_gateways(self, target: int | None = None, gateways: list[str] | None = None,
                      timeout: float = APPLY_WAIT) -> dict[str, float | None]:
        """Seconds until each gateway's table holds `target` (the state's last change by default), asked through
        its control socket; None for a gateway that did not in `timeout`. The one place the lab waits for the
        fleet (each gateway's own time, which the demo says; `--wait` on the CLI answers the same question from the
        gateways' keys in etcd)."""
        target = self.generation() if target is None else target
        waiting = set(gateways or [g.name for g in self.gateways])
        took: dict[str, float | None] = {name: None for name in waiting}
        started = time.monotonic()
        while waiting and time.monotonic() - started < timeout:
            for name in sorted(waiting):
                live = self.status_of(name)
                if live is not None and live["generation"] >= target:
                    took[name] = time.monotonic() - started
                    waiting.discard(name)
            if waiting:
                time.sleep(0.02)
        return took

    def wait_synced(self, timeout: float = APPLY_WAIT, poll: float = 0.02) -> float:
        took = self.wait_gateways(timeout=timeout)
        late = sorted(name for name, seconds in took.items() if seconds is None)
        if late:
            raise LabError(f"gateway(s) {', '.join(late)} did not apply generation {self.generation()} within "
                           f"{timeout:g} s")
        return max(s for s in took.values() if s is not None)

    def partition(self, gateway: str, cut: bool) -> None:
        partition(self.topology.gateways[int(gateway[2:]) - 1].namespace, cut)

    def close(self) -> None:
        super().close()
        self.cluster.close()


def fleet_record(lab: FleetLab) -> dict[str, Any]:
    """What `lab up` records of a fleet lab besides a lab's usual record: each gateway, each member, the
    control network."""
    return {"dir": str(lab.workdir),
            "gateways": {g.name: {"namespace": g.namespace, "socket": lab.control_socket(g.name),
                                  "log": str(lab.log_of(g.name)), "address": g.addresses[0],
                                  "serves": sorted(vm for vm, gw in lab.topology.serving.items() if gw is g)}
                         for g in lab.gateways},
            "etcd": {"members": [{"name": m.name, "namespace": m.namespace, "endpoint": m.endpoint, "dir": str(m.dir)}
                                 for m in lab.cluster.members],
                     "control": str(CONTROL), "host": str(HOST_ADDRESS), "link": lab.topology.control_link}}


def remove_control_link(tag: str) -> bool:
    """This host's end of a fleet lab's control network, deleted (its peer goes with it). The namespace's removal
    takes it too, but only once the kernel has cleaned the namespace up, which may be seconds later."""
    with IPRoute() as host:
        found = host.link_lookup(ifname=f"{tag}-ctl")
        for index in found:
            host.link("del", index=index)
    return bool(found)


def cluster_of(record: dict[str, Any]) -> EtcdCluster:
    """The etcd cluster of a fleet lab that is up (its members found by their namespaces)."""
    members = []
    for m in record["etcd"]["members"]:
        host, port = m["endpoint"].rsplit(":", 1)
        members.append(Member(m["name"], host, int(port), PEER_PORT, Path(m["dir"]), namespace=m["namespace"]))
    return EtcdCluster(members, token=record["tag"], options=ETCD_OPTIONS)


def partition(namespace: str, cut: bool) -> bool:
    """Cut a gateway off from etcd (every packet in or out of its control link dropped, as a partition does), or
    heal the cut; returns whether anything changed."""
    rules = [f"INPUT -i ctl -m comment --comment \"{PARTITION}\" -j DROP",
             f"OUTPUT -o ctl -m comment --comment \"{PARTITION}\" -j DROP"]
    if cut == is_cut(namespace):
        return False
    verb = "-I" if cut else "-D"
    batch = "*filter\n" + "".join(f"{verb} {rule}\n" for rule in rules) + "COMMIT\n"
    done = in_namespace(namespace, ["iptables-restore", "--noflush"], stdin=batch)
    if done.returncode:
        raise LabError(f"iptables-restore in {namespace}: {done.stderr.strip()}")
    return True


def is_cut(namespace: str) -> bool:
    done = in_namespace(namespace, ["iptables", "-S", "INPUT"])
    return PARTITION in done.stdout
