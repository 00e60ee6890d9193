"""The pipeline worker: fire and expire due streams, run their pipelines, trim old events.

Each loop: claim due streams to fire and run their fire pipelines; then
streams to expire and their expire pipelines; trim old events when asked;
log statistics every ``statistics_period``; sleep ``delay`` only when the loop
found nothing to do. Any number of workers can share a store: claims are
leases on the stream's state serial (see :mod:`winchester.store._work`).

For one claimed batch: the streams' events are read in one query; each
stream's pipeline runs (handlers' ``commit()`` side effects included); the
events the pipelines generated are ingested (idempotent: their ids are
deterministic); then every outcome is recorded in one transaction. A worker
that dies in between leaves its streams claimed until the lease lapses; the
next worker re-runs them, and the re-run produces the same generated ids.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from winchester.clock import Clock, WallClock
from winchester.events import Event
from winchester.pipelines import PipelineSet
from winchester.services.ingest import Ingester
from winchester.store import EXPIRE, FIRE, ClaimedStream, Store, StoreError, StreamOutcome
from winchester.timex import parse as parse_timex

logger = logging.getLogger(__name__)

DEFAULT_LEASE = timedelta(minutes=5)
DEFAULT_MAX_ATTEMPTS = 5
# Longest back-off after losing the database.
MAX_BACKOFF = 60.0


@dataclass
class WorkerStats:
    """Running totals since start."""

    fired: int = 0
    expired: int = 0
    errors: Counter[str] = field(default_factory=Counter)      # "trigger fire/expire" -> failed
    commit_errors: int = 0
    generated: int = 0
    lost_claims: int = 0
    released: int = 0
    trimmed: int = 0
    database_errors: int = 0
    by_trigger: Counter[str] = field(default_factory=Counter)  # "trigger fire/expire" -> streams

    def as_dict(self) -> dict[str, Any]:
        return {"fired": self.fired, "expired": self.expired, "errors": sum(self.errors.values()),
                "commit_errors": self.commit_errors, "generated": self.generated,
                "lost_claims": self.lost_claims, "released": self.released,
                "trimmed": self.trimmed, "database_errors": self.database_errors}


class Worker:
    """Runs the pipelines of due streams.

    ``clock`` says when streams are due (wall time, or a fixed/event time
    when catching up on captured data); leases are always measured on
    ``wall_clock``, because they are about this process being alive.
    """

    def __init__(self, store: Store, triggers: Any, pipelines: PipelineSet, *,
                 name: str = "worker", clock: Clock | None = None,
                 wall_clock: Clock | None = None, batch_size: int = 1000, delay: float = 10.0,
                 lease: timedelta = DEFAULT_LEASE, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 purge_completed: bool = True, trim_events: bool = False,
                 trim_events_age: str = "$timestamp - 14d", trim_events_batch_size: int = 100,
                 statistics_period: float = 10.0,
                 sleep: Callable[[float], Any] | None = None):
        self.store = store
        self.triggers = triggers
        self.pipelines = pipelines
        self.name = name
        self.clock = clock or WallClock()
        self.wall_clock = wall_clock or WallClock()
        self.batch_size = batch_size
        self.delay = delay
        self.lease = lease
        self.max_attempts = max_attempts
        self.purge_completed = purge_completed
        self.trim_events = trim_events
        self.trim_age = parse_timex(trim_events_age)
        self.trim_batch_size = trim_events_batch_size
        self.statistics_period = statistics_period
        self.stats = WorkerStats()
        self._ingester = Ingester(store, triggers, clock=self.clock)
        self._stopping = threading.Event()
        self._sleep = sleep or self._stopping.wait
        self._last_statistics = time.monotonic()

    # -- control -----------------------------------------------------------------------

    def stop(self) -> None:
        """Stop after the current stream (safe from a signal handler)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> None:
        """Loop until :meth:`stop`; database outages are waited out, never fatal."""
        logger.info("worker %s started (batch %d, delay %ss, lease %ss)", self.name,
                    self.batch_size, self.delay, self.lease.total_seconds())
        backoff = 1.0
        while not self.stopping:
            try:
                busy = self.run_once_through()
                backoff = 1.0
            except StoreError as exc:
                self.stats.database_errors += 1
                logger.error("worker %s: database unavailable (%s); retrying in %.0fs",
                             self.name, exc, backoff)
                self._sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
                continue
            self._maybe_log_statistics()
            if not busy and not self.stopping:
                self._sleep(self.delay)
        self.log_statistics()
        logger.info("worker %s stopped", self.name)

    def run_once_through(self) -> int:
        """One loop: fire, expire and trim what is due now; returns the streams processed."""
        processed = self.process(FIRE) + self.process(EXPIRE)
        if self.trim_events and not self.stopping:
            self.trim()
        return processed

    def run_until_idle(self) -> int:
        """Process until nothing is due (``--once``); returns the streams processed."""
        total = 0
        while not self.stopping:
            processed = self.process(FIRE) + self.process(EXPIRE)
            total += processed
            if not processed:
                break
        if self.trim_events:
            while not self.stopping and self.trim():
                pass
        self.log_statistics()
        return total

    # -- the work ----------------------------------------------------------------------

    def process(self, action: str) -> int:
        """Claim and run one batch of streams due for ``action``; returns how many ran."""
        if self.stopping:
            return 0
        wall_now = self.wall_clock.now()
        claimed = self.store.claim_streams(
            action, self.name, self.clock.now(), wall_now, wall_now + self.lease,
            self.batch_size, self.max_attempts)
        if not claimed:
            return 0
        events = self.store.load_stream_events([stream.id for stream in claimed])
        # Give back what cannot be run well inside the lease, rather than
        # run it after another worker may have taken it over.
        deadline = time.monotonic() + self.lease.total_seconds() / 2
        outcomes: list[StreamOutcome] = []
        generated: list[Event] = []
        for position, stream in enumerate(claimed):
            if self.stopping or time.monotonic() > deadline:
                rest = claimed[position:]
                self.store.release_streams(self.name, rest, self.clock.now())
                self.stats.released += len(rest)
                logger.info("worker %s gave back %d claimed stream(s) unrun", self.name, len(rest))
                break
            outcome, new_events = self._run(stream, events[stream.id])
            outcomes.append(outcome)
            generated.extend(new_events)
        if generated:
            self._ingester.add_events(generated)
            self.stats.generated += len(generated)
        lost = self.store.finish_streams(self.name, outcomes, self.clock.now(), self.purge_completed)
        if lost:
            self.stats.lost_claims += len(lost)
            logger.warning("worker %s: lost the claim on stream(s) %s (lease expired; another "
                           "worker re-ran them)", self.name, ", ".join(map(str, lost[:10])))
        lost_ids = set(lost)
        for outcome in outcomes:
            if outcome.stream.id in lost_ids:
                continue
            key = f"{outcome.stream.trigger_name} {action}"
            self.stats.by_trigger[key] += 1
            if outcome.error is not None:
                self.stats.errors[key] += 1
            elif action == FIRE:
                self.stats.fired += 1
            else:
                self.stats.expired += 1
        return len(outcomes)

    def _run(self, stream: ClaimedStream, events: list[Event]) -> tuple[StreamOutcome, list[Event]]:
        trigger = self.triggers.by_name.get(stream.trigger_name)
        if trigger is None:
            return self._failed(stream, f"unknown trigger {stream.trigger_name!r}: it is not in the "
                                        "trigger definitions; restore it, or remove the stream"), []
        pipeline_name = trigger.fire_pipeline if stream.action == FIRE else trigger.expire_pipeline
        if trigger.debug_level >= 1:
            logger.info("stream %s (%s): %s with %d event(s), pipeline %s", stream.id,
                        stream.trigger_name, "firing" if stream.action == FIRE else "expiring",
                        len(events), pipeline_name or "(none)")
        if not pipeline_name:
            return StreamOutcome(stream), []
        pipeline = self.pipelines.get(pipeline_name)
        if pipeline is None:
            return self._failed(stream, f"unknown pipeline {pipeline_name!r} (trigger "
                                        f"{stream.trigger_name!r}): it is not in the pipeline "
                                        "configuration"), []
        env: dict[str, Any] = {
            "stream_id": stream.id, "stream_name": stream.trigger_name,
            "trigger_name": stream.trigger_name, "reason": stream.action,
            "pipeline": pipeline_name,
            "distinguishing_traits": dict(stream.distinguishing_traits),
        }
        result = pipeline.run(events, env)
        self.stats.commit_errors += len(result.commit_errors)
        if not result.ok:
            return self._failed(stream, result.error or "pipeline failed"), []
        return StreamOutcome(stream), result.generated

    @staticmethod
    def _failed(stream: ClaimedStream, reason: str) -> StreamOutcome:
        logger.error("stream %s (%s): %s", stream.id, stream.trigger_name, reason)
        return StreamOutcome(stream, reason)

    def trim(self) -> int:
        """Delete one batch of old events no live stream holds; returns how many."""
        now = self.clock.now()
        result = self.trim_age(now=now)
        cutoff = getattr(result, "timestamp", None) or result.begin
        trimmed = self.store.trim_events(cutoff, self.trim_batch_size)
        self.stats.trimmed += trimmed
        return trimmed

    # -- statistics --------------------------------------------------------------------

    def _maybe_log_statistics(self) -> None:
        if time.monotonic() - self._last_statistics >= self.statistics_period:
            self.log_statistics()

    def log_statistics(self) -> None:
        self._last_statistics = time.monotonic()
        figures = self.stats.as_dict()
        logger.info("worker %s: %s", self.name, ", ".join(f"{k} {v}" for k, v in figures.items()))


def build_worker(settings: Any, store: Store, triggers: Any, pipelines: PipelineSet,
                 **overrides: Any) -> Worker:
    """A worker configured from ``winchester.yaml`` settings (``overrides`` win)."""
    options: dict[str, Any] = {
        "batch_size": settings.pipeline_worker_batch_size,
        "delay": settings.pipeline_worker_delay,
        "lease": timedelta(seconds=settings.pipeline_worker_lease),
        "max_attempts": settings.pipeline_worker_max_attempts,
        "purge_completed": settings.purge_completed_streams,
        "trim_events": settings.trim_events,
        "trim_events_age": settings.trim_events_age,
        "trim_events_batch_size": settings.trim_events_batch_size,
        "statistics_period": settings.statistics_period,
    }
    options.update({key: value for key, value in overrides.items() if value is not None})
    return Worker(store, triggers, pipelines, **options)
