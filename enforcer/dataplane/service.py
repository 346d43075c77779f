"""`enforcer service install`: put the systemd unit and the config file in place.

The unit is systemd/enforcer.service with ExecStart pointing at this installation's `enforcer`. The config file
is copied only where none exists: an operator's settings are never overwritten.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import UserError

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


def install(root: Path, executable: str | None, force: bool) -> list[str]:
    executable = executable or find_executable()
    if not Path(executable).is_absolute():
        raise UserError(f"--executable {executable!r}: give an absolute path")
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
    if root == Path("/") and Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "daemon-reload"], check=False)
        lines.append("ran systemctl daemon-reload")
    lines.append("next: enforcer apply FILE (the inventory), then: systemctl enable --now enforcer")
    return lines
