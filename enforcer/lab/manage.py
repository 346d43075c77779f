"""`enforcer lab up|down|status|exec`: a namespace lab that stays up between commands, recorded in a directory
(default /run/enforcer-lab), and found again from its namespaces' names after a crash."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..core.profile import Profile, SubscriptionType
from ..errors import UserError
from ..state.profiles import load_profile
from ..state.backend import open_state
from .files import LAB_DIR, dns_of, read_lab, relay_of, resources_of
from . import mta
from .index import labs_up, note, record_path
from .fleet import FleetLab, check_fleet, fleet_record, remove_control_link, shares
from .namespace_lab import NamespaceLab, read_inventory
from .netns import end_processes, exec_in, remove_tagged
from .story import open_port

LAB_FILES = ("lab.json", "state.db", "state.db-wal", "state.db-shm", "control.sock", "notify-*.sock", "tls", "dns",
             "postfix", "etcd", "control-*.sock")  # a fleet lab's: its members' data and logs, its gateways' sockets
# what a lab leaves that a person wants afterwards: `lab down` keeps it unless told to purge, and the next `lab up`
# in the same directory moves it aside (earlier-TIME/) rather than refusing the directory
KEPT = ("mail", "daemon.log", "sink.log", "postfix-logs", "gateway-logs")


def tag_for(directory: Path) -> str:
    """The namespace tag of the lab kept in `directory`: p25lab for the default, a short digest otherwise."""
    if directory.resolve() == LAB_DIR:
        return "p25lab"
    return "p25l" + hashlib.sha1(str(directory.resolve()).encode()).hexdigest()[:6]


def netns_names() -> list[str]:
    from pyroute2 import netns
    names: list[str] = netns.listnetns()
    return names


def lab_up(lab_file: Path | None, directory: Path, daemon: bool = True, gateways: int | None = None,
           members: int | None = None) -> dict[str, Any]:
    """Build the lab; with `gateways` or `members` (either: the other 1 gateway, 3 members), the fleet lab."""
    tag = tag_for(directory)
    if record_path(directory).exists() or any(n.startswith(f"{tag}-") for n in netns_names()):
        raise UserError("a lab is up already (see: enforcer lab status); take it down first: enforcer lab down")
    path, doc, internet, _ = read_lab(lab_file)
    relay = relay_of(path, doc)  # a lab file's mistakes are found before anything is made
    records = dns_of(path, doc)
    fleet = gateways is not None or members is not None
    gateways = 1 if gateways is None else gateways
    members = 3 if members is None else members
    if fleet:
        check_fleet(gateways, members, doc)
    earlier = set_aside(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lab = FleetLab(directory, internet, tag, gateways, members, shares(doc, gateways)) if fleet \
        else NamespaceLab(directory, internet, tag=tag)
    lab.relay, lab.records = relay, records
    try:
        lab.apply(path, doc)
        lab.up(resources_of(doc))
        if daemon:
            lab.start_daemons()
    except BaseException:
        lab.close()
        raise
    record = {"lab_file": path, "tag": tag, "state": str(lab.state), "socket": lab.socket,
              "gateway": lab.topology.gateway.namespace, "internet": lab.topology.internet.namespace,
              "internet_addresses": internet, "daemon": daemon,
              "hosts": {name: h.namespace for name, h in lab.topology.vms.items()},
              "addresses": {name: h.addresses for name, h in lab.topology.vms.items()},
              "earlier": str(earlier) if earlier else None,
              "relay": {"user": lab.relay.user, "password": lab.relay.password, "ca": str(lab.ca)}}
    if isinstance(lab, FleetLab):
        record.update(fleet_record(lab))
    record_path(directory).write_text(json.dumps(record, indent=2))
    note(directory, up=True)
    return record


def set_aside(directory: Path) -> Path | None:
    """An earlier lab's mail and logs in `directory`, moved into earlier-TIME/ in it; anything else there: refused."""
    if not directory.exists():
        return None
    if not leftovers_only(directory):
        raise UserError(f"{directory} is not empty; give lab up a directory of its own: --dir DIR")
    present = [p for p in directory.iterdir() if not p.name.startswith("earlier-")]
    if not present:
        return None
    aside = directory / f"earlier-{time.strftime('%Y%m%dT%H%M%S')}"
    aside.mkdir()
    for p in present:
        p.rename(aside / p.name)
    return aside


