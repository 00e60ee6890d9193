"""The soak's recording handler: one row per committed fire, in its own table.

Loaded by the soak's generated winchester.yaml (``pipeline_handlers``); each
worker process opens its own connection on first commit. The row holds the
stream, the wall-clock time of the commit, and the message_id of the
stream's ``.exists`` record, so bench/soak.py can join it to the time that
record was published.
"""

from __future__ import annotations

import time
from typing import Any

TABLE = "soak_fired"
_connections: dict[str, Any] = {}


class Recorder:
    def __init__(self, url: str):
        self.url = url
        self.pending: tuple[int, str | None] | None = None

    def handle_events(self, events: list, env: dict) -> list:
        exists = next((e["message_id"] for e in events if e["event_type"] == "compute.instance.exists"), None)
        self.pending = (env["stream_id"], exists)
        return events

    def commit(self) -> None:
        import psycopg

        if self.pending is None:
            return
        connection = _connections.get(self.url)
        if connection is None or connection.closed:
            connection = _connections[self.url] = psycopg.connect(self.url, autocommit=True)
            # The soak's ledger, not Winchester's data: waiting for its disk
            # flush on every fire would make the workers wait on the bench.
            connection.execute("SET synchronous_commit = off")
        connection.execute(f"INSERT INTO {TABLE} (stream_id, committed_at, exists_id) VALUES (%s, %s, %s)",
                           (self.pending[0], time.time(), self.pending[1]))
        self.pending = None

    def rollback(self) -> None:
        self.pending = None
