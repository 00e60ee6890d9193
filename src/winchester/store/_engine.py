"""Engines: URL handling and per-database connection settings."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from winchester.errors import ConfigError, Problem

logger = logging.getLogger(__name__)

# A writer copies the WAL into the database itself only once it holds this many
# pages (64 MB): normally the WalCheckpointer has done it long before.
WAL_BACKSTOP_PAGES = 16384


def normalize_url(url: str | URL) -> URL:
    """Pick the drivers we ship: ``postgresql://`` means psycopg 3, not psycopg2.

    Only SQLite and PostgreSQL are stores (the bulk writers, locks and
    migrations are written for those two): any other is a ConfigError.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises ArgumentError and others
        raise ConfigError(Problem(file="", where="database.url",
                                  message=f"not a database URL: {url!r} ({exc})")) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    problem = unsupported_backend(parsed)
    if problem:
        raise ConfigError(Problem(file="", where="database.url", message=problem))
    return parsed


# SQLAlchemy's backend names: postgres:// (Heroku's, and older libpq tools') is PostgreSQL too.
SUPPORTED_BACKENDS = ("sqlite", "postgresql", "postgres")


def unsupported_backend(url: URL) -> str | None:
    """Why the database ``url`` names cannot be a store, or None (never repeats the URL)."""
    backend = url.get_backend_name()
    if backend in SUPPORTED_BACKENDS:
        return None
    # The original Winchester ran on MySQL: its configurations say mysql://.
    return (f"names a {backend} database, which Winchester does not support: use PostgreSQL "
            "(postgresql://user@host:5432/winchester) or SQLite (sqlite:///var/winchester.db)")


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
            # Every execution is planned for the tables as they are now: psycopg
            # prepares a statement run five times, and PostgreSQL would then keep
            # a generic plan costed when the tables were small (a new store, or
            # no ANALYZE yet) while they grow a thousandfold under it (measured
            # in bench/soak.py: stream updates and claims hash-joining the whole
            # streams table). Planning these batch statements costs microseconds.
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET jit = off")
                cursor.execute("SET max_parallel_workers_per_gather = 0")
                if dbapi_connection.info.server_version >= 120000:  # the setting's first release
                    cursor.execute("SET plan_cache_mode = force_custom_plan")
            dbapi_connection.commit()
    return engine


def _sqlite_engine(url: URL, **options) -> Engine:
    path = _sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
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
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP_PAGES}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(connection):
        mode = "IMMEDIATE" if connection.get_execution_options().get("writes") else "DEFERRED"
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


def is_postgresql(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def _sqlite_path(url: URL) -> Path | None:
    # ``file:`` URIs can name memory databases too: left to SQLite.
    database = url.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser()


def sqlite_file(engine: Engine) -> str | None:
    """The file of an SQLite engine's database; None for other databases and in-memory ones."""
    if engine.dialect.name != "sqlite":
        return None
    path = _sqlite_path(engine.url)
    return None if path is None else str(path)


class WalCheckpointer:
    """Copies an SQLite database's write-ahead log into the database file on a thread of its own.

    SQLite's own checkpoint runs inside the COMMIT of whichever write
    crossed the WAL's size limit, so the ingest writer spent half its commit
    time copying pages (measured: 18 of 36 us per notification at 100k).
    A passive checkpoint from another connection copies the same pages while
    the writer goes on with the next batch; it never blocks a reader or a
    writer, and what it has not copied yet is still safe in the WAL. The
    writers' own checkpoint stays as a backstop (``WAL_BACKSTOP_PAGES``) for
    when this one cannot keep up. The thread ends when no commit has asked
    for it for ``idle_seconds``, so a process that stops writing holds no
    thread or connection for it.
    """

    def __init__(self, path: str, idle_seconds: float = 2.0):
        self.path = path
        self.idle_seconds = idle_seconds
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._warned = False

    def nudge(self) -> None:
        """A write was committed: checkpoint soon."""
        with self._lock:
            if self._closed:
                return
            self._wanted.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="winchester-wal-checkpoint",
                                                daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Checkpoint once more (the last commits), then stop."""
        with self._lock:
            self._closed = True
            thread = self._thread
            self._wanted.set()
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        try:
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            self._stop(f"cannot open {self.path} ({exc})")
            return
        try:
            while True:
                if not self._wanted.wait(self.idle_seconds):
                    with self._lock:
                        if not self._wanted.is_set():
                            self._thread = None
                            return
                self._wanted.clear()
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                with self._lock:
                    if self._closed:
                        self._thread = None
                        return
        except sqlite3.Error as exc:
            self._stop(str(exc))
        finally:
            connection.close()

    def _stop(self, reason: str) -> None:
        # The writers' own checkpoint (the backstop) still keeps the WAL in bounds,
        # and the next commit tries again: say so once, not on every commit.
        logger.log(logging.DEBUG if self._warned else logging.WARNING,
                   "background WAL checkpoint of %s stopped: %s", self.path, reason)
        self._warned = True
        with self._lock:
            self._thread = None
