"""Four worker processes on one PostgreSQL store: every due stream is processed exactly once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from winchester.clock import FixedClock
from winchester.services.ingest import Ingester
from winchester.store import Store, create_engine, upgrade
from winchester.triggers import load_triggers

ROOT = Path(__file__).resolve().parents[1]
START = datetime(2024, 5, 1)
STREAMS = 3000
WORKERS = 4

TRIGGER = {
    "name": "instance_day", "distinguished_by": ["instance_id"], "expiration": "$last + 1d",
    "fire_pipeline": "record", "expire_pipeline": "record",
    "match_criteria": [{"event_type": "compute.instance.*"}],
    "fire_criteria": [{"event_type": "compute.instance.delete.end"}],
}

# Appends "pid stream_id" on commit: O_APPEND writes of one short line are atomic,
# so four processes can share the file.
RECORDER = '''
import os
from winchester.pipelines import Handler

class Recorder(Handler):
    def handle_events(self, events, env):
        self.line = f"{os.getpid()} {env['stream_id']} {len(events)}\\n"
        return events

    def commit(self):
        with open(os.environ["RECORD_FILE"], "a") as record:
            record.write(self.line)
'''


@pytest.mark.postgres
def test_four_workers_process_every_stream_exactly_once(postgres_url, tmp_path):
    """Thousands of due streams, four concurrent `winchester worker --once`: each stream's pipeline commits once."""
    engine = create_engine(postgres_url)
    upgrade(engine)
    engine.dispose()
    triggers = load_triggers([TRIGGER], "triggers.yaml")
    store = Store.from_url(postgres_url, ["instance_id"])
    ingester = Ingester(store, triggers, clock=FixedClock(START))
    for first in range(0, STREAMS, 500):
        ingester.add_events([
            {"message_id": f"{n}-{kind}", "event_type": f"compute.instance.{kind}",
             "timestamp": START + timedelta(seconds=n), "instance_id": f"instance-{n}"}
            for n in range(first, min(first + 500, STREAMS)) for kind in ("update", "delete.end")])
    stream_ids = {stream.id for stream in store.list_streams()}
    assert len(stream_ids) == STREAMS

    (tmp_path / "recorder.py").write_text(RECORDER)
    shutil.copy(ROOT / "etc" / "event_definitions.yaml", tmp_path / "event_definitions.yaml")
    (tmp_path / "triggers.yaml").write_text(yaml.safe_dump([TRIGGER]))
    (tmp_path / "pipelines.yaml").write_text(yaml.safe_dump({"record": ["recorder"]}))
    config = tmp_path / "winchester.yaml"
    config.write_text(yaml.safe_dump({
        "database": {"url": postgres_url},
        "distiller_config": "event_definitions.yaml", "trigger_definitions": "triggers.yaml",
        "pipeline_config": "pipelines.yaml",
        "pipeline_handlers": {"recorder": f"{tmp_path}|recorder:Recorder"},
        "pipeline_worker_batch_size": 40, "purge_completed_streams": True, "log_level": "warning",
    }))
    record = tmp_path / "record.txt"
    environment = {**os.environ, "RECORD_FILE": str(record)}
    environment.pop("WINCHESTER_DATABASE_URL", None)
    command = [str(Path(sys.executable).parent / "winchester"), "worker", "-c", str(config),
               "--once", "--now", "2030-01-01T00:00:00"]
    workers = [subprocess.Popen([*command, "--name", f"w{i}"], env=environment,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(WORKERS)]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * WORKERS, outputs

    lines = [line.split() for line in record.read_text().splitlines()]
    runs = Counter(int(stream_id) for _, stream_id, _ in lines)
    assert set(runs) == stream_ids
    assert [stream for stream, count in runs.items() if count != 1] == []
    assert all(events == "2" for _, _, events in lines)
    assert store.count_streams() == 0
    # They really did share the work (each claims 40 at a time).
    assert len({pid for pid, _, _ in lines}) >= 2
    store.close()
