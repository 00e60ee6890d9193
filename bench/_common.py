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
