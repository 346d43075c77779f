"""A client / gateway / internet topology in network namespaces, built with pyroute2 (no shelling out to ip).

Every host is a namespace named `<tag>-<host>`. Each VM has its own veth to the gateway, so that every packet
between VMs crosses the gateway's FORWARD path like it does on a routed lab network:

    VM  eth0 198.18.1.10/32 ──── gateway  v<n> 198.18.0.1/32, fe80::1   (routes VM/32, VM/128 via v<n>)
    internet eth0 198.19.25.25/24 ──── gateway inet 198.19.25.1/24

All namespaces carrying the tag are removed by down(), also after a crash of up().
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from pyroute2 import IPRoute, NetNS, netns

from .files import host_address
from pyroute2.netlink.exceptions import NetlinkError

GATEWAY4 = "198.18.0.1"   # the gateway's address on every VM link (the VMs' default route)
GATEWAY6 = "fe80::1"
IFA_F_NODAD = 0x02        # IPv6 addresses usable at once, no duplicate address detection wait
# Every lab address comes from these; the host routes them nowhere (see guard_lab_ranges).
LAB_RANGES = ("198.18.0.0/15", "2001:db8::/32")
RTN_UNREACHABLE = 7
# where `ip netns exec NAME` finds the files it binds over /etc for that namespace (resolv.conf: the lab's DNS)
NETNS_ETC = "/etc/netns"
EEXIST = 17


def guard_lab_ranges(addresses: Iterable[str] = ()) -> list[str]:
    """Route the lab ranges, and any lab address outside them, to `unreachable` in the host's own routing table,
    so that nothing addressed to a lab host can leave this machine through its default route (a provider once
    picked a lab address for SSH and sent it out that way). Idempotent; the routes stay: they only ever refuse.
    Returns the prefixes guarded."""
    prefixes = list(LAB_RANGES)
    for a in addresses:
        ip = ipaddress.ip_address(host_address(a))
        if not any(ip in ipaddress.ip_network(p) for p in prefixes):
            prefixes.append(str(ipaddress.ip_network(ip)))
    with IPRoute() as host:
        for prefix in prefixes:
            try:
                host.route("add", dst=prefix, type=RTN_UNREACHABLE)
            except NetlinkError as e:
                if e.code != EEXIST:
                    raise
    return prefixes


@dataclass
class Host:
    name: str
    addresses: list[str]
    namespace: str = ""
    link: str = ""           # the gateway-side interface
    mac: str | None = None   # the host's own interface's MAC (as the inventory registers it), else the kernel's


def gateway_side(address: str) -> tuple[str, int]:
    """The gateway's address on the internet link: .1 of the host's /24 (/64), or .254 if the host is .1."""
    ip = ipaddress.ip_address(address)
    plen = 24 if ip.version == 4 else 64
    net = ipaddress.ip_network(f"{address}/{plen}", strict=False)
    gw = net.network_address + 1
    return str(gw if gw != ip else net.network_address + (254 if ip.version == 4 else 0xfffe)), plen


def in_namespace(name: str) -> Callable[[], None]:
    """preexec_fn for subprocess: enter the namespace before exec."""
    return lambda: netns.setns(name)


def run_in(namespace: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    return subprocess.Popen(argv, preexec_fn=in_namespace(namespace), **kwargs)


def exec_in(namespace: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """Run a command as `ip netns exec` does, for what a person runs on a lab host: besides the network namespace,
    a mount namespace of its own with /etc/netns/NAME's files (resolv.conf) over /etc's, as on the VM itself."""
    return subprocess.Popen(["ip", "netns", "exec", namespace, *argv], **kwargs)


def write_resolv_conf(namespace: str, nameservers: list[str]) -> None:
    directory = os.path.join(NETNS_ETC, namespace)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "resolv.conf"), "w") as f:
        f.write("# the lab's DNS on its internet host (enforcer lab)\n"
                + "".join(f"nameserver {a}\n" for a in nameservers))


def own_module(module: str, *args: str) -> list[str]:
    """The command line that runs one of this package's modules with the interpreter running now, whatever the
    working directory: -P keeps Python from putting it first on the path, where a checkout's unbuilt `enforcer`
    would shadow the installed one (No module named 'enforcer.dataplane._fastpath')."""
    return [sys.executable, "-P", "-m", module, *args]


# one process for every namespace (a process per host would cost a Python start each): it enters each in turn
# (setns(2); /proc/sys/net shows the namespace of the process that opens it) and writes its entries
SYSCTL = """import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for namespace, settings in json.loads(sys.argv[1]).items():
    fd = os.open('/run/netns/' + namespace, os.O_RDONLY)
    if libc.setns(fd, 0x40000000) != 0:
        sys.exit(f'setns {namespace}: ' + os.strerror(ctypes.get_errno()))
    os.close(fd)
    for key, value in settings.items():
        with open('/proc/sys/' + key, 'w') as f:
            f.write(value)
