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
