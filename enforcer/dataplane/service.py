"""`enforcer service install`: put the systemd unit and the config file in place, and the service's own system
user and state directory.

The unit is systemd/enforcer.service with ExecStart pointing at this installation's `enforcer`. The config file
is copied only where none exists: an operator's settings are never overwritten. The daemon runs as the system
user `enforcer` with CAP_NET_ADMIN alone; it reads the state, which root's commands write, as its group's, in
/var/lib/enforcer (root's, group enforcer, set-group-ID, so that every file made there is the group's).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

from ..errors import UserError
from ..state.settings import DEFAULT_STATE
from ..state.trust import SERVICE_ACCOUNT, service_account

SOURCE = Path(__file__).resolve().parents[2] / "systemd"
INSTALLED = Path(sys.prefix) / "share" / "port25-enforcer" / "systemd"


def template(name: str) -> Path:
    for d in (SOURCE, INSTALLED):
        if (d / name).exists():
            return d / name
    raise UserError(f"cannot find {name} (looked in {SOURCE} and {INSTALLED}); reinstall port25-enforcer")


def render_unit(executable: str) -> str:
    """The unit with ExecStart pointing at `executable`; ProtectHome relaxed when it lives under a home."""
    text = template("enforcer.service").read_text()
    text = text.replace("ExecStart=/usr/local/bin/enforcer ", f"ExecStart={executable} ")
    if executable.startswith(("/root/", "/home/")):
        text = text.replace("ProtectHome=yes", "ProtectHome=read-only")
    return text


def find_executable() -> str:
    """This installation's console script: beside the interpreter (a venv's bin/), else on PATH."""
    for candidate in (Path(sys.prefix) / "bin" / "enforcer", shutil.which("enforcer")):
        if candidate and Path(candidate).is_file():
            return str(Path(candidate).absolute())
    raise UserError("cannot find the enforcer executable; pass --executable PATH")


def private_part(executable: str) -> Path | None:
    """The first directory or file on the way to `executable` (and to the interpreter it names) that a user
    other than its owner cannot pass or read, or None: the service's own user must run it."""
    paths = [Path(executable)]
    with suppress(OSError, UnicodeDecodeError), open(executable) as f:
        first = f.readline()
        if first.startswith("#!"):
            paths.append(Path(first[2:].split()[0]))
    for path in paths:
        real = Path(os.path.realpath(path))
        for part in [*reversed(real.parents), real]:
            try:
                mode = part.stat().st_mode
            except OSError:
                return part
            if not mode & stat.S_IXOTH or (stat.S_ISREG(mode) and not mode & stat.S_IROTH):
                return part
    return None


def make_account(state_dir: Path) -> list[str]:
    """The system user and group `enforcer`, and the state's directory shared with the group."""
    lines = []
    if service_account() is None:
        done = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                               "--shell", "/usr/sbin/nologin", "--comment", "port25-enforcer daemon",
                               SERVICE_ACCOUNT], capture_output=True, text=True)
        if done.returncode != 0:
            raise UserError(f"cannot create the system user {SERVICE_ACCOUNT}: {done.stderr.strip()}; run as root")
        lines.append(f"created the system user and group {SERVICE_ACCOUNT}")
    account = service_account()
    assert account is not None
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chown(state_dir, 0, account[1])
    os.chmod(state_dir, 0o2770)
    for path in state_dir.glob(f"{Path(DEFAULT_STATE).name}*"):  # an existing state and its -wal, -shm
        os.chown(path, -1, account[1])
        os.chmod(path, 0o660)
    lines.append(f"{state_dir}: root's, group {SERVICE_ACCOUNT} (mode 2770): the daemon reads the state as that group")
    return lines


def install(root: Path, executable: str | None, force: bool) -> list[str]:
    executable = executable or find_executable()
    if not Path(executable).is_absolute():
        raise UserError(f"--executable {executable!r}: give an absolute path")
    if root == Path("/") and (private := private_part(executable)) is not None:
        raise UserError(f"the service runs as the system user {SERVICE_ACCOUNT}, which cannot reach {executable} "
                        f"({private} is private to its owner): install port25-enforcer where every user can read "
                        "it (for example python3 -m venv /opt/port25-enforcer), or pass --executable PATH")
    unit = root / "etc/systemd/system/enforcer.service"
    config = root / "etc/enforcer/enforcer.toml"
    lines = []
    text = render_unit(executable)
    if unit.exists() and unit.read_text() != text and not force:
        raise UserError(f"{unit} exists and differs; pass --force to replace it")
    try:
        unit.parent.mkdir(parents=True, exist_ok=True)
        unit.write_text(text)
        lines.append(f"wrote {unit} (ExecStart={executable} run --config /etc/enforcer/enforcer.toml)")
        if config.exists():
            lines.append(f"kept {config} (it exists)")
        else:
            config.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(template("enforcer.toml"), config)
            lines.append(f"wrote {config} (every key documented there)")
    except OSError as e:
        raise UserError(f"cannot write {e.filename}: {e.strerror}; run as root or pass --root DIR") from None
    if root == Path("/"):
        try:
            lines += make_account(Path(DEFAULT_STATE).parent)
        except OSError as e:
            raise UserError(f"cannot prepare {e.filename}: {e.strerror}; run as root") from None
    else:
        lines.append("(--root: no system user was made; where the unit runs: enforcer service install)")
    if root == Path("/") and Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "daemon-reload"], check=False)
        lines.append("ran systemctl daemon-reload")
    lines.append("next: enforcer apply FILE (the inventory), then: systemctl enable --now enforcer")
    return lines
