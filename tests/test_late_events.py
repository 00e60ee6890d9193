"""Events out of order and late, on both stores: which stream they join, and late_event_grace."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import pytest

from winchester.clock import EventClock, FixedClock
from winchester.pipelines import Pipeline, PipelineSet
from winchester.services.ingest import Ingester
from winchester.services.worker import Worker
from winchester.store import Store
from winchester.triggers import load_triggers

T0 = datetime(2024, 3, 1, 12, 0)
PIPELINES = PipelineSet({"none": Pipeline("none", ())})
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)

TRIGGERS = load_triggers([{
    "name": "instance", "distinguished_by": ["instance_id"], "expiration": "$last + 1h",
    "expire_pipeline": "none", "match_criteria": [{"event_type": "compute.*"}],
    "fire_criteria": [{"event_type": "compute.end"}],
}], "triggers.yaml")


@pytest.fixture
def store(migrated_url):
    store = Store.from_url(migrated_url, indexed_traits={"instance_id"})
    yield store
    store.close()


def event(message_id: str, at: datetime, event_type: str = "compute.start") -> dict:
    return {"message_id": message_id, "event_type": event_type, "timestamp": at, "instance_id": "i-1"}


def ingest(store: Store, events: list[dict], now: datetime, grace: timedelta = timedelta(0)):
    return Ingester(store, TRIGGERS, clock=FixedClock(now), grace=grace).add_events(events)


def members(store: Store) -> list[list[str]]:
    return [[e["message_id"] for e in store.stream_events(s.id)] for s in store.list_streams()]


def test_without_grace_a_late_event_after_expiry_starts_a_new_stream(store):
    """late_event_grace 0: once its stream expired, even an event stamped before the expiry opens a new one."""
    ingest(store, [event("a", T0)], now=T0)
    ingest(store, [event("late", T0 + 30 * MINUTE)], now=T0 + 2 * HOUR)
    assert members(store) == [["a"], ["late"]]


def test_within_grace_a_late_event_stamped_before_expiry_joins_its_stream(store):
    """With grace, an expired stream still takes events stamped before its expiry."""
    ingest(store, [event("a", T0)], now=T0, grace=2 * HOUR)
    ingest(store, [event("late", T0 + 30 * MINUTE)], now=T0 + 2 * HOUR, grace=2 * HOUR)
    [stream] = store.list_streams()
    assert members(store) == [["a", "late"]]
    assert stream.last_event == T0 + 30 * MINUTE and stream.expire_timestamp == T0 + 90 * MINUTE


def test_within_grace_an_event_stamped_after_expiry_starts_a_new_stream(store):
    """Grace is for late events: one stamped after the expiry belongs to a new stream."""
    ingest(store, [event("a", T0)], now=T0, grace=2 * HOUR)
    ingest(store, [event("next", T0 + 70 * MINUTE)], now=T0 + 2 * HOUR, grace=2 * HOUR)
    assert members(store) == [["a"], ["next"]]


def test_past_the_grace_a_late_event_starts_a_new_stream(store):
    """After expiry + grace the stream is closed to everything."""
    ingest(store, [event("a", T0)], now=T0, grace=HOUR)
    ingest(store, [event("late", T0 + 30 * MINUTE)], now=T0 + 3 * HOUR, grace=HOUR)
    assert members(store) == [["a"], ["late"]]


def test_workers_wait_out_the_grace_before_expiring(store):
    """A stream expires when now passes its expiry plus late_event_grace, not before."""
    ingest(store, [event("a", T0)], now=T0, grace=2 * HOUR)

    def expire_at(now: datetime) -> int:
        worker = Worker(store, TRIGGERS, PIPELINES, clock=FixedClock(now),
                        wall_clock=FixedClock(now), grace=2 * HOUR, purge_completed=False)
        return worker.drain()

    assert expire_at(T0 + 2 * HOUR) == 0
    assert [s.state for s in store.list_streams()] == ["active"]
    assert expire_at(T0 + 3 * HOUR) == 1
    assert [s.state for s in store.list_streams()] == ["completed"]


def test_a_late_event_generated_by_a_pipeline_gets_the_same_grace_as_an_ingested_one(store):
    """A pipeline's generated event stamped before an expired stream's expiry, within the grace,
    joins that stream as it would have arriving through ingest."""
    from winchester.pipelines import Handler, PipelineEntry

    triggers = load_triggers([
        {"name": "audit", "distinguished_by": ["instance_id"], "expiration": "$last + 1d",
         "fire_pipeline": "generate", "match_criteria": [{"event_type": "compute.end"}],
         "fire_criteria": [{"event_type": "compute.end"}]},
        {"name": "instance", "distinguished_by": ["instance_id"], "expiration": "$last + 1h",
         "expire_pipeline": "none", "match_criteria": [{"event_type": ["compute.start", "audit.*"]}]},
    ], "triggers.yaml")

    class Generate(Handler):
        def handle_events(self, events, env):
            return [*events, {"message_id": "generated", "event_type": "audit.result",
                              "timestamp": T0 + 50 * MINUTE, "instance_id": "i-1"}]

    pipelines = PipelineSet({"generate": Pipeline("generate", (PipelineEntry("g", Generate, {}),)),
                             "none": PIPELINES["none"]})
    now = T0 + 70 * MINUTE  # "instance" expired at T0 + 60 min; within the grace
    Ingester(store, triggers, clock=FixedClock(T0), grace=HOUR).add_events([event("start", T0)])
    Ingester(store, triggers, clock=FixedClock(now), grace=HOUR).add_events(
        [event("end", now, "compute.end")])
    worker = Worker(store, triggers, pipelines, clock=FixedClock(now), wall_clock=FixedClock(now),
                    grace=HOUR, purge_completed=False)
    assert worker.drain() == 1
    [instance] = store.list_streams("instance")
    assert [e["message_id"] for e in store.stream_events(instance.id)] == ["start", "generated"]


def test_an_event_older_than_the_first_joins_and_moves_first(store):
    """Out of order but before expiry: the event joins the stream and becomes its first."""
    ingest(store, [event("b", T0 + 20 * MINUTE)], now=T0 + 20 * MINUTE)
    ingest(store, [event("a", T0)], now=T0 + 25 * MINUTE)
    [stream] = store.list_streams()
    assert stream.first_event == T0 and stream.event_count == 2


def test_an_event_for_a_completed_stream_starts_a_new_one(store):
    """Once a stream fired and completed, a late event for it opens a new stream (as the original did)."""
    ingest(store, [event("a", T0), event("end", T0 + MINUTE, "compute.end")], now=T0 + MINUTE)
    worker = Worker(store, TRIGGERS, PIPELINES, clock=FixedClock(T0 + 2 * MINUTE),
                    wall_clock=FixedClock(T0 + 2 * MINUTE), purge_completed=False)
    assert worker.drain() == 1
    ingest(store, [event("straggler", T0 + 30 * MINUTE)], now=T0 + 3 * MINUTE, grace=HOUR)
    assert members(store) == [["a", "end"], ["straggler"]]
    assert [s.state for s in store.list_streams()] == ["completed", "active"]


def test_a_due_stream_takes_no_more_events_however_soon_a_worker_comes(store):
    """Ready and its fire time come: the stream is closed to new events before any worker claimed it."""
    ingest(store, [event("a", T0), event("end", T0 + MINUTE, "compute.end")], now=T0 + MINUTE)
    ingest(store, [event("after", T0 + 2 * MINUTE)], now=T0 + 2 * MINUTE)
    assert members(store) == [["a", "end"], ["after"]]


def test_ahead_and_late_events_are_stored_and_counted(store):
    """The event clock counts events far ahead (time not moved) and far behind; all are stored."""
    clock = EventClock(T0, max_skew=HOUR)
    ingester = Ingester(store, TRIGGERS, clock=clock)
    outcome = ingester.add_events([event("now", T0 + MINUTE), event("next-year", T0 + timedelta(days=365)),
                                   event("last-week", T0 - timedelta(days=7))])
    assert outcome.stored.saved == 3 and (outcome.ahead, outcome.late) == (1, 1)
    assert clock.now() == T0 + MINUTE
    assert ingester.stats.as_dict()["ahead_of_clock"] == 1 and ingester.stats.late == 1


def test_a_duplicate_is_not_counted_or_logged_as_late_or_ahead(store, caplog):
    """The same far-off events again are duplicates: nothing is stored, so nothing is late or
    ahead (a re-ingested file's summary counts each event once)."""
    batch = [event("next-year", T0 + timedelta(days=365)), event("last-week", T0 - timedelta(days=7))]
    Ingester(store, TRIGGERS, clock=EventClock(T0, max_skew=HOUR)).add_events(batch)
    again = Ingester(store, TRIGGERS, clock=EventClock(T0, max_skew=HOUR))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="winchester.services.ingest"):
        outcome = again.add_events(batch)
    assert outcome.stored.saved == 0 and len(outcome.stored.duplicates) == 2
    assert (outcome.ahead, outcome.late) == (0, 0)
    assert (again.stats.ahead, again.stats.late) == (0, 0)
    assert not [r for r in caplog.records if "stamped more than" in r.getMessage()]


