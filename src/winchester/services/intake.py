"""`winchester ingest` and `winchester persistor`: notifications from the broker into the store.

Both consume OpenStack notifications with :class:`NotificationConsumer`
(batches, acknowledged only after they are committed). Ingest distils and
matches them into events and streams; the persistor keeps every raw
notification, as received, in the archive. They use separate queues: the
persistor's own (``persistor.queue``) gets a copy of everything, whatever
ingest does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from winchester._json import body_bytes
from winchester.clock import Clock, WallClock
from winchester.config._settings import IntakeSettings, PersistorSettings
from winchester.distill import NotificationRejected, decode_notification, read_envelope
from winchester.services._consumer import Delivery, NotificationConsumer, Subscription
from winchester.services.ingest import Ingester, PreparedBatch
from winchester.store import ARCHIVED, REJECTED, Store
from winchester.timex import parse as parse_timex

logger = logging.getLogger(__name__)

# How often the persistor applies archive_retention, and for how long at most each time
# (the batch just archived waits for its acknowledgement meanwhile). A delete batch
# takes a fraction of a second, so this keeps up with several thousand a second.
RETENTION_INTERVAL = 5.0
RETENTION_SECONDS = 0.5
# Archived notifications deleted per transaction by retention.
TRIM_BATCH = 10_000


def subscription(intake: IntakeSettings, queue: str | None = None) -> Subscription:
    """What to consume: the intake's exchanges and priorities, on its queue or ``queue``."""
    return Subscription(exchanges=intake.exchanges, topic=intake.topic, priorities=intake.priorities,
                        queue=intake.queue if queue is None else queue, durable=intake.durable)


@dataclass
class _PreparedDeliveries:
    deliveries: Sequence[Delivery]
    batch: PreparedBatch

    def __len__(self) -> int:
        return len(self.deliveries)


class IngestService:
    """Notifications from the broker -> events and streams, a committed batch at a time."""

    def __init__(self, url: str, intake: IntakeSettings, ingester: Ingester, name: str = "ingest"):
        self.ingester = ingester
        # Distilling a batch overlaps with storing the one before (measured
        # with bench/intake.py: the figures are in the README).
        self.consumer = NotificationConsumer(url, subscription(intake), self.store_batch,
                                             batch_size=intake.batch_size,
                                             batch_seconds=intake.batch_seconds, name=name,
                                             prepare_batch=self.prepare_batch)

    def prepare_batch(self, deliveries: Sequence[Delivery]) -> _PreparedDeliveries:
        """Distil and match (no database): on the consuming thread, in delivery order."""
        return _PreparedDeliveries(deliveries,
                                   self.ingester.prepare([delivery.body for delivery in deliveries]))

    def store_batch(self, work: Sequence[Delivery] | _PreparedDeliveries) -> None:
        prepared = work if isinstance(work, _PreparedDeliveries) else self.prepare_batch(work)
        deliveries = prepared.deliveries
        # Rejected notifications go to the dead letters in the batch's own transaction.
        self.ingester.commit(prepared.batch, dead_letter_source=lambda rejected: _source(
            deliveries[rejected.position]))

    def run(self) -> None:
        self.consumer.run()

    def stop(self) -> None:
        self.consumer.stop()


