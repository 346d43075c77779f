"""Shell completion through click's own mechanism, in-process: names come from the state --state (or
$ENFORCER_STATE) names, and a state that cannot be read completes nothing, quietly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.shell_completion import BashComplete, ZshComplete

from enforcer.cli.main import cli


def complete(args: list[str], incomplete: str, shell: type[BashComplete] | type[ZshComplete] = BashComplete
             ) -> list[str]:
    return [c.value for c in shell(cli, {}, "enforcer", "_ENFORCER_COMPLETE").get_completions(args, incomplete)]


@pytest.mark.parametrize("words, incomplete, names", [
    (["vm", "show"], "shop-", ["shop-blob", "shop-mx", "shop-relay", "shop-web"]),
    (["vm", "restart"], "ea", ["ea-vm"]),
    (["check", "--from"], "devtest-", ["devtest-ase", "devtest-vm"]),
    (["subscription", "show"], "m", ["mca-personal", "mcae-corp", "mpn-partner", "msdn-dev"]),
    (["account", "set-type"], "pay", ["payg-shop"]),            # a provider's word for the same group
    (["diagnose"], "devtest", ["devtest-lab"]),
    (["vm", "add", "x", "--subscription"], "ea", ["ea-prod"]),
    (["vnet", "subnet-add"], "", ["corp", "devnet", "hub", "misc", "shop"]),
    (["vm", "show"], "nothing-like-it", []),
])
def test_names_come_from_the_state(lab, words, incomplete, names):
    assert complete(["--state", str(lab.state), *words], incomplete) == names


def test_the_state_comes_from_the_environment_too(lab, monkeypatch):
    monkeypatch.setenv("ENFORCER_STATE", str(lab.state))
    assert complete(["vm", "show"], "mcae-v", ZshComplete) == ["mcae-vm", "mcae-vmss"]


def test_a_new_name_is_not_completed(lab):
    assert complete(["--state", str(lab.state), "vm", "add"], "shop") == []


@pytest.mark.parametrize("state", ["missing.db", "not-a-state.db", "a-directory"])
def test_a_state_that_cannot_be_read_completes_nothing(tmp_path, state):
    (tmp_path / "not-a-state.db").write_text("hello\n" * 100)
    (tmp_path / "a-directory").mkdir()
    assert complete(["--state", str(tmp_path / state), "vm", "show"], "") == []


def test_bash_asks_the_installed_command(lab, tmp_path):
    """What bash runs at a Tab (the script `_ENFORCER_COMPLETE=bash_source enforcer` prints calls it so)."""
    env = {**os.environ, "COMP_WORDS": f"enforcer --state {lab.state} vm show shop-w", "COMP_CWORD": "5",
           "_ENFORCER_COMPLETE": "bash_complete"}
    run = subprocess.run([sys.executable, "-m", "enforcer.cli"], env=env, capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert (run.returncode, run.stdout, run.stderr) == (0, "plain,shop-web\n", "")
