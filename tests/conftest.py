import os

import pytest
from support.cli import Cli
from support.paths import LAB


@pytest.fixture
def cli(tmp_path, capsys) -> Cli:
    return Cli(tmp_path / "state.db", capsys)


@pytest.fixture
def lab(cli) -> Cli:
    """A state holding the example lab inventory."""
    cli("apply", str(LAB))
    return cli


@pytest.fixture(scope="session", autouse=True)
def lab_ranges_go_nowhere():
    """Before any test builds a lab (as root), the host routes the lab ranges to `unreachable`, so that nothing
    addressed to a lab host can leave this machine, whatever a test gets wrong."""
    if os.geteuid() == 0:
        from enforcer.lab.netns import guard_lab_ranges
        guard_lab_ranges()
