"""Runs `enforcer` in-process (or as a process) against a state file of the test's own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from enforcer.cli.main import main


class Cli:
    def __init__(self, state: Path, capsys: Any):
        self.state = state
        self.capsys = capsys

    def __call__(self, *args: str, expect: int = 0) -> str:
        code = main(["--state", str(self.state), *args])
        out, err = self.capsys.readouterr()
        assert code == expect, f"enforcer {' '.join(args)} -> {code}\nstdout: {out}\nstderr: {err}"
        return out if code == 0 else err + out

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json"))

    def verdict(self, source: str, destination: str) -> str:
        verdict: str = self.json("check", "--from", source, "--to", destination)["verdict"]
        return verdict

    def process(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "enforcer.cli", "--state", str(self.state), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
