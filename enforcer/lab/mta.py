"""Debian's Postfix inside lab hosts: one instance per host, of its own (its config, queue and data directories
under the lab's directory, its mail log beside them), started inside the host's namespace as `ip netns exec` runs
a command (so it resolves through the lab's DNS), and ended with the host (a `vm restart`, `lab down`).

An instance takes mail on the host's loopback, port 25 (swaks, an app, `sendmail`), and delivers it the way a
VM's Postfix does: by MX (any domain's MX is the lab's mail server, see dns.py) on port 25, or through the lab's
authenticated relay (`relayhost = [relay.lab]:587`, SASL over required TLS, as the providers advise). Its
settings are Debian's defaults but for what a lab needs said: no chroot (the files are the lab's), no local
delivery, and a connect time-out of CONNECT_TIMEOUT rather than 30 s, so that a blocked attempt is deferred in
seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import pwd
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from .files import RELAY_NAME
from .namespace_lab import LabError
from .netns import exec_in

CONNECT_TIMEOUT = "5s"
POSTFIX_USER = "postfix"
# Debian's master.cf without chroot (the lab's files are outside any chroot) and with postlogd, which writes the
# instance's own mail log (maillog_file): the host has no syslog for a namespace's Postfix
MASTER_CF = """\
smtp      inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@dataclass(frozen=True)
class RelayHost:
    """Where an instance sends everything when it uses the relay, and how it logs in."""
    port: int
    user: str
    password: str
    ca: str
    name: str = RELAY_NAME

    @property
    def nexthop(self) -> str:
        return f"[{self.name}]:{self.port}"


@dataclass(frozen=True)
class Instance:
    """A lab host's Postfix: DIR/postfix/HOST/{etc,queue,data}, and its mail log in DIR/postfix-logs/HOST.log
    (kept by `lab down`, like the lab's other logs)."""
    directory: Path
    host: str

    @property
    def home(self) -> Path:
        return self.directory / "postfix" / self.host

    @property
    def config(self) -> Path:
        return self.home / "etc"

    @property
    def log(self) -> Path:
        return self.directory / "postfix-logs" / f"{self.host}.log"

    def exists(self) -> bool:
        return (self.config / "main.cf").is_file()


def main_cf(instance: Instance, families: set[int], relay: RelayHost | None) -> str:
    """The instance's main.cf: Debian's defaults but for what the lab needs said (see the module's text)."""
    home, protocols = instance.home, {frozenset({4}): "ipv4", frozenset({6}): "ipv6"}.get(frozenset(families), "all")
    lines = {
        "compatibility_level": "3.6",
        "config_directory": str(instance.config),
        "queue_directory": str(home / "queue"),
        "data_directory": str(home / "data"),
        "maillog_file": str(instance.log),
        "maillog_file_prefixes": str(instance.log.parent),
        "myhostname": f"{instance.host.lower()}.lab",
        "mydomain": "lab",
        "myorigin": "$myhostname",
        "mydestination": "",
        "local_transport": "error:this lab host delivers no local mail",
        "alias_maps": "",
        "alias_database": "",
        "inet_interfaces": "loopback-only",
        "inet_protocols": protocols,
        "mynetworks": "127.0.0.0/8 [::1]/128",
        "smtp_connect_timeout": CONNECT_TIMEOUT,
        "smtpd_banner": "$myhostname ESMTP",
    }
    if relay is not None:
        lines |= {
            "relayhost": relay.nexthop,
            "smtp_sasl_auth_enable": "yes",
            "smtp_sasl_password_maps": f"texthash:{instance.config / 'sasl_passwd'}",
            "smtp_sasl_security_options": "noanonymous",
            # TLS before AUTH, and the relay's certificate checked against the lab's CA, as against a real relay
            "smtp_tls_security_level": "secure",
            "smtp_tls_CAfile": relay.ca,
        }
    return "# a lab host's Postfix (enforcer lab mta); `lab mta start` writes it again\n" + \
        "".join(f"{k} = {v}\n" for k, v in lines.items())


