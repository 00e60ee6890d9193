"""Suite-wide test policy.

* Tests marked ``postgres`` or ``rabbitmq`` use the real servers. Without the
  server they skip with the reason; with ``WINCHESTER_REQUIRE_SERVICES=1`` (as
  ``.ci/run`` sets) every skip, for any reason, is turned into a failure, so CI
  can never pass by not running something.
* Hypothesis never applies deadlines (speed is measured in ``bench/``), and is
  derandomised under CI so a failure there reproduces exactly.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers the tests start)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- databases ---------------------------------------------------------------------------

POSTGRES_URL = os.environ.get("WINCHESTER_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _postgres_problem() -> str | None:
    import psycopg

    conninfo = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(conninfo, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL is not reachable at {POSTGRES_URL}: {exc}"


def require_service(problem: str | None) -> None:
    """Skip (locally) or fail (under WINCHESTER_REQUIRE_SERVICES=1) when a service is missing."""
    if problem is None:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"{problem} (WINCHESTER_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(problem)


@contextmanager
def postgres_schema_url() -> Iterator[str]:
    """A URL whose connections work in a fresh, private schema, dropped afterwards."""
    import psycopg

    require_service(_postgres_problem())
    schema = f"t_{uuid.uuid4().hex[:16]}"
    conninfo = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request, tmp_path) -> Iterator[str]:
    """An empty database on each store: an SQLite file, or a private PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'winchester.db'}"
    else:
        with postgres_schema_url() as url:
            yield url


@pytest.fixture
def migrated_url(database_url) -> str:
    """``database_url`` with the schema created by the migrations."""
    from winchester.store import create_engine, upgrade

    engine = create_engine(database_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return database_url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL schema (for tests that only make sense on PostgreSQL)."""
    with postgres_schema_url() as url:
        yield url


# --- message broker ----------------------------------------------------------------------

AMQP_URL = os.environ.get("WINCHESTER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


@functools.cache
def rabbitmq_problem() -> str | None:
    from kombu import Connection

    try:
        with Connection(AMQP_URL, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0)
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable here"
        return f"RabbitMQ is not reachable at {AMQP_URL}: {type(exc).__name__}: {exc}"
    return None


@pytest.fixture
def amqp_url() -> str:
    """The real RabbitMQ's URL (skips locally, fails in CI, when it is not reachable)."""
    require_service(rabbitmq_problem())
    return AMQP_URL
