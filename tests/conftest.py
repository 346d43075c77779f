import os

import pytest
from hypothesis import settings
from support.cli import Cli
from support.paths import LAB

# Hypothesis budgets, by HYPOTHESIS_PROFILE: `ci` (scripts/sanitize.sh, under ASan and UBSan), `long` (by hand,
# see RELIABILITY.md); without it Hypothesis's own default. Only tests that set no max_examples of their own
# follow it: the fuzz targets (tests/unit/test_fuzz_*.py); every other one keeps its count.
settings.register_profile("ci", max_examples=400, print_blob=True)
settings.register_profile("long", max_examples=10_000, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


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