PORT_IN_REASON = re.compile(r"\]:(?P<port>\d+)")  # "connect to mx.lab[198.19.25.25]:25: ..."


def deferral(reason: str) -> tuple[str, int | None]:
    """What a deferred message's reason (postqueue's, the mail log's) means in the lab: (what it is, the port it
    concerns when it names one). A connect time-out is how a provider's block looks; the rest is something else."""
    named = PORT_IN_REASON.search(reason)
    port = int(named["port"]) if named else None
    lowered = reason.lower()
    if "connection timed out" in lowered:
        return "a silent drop: how the provider's block looks", port
    if "connection refused" in lowered:
        return "the server refused the connection: not the provider's block, which is silent", port
    if "authentication failed" in lowered or "sasl" in lowered:
        return "the relay refused the login: check smtp_sasl_password_maps (the lab's account: lab.relay)", port
    if "tls" in lowered or "certificate" in lowered:
        return "TLS with the relay failed: check smtp_tls_CAfile (the lab's CA)", port
    if "name service error" in lowered or "host not found" in lowered or "domain name not found" in lowered:
        return "the name could not be resolved: check the host's resolv.conf (the lab's DNS)", port
    return "not the provider's block (it only ever drops silently)", port


@dataclass(frozen=True)
class Delivery:
    """One delivery attempt of a message, as the mail log's status line says it."""
    status: str  # sent, deferred, bounced
    relay: str   # where it went: "relay.lab[198.19.25.25]:587", or "none" when no connection was made
    said: str    # the server's answer, or why nothing connected

    @property
    def port(self) -> int | None:
        head, _, port = self.relay.rpartition(":")
        return int(port) if head and port.isdigit() else deferral(self.said)[1]


STATUS_LINE = re.compile(r": (?P<id>[0-9A-Za-z]+): to=<[^>]*>, (?:orig_to=<[^>]*>, )?relay=(?P<relay>[^,]+), .*"
                         r"status=(?P<status>\w+) \((?P<said>.*)\)\s*$")


def deliveries(log: str, queue_id: str) -> list[Delivery]:
    """Every attempt to deliver message `queue_id`, oldest first, from an instance's mail log."""
    found = []
    for line in log.splitlines():
        m = STATUS_LINE.search(line)
        if m and m["id"] == queue_id:
            found.append(Delivery(m["status"], m["relay"], m["said"]))
    return found


QUEUED = re.compile(r"queued as (?P<id>[0-9A-Za-z]+)")


def queue_id(answer: str) -> str | None:
    """The queue id in what Postfix answered a message's end of DATA ('250 2.0.0 Ok: queued as 3B89022A710')."""
    m = QUEUED.search(answer)
    return m["id"] if m else None


# ------------------------------------------------------------ the edges: files and Postfix's commands


def postfix_uid() -> int:
    try:
        return pwd.getpwnam(POSTFIX_USER).pw_uid
    except KeyError:
        raise LabError("Postfix is not installed: apt-get install postfix (choose 'No configuration')") from None


def reachable(directory: Path) -> None:
    """Postfix's daemons run as the postfix user and open their files by path: every directory above the lab's
    must let others through (a 0700 temporary directory does not)."""
    for d in [directory.resolve(), *directory.resolve().parents]:
        if d.exists() and not d.stat().st_mode & stat.S_IXOTH:
            raise UserError(f"Postfix (the user {POSTFIX_USER}) cannot reach {directory}: {d} lets no one else "
                            f"through (mode {stat.S_IMODE(d.stat().st_mode):o}); chmod o+x {d}, or give the lab "
                            "a directory under /run or /var/tmp")


def write(instance: Instance, families: set[int], relay: RelayHost | None) -> None:
    """The instance's directories and files; its data directory is Postfix's own (it writes its lock there)."""
    reachable(instance.directory)
    for d in (instance.config, instance.home / "queue", instance.home / "data", instance.log.parent):
        d.mkdir(parents=True, exist_ok=True)
    os.chown(instance.home / "data", postfix_uid(), -1)
    (instance.config / "master.cf").write_text(MASTER_CF)
    (instance.config / "main.cf").write_text(main_cf(instance, families, relay))
    secrets = instance.config / "sasl_passwd"
    secrets.unlink(missing_ok=True)
    if relay is not None:
        secrets.touch(mode=0o600)
        secrets.write_text(f"{relay.nexthop} {relay.user}:{relay.password}\n")


