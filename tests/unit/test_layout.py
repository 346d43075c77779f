"""The architecture holds: the core is pure, nothing but the entry point reaches into the CLI, and a plain
command does not load the lab's heavy modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import ROOT

PACKAGE = ROOT / "enforcer"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved to absolute names."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]  # the package a module's relative imports start from
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}  # `from . import hints`
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_stdlib(name: str) -> bool:
    return name.split(".")[0] in sys.stdlib_module_names


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("enforcer.core")])
def test_core_imports_nothing_but_itself_errors_and_the_standard_library(module):
    outside = {name for name in imports_of(MODULES[module])
               if not is_stdlib(name) and not name.startswith(("enforcer.core", "enforcer.errors"))
               and name not in ("__future__",)}
    assert not outside, f"{module} imports {sorted(outside)}"


@pytest.mark.parametrize("module", [m for m in MODULES if not m.startswith("enforcer.cli")])
def test_nothing_outside_the_cli_imports_it(module):
    assert not {n for n in imports_of(MODULES[module]) if n == "enforcer.cli" or n.startswith("enforcer.cli.")}


# The floors below the CLI: a package never imports one above it (the lab drives the data plane and the state; the
# data plane reads the state; the state knows neither).
ABOVE = {"enforcer.state": ("enforcer.dataplane", "enforcer.lab"), "enforcer.dataplane": ("enforcer.lab",)}


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith(tuple(ABOVE))])
def test_no_package_imports_one_on_a_floor_above_it(module):
    above = next(floors for package, floors in ABOVE.items() if module == package or module.startswith(package + "."))
    reached = {n for n in imports_of(MODULES[module]) if n in above or n.startswith(tuple(f + "." for f in above))}
    assert not reached, f"{module} imports {sorted(reached)}"


def test_the_entry_point_is_the_cli_main():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'enforcer = "enforcer.cli.main:main"' in text


def test_the_import_check_sees_relative_imports():
    """The checks above would pass vacuously if relative imports were not resolved."""
    assert "enforcer.core.policy" in imports_of(MODULES["enforcer.core.verdicts"])
    assert "enforcer.errors" in imports_of(MODULES["enforcer.core.inventory"])
    assert "enforcer.cli.context" in imports_of(MODULES["enforcer.cli.main"])


LAB_ONLY = {"pyroute2", "scapy", "netfilterqueue"}


@pytest.mark.parametrize("argv, absent", [
    (["vm", "list"], LAB_ONLY),
    (["check", "--from", "ea-vm", "--to", "198.19.25.25"], LAB_ONLY | {"yaml", "rich"}),  # a line, not a table
    (["--help"], LAB_ONLY),  # help lists every command, so it loads each command's module
])
def test_a_plain_command_loads_only_what_it_needs(tmp_path, argv, absent):
    state = tmp_path / "state.db"
    assert subprocess.run([sys.executable, "-m", "enforcer.cli", "--state", str(state), "apply",
                           str(ROOT / "vagrant" / "lab.yml")], capture_output=True, timeout=60).returncode == 0
    code = ("import sys\nfrom enforcer.cli.main import main\n"
            f"code = main(['--state', {str(state)!r}, *{argv!r}])\n"
            f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(absent)!r}))\n"
            "print(code, loaded)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "0 []", done.stdout + done.stderr
