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
from datetime import datetime, timedelta
from typing import Any

from winchester.clock import Clock, WallClock
from winchester.events import Event
from winchester.pipelines import PipelineSet, RunResult
from winchester.store import EXPIRE, FIRE, ClaimedStream, IngestItem, Store, StoreError, StreamOutcome
from winchester.timex import parse as parse_timex

logger = logging.getLogger(__name__)

DEFAULT_LEASE = timedelta(minutes=5)
DEFAULT_MAX_ATTEMPTS = 5
# Outcomes are recorded every this many streams or seconds, whichever comes first.
RECORD_EVERY = 250
RECORD_SECONDS = 2.0
# How long one loop may spend trimming.
TRIM_SECONDS = 2.0
# --once: how many times to look again at due streams another process held locked.
IDLE_CHECKS = 50
# Longest back-off after losing the database.
MAX_BACKOFF = 60.0


# Called after each stream's pipeline ran (its RunResult; None when its trigger
# has no pipeline for the outcome), with the clock's reading: simulate's report.
RunObserver = Callable[[ClaimedStream, list[Event], RunResult | None, datetime], None]


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
    # What the generated events did, by trigger, as the ingester counts its own.
    matched: Counter[str] = field(default_factory=Counter)
    new_streams: Counter[str] = field(default_factory=Counter)
    ready: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"fired": self.fired, "expired": self.expired, "errors": sum(self.errors.values()),
                "commit_errors": self.commit_errors, "generated": self.generated,
                "lost_claims": self.lost_claims, "released": self.released,
                "trimmed": self.trimmed, "database_errors": self.database_errors,
                "streams_created": sum(self.new_streams.values())}


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
                 statistics_period: float = 10.0, grace: timedelta = timedelta(0),
                 dry_run: bool = False, on_run: RunObserver | None = None,
                 record_every: int = RECORD_EVERY,
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
        self.grace = grace
        self.dry_run = dry_run
        self.record_every = record_every
        self.on_run = on_run
        self.stats = WorkerStats()
        # Called with (trigger, "fire" or "expire", seconds) after each pipeline run (metrics).
        self.observe_pipeline: Callable[[str, str, float], None] | None = None
        self._unrecorded: list[StreamOutcome] = []
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
            except Exception as exc:  # noqa: BLE001 - the loop outlives any one failure
                self.stats.database_errors += isinstance(exc, StoreError)
                if isinstance(exc, StoreError):
                    logger.error("worker %s: database unavailable (%s); retrying in %.0fs",
                                 self.name, exc, backoff)
                else:
                    logger.exception("worker %s: unexpected %s; retrying in %.0fs", self.name,
                                     type(exc).__name__, backoff)
                self._sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
                continue
            self._maybe_log_statistics()
            if not busy and not self.stopping:
                self._sleep(self.delay)
        self.log_statistics()
        logger.info("worker %s stopped", self.name)

    def run_once_through(self) -> int:
        """One loop: fire, expire and trim what is due now; returns how much it did."""
        done = self.process(FIRE) + self.process(EXPIRE)
        if self.trim_events and not self.stopping:
            done += self.trim_for(TRIM_SECONDS)
        return done

    def drain(self) -> int:
        """Fire and expire until nothing is due (no trimming, no statistics line); returns how many ran.

        For a worker running in the ingesting thread (replay, simulate),
        after each committed batch.
        """
        total = 0
        while not self.stopping:
            processed = self.process(FIRE) + self.process(EXPIRE)
            if not processed:
                break
            total += processed
        return total

    def run_until_idle(self) -> int:
        """Process until nothing is due (``--once``); returns the streams processed."""
        total = 0
        waits = 0
        while not self.stopping:
            processed = self.process(FIRE) + self.process(EXPIRE)
            total += processed
            if processed:
                waits = 0
                continue
            # On PostgreSQL a due stream locked for an instant by an ingester
            # is skipped, not waited for: look again before calling it done.
            if waits >= IDLE_CHECKS or not self._time_known() or not self.store.count_due_streams(
                    self.clock.now(), self.wall_clock.now(), self.grace):
                break
            waits += 1
            self._stopping.wait(0.1)
        if self.trim_events:
            while not self.stopping and self.trim_for(TRIM_SECONDS):
                pass
        self.log_statistics()
        return total

    def trim_for(self, seconds: float) -> int:
        """Trim batch after batch until one comes back short or ``seconds`` pass."""
        trimmed = 0
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            batch = self.trim()
            trimmed += batch
            if batch < self.trim_batch_size:
                break
        return trimmed

    # -- the work ----------------------------------------------------------------------

    def process(self, action: str) -> int:
        """Claim and run one batch of streams due for ``action``; returns how many ran."""
        if self.stopping:
            return 0
        if self._unrecorded:
            # Outcomes of a batch whose recording failed (database away): the
            # pipelines ran; record them before claiming anything new.
            pending, self._unrecorded = self._unrecorded, []
            self._record(pending)
        claimed_at = time.monotonic()
        # The shared event clock moves as ingest processes store events.
        self.clock.refresh()
        if not self._time_known():
            return 0
        wall_now = self.wall_clock.now()
        claimed = self.store.claim_streams(
            action, self.name, self.clock.now(), wall_now, wall_now + self.lease,
            self.batch_size, self.max_attempts, self.grace)
        if not claimed:
            return 0
        try:
            events = self.store.load_stream_events([stream.id for stream in claimed])
        except Exception:
            self._give_back(claimed, "their events could not be read")
            raise
        lease = self.lease.total_seconds()
        renew_at = claimed_at + lease / 3
        pending: list[StreamOutcome] = []
        flushed_at = time.monotonic()
        ran = 0
        for position, stream in enumerate(claimed):
            if self.stopping:
                self._give_back(claimed[position:], "the worker is stopping")
                break
            if time.monotonic() >= renew_at:
                # A long batch keeps its lease: renewed for what is still to run, and
                # for what ran but is not recorded yet (with a lease shorter than
                # RECORD_SECONDS, another worker would otherwise run those again).
                try:
                    self.store.extend_claims(self.name,
                                             [o.stream for o in pending] + claimed[position:],
                                             self.wall_clock.now() + self.lease)
                except Exception:
                    # Those pipelines ran and committed their side effects: their
                    # outcomes are recorded first thing on the next pass, never
                    # dropped (dropped, the streams would run again after the lease).
                    # The streams not run yet wait for their lease to lapse.
                    self._unrecorded.extend(pending)
                    raise
                renew_at = time.monotonic() + lease / 3
            pending.append(self._run(stream, events.pop(stream.id, [])))
            ran += 1
            # Recorded in small groups: a worker that dies mid-batch leaves
            # only the last few streams to be run again.
            if (len(pending) >= self.record_every
                    or time.monotonic() - flushed_at >= RECORD_SECONDS):
                self._record(pending)
                pending, flushed_at = [], time.monotonic()
        if pending:
            self._record(pending)
        return ran

    def _time_known(self) -> bool:
        """False while an event clock has no time yet: then nothing can be due.

        An unset event clock answers real time; a worker that claimed with
        that would expire every stream at once (it happened when ingest's first
        batch committed between the worker's read of the shared clock and its
        claim: the first streams expired with a fraction of their events).
        """
        return getattr(self.clock, "is_set", True)

    def _give_back(self, streams: list[ClaimedStream], why: str) -> None:
        try:
            self.store.release_streams(self.name, streams, self.clock.now())
        except Exception as exc:  # noqa: BLE001 - their leases lapse and another worker runs them
            logger.warning("worker %s could not give back %d stream(s) (%s); they are retried when "
                           "their lease lapses", self.name, len(streams), exc)
            return
        self.stats.released += len(streams)
        logger.info("worker %s gave back %d claimed stream(s) unrun: %s", self.name, len(streams), why)

    def _record(self, outcomes: list[StreamOutcome]) -> None:
        """Store the outcomes (and generated events) of run streams, in one transaction if possible."""
        try:
            lost = self._finish(outcomes)
        except StoreError:
            self._unrecorded.extend(outcomes)
            raise
        except Exception as exc:  # noqa: BLE001 - bad data from one stream must not sink the others
            logger.error("worker %s: recording %d outcome(s) failed (%s: %s); recording them one "
                         "by one", self.name, len(outcomes), type(exc).__name__, exc)
            lost = []
            for position, outcome in enumerate(outcomes):
                try:
                    lost += self._finish([outcome])
                except StoreError:
                    self._unrecorded.extend(outcomes[position:])
                    raise
                except Exception as single:  # noqa: BLE001 - this stream's events are bad
                    failed = StreamOutcome(outcome.stream, f"its pipeline's generated events could "
                                                          f"not be stored: {type(single).__name__}: {single}")
                    logger.error("stream %s (%s): %s", outcome.stream.id, outcome.stream.trigger_name,
                                 failed.error)
                    outcomes[position] = failed
                    try:
                        lost += self._finish([failed])
                    except StoreError:
                        self._unrecorded.extend(outcomes[position:])
                        raise
        if lost:
            self.stats.lost_claims += len(lost)
            logger.warning("worker %s: lost the claim on stream(s) %s (lease expired; another "
                           "worker re-ran them)", self.name, ", ".join(map(str, lost[:10])))
        lost_ids = set(lost)
        for outcome in outcomes:
            if outcome.stream.id in lost_ids:
                continue
            key = f"{outcome.stream.trigger_name} {outcome.stream.action}"
            self.stats.by_trigger[key] += 1
            if outcome.error is not None:
                self.stats.errors[key] += 1
                continue
            self.stats.generated += len(outcome.generated)
            if outcome.stream.action == FIRE:
                self.stats.fired += 1
            else:
                self.stats.expired += 1

    def _finish(self, outcomes: list[StreamOutcome]) -> list[int]:
        finished = self.store.finish_streams(self.name, outcomes, self.clock.now(), self.purge_completed,
                                             self.grace)
        self.stats.matched.update(finished.generated.matched)
        self.stats.new_streams.update(finished.generated.new_streams)
        self.stats.ready.update(finished.generated.ready)
        return finished.lost

    def _run(self, stream: ClaimedStream, events: list[Event]) -> StreamOutcome:
        outcome, result = self._run_pipeline(stream, events)
        if self.on_run is not None:
            self.on_run(stream, events, result, self.clock.now())
        return outcome

    def _run_pipeline(self, stream: ClaimedStream,
                      events: list[Event]) -> tuple[StreamOutcome, RunResult | None]:
        trigger = self.triggers.by_name.get(stream.trigger_name)
        if trigger is None:
            return self._failed(stream, f"unknown trigger {stream.trigger_name!r}: it is not in the "
                                        "trigger definitions; restore it, or remove the stream")
        pipeline_name = trigger.fire_pipeline if stream.action == FIRE else trigger.expire_pipeline
        if trigger.debug_level >= 1:
            logger.info("stream %s (%s): %s with %d event(s), pipeline %s", stream.id,
                        stream.trigger_name, "firing" if stream.action == FIRE else "expiring",
                        len(events), pipeline_name or "(none)")
        if not pipeline_name:
            return StreamOutcome(stream), None
        pipeline = self.pipelines.get(pipeline_name)
        if pipeline is None:
            return self._failed(stream, f"unknown pipeline {pipeline_name!r} (trigger "
                                        f"{stream.trigger_name!r}): it is not in the pipeline "
                                        "configuration")
        env: dict[str, Any] = {
            "stream_id": stream.id, "stream_name": stream.trigger_name,
            "trigger_name": stream.trigger_name, "reason": stream.action,
            "pipeline": pipeline_name,
            "distinguishing_traits": dict(stream.distinguishing_traits),
        }
        started = time.perf_counter()
        result = pipeline.run(events, env, commit=not self.dry_run)
        if self.observe_pipeline is not None:
            self.observe_pipeline(stream.trigger_name, stream.action, time.perf_counter() - started)
        self.stats.commit_errors += len(result.commit_errors)
        if not result.ok:
            return self._failed(stream, result.error or "pipeline failed", result)
        # Generated events arrive, logically, when the stream became due: how
        # soon a worker got to it must not change which streams they join.
        due = stream.fire_timestamp if stream.action == FIRE else (
            stream.expire_timestamp + self.grace if stream.expire_timestamp else None)
        now = due if due is not None else self.clock.now()
        matches = self.triggers.matches
        return StreamOutcome(stream, generated=[IngestItem(event, matches(event), now)
                                                for event in result.generated]), result

    @staticmethod
    def _failed(stream: ClaimedStream, reason: str,
                result: RunResult | None = None) -> tuple[StreamOutcome, RunResult]:
        logger.error("stream %s (%s): %s", stream.id, stream.trigger_name, reason)
        return StreamOutcome(stream, reason), result or RunResult("", error=reason)

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
        "grace": timedelta(seconds=settings.late_event_grace),
    }
    options.update({key: value for key, value in overrides.items() if value is not None})
    return Worker(store, triggers, pipelines, **options)
