import json
import subprocess
import sys
from pathlib import Path

import pytest

from enforcer.cli import main

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "vagrant" / "lab.yml"


class Cli:
    """Runs `enforcer` in-process against a state file of the test's own."""

    def __init__(self, state: Path, capsys):
        self.state = state
        self.capsys = capsys

    def __call__(self, *args: str, expect: int = 0) -> str:
        code = main(["--state", str(self.state), *args])
        out, err = self.capsys.readouterr()
        assert code == expect, f"enforcer {' '.join(args)} -> {code}\nstdout: {out}\nstderr: {err}"
        return out if code == 0 else err + out

    def json(self, *args: str):
        return json.loads(self(*args, "--json"))

    def verdict(self, source: str, destination: str) -> str:
        return self.json("check", "--from", source, "--to", destination)["verdict"]

    def process(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "enforcer.cli", "--state", str(self.state), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def cli(tmp_path, capsys) -> Cli:
    return Cli(tmp_path / "state.db", capsys)


@pytest.fixture
def lab(cli) -> Cli:
    """A state holding the example lab inventory."""
    cli("apply", str(LAB))
    return cli