def lab_down(directory: Path, purge: bool = False) -> tuple[list[str], list[str]]:
    """Remove everything `lab up` made: processes, namespaces (and the rules inside them), its files; the mail the
    lab received and its logs stay (returned), unless `purge`. Works from the namespaces' names alone, so also
    after a crash of `lab up`."""
    gone = remove_tagged(tag_for(directory))
    remove_control_link(tag_for(directory))  # a fleet lab's, if it was one
    kept: list[str] = []
    if record_path(directory).exists() or leftovers_only(directory):  # only a lab's directory, only what it put there
        for name in LAB_FILES + (KEPT + ("earlier-*",) if purge else ()):
            for target in directory.glob(name):
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (directory / "mail").rmdir()  # only if nothing came: an empty folder is nothing worth keeping
        kept = [str(directory / name) for name in KEPT if (directory / name).exists()]
        try:
            directory.rmdir()
        except OSError:
            pass  # something else lives there too (what it kept): leave it
    note(directory, up=False)
    return gone, kept


def leftovers_only(directory: Path) -> bool:
    """Whether `directory` holds nothing but what an earlier lab kept (after its `lab down`)."""
    return directory.is_dir() and all(p.name in KEPT or p.name.startswith("earlier-") for p in directory.iterdir())


def lab_record(directory: Path) -> dict[str, Any]:
    try:
        record: dict[str, Any] = json.loads(record_path(directory).read_text())
    except FileNotFoundError:
        others = [d for d in labs_up() if Path(d) != directory.resolve()]
        if others:  # a lab made with --dir: its commands need it too
            raise UserError(f"no lab is up in {directory}; labs are up in: {', '.join(others)}; give its directory: "
                            f"--dir {others[0]}") from None
        raise UserError(f"no lab is up ({record_path(directory)} is missing); start one: enforcer lab up") from None
    return record


def host_namespace(directory: Path, host: str) -> str:
    """The namespace of a host of the lab that is up in `directory`."""
    record = lab_record(directory)
    namespaces = {**record["hosts"], "gateway": record["gateway"], "internet": record["internet"],
                  **{name: g["namespace"] for name, g in record.get("gateways", {}).items()},
                  **{m["name"]: m["namespace"] for m in record.get("etcd", {}).get("members", [])}}
    if host not in namespaces:
        raise UserError(f"no lab host '{host}'; use one of: {', '.join(sorted(namespaces))}")
    namespace: str = namespaces[host]
    return namespace


def account_type(directory: Path, host: str, profile: Profile) -> SubscriptionType | None:
    """The type of the account a lab host's resource belongs to, as the lab's state has it, where `profile` is
    the state's (another provider's profile knows other types); else None."""
    store = open_state(lab_record(directory)["state"])
    try:
        inv = store.snapshot(load_profile)
        try:
            r = inv.resources.get(host)
            sub = inv.subscriptions.get(r.subscription) if r is not None else None
            return profile.types.get(sub.type) if sub is not None and inv.profile == profile.id else None
        finally:
            store.end_snapshot()
    finally:
        store.close()


def reboot(record: dict[str, Any], hosts: list[str], end: bool = True,
           boot: bool = False) -> tuple[list[str], list[str]]:
    """A stop of these lab hosts, as the platform's stop or restart is one: every process in their namespaces
    ends (their files, and so a mail queue on disk, stay). `boot`: then they start, and with them what starts at a
    boot (the Postfix the lab made for a host). Returns (the hosts that had processes, those whose Postfix
    started)."""
    ended = [h for h in hosts if end and h in record["hosts"] and end_processes([record["hosts"][h]])]
    directory = lab_directory(record)
    booted = [h for h in hosts if boot and h in record["hosts"]
              and mta.boot(record["hosts"][h], mta.Instance(directory, h))]
    return ended, booted


