"""What the fuzz targets (tests/unit/test_fuzz_*.py) share: their Hypothesis settings, whose budget follows the
profile HYPOTHESIS_PROFILE names (registered in tests/conftest.py: the suite's quick default, `ci` for the
sanitizer run, `long` by hand), and a tally of what they fed the C module, printed when a module is done."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

# no max_examples here: the profile's; no deadline: under the sanitizers an example runs several times slower
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest) -> Iterator[collections.Counter[str]]:
    """Counts what a module's targets fed the module (packets, images); one line with the time it took."""
    counts: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    yield counts
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and counts:
        what = ", ".join(f"{n:,} {name}" for name, n in sorted(counts.items()))
        with capture.global_and_fixture_disabled():  # else a teardown's output is captured and lost
            reporter.write_line(f"{request.module.__name__}: {what} in {time.monotonic() - started:.1f} s")
