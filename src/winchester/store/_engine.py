"""Engines: URL handling and per-database connection settings."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from winchester.errors import ConfigError, Problem


def normalize_url(url: str | URL) -> URL:
    """Pick the drivers we ship: ``postgresql://`` means psycopg 3, not psycopg2."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises ArgumentError and others
        raise ConfigError(Problem(file="", where="database.url",
                                  message=f"not a database URL: {url!r} ({exc})")) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername == "mysql":
        parsed = parsed.set(drivername="mysql+pymysql")
    return parsed


def create_engine(url: str | URL, **options) -> Engine:
    """An engine with the settings Winchester relies on for each database."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, **options)
    engine = sa.create_engine(parsed, pool_pre_ping=True, **options)
    if parsed.get_backend_name() == "postgresql":
        @sa.event.listens_for(engine, "connect")
        def _session_settings(dbapi_connection, _record):
            # Winchester runs many small, index-driven statements: starting
            # parallel query workers or JIT-compiling for them costs more CPU
            # than it saves (measured: most of the server's time in bench/worker.py).
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET jit = off")
                cursor.execute("SET max_parallel_workers_per_gather = 0")
            dbapi_connection.commit()
    return engine


def _sqlite_engine(url: URL, **options) -> Engine:
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, **options)

    @sa.event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record):
        # SQLAlchemy then issues BEGIN itself (below), so writers can take the
        # write lock up front instead of failing to upgrade a read lock.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        # 64 MB of page cache keeps the hot index pages of a busy store in memory.
        cursor.execute("PRAGMA cache_size=-65536")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(connection):
        mode = "IMMEDIATE" if connection.get_execution_options().get("writes") else "DEFERRED"
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


def is_postgresql(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"
