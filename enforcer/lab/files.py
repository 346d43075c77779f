"""Lab files: a YAML inventory (vagrant/lab.yml is the example) whose `lab` section adds the hosts around it
(the internet host's addresses) and what the spec expects of each resource."""

from __future__ import annotations

import ipaddress
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..state.documents import read_document

# The checkout's, where there is one (so an edit to it shows at once); else the one an install put beside the
# profiles (pyproject.toml's data-files), as state/profiles.py finds those.
CHECKOUT_LAB = Path(__file__).resolve().parents[2] / "vagrant" / "lab.yml"
INSTALLED_LAB = Path(sys.prefix) / "share" / "port25-enforcer" / "vagrant" / "lab.yml"
DEFAULT_LAB = CHECKOUT_LAB if CHECKOUT_LAB.is_file() else INSTALLED_LAB
# the clouds' lab files, vagrant/labs/NAME.yml (NAME: the profile), found as lab.yml is
CHECKOUT_LABS = CHECKOUT_LAB.parent / "labs"
LABS = CHECKOUT_LABS if CHECKOUT_LABS.is_dir() else INSTALLED_LAB.parent / "labs"
DEFAULT_PROFILE = "azure"            # vagrant/lab.yml's
LAB_DIR = Path("/run/enforcer-lab")  # where `enforcer lab up` keeps its state, logs and record
SMTP_PORTS = (25, 465, 587)          # the internet host's SMTP server listens on each; the demo tries each
RELAY_PORT = 2525                    # where providers that block 587 too point a relay (DigitalOcean's advice)
SINK_PORTS = (*SMTP_PORTS, RELAY_PORT)
RELAY_NAME = "relay.lab"
CREDENTIAL = re.compile(r"[\x21-\x7e]{1,64}")  # printable, no spaces: what AUTH PLAIN and LOGIN carry intact
LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")  # one label of a DNS name
# printable and no quote or backslash: a TXT value goes into unbound's config inside quotes, unescaped
TXT_VALUE = re.compile(r"[\x20-\x7e]{1,255}")
DNS_TYPES = ("A", "AAAA", "MX", "TXT")


def host_address(address: str) -> str:
    """A prefix (a scale set) is represented by its first host address."""
    net = ipaddress.ip_network(address, strict=False)
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(next(net.hosts()))


@dataclass(frozen=True)
class Relay:
    """The account the lab's relay ports want (lab.relay in a lab file; this default where it says none)."""
    user: str = "lab"
    password: str = "lab-relay"


def relay_of(path: str, doc: dict[str, Any]) -> Relay:
    """lab.relay of a lab file: {user: NAME, password: SECRET}, each 1-64 printable characters without spaces."""
    lab = doc.get("lab") if isinstance(doc.get("lab"), dict) else {}
    said = lab.get("relay") if isinstance(lab, dict) else None
    if said is None:
        return Relay()
    if not isinstance(said, dict) or set(said) != {"user", "password"}:
        raise UserError(f"{path}: lab.relay: expected a mapping with user and password, e.g. "
                        "relay: {user: lab, password: lab-relay}")
    for key in ("user", "password"):
        if not isinstance(said[key], str) or not CREDENTIAL.fullmatch(said[key]):
            raise UserError(f"{path}: lab.relay.{key}: write 1 to 64 printable characters without spaces")
    return Relay(said["user"], said["password"])


@dataclass(frozen=True)
class Record:
    """One record a lab file adds to the lab's DNS (lab.dns.records); an MX's value is "PREFERENCE HOST"."""
    name: str
    type: str
    value: str