def test_explain_says_an_expired_stream_within_the_grace_still_takes_late_events(store):
    """Past its expiry but within late_event_grace no worker may expire a stream yet, and it
    still takes late events: explain says so instead of "a worker expires it next"."""
    from winchester.services.explain import explain_stream

    store.late_event_grace = 2 * HOUR  # as open_store sets it from the configuration
    ingest(store, [event("a", T0)], now=T0, grace=2 * HOUR)
    [stream] = store.list_streams()
    verdict = explain_stream(store, TRIGGERS, stream.id, T0 + 65 * MINUTE)["verdict"]
    assert verdict.endswith("expiry passed 5m ago; within late_event_grace it still takes late "
                            "events, and a worker expires it in 1h 55m")
    store.late_event_grace = timedelta(0)
    verdict = explain_stream(store, TRIGGERS, stream.id, T0 + 65 * MINUTE)["verdict"]
    assert verdict.endswith("expiry passed 5m ago: a worker expires it next")


def test_a_late_event_twice_in_one_batch_is_counted_once(store):
    """Of two copies in one batch the first is stored: one late event, one duplicate."""
    late = event("last-week", T0 - timedelta(days=7))
    ingester = Ingester(store, TRIGGERS, clock=EventClock(T0, max_skew=HOUR))
    outcome = ingester.add_events([late, dict(late)])
    assert outcome.stored.saved == 1 and outcome.stored.duplicates == ["last-week"]
    assert outcome.late == 1 and ingester.stats.late == 1
