"""Suite-wide test policy.

* Tests marked ``postgres`` or ``rabbitmq`` use the real servers. Without the
  server they skip with the reason; with ``WINCHESTER_REQUIRE_SERVICES=1`` (as
  ``.ci/run`` sets) every skip, for any reason, is turned into a failure, so CI
  can never pass by not running something.
* Hypothesis never applies deadlines (speed is measured in ``bench/``), and is
  derandomised under CI so a failure there reproduces exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

REQUIRE_SERVICES = os.environ.get("WINCHESTER_REQUIRE_SERVICES") == "1"

settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") or REQUIRE_SERVICES else "default")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_SERVICES and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"skipped under WINCHESTER_REQUIRE_SERVICES=1, which forbids skips: {reason}")


def real_data_dir() -> Path:
    """The shared real-world inputs (``../shared/data/real`` beside the checkout).

    ``WINCHESTER_REAL_DATA`` points elsewhere when the checkout lives apart
    from ``shared/``.
    """
    configured = os.environ.get("WINCHESTER_REAL_DATA")
    path = Path(configured) if configured else Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
    if not path.is_dir():
        pytest.fail(f"real test data not found at {path}; set WINCHESTER_REAL_DATA", pytrace=False)
    return path


@pytest.fixture(scope="session")
def real_data() -> Path:
    return real_data_dir()
