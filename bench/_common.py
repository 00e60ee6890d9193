"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


def real_data_dir() -> Path:
    """``../shared/data/real`` beside the checkout, or ``$WINCHESTER_REAL_DATA``."""
    configured = os.environ.get("WINCHESTER_REAL_DATA")
    path = Path(configured) if configured else ROOT.parent / "shared" / "data" / "real"
    if not path.is_dir():
        sys.exit(f"real data not found at {path}; set WINCHESTER_REAL_DATA")
    return path


POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


@contextmanager
def database(kind: str):
    """A URL of an empty database: an SQLite file in a temporary directory, or a fresh PostgreSQL schema."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="winchester-bench-") as directory:
            yield f"sqlite:///{directory}/winchester.db"
        return
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy so far (Linux /proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


def example_ingester(url: str):
    """The example configuration (etc/winchester.yaml) on a migrated database at ``url``:
    its store and an Ingester on an event clock. Close the store when done."""
    from winchester.clock import EventClock
    from winchester.config import (
        build_distiller,
        load_settings,
        load_trigger_definitions,
        open_store,
    )
    from winchester.services.ingest import Ingester
    from winchester.store import create_engine, upgrade

    engine = create_engine(url)
    upgrade(engine)
    engine.dispose()
    settings = load_settings(ROOT / "etc" / "winchester.yaml",
                             environ={"WINCHESTER_DATABASE_URL": url})
    triggers = load_trigger_definitions(settings)
    store = open_store(settings, triggers)
    return store, Ingester(store, triggers, build_distiller(settings), EventClock())


class Autovacuum:
    """What PostgreSQL's autovacuum daemon does, for a server that runs with it off
    (this machine's does): every ``interval`` seconds, each table of ``schema`` past
    autovacuum's default thresholds is vacuumed or analyzed. Without it, every updated
    stream leaves a dead row behind and the tables are never analyzed, which no
    production server (autovacuum is on by default) sees. Runs on its own connection,
    named ``application_name`` so its CPU can be told apart.
    """

    # PostgreSQL's defaults: autovacuum_vacuum_threshold / _scale_factor, the insert
    # variants (PostgreSQL 13+), autovacuum_analyze_threshold / _scale_factor.
    VACUUM, VACUUM_SCALE = 50, 0.2
    INSERT_VACUUM, INSERT_VACUUM_SCALE = 1000, 0.2
    ANALYZE, ANALYZE_SCALE = 50, 0.1

    def __init__(self, schema: str, interval: float = 60.0, application_name: str = "autovacuum"):
        # 60 s: autovacuum_naptime, how often the daemon looks at a database.
        import threading

        self.schema, self.interval, self.application_name = schema, interval, application_name
        self.vacuums = self.analyzes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def needed() -> bool:
        import psycopg

        with psycopg.connect(POSTGRES, autocommit=True) as connection:
            return connection.execute("SHOW autovacuum").fetchone()[0] != "on"

    def start(self) -> "Autovacuum":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(f"{POSTGRES}?application_name={self.application_name}",
                             autocommit=True) as connection:
            while not self._stop.wait(self.interval):
                due = connection.execute(
                    "SELECT relname, n_live_tup, n_dead_tup, n_ins_since_vacuum, n_mod_since_analyze "
                    "FROM pg_stat_user_tables WHERE schemaname = %s", (self.schema,)).fetchall()
                for table, live, dead, inserted, modified in due:
                    vacuum = (dead > self.VACUUM + self.VACUUM_SCALE * live
                              or inserted > self.INSERT_VACUUM + self.INSERT_VACUUM_SCALE * live)
                    analyze = modified > self.ANALYZE + self.ANALYZE_SCALE * live
                    if vacuum or analyze:
                        command = "VACUUM (ANALYZE)" if vacuum and analyze else "VACUUM" if vacuum else "ANALYZE"
                        connection.execute(f'{command} "{self.schema}"."{table}"')
                        self.vacuums += vacuum
                        self.analyzes += analyze
