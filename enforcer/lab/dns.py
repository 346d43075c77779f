"""The lab's DNS: an unbound on the internet host that answers as the internet would for mail. Any domain a
resource asks about has an MX (mx.lab) and A/AAAA records pointing at the internet host, so gmail.com, outlook.com
or a name the user picks all lead to the lab's mail server; the lab's own hosts have names under lab.; a lab file
adds or overrides records (lab.dns.records)."""

from __future__ import annotations

import shutil
from pathlib import Path

from .files import RELAY_NAME, Record, dns_of, is_dns_name

MX_NAME = "mx.lab"
LAB_ZONE = "lab"
UNBOUND = "unbound"


def catch_all(internet: list[str]) -> list[Record]:
    """What every domain has unless a lab file says otherwise: the internet host's addresses and mx.lab."""
    return [*(Record("", "AAAA" if ":" in a else "A", a) for a in internet), Record("", "MX", f"10 {MX_NAME}")]


def lab_hosts(internet: list[str], resources: dict[str, list[str]]) -> dict[str, list[str]]:
    """The lab's names under lab.: the internet host's (internet, mx, the relay) and each resource's, NAME.lab
    (a resource whose name is no DNS label has none)."""
    names = {"internet.lab": internet, MX_NAME: internet, RELAY_NAME: internet}
    names.update({f"{n.lower()}.lab": addresses for n, addresses in resources.items()
                  if is_dns_name(n) and "." not in n})
    return names


def local_data(name: str, record: Record) -> str:
    rdata = f'"{record.value}"' if record.type == "TXT" else record.value
    rdata += "." if record.type == "MX" else ""  # the MX's host is absolute, not relative to the zone
    return f"    local-data: '{name}. {record.type} {rdata}'"


def unbound_config(directory: Path, listen: list[str], internet: list[str], resources: dict[str, list[str]],
                   records: list[Record]) -> str:
    """unbound.conf: listen on `listen` (53, UDP and TCP; freebind: an address a Vagrant VM adds after unbound
    started), answer only from local zones (nothing is ever looked up beyond this machine), run in the foreground as
    root without a chroot (its files are the lab's)."""
    lines = ["server:", f'    directory: "{directory}"', '    chroot: ""', '    username: ""', "    do-daemonize: no",
             f'    pidfile: "{directory / "unbound.pid"}"', "    use-syslog: no", '    logfile: ""', "    verbosity: 1",
             '    module-config: "iterator"', "    port: 53", "    ip-freebind: yes", "    do-ip4: yes",
             "    do-ip6: yes", "    do-udp: yes", "    do-tcp: yes", "    access-control: 0.0.0.0/0 allow",
             "    access-control: ::/0 allow",
             *(f"    interface: {a}" for a in listen)]
    # "." redirect: every name in the world answers with the root's data (the catch-all), and so nothing is ever
    # resolved by recursion; more specific zones below win over it
    lines += ['    local-zone: "." redirect', *(local_data("", r) for r in catch_all(internet))]
    lines += [f'    local-zone: "{LAB_ZONE}." static']
    for name, addresses in lab_hosts(internet, resources).items():
        lines += [local_data(name, Record(name, "AAAA" if ":" in a else "A", a)) for a in addresses]
    by_name: dict[str, list[Record]] = {}
    for r in records:
        by_name.setdefault(r.name, []).append(r)
    for name, own in by_name.items():
        # a named domain keeps the catch-all's records of the types the lab file does not give it (a TXT for SPF
        # leaves its MX leading to the lab); redirect: its subdomains answer as it does, as any other name's do
        kept = [r for r in catch_all(internet) if r.type not in {o.type for o in own}]
        lines += [f'    local-zone: "{name}." redirect', *(local_data(name, r) for r in [*own, *kept])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Write the unbound.conf of a lab file's DNS: what the Vagrant lab's internet host serves (provision/
    internet.sh), the same answers as the namespace lab's.

    python3 -m enforcer.lab.dns --lab vagrant/lab.yml --directory /etc/p25-dns
    """
    import argparse
    import sys

    from ..errors import UserError
    from .files import host_address, read_lab, resources_of
    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0] if main.__doc__ else None)
    parser.add_argument("--lab", type=Path, required=True, help="the lab file")
    parser.add_argument("--directory", type=Path, required=True, help="where unbound.conf and unbound's pid go")
    args = parser.parse_args(argv)
    try:
        path, doc, internet, _ = read_lab(args.lab)
        records = dns_of(path, doc)
    except UserError as e:
        sys.exit(f"enforcer.lab.dns: {e}")
    resources = {name: [host_address(a) for a in addresses] for name, addresses in resources_of(doc).items()}
    args.directory.mkdir(parents=True, exist_ok=True)
    (args.directory / "unbound.conf").write_text(unbound_config(args.directory, internet, internet, resources,
                                                                records))


def unbound_binary() -> str | None:
    return shutil.which(UNBOUND) or next((p for p in ("/usr/sbin/unbound",) if Path(p).exists()), None)


if __name__ == "__main__":
    main()
