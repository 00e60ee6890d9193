"""Pipeline handlers for the fault tests, loaded by the workers as ``DIR|_recording:Class``.

``Recorder`` stands for a downstream side effect: its ``commit()`` writes one
row per call to the ``fault_commits`` table (in the test's own PostgreSQL
schema), so a test counts how many times each stream's pipeline committed.
It also generates one event per run, with the deterministic id
:func:`winchester.pipelines.generated_message_id` gives, and records that id:
a retried run must produce the same one.

``Stall`` does nothing unless the worker process was started with
``FAULT_STALL=handle`` or ``FAULT_STALL=commit``: then the first run in that
process writes a row to ``fault_stalls`` and sleeps (in ``handle_events``, before
any commit, or in ``commit()``, after ``Recorder``'s commit), so the test can
``kill -9`` the worker at exactly that point.

The handlers' own connections use their own ``application_name``, so the
test that terminates Winchester's database connections leaves the recorder's
alone: it is the test's instrument, not the system under test.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import psycopg

from winchester.pipelines import Handler, generated_message_id

GENERATED_TYPE = "fault.recorded"

SCHEMA = """
CREATE TABLE fault_commits (
    commit_id text PRIMARY KEY,
    stream_id bigint NOT NULL,
    reason text NOT NULL,
    instance_id text,
    pid integer NOT NULL,
    event_count integer NOT NULL,
    event_ids text NOT NULL,
    generated_id text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE fault_stalls (
    pid integer NOT NULL,
    stream_id bigint NOT NULL,
    phase text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""

# A stalled run sleeps this long: far longer than any test waits.
STALL_SECONDS = 600
_stalled = False


def _execute(dsn: str, statement: str, values: tuple[Any, ...]) -> None:
    """One autocommitted statement; a lost connection is retried (the statement is idempotent)."""
    for attempt in range(20):
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as connection:
                connection.execute(statement, values)
            return
        except psycopg.OperationalError:
            if attempt == 19:
                raise
            time.sleep(0.1)


class Recorder(Handler):
    """Counts commits per stream (one row per ``commit()`` call) and generates one event per run."""

    def __init__(self, dsn: str):
        super().__init__(dsn=dsn)
        self.dsn = dsn
        self.row: tuple[Any, ...] | None = None

    def handle_events(self, events, env):
        last = events[-1]
        generated = {
            "message_id": generated_message_id(env["stream_id"], last["message_id"], GENERATED_TYPE),
            "event_type": GENERATED_TYPE,
            "timestamp": last["timestamp"],
            "source_stream": int(env["stream_id"]),
            "reason": env["reason"],
        }
        instance = env["distinguishing_traits"].get("instance_id")
        # A fresh id per run: a retried insert of this commit is not a second commit.
        self.row = (str(uuid.uuid4()), int(env["stream_id"]), env["reason"], instance, os.getpid(),
                    len(events), " ".join(event["message_id"] for event in events),
                    generated["message_id"])
        return [*events, generated]

    def commit(self):
        _execute(self.dsn, "INSERT INTO fault_commits (commit_id, stream_id, reason, instance_id, pid, "
                           "event_count, event_ids, generated_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                           "ON CONFLICT (commit_id) DO NOTHING", self.row)

    def rollback(self):
        self.row = None


class Stall(Handler):
    """With FAULT_STALL=handle|commit in the environment: the process's first run stops there."""

    def __init__(self, dsn: str):
        super().__init__(dsn=dsn)
        self.dsn = dsn
        self.stream_id: int | None = None

    def _maybe_stall(self, phase: str) -> None:
        global _stalled
        if _stalled or os.environ.get("FAULT_STALL") != phase:
            return
        _stalled = True
        _execute(self.dsn, "INSERT INTO fault_stalls (pid, stream_id, phase) VALUES (%s, %s, %s)",
                 (os.getpid(), self.stream_id, phase))
        time.sleep(STALL_SECONDS)

    def handle_events(self, events, env):
        self.stream_id = int(env["stream_id"])
        self._maybe_stall("handle")
        return events

    def commit(self):
        self._maybe_stall("commit")