def is_dns_name(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return 0 < len(name) <= 253 and all(LABEL.fullmatch(label) for label in labels)


def dns_of(path: str, doc: dict[str, Any]) -> list[Record]:
    """lab.dns.records of a lab file: [{name: example.org, type: A|AAAA|MX|TXT, value: ...}], each checked
    (an A's value an IPv4 address, an AAAA's an IPv6 one, an MX's "10 mail.example.org" or a host name)."""
    lab = doc.get("lab") if isinstance(doc.get("lab"), dict) else {}
    said = lab.get("dns") if isinstance(lab, dict) else None
    if said is None:
        return []
    example = "dns: {records: [{name: example.org, type: MX, value: 10 mx.lab}]}"
    if not isinstance(said, dict) or set(said) != {"records"} or not isinstance(said["records"], list):
        raise UserError(f"{path}: lab.dns: expected a mapping with a list of records, e.g. {example}")
    return [dns_record(f"{path}: lab.dns.records[{i}]", entry) for i, entry in enumerate(said["records"])]


def dns_record(where: str, entry: Any) -> Record:
    if not isinstance(entry, dict) or set(entry) != {"name", "type", "value"} or None in entry.values():
        raise UserError(f"{where}: expected name, type and value, e.g. {{name: example.org, type: A, "
                        "value: 198.19.25.25}")
    name, kind, value = (str(entry[k]).strip() for k in ("name", "type", "value"))
    if not is_dns_name(name):
        raise UserError(f"{where}: {name!r} is not a domain name")
    kind = kind.upper()
    if kind not in DNS_TYPES:
        raise UserError(f"{where} ({name}): type {entry['type']!r} is not one of {', '.join(DNS_TYPES)}")
    problem = value_problem(kind, value)
    if problem:
        raise UserError(f"{where} ({name} {kind}): {problem}")
    if kind == "MX" and len(value.split()) == 1:
        value = f"10 {value}"  # a host alone: the preference every single-MX domain has
    return Record(name.rstrip(".").lower(), kind, value)


def value_problem(kind: str, value: str) -> str | None:
    """What is wrong with a record's value for its type, or None."""
    if kind in ("A", "AAAA"):
        version = 4 if kind == "A" else 6
        try:
            if ipaddress.ip_address(value).version == version:
                return None
        except ValueError:
            pass
        return f"{value!r} is not an IPv{version} address"
    if kind == "MX":
        parts = value.split()
        preference, host = parts if len(parts) == 2 else ("10", parts[0] if parts else "")
        if len(parts) > 2 or not preference.isdigit() or int(preference) > 65535 or not is_dns_name(host):
            return f"{value!r}: write a preference and a host name, e.g. 10 mx.lab"
        return None
    if not TXT_VALUE.fullmatch(value) or '"' in value or "\\" in value:
        return f"{value!r}: write 1 to 255 printable characters without quotes or backslashes"
    return None


def lab_for_profile(name: str) -> Path:
    """The lab file of a profile: vagrant/lab.yml for Azure's, vagrant/labs/NAME.yml for the others'."""
    if name == DEFAULT_PROFILE:
        return DEFAULT_LAB
    path = LABS / f"{name}.yml"
    if not path.is_file():
        raise UserError(f"no lab file for profile '{name}'; use one of: {', '.join(every_lab())}")
    return path


def every_lab() -> dict[str, Path]:
    """Every profile's lab file, by profile: Azure's first, then the clouds' in name order."""
    return {DEFAULT_PROFILE: DEFAULT_LAB, **{p.stem: p for p in sorted(LABS.glob("*.yml"))}}


def read_lab(lab_file: Path | None) -> tuple[str, dict[str, Any], list[str], dict[str, str]]:
    """(path, document, internet addresses, what the spec expects per resource) of a lab file."""
    path = str(lab_file or DEFAULT_LAB)
    if not Path(path).exists():
        raise UserError(f"no lab file at {path}; pass one: --lab FILE (see vagrant/lab.yml)")
    doc = read_document(path)
    lab = doc.get("lab") or {}
    try:
        internet = [str(a) for a in lab["internet"]["addresses"]]
    except (KeyError, TypeError, AttributeError):
        raise UserError(f"{path}: the lab needs lab.internet.addresses; see vagrant/lab.yml") from None
    # port 25's expectation per resource; a clouds' lab file states each port (port_expectations reads all)
    expect = {name: by_port[25] for name, by_port in port_expectations(path, doc).items()} \
        if lab.get("expect") else {}
    return path, doc, internet, expect


def resources_of(doc: dict[str, Any]) -> dict[str, list[str]]:
    """Each resource's addresses, as the lab file lists them."""
    return {str(r["name"]): [str(a) for a in (r["addresses"] if isinstance(r["addresses"], list)
                                               else [r["addresses"]])] for r in doc.get("resources") or []}


def port_expectations(path: str, doc: dict[str, Any]) -> dict[str, dict[int, str]]:
    """What the lab file's `lab.expect` says each resource's SMTP to the internet does, per port. A resource's
    entry is a mapping {25: blocked, 465: blocked, 587: allowed} (the clouds' lab files), or one word for port 25,
    465 and 587 then being allowed (vagrant/lab.yml: Azure restricts port 25 only)."""
    expect = (doc.get("lab") or {}).get("expect") if isinstance(doc.get("lab"), dict) else None
    if not isinstance(expect, dict):
        raise UserError(f"{path}: lab.expect: missing; say what each resource's SMTP does, e.g. "
                        "vm1: {25: blocked, 465: allowed, 587: allowed}")
    verdicts = ("allowed", "blocked")
    out: dict[str, dict[int, str]] = {}
    for name, said in expect.items():
        where = f"{path}: lab.expect.{name}"
        if isinstance(said, str):
            said = {25: said, 465: "allowed", 587: "allowed"}
        if not isinstance(said, dict) or set(said) != set(SMTP_PORTS):
            raise UserError(f"{where}: expected a mapping of ports {', '.join(map(str, SMTP_PORTS))} to allowed or "
                            "blocked; write {25: blocked, 465: allowed, 587: allowed}")
        bad = [v for v in said.values() if v not in verdicts]
        if bad:
            raise UserError(f"{where}: {bad[0]!r} is not a verdict; write allowed or blocked")
        out[str(name)] = {int(p): str(v) for p, v in said.items()}
    return out
