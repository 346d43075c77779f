"""The pytest plugin `port25_lab` (entry point pytest11): a mail project's own tests send real mail from behind the
platform's port 25 block. The session-scoped fixture `port25_lab` builds the namespace lab once (the default lab
file, `--port25-lab FILE` or `--port25-profile NAME`) in a directory of its own, and removes it after the session,
also when tests fail, the lab fails half-way or pytest is interrupted.

    def test_my_app(port25_lab):
        done = port25_lab.run("shop-web", [sys.executable, "-m", "myapp"], capture_output=True, text=True)
        assert [m["port"] for m in port25_lab.mail] == [587]

pytest imports this module in every run where port25-enforcer is installed (this project's own suite too): it
imports nothing of the lab (pyroute2, the state, YAML) until a test asks for the fixture or an option names a lab.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Iterator, Sequence

import pytest

from ..errors import UserError

LAB_FILE = pytest.StashKey[Path | None]()
REPORT = pytest.StashKey[list[str]]()
# the relay ports of the lab's internet host (smtpsink): 587 and 2525 after STARTTLS, 465 TLS from the first byte
SUBMISSION, SMTPS, ALTERNATE = 587, 465, 2525


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("port25_lab", "port25-enforcer's lab (the port25_lab fixture)")
    group.addoption("--port25-lab", dest="port25_lab_file", metavar="FILE", default=None,
                    help="the lab file port25_lab builds (default: port25-enforcer's vagrant/lab.yml, Azure's); "
                         "write --port25-lab=FILE: pytest picks its rootdir before it knows this option takes a value")
    group.addoption("--port25-profile", dest="port25_profile", metavar="NAME", default=None,
                    help="the lab of a provider's profile instead: vagrant/labs/NAME.yml (see: enforcer profile list)")
    group.addoption("--port25-dir", dest="port25_dir", metavar="DIR", default=None,
                    help="where the lab keeps its state, mail and logs (default: a new /tmp/port25-lab-*/lab); "
                         "every directory above it must let others through (the lab's Postfix runs as postfix)")


def pytest_configure(config: pytest.Config) -> None:
    # a wrong option is one line and exit status 2 before any test runs (as the enforcer CLI answers bad input);
    # pytest's own UsageError would say more and exit 4
    try:
        config.stash[LAB_FILE] = chosen_lab(config)
    except UserError as e:
        pytest.exit(f"port25_lab: {e}", returncode=2)
    config.stash[REPORT] = []


def chosen_lab(config: pytest.Config) -> Path | None:
    """The lab file the options name, checked now (None: the default lab)."""
    given: str | None = config.getoption("port25_lab_file")
    profile: str | None = config.getoption("port25_profile")
    if given is not None and profile is not None:
        raise UserError("give --port25-lab FILE or --port25-profile NAME, not both")
    if profile is not None:
        from .files import lab_for_profile
        return lab_for_profile(profile)
    if given is None:
        return None
    path = config.invocation_params.dir / given
    if not path.is_file():
        raise UserError(f"--port25-lab {given}: no such lab file ({path})")
    from .files import dns_of, read_lab, relay_of
    where, doc, _, _ = read_lab(path)  # a lab file's own mistakes: also found before any test runs
    relay_of(where, doc)
    dns_of(where, doc)
    return path


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    for line in config.stash.get(REPORT, []):
        terminalreporter.write_line(f"port25_lab: {line}")


def why_not() -> str | None:
    """Why this machine cannot build the lab (the reason every test that asks for it is skipped), else None."""
    if os.geteuid() != 0:
        return "needs root to build network namespaces; run pytest as root (sudo -E python -m pytest)"
    from .dns import unbound_binary
    from .netns import can_build_namespaces
    why = can_build_namespaces()
    if why is not None:
        return why
    for tool, package in (("ip", "iproute2"), ("openssl", "openssl")):
        if shutil.which(tool) is None:
            return f"needs {tool}: apt-get install {package}"
    if unbound_binary() is None:
        return "needs unbound (the lab's DNS): apt-get install unbound"
    if shutil.which("iptables") is None and shutil.which("nft") is None:
        return "needs iptables or nftables: apt-get install nftables"
    if not kernel_has("nfnetlink_queue"):
        return "the kernel has no NFQUEUE (nfnetlink_queue), which the enforcer judges SYNs through"
    return None


def kernel_has(module: str) -> bool:
    """Whether the kernel has `module`: loaded or built in, or loadable (modprobe's dry run). Where that cannot be
    told (no modprobe), yes: the lab then says what is missing itself."""
    if Path("/sys/module", module).exists():
        return True
    modprobe = shutil.which("modprobe") or ("/sbin/modprobe" if Path("/sbin/modprobe").exists() else None)
    if modprobe is None:
        return True
    return subprocess.run([modprobe, "-n", "-q", module], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def port25_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The namespace lab, built once for the session and removed after it (see Lab)."""
    why = why_not()
    if why is not None:
        pytest.skip(f"port25_lab: {why}")
    from .manage import lab_down, lab_up
    from .netns import guard_lab_ranges
    config = request.config
    # a directory of its own (so a namespace tag of its own): never the one of a person's `enforcer lab up`; not
    # under pytest's basetemp, which lets no other user through (a lab's Postfix runs as the postfix user)
    given = config.getoption("port25_dir")
    top = None if given else Path(tempfile.mkdtemp(prefix="port25-lab-"))
    if top is None:
        directory = config.invocation_params.dir / given
    else:
        top.chmod(0o711)
        directory = top / "lab"
    previous = on_sigterm_interrupt()
    try:
        guard_lab_ranges()  # before anything is up: nothing addressed to the lab leaves this machine
        try:
            record = lab_up(config.stash.get(LAB_FILE, None), directory)
        except UserError as e:  # a lab file's mistake the checks before the session could not see
            pytest.exit(f"port25_lab: {e}", returncode=2)
        lab = Lab(directory, record)
        config.stash[REPORT].append(f"the lab of {record['lab_file']} was up in {directory} "
                                    f"(namespaces {record['tag']}-*)")
        yield lab
    finally:
        failed = request.session.testsfailed > 0
        gone, kept = lab_down(directory, purge=not failed)  # also after a half-built lab: it works from the tag
        config.stash[REPORT].append(f"removed {len(gone)} namespace(s)" +
                                    (f"; kept for you: {', '.join(kept)}" if kept else ""))
        with contextlib.suppress(OSError):
            if top is not None:
                top.rmdir()  # only when the lab's removal left nothing in it
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def on_sigterm_interrupt() -> Any:
    """SIGTERM (a CI job cancelled, a timeout's kill) interrupts pytest as Ctrl-C does, so the lab comes down: its
    namespaces outlive the process otherwise. Returns the handler it replaced (None where it could not)."""
    owner = os.getpid()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:  # a child forked with this handler (pyroute2 forks to make a namespace): it dies
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise KeyboardInterrupt("SIGTERM")
    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        return None


@dataclass(frozen=True)
class Relay:
    """The lab's authenticated relay on its internet host, as a mail application is configured for one: STARTTLS on
    `port` (587; 2525 too), TLS from the first byte on 465, then AUTH with `user` and `password`; `ca` is the
    certificate to trust (the lab's own)."""
    host: str
    user: str
    password: str
    ca: str
    port: int = SUBMISSION
    ports: tuple[int, ...] = (SMTPS, SUBMISSION, ALTERNATE)


class CommandFailed(Exception):
    """A command of Lab.change() ended non-zero: `line` is what the enforcer said (one line), `returncode` its
    status (2: the command was wrong, 1: it could not be done)."""

    def __init__(self, argv: Sequence[str], returncode: int, line: str):
        super().__init__(f"enforcer {' '.join(argv)}: exit status {returncode}: {line}")
        self.argv, self.returncode, self.line = list(argv), returncode, line


class Lab:
    """The lab the `port25_lab` fixture built: its hosts, their addresses, the relay, what its servers received,
    and ways to run commands on its hosts and change its policy."""

    def __init__(self, directory: Path, record: dict[str, Any]):
        from .files import RELAY_NAME
        self.directory = directory
        self.lab_file = Path(record["lab_file"])
        self.tag: str = record["tag"]
        self.state = Path(record["state"])   # the policy's state: enforcer --state STATE ...
        self.socket: str = record["socket"]  # the daemon's control socket: enforcer status --socket SOCKET
        # resource name -> its addresses (a scale set's: its prefix's first host address)
        self.resources: dict[str, list[str]] = dict(record["addresses"])
        self.internet: list[str] = list(record["internet_addresses"])  # the internet host's (MX, relay, DNS)
        relay = record["relay"]
        self.relay = Relay(RELAY_NAME, relay["user"], relay["password"], relay["ca"])
        self._namespaces: dict[str, str] = {**record["hosts"], "gateway": record["gateway"],
                                            "internet": record["internet"]}

    @property
    def hosts(self) -> list[str]:
        """Every host run() takes: the resources, then the gateway and the internet host."""
        return [*self.resources, "gateway", "internet"]

    def namespace(self, host: str) -> str:
        """The network namespace of a lab host (ip netns exec NAMESPACE ...). An unknown host is a mistake in the
        test: one line naming the hosts there are, and the session ends with status 2."""
        if host not in self._namespaces:
            pytest.exit(f"port25_lab: no lab host '{host}'; use one of: {', '.join(self.hosts)}", returncode=2)
        return self._namespaces[host]

    def env(self, host: str, env: dict[str, str] | None = None) -> dict[str, str]:
        """The environment run() gives a command on `host`: `enforcer lab exec`'s (this process's, ENFORCER_LAB_HOST,
        the relay's account and certificate in ENFORCER_LAB_RELAY_USER, _PASSWORD and ENFORCER_LAB_CA, MAIL_CONFIG
        where postfix() made the host a Postfix), then `env`."""
        from .manage import host_env
        return {**host_env(self.directory, host), **(env or {})}

    def _argv(self, host: str, argv: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
              kwargs: dict[str, Any]) -> tuple[list[str], list[str], dict[str, Any]]:
        """(the command as given, as run inside the namespace, the keywords for subprocess)."""
        namespace = self.namespace(host)  # an unknown host first: the mistake to hear of
        given = [os.fspath(argv)] if isinstance(argv, (str, os.PathLike)) else [os.fspath(a) for a in argv]
        # shell=True as subprocess has it: the first item is the script, the rest its $0, $1...
        command = ["/bin/sh", "-c", *given] if kwargs.pop("shell", False) else given
        env = self.env(host, kwargs.pop("env", None))
        # as subprocess says it, rather than `ip netns exec`'s own words and status 255
        if not command or shutil.which(command[0], path=env.get("PATH")) is None:
            name = command[0] if command else ""
            raise FileNotFoundError(errno.ENOENT, f"No such file or directory: {name!r}", name)
        # `ip netns exec`, as `enforcer lab exec` does: the namespace's resolv.conf (the lab's DNS) over /etc's
        return command, ["ip", "netns", "exec", namespace, *command], {**kwargs, "env": env}

    def run(self, host: str, argv: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
            **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command on a lab host, as subprocess.run() does (capture_output, text, input, timeout, cwd,
        check, shell...; env adds to the lab's environment). The result's args are the command as given."""
        check = kwargs.pop("check", False)
        command, inside, kwargs = self._argv(host, argv, kwargs)
        done = subprocess.run(inside, **kwargs)
        result = subprocess.CompletedProcess(command, done.returncode, done.stdout, done.stderr)
        if check:
            result.check_returncode()
        return result

    def popen(self, host: str, argv: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
              **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command on a lab host, as subprocess.Popen() does (a server of your own, say); the lab's
        removal ends it, if you have not."""
        _, inside, kwargs = self._argv(host, argv, kwargs)
        return subprocess.Popen(inside, **kwargs)

    def smtp(self, host: str, port: int = 25, destination: str | None = None,
             timeout: float = 2.0) -> dict[str, Any]:
        """One SMTP delivery from a lab host, as the lab's own demo tries it (to the internet host unless
        `destination`; on a relay port over TLS with the lab's account): {"outcome": "delivered" | "timeout" |
        "refused" | "error", "detail", "seconds", ...}."""
        from .netns import own_module
        target = destination or self.internet[0]
        done = self.run(host, own_module("enforcer.lab.smtptry", target, str(port), "--timeout", str(timeout)),
                        capture_output=True, text=True, timeout=timeout + 60)
        if done.returncode != 0:
            raise RuntimeError(f"smtptry on {host} failed: {done.stderr.strip() or done.returncode}")
        outcome: dict[str, Any] = json.loads(done.stdout)
        return outcome

    def postfix(self, host: str, relay: bool = False) -> str:
        """Start Debian's Postfix on a lab resource, an instance of its own (as `enforcer lab mta start` does): it
        takes mail on the host's 127.0.0.1:25 and delivers by MX on port 25, or with `relay` through the lab's relay
        (SASL over required TLS); on one that runs, the new config applies and its queue is retried. Returns
        "started" or "reloaded". `postqueue`, `mailq` and `sendmail` run by run() on the host use it."""
        from .manage import start_postfix
        return start_postfix(self.directory, host, relay)

    def postfix_queue(self, host: str) -> list[dict[str, Any]]:
        """The host's Postfix queue (postqueue -j): one dict per message, its recipients with their delay_reason."""
        from . import mta
        from .manage import postfix_of
        return mta.queue(*postfix_of(self.directory, host))

    @property
    def mail(self) -> list[dict[str, Any]]:
        """What the internet host's SMTP server received (port 25, the MX, and the relay ports), oldest first:
        {"port", "family" ("IPv4"/"IPv6"), "from", "to" (a list), "subject", "authenticated", "received" (the
        Received header), "file" (the message as it came)}."""
        from .smtpsink import received
        return received(self.directory / "mail")

    def clear_mail(self) -> None:
        """Forget what was received so far (mail then lists only what comes next)."""
        for path in (self.directory / "mail").glob("*.eml"):
            path.unlink(missing_ok=True)

    def change(self, *args: str, timeout: float = 60) -> str:
        """Run an enforcer command on the lab's state (`change("diagnose", "devtest-lab")`, `change("vm",
        "restart", "devtest-vm")`), then wait until the gateway's daemon judges by it, so the next SYN meets the
        new policy; returns what the command printed. Raises CommandFailed with its one line if it fails."""
        from .netns import own_module
        done = subprocess.run(own_module("enforcer.cli", "--state", str(self.state), *args), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            said = [line for line in done.stderr.splitlines() if line.strip()]
            raise CommandFailed(args, done.returncode, said[-1] if said else "it said nothing")
        self.sync()
        return done.stdout

    def sync(self, timeout: float = 10) -> float:
        """Wait until the daemon judges by the state's current generation (after a change made with the CLI
        directly: enforcer --state STATE ...); returns the seconds it took."""
        from ..dataplane.control import ask
        from ..state.store import Store
        store = Store(self.state)
        try:
            target = store.generation()
        finally:
            store.close()
        started = time.monotonic()
        while True:
            answer = ask(self.socket, {"cmd": "status"}) or {}
            if answer.get("generation") == target:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"the lab's daemon did not pick up generation {target} within {timeout} s "
                                   f"(it answers: {answer or 'nothing'}; its log: {self.directory / 'daemon.log'})")
            time.sleep(0.02)