class Persistor:
    """Every raw notification from the broker -> the archive (duplicates skipped by message_id)."""

    def __init__(self, url: str, intake: IntakeSettings, settings: PersistorSettings, store: Store, *,
                 retention: str | None = None, clock: Clock | None = None, name: str = "persistor"):
        self.store = store
        self.clock = clock or WallClock()
        self.retention = parse_timex(retention) if retention else None
        self.archived = 0
        self.duplicates = 0
        self.trimmed = 0
        # The newest notification time in the last batch, and when it was archived: the lag.
        self.last_generated: datetime | None = None
        self.last_archived_at: datetime | None = None
        self._next_trim = 0.0
        self.consumer = NotificationConsumer(url, subscription(intake, settings.queue), self.store_batch,
                                             batch_size=settings.batch_size,
                                             batch_seconds=settings.batch_seconds, name=name)

    def store_batch(self, deliveries: Sequence[Delivery]) -> None:
        now = self.clock.now()
        rows = [archive_row(d.body, now) for d in deliveries]
        result = self.store.archive_notifications(rows)
        newest = max((row["generated"] for row in rows if row.get("generated")), default=None)
        if newest is not None:
            self.last_generated, self.last_archived_at = newest, now
        self.archived += result.archived
        self.duplicates += result.duplicates
        if self.retention is not None and time.monotonic() >= self._next_trim:
            self._next_trim = time.monotonic() + RETENTION_INTERVAL
            try:
                self.trim(now, seconds=RETENTION_SECONDS)
            except Exception as exc:  # noqa: BLE001 - the batch is stored; trimming can wait
                logger.warning("archive retention failed (%s); trying again in %.0fs", exc,
                               RETENTION_INTERVAL)

    def trim(self, now: datetime, seconds: float | None = None) -> int:
        """Apply ``archive_retention``: delete what was received before it.

        ``seconds`` bounds the work: batch after batch until one comes back
        short or that long has passed (a big backlog is worked off over
        several calls instead of holding up the acknowledgements).
        """
        if self.retention is None:
            return 0
        result = self.retention(now=now)
        cutoff = getattr(result, "timestamp", None) or result.begin
        trimmed = 0
        deadline = None if seconds is None else time.monotonic() + seconds
        while deadline is None or time.monotonic() < deadline:
            batch = self.store.trim_archive(cutoff, TRIM_BATCH)
            trimmed += batch
            if batch < TRIM_BATCH:
                break
        if trimmed:
            logger.info("archive retention: %d notification(s) received before %s deleted", trimmed, cutoff)
        self.trimmed += trimmed
        return trimmed

    def run(self) -> None:
        self.consumer.run()

    def stop(self) -> None:
        self.consumer.stop()


def archive_row(body: bytes, received_at: datetime) -> dict[str, Any]:
    """The archive row of one raw notification; an unusable one is kept as ``rejected`` with why."""
    row: dict[str, Any] = {"received_at": received_at, "body": body, "status": ARCHIVED}
    try:
        notification = decode_notification(body)
    except NotificationRejected as exc:
        row.update(status=REJECTED, reason=f"{exc.reason}: {exc.detail}")
        return row
    row["message_id"] = _text(notification.get("message_id"))
    row["event_type"] = _text(notification.get("event_type"))
    row["publisher_id"] = _text(notification.get("publisher_id"))
    try:
        # Also finds the id and time of Ceilometer's form (under "metadata").
        row["event_type"], row["message_id"], row["generated"] = read_envelope(notification)
    except NotificationRejected as exc:
        row.update(status=REJECTED, reason=f"{exc.reason}: {exc.detail}")
    row["message_id"] = _text(row["message_id"])
    row["event_type"] = _text(row["event_type"])
    return row


def _text(value: Any) -> str | None:
    """A usable text column value: NUL characters (which PostgreSQL cannot store) replaced."""
    if not isinstance(value, str) or not value:
        return None
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _source(delivery: Delivery) -> str:
    return f"amqp:{delivery.exchange}/{delivery.routing_key}"


class DirectIntake:
    """Notifications handed over in-process (the HTTP intake): archived, then ingested, synchronously.

    Each call commits before it returns, so an answer of "accepted" means
    stored. Calls are serialised: an Ingester is not thread-safe.
    """

    def __init__(self, ingester: Ingester, store: Store, *, archive: bool = True,
                 source: str = "http"):
        import threading

        self.ingester = ingester
        self.store = store
        self.archive = archive
        self.source = source
        self._lock = threading.Lock()

    def accept(self, bodies: Sequence[Any]) -> dict[str, Any]:
        """Store a batch; the counts (and each rejection with its position and reason)."""
        with self._lock:
            archived = None
            if self.archive:
                # Received now, in real time, whatever the ingest clock says: retention
                # (archive_retention) counts from it in real time.
                received = self.store.wall_clock.now()
                archived = self.store.archive_notifications(
                    [archive_row(body_bytes(body), received) for body in bodies])
            outcome = self.ingester.commit(
                self.ingester.prepare(list(bodies)),
                dead_letter_source=lambda rejected: f"{self.source}:{rejected.position}")
        stored = outcome.stored
        return {
            "received": outcome.received,
            "accepted": stored.saved,
            "duplicates": len(stored.duplicates),
            "unconverted": outcome.unconverted,
            "rejected": len(outcome.rejected),
            "rejections": [{"index": r.position, "reason": r.reason, "detail": r.detail}
                           for r in outcome.rejected[:100]],
            "archived": archived.archived if archived else 0,
        }
