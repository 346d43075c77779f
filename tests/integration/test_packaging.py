"""A non-editable install has everything the demo needs: a wheel of the checkout, installed into a fresh virtual
environment, runs `enforcer lab demo` from a directory that is not the checkout.

The wheel is built with the project's own build backend (no build isolation, no network) from a copy of the
checkout, so a stale build/ in the tree cannot leak into it and nothing is written into the tree. The fresh venv
gets the wheel with --no-deps; the runtime dependencies come from the project's venv, whose site-packages a .pth
line appends after the fresh venv's own (a plain path line: the project venv's own .pth files, among them an
editable finder for a checkout, are not run). Every command runs with its working directory outside the
checkout and without PYTHONPATH or $ENFORCER_*, and the first test proves `enforcer` is imported from the
fresh venv.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from support.paths import ROOT

SHARE = Path("share") / "port25-enforcer"
NOT_BUILT = ("build", "dist", "*.egg-info", ".git", ".venv", ".vagrant", "__pycache__", ".pytest_cache",
             ".hypothesis", ".mypy_cache", ".ruff_cache")
NO_BACKEND = next((m for m in ("setuptools", "wheel") if importlib.util.find_spec(m) is None), None)
pytestmark = pytest.mark.skipif(NO_BACKEND is not None,
                                reason=f"the build backend ({NO_BACKEND}) is not in this venv; "
                                       "./scripts/install.sh --test installs it")


class Installed:
    """A fresh venv holding the project's wheel, and a directory outside the checkout to run it from."""

    def __init__(self, venv: Path, elsewhere: Path) -> None:
        self.venv, self.elsewhere = venv, elsewhere
        self.share = venv / SHARE
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("PYTHON", "ENFORCER_", "VIRTUAL_ENV"))}

    def run(self, program: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.venv / "bin" / program), *args], cwd=self.elsewhere, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def ok(self, program: str, *args: str, timeout: float = 60) -> str:
        proc = self.run(program, *args, timeout=timeout)
        assert proc.returncode == 0, f"{program} {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def python(self, code: str) -> str:
        return self.ok("python", "-c", code).strip()


def copy_of_the_checkout(work: Path) -> Path:
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_BUILT))
    return source


