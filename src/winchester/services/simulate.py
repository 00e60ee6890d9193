"""Simulation: what a trigger and pipeline configuration would do with some notifications.

:func:`simulate` replays notifications into a throwaway in-memory store, in
event time, with a worker firing and expiring streams as time advances (the
same code as ``replay --run-workers``), and reports, per trigger, the streams
created, fired (with their events and the pipeline's output), expired, failed
and still active at the end. Handlers' ``commit()`` is not called unless
``commit`` is true: each handler says what it would have done instead
(``describe_commit()``), so a new trigger can be tried on last week's
traffic without publishing anything.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.pool import StaticPool

from winchester.clock import EventClock
from winchester.events import Event, encode_value
from winchester.pipelines import PipelineSet, RunResult
from winchester.services.ingest import Ingester
from winchester.services.replay import Notification, Replayer, ReplaySummary
from winchester.services.worker import build_worker
from winchester.store import FIRE, ClaimedStream, Store, create_engine
from winchester.triggers import distinguishing_to_json

OUTCOMES = ("fired", "expired", "error", "active")


@dataclass
class StreamReport:
    """One stream of the simulation, as it ended."""

    trigger: str
    outcome: str                      # fired / expired / error (its pipeline failed) / active
    distinguishing_traits: dict[str, Any]
    events: list[dict[str, Any]]      # message_id, event_type, timestamp of each event
    first_event: datetime
    last_event: datetime
    at: datetime | None = None        # event time when the worker ran it (at or after it was due)
    pipeline: str | None = None
    output: list[Event] = field(default_factory=list)   # events its pipeline generated
    dry_run: list[str] = field(default_factory=list)    # what each handler's commit would do
    error: str | None = None
    expire_timestamp: datetime | None = None
    fire_timestamp: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger, "outcome": self.outcome,
            "distinguishing_traits": distinguishing_to_json(self.distinguishing_traits),
            "first_event": _iso(self.first_event), "last_event": _iso(self.last_event),
            "fire_timestamp": _iso(self.fire_timestamp),
            "expire_timestamp": _iso(self.expire_timestamp), "run_at": _iso(self.at),
            "event_count": len(self.events), "events": self.events,
            "pipeline": self.pipeline, "error": self.error, "dry_run": self.dry_run,
            "output": [{key: encode_value(value) for key, value in event.items()}
                       for event in self.output],
        }


@dataclass
class SimulationReport:
    summary: ReplaySummary
    committed: bool
    streams: list[StreamReport]
    created: Counter[str]

    def by_trigger(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = defaultdict(lambda: {
            "streams_created": 0, **{outcome: 0 for outcome in OUTCOMES}, "streams": []})
        for name, count in self.created.items():
            found[name]["streams_created"] = count
        for stream in self.streams:
            entry = found[stream.trigger]
            entry[stream.outcome] += 1
            entry["streams"].append(stream)
        return dict(sorted(found.items()))

    def as_dict(self) -> dict[str, Any]:
        return {
            "input": self.summary.as_dict(),
            "committed": self.committed,
            "triggers": {name: {**{key: value for key, value in entry.items() if key != "streams"},
                                "streams": [stream.as_dict() for stream in entry["streams"]]}
                         for name, entry in self.by_trigger().items()},
        }


def memory_store(indexed_traits: Iterable[str]) -> Store:
    """A fresh, migrated store in memory: gone when closed."""
    # One shared connection: each new connection to sqlite:// would be a new, empty database.
    engine = create_engine("sqlite://", poolclass=StaticPool,
                           connect_args={"check_same_thread": False})
    store = Store(engine, indexed_traits)
    store.upgrade()
    return store


def simulate(settings: Any, distiller: Any, triggers: Any, pipelines: PipelineSet,
             notifications: Iterable[Notification], *, commit: bool = False,
             batch_size: int = 1000, indexed_traits: Iterable[str] = ()) -> SimulationReport:
    """Run the notifications through distill, triggers and pipelines; see the module docs."""
    store = memory_store(indexed_traits)
    try:
        clock = EventClock(max_skew=timedelta(seconds=settings.clock_max_skew))
        ingester = Ingester(store, triggers, distiller, clock,
                            timedelta(seconds=settings.late_event_grace))
        ran: list[StreamReport] = []

        def record(stream: ClaimedStream, events: list[Event], result: RunResult | None,
                   now: datetime) -> None:
            failed = result is not None and result.error is not None
            ran.append(StreamReport(
                trigger=stream.trigger_name,
                outcome="error" if failed else ("fired" if stream.action == FIRE else "expired"),
                distinguishing_traits=stream.distinguishing_traits, events=_summaries(events),
                first_event=stream.first_event, last_event=stream.last_event, at=now,
                pipeline=(result.pipeline or None) if result is not None else None,
                output=list(result.generated) if result is not None and not failed else [],
                dry_run=list(result.dry_run) if result is not None else [],
                error=result.error if result is not None else None,
                expire_timestamp=stream.expire_timestamp, fire_timestamp=stream.fire_timestamp))

        worker = build_worker(settings, store, triggers, pipelines, name="simulate", clock=clock,
                              dry_run=not commit, on_run=record, purge_completed=False,
                              trim_events=False)
        summary = Replayer(ingester, worker=worker, batch_size=batch_size).run(notifications)
        active = store.list_streams(state="active")
        events = store.load_stream_events([stream.id for stream in active])
        for stream in active:
            ran.append(StreamReport(
                trigger=stream.trigger_name, outcome="active",
                distinguishing_traits=stream.distinguishing_traits,
                events=_summaries(events.get(stream.id, [])), first_event=stream.first_event,
                last_event=stream.last_event, expire_timestamp=stream.expire_timestamp,
                fire_timestamp=stream.fire_timestamp))
        return SimulationReport(summary, commit, ran,
                                ingester.stats.new_streams + worker.stats.new_streams)
    finally:
        store.close()


def _summaries(events: list[Event]) -> list[dict[str, Any]]:
    return [{"message_id": event["message_id"], "event_type": event["event_type"],
             "timestamp": _iso(event["timestamp"])} for event in events]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
