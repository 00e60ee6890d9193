"""Replay: notifications from the past back through ingest, in event time.

A :class:`Replayer` takes notifications in the order they arrived (a file, a
directory of captures, stdin, the persistor's archive) and feeds them to an
:class:`~winchester.services.ingest.Ingester` in batches, each committed in
one transaction. With a worker it fires and expires streams as event time
advances: after every committed batch, the worker runs whatever became due.

Why a fast replay builds what the live run built: "now" is the event clock
(the newest event time ingested), and a stream stops taking events the
moment it is due (ready and its fire time come, or expired), so which events
a stream holds depends only on the notifications' timestamps and order, never
on how soon a worker got to it. Replaying a week in a minute therefore gives
the same streams, states and pipeline outputs as living through the week.

``speed`` paces delivery by the notifications' own timestamps (N times real
time); without it notifications go as fast as the store takes them.
``resume`` skips, before distilling, the notifications whose message_id is
already stored, so an interrupted replay picks up where its last committed
batch ended (without it they are recognised as duplicates, more slowly).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from winchester._json import body_bytes
from winchester.distill import NotificationRejected, decode_notification, read_envelope
from winchester.errors import InputError
from winchester.services.ingest import Ingester, PreparedBatch
from winchester.services.intake import archive_row
from winchester.services.worker import Worker

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 1000
# Rejected notifications kept in the summary to show (every one is a dead letter).
SHOWN_REJECTIONS = 20
# The per-trigger counts a worker keeps of what its pipelines' generated events did.
GENERATED_COUNTS = ("matched", "new_streams", "ready")


class Notification(NamedTuple):
    """One notification to replay: its body as captured, and where it came from."""

    body: Any      # bytes or str (JSON), or an already decoded mapping
    origin: str    # "capture.jsonl:12", "archive:345": named in dead letters and errors


@dataclass
class ReplaySummary:
    """What a replay did; the counts are for this run only."""

    read: int = 0
    bytes_read: int = 0         # of the bodies read as text (progress bars)
    saved: int = 0
    duplicates: int = 0
    skipped: int = 0            # already stored, passed over by --resume
    unconverted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    # The first few rejected notifications: (origin, reason, detail); all are dead letters.
    rejections: list[tuple[str, str, str]] = field(default_factory=list)
    late: int = 0
    ahead: int = 0
    archived: int = 0
    streams_created: int = 0    # by ingest and by the pipelines' generated events
    # What the pipelines' generated events did, by trigger ("matched", "new_streams", "ready").
    generated_counts: dict[str, Counter[str]] = field(
        default_factory=lambda: {kind: Counter() for kind in GENERATED_COUNTS})
    fired: int = 0
    expired: int = 0
    pipeline_errors: int = 0
    commit_errors: int = 0      # handler commits that raised (their pipeline had succeeded)
    first_event_time: datetime | None = None
    event_time: datetime | None = None    # the clock when the replay ended
    elapsed: float = 0.0
    interrupted: bool = False
    committed_through: str | None = None  # origin of the last notification known committed

    @property
    def rate(self) -> float:
        return self.read / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read, "saved": self.saved, "duplicates": self.duplicates,
            "skipped_already_stored": self.skipped, "unconverted": self.unconverted,
            "rejected": dict(self.rejected), "late": self.late, "ahead_of_clock": self.ahead,
            "archived": self.archived, "streams_created": self.streams_created,
            "fired": self.fired, "expired": self.expired, "pipeline_errors": self.pipeline_errors,
            "commit_errors": self.commit_errors,
            "event_time": self.event_time.isoformat() if self.event_time else None,
            "elapsed_seconds": round(self.elapsed, 3), "interrupted": self.interrupted,
            "committed_through": self.committed_through,
        }


@dataclass
class _Job:
    """A batch distilled and matched, waiting to be written."""

    bodies: list[Any]
    origins: list[str]
    prepared: PreparedBatch | None  # None: nothing left to write (all already stored)
    last_origin: str


class Replayer:
    """Feeds notifications to ``ingester`` in committed batches; see the module documentation.

    ``worker`` (optional) runs in this thread after every batch, on the
    ingester's clock. ``on_batch`` is called after each committed batch with
    the running summary (progress bars). ``archive`` also keeps every raw
    notification in the archive, as the persistor would have.
    """

    def __init__(self, ingester: Ingester, *, worker: Worker | None = None,
                 worker_process: WorkerProcess | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, speed: float | None = None,
                 resume: bool = False, archive: bool = False,
                 on_batch: Callable[[ReplaySummary], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], bool] | None = None):
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive")
        self.ingester = ingester
        self.store = ingester.store
        if worker is not None and worker_process is not None:
            raise ValueError("a worker in this thread or in a child process, not both")
        self.worker = worker
        self.worker_process = worker_process
        self.batch_size = batch_size
        self.speed = speed
        self.resume = resume
        self.archive = archive
        self.on_batch = on_batch
        self.summary = ReplaySummary()
        self._monotonic = monotonic
        self._stopping = threading.Event()
        # Waits up to its argument; True when stop() ended the wait early.
        self._sleep = sleep or self._stopping.wait
        self._started = 0.0
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        # Pacing: (real time, event time) of the first paced notification.
        self._origin: tuple[float, datetime] | None = None

    def stop(self) -> None:
        """Stop after the batch being written (safe from a signal handler)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self, notifications: Iterable[Notification]) -> ReplaySummary:
        """Replay everything (or until :meth:`stop`); returns the summary.

        A database failure propagates (as :class:`~winchester.store.StoreError`)
        after the summary is brought up to date: ``committed_through`` then
        says where a ``resume`` run picks up.
        """
        summary = self.summary
        self._started = self._monotonic()
        new_streams_before = sum(self.ingester.stats.new_streams.values())
        if self.worker_process is not None:
            self.ingester.store.take_turns(self.worker_process.turn)
            self.worker_process.start()
        # Distilling one batch overlaps with writing the one before: the
        # database work mostly releases the GIL. Not with a worker in this
        # thread: it must see only committed event time.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="replay-writer") \
            if self.worker is None else None
        worker_finished = False
        unreadable: InputError | None = None
        try:
            batch: list[Notification] = []
            for notification in _until_unreadable(notifications):
                if isinstance(notification, InputError):
                    unreadable = notification
                    break
                if self.stopping or (self.speed is not None and not self._wait_for(notification, batch)):
                    summary.interrupted = True
                    break
                batch.append(notification)
                summary.read += 1
                body = notification.body
                if body.__class__ is bytes or body.__class__ is str:
                    summary.bytes_read += len(body)
                if len(batch) >= self.batch_size:
                    self._flush(batch)
                    batch = []
            # What was read is written, stopping or not: it is quick, and
            # "committed through" then names the last notification read.
            if batch:
                self._flush(batch)
            self._wait_for_writer()
            if unreadable is not None:
                raise unreadable
            if self.worker_process is not None:
                # The input is all in: the child works off what is due, then reports.
                worker_finished = True
                self._count_worker(self.worker_process.finish(stop=summary.interrupted))
        finally:
            if self._writer is not None:
                try:
                    self._wait_for_writer()
                except Exception as exc:  # noqa: BLE001 - the first failure is the one raised
                    logger.debug("a queued write failed too: %s", exc)
                self._writer.shutdown(wait=True)
                self._writer = None
            if self.worker_process is not None and not worker_finished:
                try:
                    self.worker_process.finish(stop=True)
                except WorkerProcessError as exc:
                    logger.warning("%s", exc)
            summary.elapsed = self._monotonic() - self._started
            summary.streams_created = (sum(self.ingester.stats.new_streams.values()) - new_streams_before
                                       + sum(summary.generated_counts["new_streams"].values()))
            summary.event_time = self.ingester.clock.now()
        return summary

    # -- batches -----------------------------------------------------------------------

    def _flush(self, batch: list[Notification]) -> None:
        """Distil and match ``batch`` here, then write it: in the writer thread, after the
        batch before it (one in flight), or here when a worker runs in this thread."""
        job = self._prepare(batch)
        if self._writer is None:
            self._write(job)
            return
        self._wait_for_writer()
        self._pending = self._writer.submit(self._write, job)

    def _wait_for_writer(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()  # a failed write raises here, in the reading thread

    def _prepare(self, batch: list[Notification]) -> _Job:
        bodies = [notification.body for notification in batch]
        origins = [notification.origin for notification in batch]
        if self.resume:
            bodies, origins = self._not_stored(bodies, origins)
        prepared = self.ingester.prepare(bodies) if bodies else None
        return _Job(bodies, origins, prepared, batch[-1].origin)

    def _write(self, job: _Job) -> None:
        summary = self.summary
        prepared = job.prepared
        if prepared is not None:
            if self.archive:
                received = self.store.wall_clock.now()  # real time, as retention counts
                summary.archived += self.store.archive_notifications(
                    [archive_row(body_bytes(body), received) for body in job.bodies]).archived
            origins = job.origins
            outcome = self.ingester.commit(prepared, dead_letter_source=lambda r: origins[r.position])
            summary.saved += outcome.stored.saved
            summary.duplicates += len(outcome.stored.duplicates)
            summary.unconverted += outcome.unconverted
            summary.late += outcome.late
            summary.ahead += outcome.ahead
            for rejected in outcome.rejected:
                summary.rejected[rejected.reason] += 1
                if len(summary.rejections) < SHOWN_REJECTIONS:
                    summary.rejections.append((origins[rejected.position], rejected.reason,
                                               rejected.detail))
            if summary.first_event_time is None and prepared.items:
                summary.first_event_time = min(item.event["timestamp"] for item in prepared.items)
            summary.event_time = prepared.now
        summary.committed_through = job.last_origin
        if self.worker is not None:
            self._drain()
        elif self.worker_process is not None:
            self.worker_process.check()
        summary.elapsed = self._monotonic() - self._started
        if self.on_batch is not None:
            self.on_batch(summary)

    def _not_stored(self, bodies: list[Any], origins: list[str]) -> tuple[list[Any], list[str]]:
        """Drop the notifications already stored; keep the rest, and what cannot be read (it is
        rejected, with its reason, by the ingester)."""
        ids: list[str | None] = []
        for body in bodies:
            try:
                ids.append(read_envelope(decode_notification(body))[1])
            except NotificationRejected:
                ids.append(None)
        stored = self.store.stored_message_ids([i for i in ids if i is not None])
        if not stored:
            return bodies, origins
        kept = [(body, origin) for body, origin, message_id in zip(bodies, origins, ids, strict=True)
                if message_id not in stored]
        self.summary.skipped += len(bodies) - len(kept)
        return [body for body, _ in kept], [origin for _, origin in kept]

    def _count_worker(self, stats: dict[str, Any]) -> None:
        self.summary.fired += stats["fired"]
        self.summary.expired += stats["expired"]
        self.summary.pipeline_errors += stats["errors"]
        self.summary.commit_errors += stats["commit_errors"]
        for kind in GENERATED_COUNTS:
            self.summary.generated_counts[kind].update(stats[kind])

    def _drain(self) -> None:
        worker = self.worker
        assert worker is not None
        before = _worker_report(worker)
        worker.drain()
        after = _worker_report(worker)
        # Counts and Counters alike: what this drain added.
        self._count_worker({key: after[key] - before[key] for key in after})

    # -- pacing ------------------------------------------------------------------------

    def _wait_for(self, notification: Notification, batch: list[Notification]) -> bool:
        """Hold ``notification`` back until its time at ``speed``; False if stopped meanwhile.

        What is waiting in ``batch`` is written first: live, it would have
        been stored while the next notification was still on its way.
        """
        stamped = _timestamp_of(notification.body)
        if stamped is None:
            return True  # it is rejected on ingest; no time to keep
        if self._origin is None:
            self._origin = (self._monotonic(), stamped)
            return True
        real_start, event_start = self._origin
        due = real_start + (stamped - event_start).total_seconds() / self.speed  # type: ignore[operator]
        wait = due - self._monotonic()
        if wait <= 0:
            return True
        if batch:
            self._flush(batch)
            batch.clear()
            wait = due - self._monotonic()
        if wait > 0 and (self._sleep(wait) or self.stopping):
            return False
        return True


def _worker_report(worker: Worker) -> dict[str, Any]:
    """What a worker did, as the replay counts it (the child process sends this to the parent)."""
    stats = worker.stats
    return {"fired": stats.fired, "expired": stats.expired, "errors": sum(stats.errors.values()),
            "commit_errors": stats.commit_errors,
            **{kind: Counter(getattr(stats, kind)) for kind in GENERATED_COUNTS}}


def _until_unreadable(notifications: Iterable[Notification]) -> Iterator[Notification | InputError]:
    """The notifications, then the InputError that ended them early, if one did: the caller
    writes what was read before it (a truncated capture's good lines are kept)."""
    try:
        yield from notifications
    except InputError as exc:
        yield exc


def _timestamp_of(body: Any) -> datetime | None:
    try:
        return read_envelope(decode_notification(body))[2]
    except NotificationRejected:
        return None


def from_archive(rows: Iterable[Any], skipped: Counter[str] | None = None) -> Iterator[Notification]:
    """Archived notifications (:meth:`Store.iter_archive` rows) as replay input.

    Rows the persistor already marked ``rejected`` (not JSON, no message_id,
    ...) are passed over and counted in ``skipped``: replaying them would
    only dead-letter them again.
    """
    for row in rows:
        if row.status == "rejected":
            if skipped is not None:
                skipped[row.reason.split(":", 1)[0] if row.reason else "rejected"] += 1
            continue
        yield Notification(row.body, f"archive:{row.id}")


class WorkerProcess:
    """A pipeline worker in a child process, for ``replay --run-workers``.

    Ingest and pipelines then use a core each. The child reads the
    configuration itself (spawned, not forked: no database connection is
    shared), follows the shared event clock the replay moves in the store,
    and fires and expires what becomes due, polling every ``poll`` seconds.
    :meth:`finish` tells it the input has ended: it works off everything
    due, then exits with its counts.
    """

    def __init__(self, config_file: str, *, clock_kind: str = "event", name: str = "replay",
                 poll: float = 0.05, record_every: int = 1000):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._done = context.Event()
        self._stop = context.Event()
        self._results = context.Queue()
        # The replay's writer and this worker take turns at SQLite's write lock (Store.take_turns).
        self.turn = context.Lock()
        self._process = context.Process(
            target=_worker_process_main, name=f"winchester-{name}",
            args=(config_file, clock_kind, name, poll, record_every, self._done, self._stop,
                  self._results, self.turn), daemon=True)
        self.stats: dict[str, Any] = {}

    def start(self) -> None:
        self._process.start()

    def check(self) -> None:
        """Raise if the child has ended before it was told to (its pipelines would never run):
        killed, or its setup failed (then it reported why and exited 0)."""
        if self._process.is_alive() or self._process.exitcode is None:
            return
        try:
            self.stats = self._results.get_nowait()
        except Exception:  # noqa: BLE001 - queue.Empty: it died without a word
            pass
        reason = self.stats.get("error") or f"exit status {self._process.exitcode}"
        raise WorkerProcessError(f"the replay's worker process ended early ({reason}); see its "
                                 "log above")

    def finish(self, stop: bool = False) -> dict[str, Any]:
        """End of input (or ``stop``: give back what is claimed and end now); wait for the child."""
        (self._stop if stop else self._done).set()
        while self._process.is_alive() or not self.stats:
            try:
                self.stats = self._results.get(timeout=0.5)
                break
            except Exception:  # noqa: BLE001 - queue.Empty; keep waiting while the child lives
                if not self._process.is_alive():
                    break
        self._process.join(timeout=60)
        if not self.stats:
            raise WorkerProcessError(f"the replay's worker process ended without a report (exit "
                                     f"status {self._process.exitcode}); see its log above")
        if "error" in self.stats:
            raise WorkerProcessError(f"the replay's worker process failed: {self.stats['error']}")
        return self.stats


class WorkerProcessError(RuntimeError):
    """The child process running a replay's pipelines failed."""


def _worker_process_main(config_file: str, clock_kind: str, name: str, poll: float,
                         record_every: int, done: Any, stop: Any, results: Any, turn: Any) -> None:
    import os
    import signal

    from winchester.clock import clock_from_settings
    from winchester.config import (
        load_pipeline_definitions,
        load_settings,
        load_trigger_definitions,
        open_store,
    )
    from winchester.logs import configure_logging
    from winchester.services.worker import build_worker
    from winchester.store import StoreError

    parent = os.getppid()
    # The terminal's Ctrl-C reaches the whole process group: the parent decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        settings = load_settings(config_file)
        configure_logging(settings)
        triggers = load_trigger_definitions(settings)
        store = open_store(settings, triggers)
        store.take_turns(turn)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which says it
        results.put({"error": f"{type(exc).__name__}: {exc}"})
        return
    try:
        worker = build_worker(settings, store, triggers, load_pipeline_definitions(settings),
                              name=name, clock=clock_from_settings(settings, store, clock_kind),
                              record_every=record_every)
        # Worker.stop only sets a flag: safe in a signal handler (a multiprocessing
        # Event's set() is not: it may wait for a lock the interrupted code holds).
        signal.signal(signal.SIGTERM, lambda *_: worker.stop())

        def watch() -> None:
            # The parent asks us to stop, or died without asking (kill -9): a
            # long drain ends after its current stream, claims given back.
            # Polled, never waited on: a multiprocessing Event's set() waits for
            # every process sleeping in wait() to wake, and one killed while
            # asleep never does (the parent then hung for ever).
            while not stop.is_set() and os.getppid() == parent:
                time.sleep(0.5)
            worker.stop()

        threading.Thread(target=watch, daemon=True).start()
        backoff = poll
        while not worker.stopping:
            finished = done.is_set()
            try:
                ran = worker.drain()
            except StoreError as exc:
                # The ingesting process holds the database, or it is away: wait, never die.
                logger.warning("replay worker: %s; retrying in %.1fs", exc, backoff)
                time.sleep(backoff)
                backoff = min(5.0, backoff * 2)
                continue
            backoff = poll
            if not ran and not worker.stopping:
                if finished:
                    # Drained after the input ended: nothing more can become due.
                    break
                time.sleep(poll)
        if os.getppid() != parent:
            # Nobody is left to read a report: exit without waiting to send it.
            results.cancel_join_thread()
            return
        results.put(_worker_report(worker))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        results.put({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        store.close()