def build_wheel(into: Path, work: Path) -> Path:
    source = copy_of_the_checkout(work)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "-w", str(into), str(source)], check=True, cwd=work, timeout=300)
    wheels = list(into.glob("port25_enforcer-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    work = tmp_path_factory.mktemp("packaging")
    wheel = build_wheel(work / "wheelhouse", work)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    fresh = Installed(venv, work / "elsewhere")
    fresh.elsewhere.mkdir()
    fresh.ok("python", "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", str(wheel), timeout=300)
    # Only after the install: with the project venv visible, pip would find its port25-enforcer (the editable
    # one) and call the requirement satisfied.
    purelib = Path(fresh.python("import sysconfig; print(sysconfig.get_path('purelib'))"))
    (purelib / "zz_port25_test_dependencies.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))
    return fresh


def test_the_sdist_carries_the_c_modules_sources(tmp_path):
    """_fastpath.c and the headers it includes (one compilation unit): an sdist without them cannot build."""
    source = copy_of_the_checkout(tmp_path)
    subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                    "build_meta.build_sdist(sys.argv[1])", str(tmp_path / "dist")],
                   check=True, cwd=source, capture_output=True, timeout=300)
    (sdist,) = (tmp_path / "dist").glob("port25_enforcer-*.tar.gz")
    with tarfile.open(sdist) as tar:
        carried = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    headers = [str(p.relative_to(ROOT)) for p in ROOT.glob("enforcer/dataplane/_fastpath/*.h")]
    assert len(headers) >= 4, headers
    assert not {"enforcer/dataplane/_fastpath.c", *headers} - carried


def test_the_wheel_carries_the_c_module_built_not_its_sources(installed):
    dataplane = Path(installed.python("import enforcer.dataplane as d; print(d.__path__[0])"))
    assert list(dataplane.glob("_fastpath.*.so")) and (dataplane / "_fastpath.pyi").is_file()
    assert not (dataplane / "_fastpath.c").exists() and not (dataplane / "_fastpath").exists()


def test_enforcer_is_imported_from_the_fresh_venv_not_the_checkout(installed):
    where = Path(installed.python("import enforcer; print(enforcer.__file__)"))
    assert where.is_relative_to(installed.venv), where
    assert not where.is_relative_to(ROOT), where


def test_the_lab_the_profiles_and_the_systemd_files_are_installed(installed):
    for directory in ("vagrant", "policies", "systemd"):
        shipped = sorted(p.relative_to(ROOT / directory) for p in (ROOT / directory).rglob("*")
                         if p.is_file() and not {".vagrant", ".wheels"} & set(p.parts) and p.name != ".gitignore")
        assert shipped, directory
        for relative in shipped:
            copy = installed.share / directory / relative
            assert copy.is_file(), f"{copy} is not installed"
            assert copy.read_bytes() == (ROOT / directory / relative).read_bytes(), copy


def test_the_default_lab_is_the_installed_one_and_applies(installed):
    default = Path(installed.python("from enforcer.lab.files import DEFAULT_LAB; print(DEFAULT_LAB)"))
    assert default == installed.share / "vagrant" / "lab.yml"
    assert default.is_file()
    state = installed.elsewhere / "tmp" / "x" / "state.db"
    state.parent.mkdir(parents=True)
    installed.ok("enforcer", "--state", str(state), "apply", str(default))
    listed = json.loads(installed.ok("enforcer", "--state", str(state), "vm", "list", "--json"))
    assert {r["name"] for r in listed} == {r["name"] for r in yaml.safe_load(default.read_text())["resources"]}


def test_the_profiles_come_from_the_install(installed):
    found = json.loads(installed.ok("enforcer", "profile", "--json"))
    assert {"azure", "azure-2017"} <= set(found)
    for name in ("azure", "azure-2017"):
        path = Path(found[name])
        assert path == installed.share / "policies" / f"{name}.toml" or path.parent == Path("/etc/enforcer/policies")
    assert "azure-2017" in installed.ok("enforcer", "profile")


def test_lab_demo_help_works(installed):
    said = installed.ok("enforcer", "lab", "demo", "--help")
    assert "Build the lab in network namespaces" in said and "--profile NAME" in said and "--all" in said


def test_every_providers_lab_is_the_installed_one(installed):
    found = json.loads(installed.python("import json; from enforcer.lab.files import every_lab; "
                                        "print(json.dumps({k: str(v) for k, v in every_lab().items()}))"))
    assert Path(found.pop("azure")) == installed.share / "vagrant" / "lab.yml"
    assert found == {p.stem: str(installed.share / "vagrant" / "labs" / p.name)
                     for p in sorted((ROOT / "vagrant" / "labs").glob("*.yml"))}


def test_slow_30s_as_root_the_installed_demo_runs_from_elsewhere_and_matches_the_spec(installed):
    from enforcer.lab.netns import can_build_namespaces
    why_not = can_build_namespaces()
    if why_not:
        pytest.skip(why_not)
    proc = installed.run("enforcer", "lab", "demo", timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "every outcome matches the spec" in out


def test_as_root_the_installed_pytest_plugin_runs_a_users_project_against_the_installed_lab(installed):
    """A mail project's tests (examples/mail-app, copied elsewhere) find port25_lab through the wheel's pytest11
    entry point, and its lab is the installed lab file."""
    from enforcer.lab.manage import lab_down, netns_names, tag_for
    from enforcer.lab.netns import can_build_namespaces
    why_not = can_build_namespaces()
    if why_not:
        pytest.skip(why_not)
    project = installed.elsewhere / "mail-app"
    shutil.copytree(ROOT / "examples" / "mail-app", project)
    basetemp = installed.elsewhere / "pytest-tmp"
    lab_dir = basetemp / "port25-lab0" / "lab"  # where the plugin puts its lab under that basetemp
    try:
        proc = subprocess.run([str(installed.venv / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider",
                               f"--basetemp={basetemp}", "-k", "falls_back"], cwd=project, env=installed.env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "1 passed" in proc.stdout
        assert f"port25_lab: the lab of {installed.share / 'vagrant' / 'lab.yml'} was up" in proc.stdout
    finally:
        lab_down(lab_dir, purge=True)
    assert not [n for n in netns_names() if n.startswith(tag_for(lab_dir) + "-")]
