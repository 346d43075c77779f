"""`enforcer lab up|down|status|exec`: a namespace lab that stays up between commands, recorded in a directory
(default /run/enforcer-lab), and found again from its namespaces' names after a crash."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import UserError
from .files import LAB_DIR, read_lab, resources_of
from .namespace_lab import NamespaceLab
from .netns import remove_tagged, run_in

LAB_FILES = ("lab.json", "state.db", "state.db-wal", "state.db-shm", "control.sock", "daemon.log", "notify-*.sock",
             "mail")


def tag_for(directory: Path) -> str:
    """The namespace tag of the lab kept in `directory`: p25lab for the default, a short digest otherwise."""
    if directory.resolve() == LAB_DIR:
        return "p25lab"
    return "p25l" + hashlib.sha1(str(directory.resolve()).encode()).hexdigest()[:6]


def record_path(directory: Path) -> Path:
    return directory / "lab.json"


def netns_names() -> list[str]:
    from pyroute2 import netns
    names: list[str] = netns.listnetns()
    return names


def lab_up(lab_file: Path | None, directory: Path, daemon: bool = True) -> dict[str, Any]:
    tag = tag_for(directory)
    if record_path(directory).exists() or any(n.startswith(f"{tag}-") for n in netns_names()):
        raise UserError("a lab is up already (see: enforcer lab status); take it down first: enforcer lab down")
    path, doc, internet, _ = read_lab(lab_file)
    if directory.exists() and any(directory.iterdir()):
        raise UserError(f"{directory} is not empty; give lab up a directory of its own: --dir DIR")
    directory.mkdir(parents=True, exist_ok=True)
    lab = NamespaceLab(directory, internet, tag=tag)
    try:
        lab.apply(path, doc)
        lab.up(resources_of(doc))
        if daemon:
            lab.start_daemon()
    except BaseException:
        lab.close()
        raise
    record = {"lab_file": path, "tag": tag, "state": str(lab.state), "socket": lab.socket,
              "gateway": lab.topology.gateway.namespace, "internet": lab.topology.internet.namespace,
              "internet_addresses": internet, "daemon": daemon,
              "hosts": {name: h.namespace for name, h in lab.topology.vms.items()},
              "addresses": {name: h.addresses for name, h in lab.topology.vms.items()}}
    record_path(directory).write_text(json.dumps(record, indent=2))
    return record


def lab_down(directory: Path) -> list[str]:
    """Remove everything `lab up` made: processes, namespaces (and the rules inside them), the directory.
    Works from the namespaces' names alone, so also after a crash of `lab up`."""
    gone = remove_tagged(tag_for(directory))
    if record_path(directory).exists():  # only a directory `lab up` made, and only what it put there
        for name in LAB_FILES:
            target = directory / name
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                for f in directory.glob(name):
                    f.unlink(missing_ok=True)
        try:
            directory.rmdir()
        except OSError:
            pass  # something else lives there too: leave it
    return gone


def lab_record(directory: Path) -> dict[str, Any]:
    try:
        record: dict[str, Any] = json.loads(record_path(directory).read_text())
    except FileNotFoundError:
        raise UserError(f"no lab is up ({record_path(directory)} is missing); start one: enforcer lab up") from None
    return record


def host_namespace(directory: Path, host: str) -> str:
    """The namespace of a host of the lab that is up in `directory`."""
    record = lab_record(directory)
    namespaces = {**record["hosts"], "gateway": record["gateway"], "internet": record["internet"]}
    if host not in namespaces:
        raise UserError(f"no lab host '{host}'; use one of: {', '.join(sorted(namespaces))}")
    namespace: str = namespaces[host]
    return namespace


def lab_exec(directory: Path, host: str, argv: list[str]) -> int:
    namespace = host_namespace(directory, host)
    if not argv:
        raise UserError("give the command after --: enforcer lab exec VM -- COMMAND")
    try:
        proc = run_in(namespace, argv)
    except FileNotFoundError:
        raise UserError(f"command not found: {argv[0]}") from None
    return proc.wait()