def lab_directory(record: dict[str, Any]) -> Path:
    """Where a lab keeps its files (a fleet lab's state is in etcd: its record says)."""
    return Path(record.get("dir") or Path(record["state"]).parent)


def daemon_log(record: dict[str, Any], host: str) -> Path:
    """The log of the enforcer whose gateway `host`'s traffic crosses (its drop log)."""
    for gateway in record.get("gateways", {}).values():
        if host in gateway["serves"]:
            return Path(gateway["log"])
    return lab_directory(record) / "daemon.log"


def gateway_namespace(directory: Path, gateway: str) -> str:
    """The namespace of a fleet lab's gateway (one line if the lab is no fleet lab or has no such gateway)."""
    gateways = lab_record(directory).get("gateways")
    if not gateways:
        raise UserError("this lab has one gateway and no etcd; a fleet lab has several: enforcer lab up --gateways N")
    if gateway not in gateways:
        raise UserError(f"no gateway '{gateway}' in this lab; use one of: {', '.join(gateways)}")
    namespace: str = gateways[gateway]["namespace"]
    return namespace


def postfix_of(directory: Path, host: str) -> tuple[str, mta.Instance]:
    """(the namespace, the Postfix instance) of a lab host; a host that is no resource has none."""
    record = lab_record(directory)
    if host not in record["hosts"]:
        raise UserError(f"no lab resource '{host}'; use one of: {', '.join(sorted(record['hosts']))}")
    return record["hosts"][host], mta.Instance(directory, host)


def start_postfix(directory: Path, host: str, relay: bool) -> str:
    """Start (or reconfigure) a lab host's Postfix: direct MX delivery, or every message through the lab's relay
    on the port the lab's provider leaves open (587; 2525 where 587 is blocked too)."""
    namespace, instance = postfix_of(directory, host)
    record = lab_record(directory)
    families = {6 if ":" in a else 4 for a in record["addresses"][host]}
    via = None
    if relay:
        account = record.get("relay") or {}
        via = mta.RelayHost(open_port(lab_profile(directory)), account.get("user", ""), account.get("password", ""),
                            account.get("ca", ""))
    return mta.start(namespace, instance, families, via)


def lab_profile(directory: Path) -> Profile:
    return load_profile(read_inventory(lab_record(directory)["state"]).profile)


def relay_env(directory: Path) -> dict[str, str]:
    """What a client inside the lab needs of its relay (smtptry reads it): the account, the certificate."""
    relay = lab_record(directory).get("relay") or {}
    return {"ENFORCER_LAB_RELAY_USER": relay.get("user", ""), "ENFORCER_LAB_RELAY_PASSWORD": relay.get("password", ""),
            "ENFORCER_LAB_CA": relay.get("ca", "")}


def host_env(directory: Path, host: str) -> dict[str, str]:
    """The environment of a command run on a lab host (`lab exec`, the pytest plugin's run()): this process's,
    the host's name (smtptry's HELO reads it, as a VM knows its hostname), the relay's account and certificate, and
    MAIL_CONFIG where the lab made the host a Postfix (postqueue, mailq, sendmail use it, as on the VM)."""
    env = {**os.environ, "ENFORCER_LAB_HOST": host, **relay_env(directory)}
    instance = mta.Instance(directory, host)
    if instance.exists():
        env["MAIL_CONFIG"] = str(instance.config)
    return env


def lab_exec(directory: Path, host: str, argv: list[str]) -> int:
    namespace = host_namespace(directory, host)
    if not argv:
        raise UserError("give the command after --: enforcer lab exec VM -- COMMAND")
    env = host_env(directory, host)
    if shutil.which(argv[0], path=env.get("PATH")) is None:  # said here: ip netns exec's own words are longer
        raise UserError(f"command not found: {argv[0]}")
    # as `ip netns exec` runs it: the namespace's resolv.conf (the lab's DNS) over /etc/resolv.conf
    return exec_in(namespace, argv, env=env).wait()
