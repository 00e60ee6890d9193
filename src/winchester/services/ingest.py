"""Ingest: notifications and events in, streams out (the original TriggerManager;
:mod:`winchester.trigger_manager` builds one from the configuration, as the original did).

``add_notifications`` distils a batch, matches every event against the
triggers (pure), and hands the store one batch to write in one transaction.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from datetime import timedelta

from winchester.clock import AHEAD, LATE, SHARED_EVENT_CLOCK, Clock, EventClock, WallClock
from winchester.distill import Distiller, NotificationRejected
from winchester.events import Event, make_event
from winchester.store import IngestItem, IngestResult, Store

logger = logging.getLogger(__name__)


@dataclass
class Rejected:
    """A notification that could not become an event, with why (the caller keeps it)."""

    body: Any
    reason: str
    detail: str
    position: int = 0  # index in the batch it came in


@dataclass
class BatchOutcome:
    """What one call did."""

    received: int = 0
    unconverted: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    stored: IngestResult = field(default_factory=IngestResult)
    ahead: int = 0  # stamped too far ahead of the clock (stored; time not moved)
    late: int = 0   # stamped too far behind it (stored)


@dataclass
class PreparedBatch:
    """A batch distilled and matched, ready to be written."""

    items: list[IngestItem]
    outcome: BatchOutcome
    now: datetime
    # The shared event clock as this batch left it (None when not shared):
    # what its commit moves the store's clock to. Read at commit time
    # instead, it could already include the next batch (prepared while this
    # one is written) before that is stored.
    shared_clock: datetime | None = None
    # (event, the clock when it came) of the events stamped far from the clock;
    # counted and logged at commit, once the duplicates among them are known.
    off_clock: tuple[list[tuple[Event, datetime]], list[tuple[Event, datetime]]] = ((), ())


@dataclass
class IngestStats:
    """Running totals since start (the per-trigger "debugger" of the original)."""

    received: int = 0
    saved: int = 0
    duplicates: int = 0
    unconverted: int = 0
    ahead: int = 0
    late: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    matched: Counter[str] = field(default_factory=Counter)
    new_streams: Counter[str] = field(default_factory=Counter)
    ready: Counter[str] = field(default_factory=Counter)
    # By event type: converted events seen, stored, and found already stored.
    events_by_type: Counter[str] = field(default_factory=Counter)
    stored_by_type: Counter[str] = field(default_factory=Counter)
    duplicates_by_type: Counter[str] = field(default_factory=Counter)
    batches: int = 0

    def add(self, outcome: BatchOutcome) -> None:
        self.received += outcome.received
        self.unconverted += outcome.unconverted
        self.ahead += outcome.ahead
        self.late += outcome.late
        for rejected in outcome.rejected:
            self.rejected[rejected.reason] += 1
        self.saved += outcome.stored.saved
        self.duplicates += len(outcome.stored.duplicates)
        self.matched.update(outcome.stored.matched)
        self.new_streams.update(outcome.stored.new_streams)
        self.ready.update(outcome.stored.ready)

    def as_dict(self) -> dict[str, Any]:
        return {"received": self.received, "saved": self.saved, "duplicates": self.duplicates,
                "unconverted": self.unconverted, "ahead_of_clock": self.ahead,
                "late": self.late, "rejected": dict(self.rejected),
                "triggers": {name: {"matched": self.matched[name],
                                    "new_streams": self.new_streams[name],
                                    "ready_to_fire": self.ready[name]}
                             for name in sorted(set(self.matched) | set(self.new_streams))}}


class Ingester:
    """Feeds events into the store and its streams.

    ``triggers`` is a :class:`winchester.triggers.TriggerSet`; ``distiller``
    is needed only for the notification methods. "Now" comes from ``clock``:
    wall time, or event time when replaying captured notifications; a shared
    event clock is moved forward in the store with each batch. ``grace`` is
    ``late_event_grace``.
    """

    def __init__(self, store: Store, triggers: Any, distiller: Distiller | None = None,
                 clock: Clock | None = None, grace: timedelta = timedelta(0)):
        self.store = store
        self.triggers = triggers
        self.distiller = distiller
        self.clock = clock or WallClock()
        self.grace = grace
        self.stats = IngestStats()
        # Called with each committed batch's seconds in the store (metrics).
        self.observe_batch: Callable[[float], None] | None = None

    def add_event(self, event: Mapping[str, Any]) -> BatchOutcome:
        return self.add_events([event])

    def add_events(self, batch: Iterable[Mapping[str, Any]]) -> BatchOutcome:
        """Validate, match and store events; an invalid one raises EventError and stores nothing."""
        events = [make_event(event) for event in batch]
        outcome = BatchOutcome(received=len(events))
        self._store(events, outcome)
        return outcome

    def add_notification(self, body: Any) -> BatchOutcome:
        return self.add_notifications([body])

    def add_notifications(self, bodies: Sequence[Any]) -> BatchOutcome:
        """Distil and store a batch of raw notifications (bytes, str or decoded dicts).

        Rejected notifications are returned with their reason, for the caller
        to dead-letter; unconverted ones (no definition) are counted.
        """
        return self.commit(self.prepare(bodies))

    def prepare(self, bodies: Sequence[Any]) -> PreparedBatch:
        """The CPU half of :meth:`add_notifications`: distil and match, touching no database.

        Batches must be prepared and committed in the same order (the event
        clock advances as batches are prepared).
        """
        if self.distiller is None:
            raise RuntimeError("this Ingester has no distiller; use add_events")
        outcome = BatchOutcome(received=len(bodies))
        events = []
        for position, body in enumerate(bodies):
            try:
                event = self.distiller.distill_raw(body)
            except NotificationRejected as exc:
                outcome.rejected.append(Rejected(body, exc.reason, exc.detail, position))
                # Bad input tends to come in floods: warn once per reason, count the rest.
                first = exc.reason not in self.stats.rejected and not any(
                    r.reason == exc.reason for r in outcome.rejected[:-1])
                logger.log(logging.WARNING if first else logging.DEBUG,
                           "rejected a notification: %s", exc)
                continue
            if event is None:
                outcome.unconverted += 1
            else:
                events.append(event)
        return self._prepared(events, outcome)

    def commit(self, batch: PreparedBatch,
               dead_letter_source: Callable[[Rejected], str] | None = None) -> BatchOutcome:
        """The database half: store a prepared batch in one transaction.

        With ``dead_letter_source`` (naming where each rejected notification
        came from), the rejected ones are kept in the dead-letter table in the
        same transaction as the batch.
        """
        outcome = batch.outcome
        letters = [] if dead_letter_source is None else [
            {"source": dead_letter_source(r), "reason": r.reason, "detail": r.detail, "body": r.body}
            for r in outcome.rejected]
        clock = self.clock
        shared = None if batch.shared_clock is None else (SHARED_EVENT_CLOCK, batch.shared_clock)
        if batch.items or letters:
            started = time.perf_counter()
            outcome.stored = self.store.ingest(batch.items, letters, batch.now, clock=shared,
                                               grace=self.grace)
            if self.observe_batch is not None:
                self.observe_batch(time.perf_counter() - started)
            if shared is not None:
                clock.synced(outcome.stored.clock)
            if outcome.stored.duplicates:
                logger.info("%d duplicate event(s) ignored (message_id already stored), e.g. %s",
                            len(outcome.stored.duplicates), outcome.stored.duplicates[0])
        self._count_off_clock(batch, outcome)
        self._count_types(batch.items, outcome.stored.duplicates)
        self.stats.add(outcome)
        return outcome

    def _count_off_clock(self, batch: PreparedBatch, outcome: BatchOutcome) -> None:
        """Count and log the events stamped far from the clock that were stored (a duplicate
        is neither stored nor news)."""
        ahead, late = batch.off_clock
        if outcome.stored.duplicates and (ahead or late):
            # Per copy, not per id: the store keeps the first copy of an id in the batch,
            # and only if the id was not stored before.
            inserted = outcome.stored.inserted
            first_copy: dict[str, Event] = {}
            for item in batch.items:
                first_copy.setdefault(item.event["message_id"], item.event)
            ahead, late = ([(event, now) for event, now in found
                            if event["message_id"] in inserted
                            and first_copy[event["message_id"]] is event]
                           for found in (ahead, late))
        clock = self.clock
        if ahead:
            outcome.ahead += len(ahead)
            event, now = ahead[0]
            logger.warning("%d event(s) stamped more than %s ahead of the %s clock: stored, but "
                           "time not moved by them (unless a second event confirms the jump); "
                           "e.g. %s at %s when the clock said %s", len(ahead), _skew_of(clock),
                           clock.name, event["message_id"], event["timestamp"],
                           f"{now:%Y-%m-%d %H:%M:%S}")
        if late:
            outcome.late += len(late)
            event, now = late[0]
            logger.info("%d event(s) stamped more than %s behind the %s clock: stored; e.g. %s at "
                        "%s when the clock said %s", len(late), _skew_of(clock), clock.name,
                        event["message_id"], event["timestamp"], f"{now:%Y-%m-%d %H:%M:%S}")

    def _count_types(self, items: list[IngestItem], duplicates: Sequence[str]) -> None:
        stats = self.stats
        stats.batches += 1
        seen = Counter(item.event["event_type"] for item in items)
        stats.events_by_type.update(seen)
        if duplicates:
            again = set(duplicates)
            type_of = {item.event["message_id"]: item.event["event_type"] for item in items
                       if item.event["message_id"] in again}
            # One count per duplicate reported: an id repeated within the batch is stored once.
            repeated = Counter(type_of[message_id] for message_id in duplicates)
            stats.duplicates_by_type.update(repeated)
            seen.subtract(repeated)
        stats.stored_by_type.update(seen)

    def _store(self, events: list[Event], outcome: BatchOutcome) -> None:
        self.commit(self._prepared(events, outcome))

    def _prepared(self, events: list[Event], outcome: BatchOutcome) -> PreparedBatch:
        items, off_clock = self._match(events)  # moves the clock: read it after
        clock = self.clock
        shared = clock.value() if isinstance(clock, EventClock) and clock.shared else None
        return PreparedBatch(items, outcome, clock.now(), shared, off_clock)

    def _match(self, events: list[Event]) -> tuple[list[IngestItem], Any]:
        items = []
        clock = self.clock
        matches_of = self.triggers.matches
        ahead: list[tuple[Event, datetime]] = []
        late: list[tuple[Event, datetime]] = []
        for event in events:
            verdict = clock.observe(event["timestamp"])
            now = clock.now()
            if verdict is AHEAD:
                ahead.append((event, now))
            elif verdict is LATE:
                late.append((event, now))
            items.append(IngestItem(event, matches_of(event), now))
        return items, (ahead, late)


def _skew_of(clock: Clock) -> str:
    return str(getattr(clock, "max_skew", "?"))
