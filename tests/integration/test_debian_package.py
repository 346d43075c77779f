"""scripts/build-deb.sh's package, for real: lintian finds no error in it, and it installs into a fresh Debian 12
chroot made by mmdebstrap (from Debian's mirror, with the package's dependencies; after that the chroot runs
without a network: every command in it runs in a network namespace of its own). There `enforcer --version`,
`enforcer profile list` and `systemd-analyze verify` on the installed unit work, the unit is not enabled, and
removing then purging the package leaves the chroot's files as they were before it.

The chroot and the package are built once for the module and removed afterwards, also when a test fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from support.paths import ROOT

TOOLS = ("mmdebstrap", "lintian", "dpkg-deb", "unshare", "chroot", "gcc", "git")
MISSING = [t for t in TOOLS if shutil.which(t) is None] + [h for h in ("/usr/include/yaml.h",
                                                                       "/usr/include/libnetfilter_queue")
                                                           if not os.path.exists(h)]
WHY_NOT = ("needs root (a chroot)" if os.geteuid() != 0 else
           f"missing {', '.join(MISSING)}; .ci/run installs them (scripts/install.sh --test, libyaml-dev, lintian)"
           if MISSING else None)
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

# Besides what the package depends on: systemd-analyze.
CHROOT_ALSO = ("systemd",)
# Changed by any dpkg run whatever it installs, or by systemd-analyze (run/systemd).
NOT_COMPARED = ("var/lib/dpkg", "var/log", "var/cache", "proc", "tmp", "run", "etc/ld.so.cache")


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="p25-debian-", dir="/var/tmp") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def deb(work: Path) -> Path:
    build = subprocess.run([str(ROOT / "scripts" / "build-deb.sh"), "--out", str(work / "dist")],
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout + build.stderr
    (package,) = (work / "dist").glob("port25-enforcer_*.deb")
    return package


def depends(deb: Path) -> list[str]:
    field = subprocess.run(["dpkg-deb", "--field", str(deb), "Depends"], capture_output=True, text=True,
                           check=True, timeout=60).stdout
    return sorted({re.sub(r"\(.*?\)", "", d).strip() for d in field.split(",")})


@pytest.fixture(scope="module")
def chroot(work: Path, deb: Path) -> Path:
    """Debian 12's minbase with what the package says it depends on (so dpkg -i needs no network), no more."""
    root = work / "root"
    packages = [*depends(deb), *CHROOT_ALSO]
    make = subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(packages)}",
                           "bookworm", str(root), "deb http://deb.debian.org/debian bookworm main",
                           "deb http://deb.debian.org/debian-security bookworm-security main"],
                          capture_output=True, text=True, timeout=900)
    assert make.returncode == 0, make.stderr
    return root


def in_chroot(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """A command in the chroot, in namespaces of its own: no network, its own /proc, mounts that end with it."""
    return subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork", f"--mount-proc={root / 'proc'}",
                           "chroot", str(root), *argv],
                          capture_output=True, text=True, timeout=300, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                                            "LANG": "C.UTF-8"})


def ok(root: Path, *argv: str) -> str:
    run = in_chroot(root, *argv)
    assert run.returncode == 0, f"{' '.join(argv)} -> {run.returncode}\n{run.stdout}\n{run.stderr}"
    return run.stdout


def files(root: Path) -> set[str]:
    found = set()
    for directory, dirs, names in os.walk(root):
        relative = os.path.relpath(directory, root)
        dirs[:] = [d for d in dirs if os.path.normpath(os.path.join(relative, d)) not in NOT_COMPARED]
        found |= {os.path.normpath(os.path.join(relative, n)) for n in names + dirs}
    return found - set(NOT_COMPARED)


def test_lintian_finds_no_error(deb):
    run = subprocess.run(["lintian", "--fail-on", "error", str(deb)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "\nE: " not in "\n" + run.stdout, run.stdout + run.stderr


def test_installs_runs_and_is_removed_cleanly_in_a_fresh_debian_12(deb, chroot):
    before = files(chroot)
    shutil.copy(deb, chroot / "tmp" / deb.name)
    ok(chroot, "dpkg", "-i", f"/tmp/{deb.name}")

    assert ok(chroot, "enforcer", "--version").strip() == "port25-enforcer, version 0.1.0"
    profiles = ok(chroot, "enforcer", "profile", "list")
    assert "azure" in profiles and "aws" in profiles, profiles
    verify = in_chroot(chroot, "systemd-analyze", "verify", "/lib/systemd/system/enforcer.service")
    assert (verify.returncode, verify.stderr) == (0, ""), verify
    assert "ExecStart=/usr/bin/enforcer run" in (chroot / "lib/systemd/system/enforcer.service").read_text()
    assert not list(chroot.glob("etc/systemd/system/*.wants/enforcer.service"))   # installed, not enabled
    # bash completion the way bash-completion loads it, answered by the installed command
    bash = ok(chroot, "bash", "-c", "source /usr/share/bash-completion/completions/enforcer && "
                                    "COMP_WORDS=(enforcer prof) COMP_CWORD=1 && _enforcer_completion enforcer && "
                                    "printf '%s\\n' \"${COMPREPLY[@]}\"")
    assert bash.split() == ["profile"], bash
    assert (chroot / "usr/share/zsh/vendor-completions/_enforcer").is_file()

    ok(chroot, "dpkg", "-r", "port25-enforcer")
    assert not (chroot / "usr/lib/port25-enforcer").exists() and not (chroot / "usr/bin/enforcer").exists()
    assert (chroot / "etc/enforcer/enforcer.toml").is_file()      # a conffile stays until purged
    ok(chroot, "dpkg", "--purge", "port25-enforcer")
    assert files(chroot) == before