"""
# IPv6 without duplicate address detection on the lab's links: a link-local address is tentative for about a
# second after its link comes up, and a VM's first IPv6 exchange in that second was lost (a lab just up, a DNS
# query to the internet host's IPv6 address: timed out, now and then). The lab's addresses are unique by design.
NO_DAD = {"net/ipv6/conf/default/accept_dad": "0", "net/ipv6/conf/all/accept_dad": "0"}


def sysctl(settings: dict[str, dict[str, str]]) -> None:
    """Write /proc/sys entries as seen from inside each namespace: {namespace: {key: value}}."""
    proc = subprocess.run([sys.executable, "-c", SYSCTL, json.dumps(settings)], capture_output=True, text=True,
                          timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"sysctl failed: {proc.stderr.strip()} ({settings})")


class Topology:
    def __init__(self, tag: str, internet: list[str]):
        self.tag = tag
        self.gateway = Host("gw", [], namespace=f"{tag}-gw")
        self.internet = Host("inet", [host_address(a) for a in internet], namespace=f"{tag}-inet")
        self.vms: dict[str, Host] = {}

    @property
    def routers(self) -> list[Host]:
        """The gateways: one here; the fleet lab's topology has several (fleet.py)."""
        return [self.gateway]

    def gateway_of(self, host: Host) -> Host:
        """The gateway a VM's link leads to."""
        return self.gateway

    def add_vm(self, name: str, addresses: list[str], mac: str | None = None) -> Host:
        index = len(self.vms)
        host = Host(name, [host_address(a) for a in addresses], namespace=f"{self.tag}-{index}",
                    link=f"v{index}", mac=mac)
        self.vms[name] = host
        return host

    # ------------------------------------------------------------ building

    def up(self) -> None:
        guard_lab_ranges(self.internet.addresses + [a for h in self.vms.values() for a in h.addresses])
        try:
            hosts = [self.internet, *self.vms.values()]
            for host in (*self.routers, *hosts):
                self._create(host.namespace)
            forwarding = {"net/ipv4/ip_forward": "1", "net/ipv6/conf/all/forwarding": "1", **NO_DAD}
            sysctl({**{g.namespace: forwarding for g in self.routers}, **{h.namespace: NO_DAD for h in hosts}})
            self._wire_internet()
            for host in self.vms.values():
                self._wire_vm(host)
        except BaseException:
            self.down()
            raise

    def attach(self, name: str, addresses: list[str], mac: str | None = None) -> Host:
        """Add a VM to a topology that is up already."""
        host = self.add_vm(name, addresses, mac)
        self._create(host.namespace)
        sysctl({host.namespace: NO_DAD})
        self._wire_vm(host)
        return host

    def share_segment(self, bridge: str, gateway: str, prefixlen: int,
                      hosts: dict[str, tuple[list[str], str | None]]) -> None:
        """Put IPv4 hosts on one L2 segment, a bridge of the gateway's holding `gateway`/`prefixlen`, as a VNet
        is in the Vagrant lab (there, unlike on their own links, a host can take over another's address by
        ARP). hosts: name -> (addresses, MAC)."""
        with NetNS(self.gateway.namespace) as g:
            g.link("add", ifname=bridge, kind="bridge")
            bi = g.link_lookup(ifname=bridge)[0]
            g.addr("add", index=bi, address=gateway, prefixlen=prefixlen)
            g.link("set", index=bi, state="up")
            for name, (addresses, mac) in hosts.items():
                host = self.add_vm(name, addresses, mac)
                self._create(host.namespace)
                sysctl({host.namespace: NO_DAD})
                g.link("add", ifname=host.link, kind="veth", peer={"ifname": "eth0", "net_ns_fd": host.namespace})
                gi = g.link_lookup(ifname=host.link)[0]
                g.link("set", index=gi, master=bi, state="up")
                with NetNS(host.namespace) as v:
                    vi = v.link_lookup(ifname="eth0")[0]
                    if mac:
                        v.link("set", index=vi, address=mac)
                    v.link("set", index=vi, state="up")
                    for address in host.addresses:
                        v.addr("add", index=vi, address=address, prefixlen=prefixlen)
                    v.route("add", dst="0.0.0.0/0", gateway=gateway, oif=vi)

    def _create(self, name: str) -> None:
        """A namespace with its loopback up, resolving through the lab's DNS on the internet host."""
        netns.create(name)
        write_resolv_conf(name, self.internet.addresses)
        with NetNS(name) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")

    def _wire_internet(self) -> None:
        inet, gw = self.internet, self.gateway
        with NetNS(gw.namespace) as g:
            g.link("add", ifname="inet", kind="veth", peer={"ifname": "eth0", "net_ns_fd": inet.namespace})
            gi = g.link_lookup(ifname="inet")[0]
            with NetNS(inet.namespace) as i:
                ii = i.link_lookup(ifname="eth0")[0]
                for address in inet.addresses:
                    gw_address, plen = gateway_side(address)
                    flags = IFA_F_NODAD if ":" in address else 0
                    g.addr("add", index=gi, address=gw_address, prefixlen=plen, flags=flags)
                    i.addr("add", index=ii, address=address, prefixlen=plen, flags=flags)
                    i.link("set", index=ii, state="up")
                    i.route("add", dst="::/0" if ":" in address else "0.0.0.0/0", gateway=gw_address)
            g.link("set", index=gi, state="up")

    def _wire_vm(self, host: Host) -> None:
        with NetNS(self.gateway_of(host).namespace) as g:
            g.link("add", ifname=host.link, kind="veth", peer={"ifname": "eth0", "net_ns_fd": host.namespace})
            gi = g.link_lookup(ifname=host.link)[0]
            g.addr("add", index=gi, address=GATEWAY4, prefixlen=32)
            g.addr("add", index=gi, address=GATEWAY6, prefixlen=64, flags=IFA_F_NODAD)
            g.link("set", index=gi, state="up")
            with NetNS(host.namespace) as v:
                vi = v.link_lookup(ifname="eth0")[0]
                if host.mac:
                    v.link("set", index=vi, address=host.mac)
                v.link("set", index=vi, state="up")
                for address in host.addresses:
                    six = ":" in address
                    v.addr("add", index=vi, address=address, prefixlen=128 if six else 32,
                           flags=IFA_F_NODAD if six else 0)
                    g.route("add", dst=f"{address}/{128 if six else 32}", oif=gi)
                # prefsrc: host addresses are /32 and /128, so name the source (raw senders such as scapy
                # cannot infer it from an on-link prefix)
                first4 = next((a for a in host.addresses if ":" not in a), None)
                first6 = next((a for a in host.addresses if ":" in a), None)
                v.route("add", dst=f"{GATEWAY4}/32", oif=vi, scope=253, **({"prefsrc": first4} if first4 else {}))
                v.route("add", dst="0.0.0.0/0", gateway=GATEWAY4, oif=vi, **({"prefsrc": first4} if first4 else {}))
                v.route("add", dst="::/0", gateway=GATEWAY6, oif=vi, **({"prefsrc": first6} if first6 else {}))

    def down(self) -> None:
        remove_tagged(self.tag)