def postfix(namespace: str, instance: Instance, *args: str) -> str:
    """Run `postfix -c CONFIG ARGS` in the host's namespace; its words. Postfix says what went wrong on stderr
    only when that is a terminal (else only to a log it may not have yet), so it gets one."""
    if shutil.which("postfix", path=os.environ.get("PATH", "") + ":/usr/sbin") is None:
        raise LabError("Postfix is not installed: apt-get install postfix (choose 'No configuration')")
    parent, child = pty.openpty()
    proc = exec_in(namespace, ["postfix", "-c", str(instance.config), *args], stdin=subprocess.DEVNULL,
                   stdout=child, stderr=child)
    os.close(child)
    # read once it ended, not until the terminal closes: the master it starts may keep the terminal open
    code = proc.wait(60)
    os.set_blocking(parent, False)
    said = b""
    with contextlib.suppress(OSError):  # EAGAIN: all read; EIO: every writer gone
        while chunk := os.read(parent, 65536):
            said += chunk
    os.close(parent)
    lines = [line.strip() for line in said.decode(errors="replace").splitlines() if line.strip()]
    if code != 0:
        # the line that names the cause: the master's, in the log, when the script only says that it failed
        logged = instance.log.read_text(errors="replace").splitlines()[-5:] if instance.log.exists() else []
        fatal = next((line.split(": ", 1)[-1] for line in reversed(lines + logged) if "fatal:" in line
                      and "startup failed" not in line), lines[-1] if lines else "no output")
        raise LabError(f"postfix {args[0]} failed for {instance.host}: {fatal} (its log: {instance.log})")
    return "\n".join(lines)


def running(instance: Instance) -> bool:
    """Whether the instance's master runs (its pid file names a live process)."""
    try:
        pid = int((instance.home / "queue" / "pid" / "master.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return Path(f"/proc/{pid}").exists()


def start(namespace: str, instance: Instance, families: set[int], relay: RelayHost | None) -> str:
    """Write the instance's config and start it, or reload it with the new config if it runs; then retry its
    queue at once (a changed relayhost applies to deferred mail now, as `postqueue -f` after a change does)."""
    write(instance, families, relay)
    if running(instance):
        postfix(namespace, instance, "reload")
        flush(namespace, instance)
        return "reloaded"
    postfix(namespace, instance, "start")
    return "started"


def boot(namespace: str, instance: Instance) -> bool:
    """Start the instance as the host's boot would, with the config it has; whether it started."""
    if not instance.exists() or running(instance):
        return False
    postfix(namespace, instance, "start")
    return True


def stop(namespace: str, instance: Instance) -> bool:
    if not running(instance):
        return False
    postfix(namespace, instance, "stop")
    return True


def postqueue(namespace: str, instance: Instance, flag: str) -> str:
    """`postqueue -c CONFIG FLAG` in the host's namespace; what it printed."""
    proc = exec_in(namespace, ["postqueue", "-c", str(instance.config), flag], stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise LabError(f"postqueue {flag} failed for {instance.host}: {err.strip() or 'no output'}")
    return str(out)


def flush(namespace: str, instance: Instance) -> None:
    """Retry every queued message now (`postqueue -f`)."""
    postqueue(namespace, instance, "-f")


def queue(namespace: str, instance: Instance) -> list[dict[str, Any]]:
    """The instance's queue (`postqueue -j`): one dict per message, with its recipients and their reasons."""
    if not running(instance):
        raise UserError(f"no Postfix runs on {instance.host}; start it: enforcer lab mta start {instance.host}")
    return [json.loads(line) for line in postqueue(namespace, instance, "-j").splitlines() if line.strip()]