def pids_in(name: str) -> list[int]:
    """The processes whose network namespace is the named one."""
    try:
        target = os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == target:
                    found.append(int(entry))
            except OSError:
                pass
    return found


def end_processes(namespaces: list[str]) -> int:
    """Stop every process inside these namespaces (SIGTERM, then SIGKILL for what is left after 5 s), as a
    reboot of those hosts would; returns how many there were."""
    ended = 0
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [pid for n in namespaces for pid in pids_in(n) if pid != os.getpid()]
        ended = max(ended, len(pids))
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while pids and time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
            time.sleep(0.05)
    return ended


def remove_tagged(tag: str) -> list[str]:
    """Stop every process inside, then remove, every namespace whose name starts with `<tag>-`: what a lab
    made, also after a crash that left no record of it."""
    names = [n for n in netns.listnetns() if n.startswith(f"{tag}-")]
    end_processes(names)
    gone = []
    for name in names:
        try:
            netns.remove(name)
            gone.append(name)
        except OSError:
            pass
    # their /etc/netns files too, also those whose namespace a crash already took
    if os.path.isdir(NETNS_ETC):
        for entry in os.listdir(NETNS_ETC):
            if entry.startswith(f"{tag}-"):
                shutil.rmtree(os.path.join(NETNS_ETC, entry), ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(NETNS_ETC)  # only when empty: what we made for the lab, nothing of anyone else's
    return gone


def can_build_namespaces() -> str | None:
    """None when this process can build namespaces, else why not (for test skips)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    probe = f"p25probe{os.getpid()}"
    try:
        netns.create(probe)
        netns.remove(probe)
    except OSError as e:
        return f"network namespaces unavailable: {e}"
    return None
