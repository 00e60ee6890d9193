"""The pipeline worker and the handler contract, on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta

import pytest

from winchester.clock import FixedClock
from winchester.pipelines import Handler, Pipeline, PipelineEntry, PipelineSet, generated_message_id
from winchester.services.ingest import Ingester
from winchester.services.worker import Worker
from winchester.store import FIRE, Store
from winchester.triggers import load_triggers

T0 = datetime(2024, 3, 1, 12, 0)


def trigger_data(**overrides):
    trigger = {
        "name": "instance", "distinguished_by": ["instance_id"], "expiration": "$last + 1h",
        "fire_pipeline": "on_fire", "expire_pipeline": "on_expire",
        "match_criteria": [{"event_type": ["compute.*"]}],
        "fire_criteria": [{"event_type": "compute.end"}],
    }
    trigger.update(overrides)
    return trigger


def make_triggers(*definitions):
    definitions = definitions or (trigger_data(),)
    return load_triggers(list(definitions), "triggers.yaml")


class Journal:
    """What the handlers of a test saw and did, in order."""

    def __init__(self):
        self.calls: list[tuple] = []

    def handler(self, label, *, fail=False, commit_fails=False, keep=None, add=None, action=None):
        journal = self

        class Recording(Handler):
            def handle_events(self, events, env):
                journal.calls.append((label, "handle", [e["message_id"] for e in events], dict(env)))
                if action:
                    action(env)
                if fail:
                    raise RuntimeError(f"{label} cannot cope")
                if keep is not None:
                    events = [e for e in events if keep(e)]
                if add is not None:
                    events = events + add(events, env)
                return events

            def commit(self):
                journal.calls.append((label, "commit"))
                if commit_fails:
                    raise ConnectionError(f"{label} could not deliver")

            def rollback(self):
                journal.calls.append((label, "rollback"))

        return PipelineEntry(label, Recording, {})

    def of(self, label, kind="handle"):
        return [call for call in self.calls if call[0] == label and call[1] == kind]


def pipelines(**by_name):
    return PipelineSet({name: Pipeline(name, tuple(entries)) for name, entries in by_name.items()})


@pytest.fixture
def store(migrated_url):
    store = Store.from_url(migrated_url, ["instance_id"])
    yield store
    store.close()


def event(message_id, event_type="compute.start", minutes=0, instance="i-1", **traits):
    return {"message_id": message_id, "event_type": event_type,
            "timestamp": T0 + timedelta(minutes=minutes), "instance_id": instance, **traits}


def ingest(store, triggers, events, at=T0):
    Ingester(store, triggers, clock=FixedClock(at)).add_events(events)


def worker(store, triggers, pipes, now, **options):
    options.setdefault("purge_completed", False)
    return Worker(store, triggers, pipes, clock=FixedClock(now), wall_clock=FixedClock(now), **options)


def states(store):
    return {s.id: s.state for s in store.list_streams()}


# -- firing and expiring ---------------------------------------------------------------------


def test_a_ready_stream_fires_with_its_events_in_timestamp_order(store):
    """The fire pipeline gets the stream's events ordered by timestamp, and env describes the stream."""
    triggers = make_triggers()
    journal = Journal()
    # Arrival order differs from timestamp order; the fire event comes last
    # (a ready stream takes no more events: later ones start a new stream).
    ingest(store, triggers, [event("middle", minutes=3), event("early", minutes=1),
                             event("late", "compute.end", 5)])
    processed = worker(store, triggers, pipelines(on_fire=[journal.handler("a")]), T0 + timedelta(minutes=10)
                       ).run_until_idle()
    assert processed == 1
    [(_, _, ids, env)] = journal.of("a")
    assert ids == ["early", "middle", "late"]
    assert env["stream_name"] == "instance" and env["reason"] == "fire"
    assert env["distinguishing_traits"] == {"instance_id": "i-1"}
    assert list(states(store).values()) == ["completed"]


@pytest.mark.parametrize("batches", [[3], [1, 1, 1], [2, 1]], ids=["one batch", "one by one", "2+1"])
def test_ties_in_timestamp_keep_arrival_order_however_the_input_is_batched(store, batches):
    """Events with the same timestamp reach the pipeline in the order they arrived, whether
    they came in one batch or several (a replay batches differently from the live run)."""
    triggers = make_triggers()
    journal = Journal()
    arriving = [event("z-first", minutes=1), event("m-second", minutes=1), event("a-third", minutes=1)]
    for size in batches:
        ingest(store, triggers, arriving[:size])
        arriving = arriving[size:]
    ingest(store, triggers, [event("end", "compute.end", 2)])
    worker(store, triggers, pipelines(on_fire=[journal.handler("a")]), T0 + timedelta(hours=3)).run_until_idle()
    assert journal.of("a")[0][2] == ["z-first", "m-second", "a-third", "end"]


def test_a_stream_that_never_becomes_ready_expires(store):
    """Past its expiration a stream runs the expire pipeline, with reason 'expire'."""
    triggers = make_triggers()
    journal = Journal()
    ingest(store, triggers, [event("only", minutes=1)])
    pipes = pipelines(on_fire=[journal.handler("fire")], on_expire=[journal.handler("expire")])
    assert worker(store, triggers, pipes, T0 + timedelta(minutes=30)).run_until_idle() == 0
    assert worker(store, triggers, pipes, T0 + timedelta(hours=2)).run_until_idle() == 1
    assert journal.of("fire") == []
    assert journal.of("expire")[0][3]["reason"] == "expire"
    assert list(states(store).values()) == ["completed"]


def test_a_ready_stream_past_its_expiry_fires_and_never_expires(store):
    """When both are due the stream fires; with a fire delay pending it waits to fire instead of expiring."""
    triggers = make_triggers(trigger_data(name="delayed", fire_delay=7200, fire_pipeline="on_fire",
                                          expire_pipeline="on_expire"))
    journal = Journal()
    ingest(store, triggers, [event("end", "compute.end", 1)])
    pipes = pipelines(on_fire=[journal.handler("fire")], on_expire=[journal.handler("expire")])
    # Expired (last + 1h) but its fire time (now + 2h) has not come: nothing runs.
    assert worker(store, triggers, pipes, T0 + timedelta(minutes=90)).run_until_idle() == 0
    assert worker(store, triggers, pipes, T0 + timedelta(hours=5)).run_until_idle() == 1
    assert len(journal.of("fire")) == 1 and journal.of("expire") == []


def test_completed_streams_are_purged_when_configured(store):
    """With purge_completed the stream row goes once its pipeline succeeded; its events stay."""
    triggers = make_triggers()
    ingest(store, triggers, [event("end", "compute.end")])
    worker(store, triggers, pipelines(on_fire=[Journal().handler("a")]), T0 + timedelta(hours=1),
           purge_completed=True).run_until_idle()
    assert store.count_streams() == 0
    assert store.get_event("end") is not None


def _rows(store, table):
    with store.engine.connect() as connection:
        return connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()


def test_a_purged_stream_takes_its_membership_rows_with_it(store):
    """Purging deletes the stream's membership rows too (nothing refers to a stream that is gone)."""
    triggers = make_triggers()
    ingest(store, triggers, [event("start", instance="a"), event("end", "compute.end", instance="a"),
                             event("other", instance="b")])
    assert _rows(store, "stream_events") == 3
    worker(store, triggers, pipelines(on_fire=[]), T0 + timedelta(minutes=1),
           purge_completed=True).run_until_idle()
    assert [s.distinguishing_traits["instance_id"] for s in store.list_streams()] == ["b"]
    assert _rows(store, "stream_events") == 1


def test_a_stream_without_a_pipeline_for_its_outcome_completes_without_running(store):
    """A trigger with no expire pipeline: its streams expire straight to completed."""
    triggers = make_triggers(trigger_data(expire_pipeline=None))
    ingest(store, triggers, [event("only")])
    runner = worker(store, triggers, pipelines(on_fire=[]), T0 + timedelta(hours=2))
    assert runner.run_until_idle() == 1
    assert list(states(store).values()) == ["completed"] and runner.stats.expired == 1


# -- the handler contract ------------------------------------------------------------------


def test_handlers_filter_for_the_next_and_commit_after_all_succeeded(store):
    """Each handler sees what the previous one returned; commit() runs on all, after every handle_events."""
    triggers = make_triggers()
    journal = Journal()
    ingest(store, triggers, [event("start"), event("end", "compute.end", 1)])
    pipes = pipelines(on_fire=[journal.handler("filter", keep=lambda e: e["event_type"] == "compute.end"),
                               journal.handler("after")])
    worker(store, triggers, pipes, T0 + timedelta(hours=1)).run_until_idle()
    assert [c[:3] for c in journal.calls] == [
        ("filter", "handle", ["start", "end"]), ("after", "handle", ["end"]),
        ("filter", "commit"), ("after", "commit")]


def test_a_failing_handler_rolls_back_every_handler_and_marks_the_stream_error(store):
    """handle_events raising: rollback() on all handlers, no commit(), state error with the reason."""
    triggers = make_triggers()
    journal = Journal()
    ingest(store, triggers, [event("end", "compute.end")])
    pipes = pipelines(on_fire=[journal.handler("first"), journal.handler("broken", fail=True),
                               journal.handler("never")])
    runner = worker(store, triggers, pipes, T0 + timedelta(hours=1))
    runner.run_until_idle()
    assert [c[:2] for c in journal.calls] == [("first", "handle"), ("broken", "handle"),
                                             ("first", "rollback"), ("broken", "rollback"),
                                             ("never", "rollback")]
    [stream] = store.list_streams()
    assert stream.state == "error"
    assert "broken" in store.stream_errors([stream.id])[stream.id]
    assert "cannot cope" in store.stream_errors([stream.id])[stream.id]
    assert sum(runner.stats.errors.values()) == 1


def test_a_failing_expire_pipeline_marks_expire_error(store):
    """An expire pipeline's failure leaves the stream in expire_error."""
    triggers = make_triggers()
    ingest(store, triggers, [event("only")])
    pipes = pipelines(on_expire=[Journal().handler("broken", fail=True)])
    worker(store, triggers, pipes, T0 + timedelta(hours=2)).run_until_idle()
    assert list(states(store).values()) == ["expire_error"]


def test_a_commit_error_is_counted_and_does_not_fail_the_stream(store):
    """A commit() that raises is logged and counted; the other handlers still commit; the stream completes."""
    triggers = make_triggers()
    journal = Journal()
    ingest(store, triggers, [event("end", "compute.end")])
    pipes = pipelines(on_fire=[journal.handler("flaky", commit_fails=True), journal.handler("fine")])
    runner = worker(store, triggers, pipes, T0 + timedelta(hours=1))
    runner.run_until_idle()
    assert journal.of("fine", "commit")
    assert runner.stats.commit_errors == 1
    assert list(states(store).values()) == ["completed"]


def test_generated_events_are_ingested_and_matched_once(store):
    """Events a pipeline adds are stored and matched by triggers; re-running the stream adds no duplicates."""
    verdicts = trigger_data(name="verdicts", distinguished_by=["instance_id"], fire_pipeline="report",
                            expire_pipeline=None, match_criteria=[{"event_type": "audit.*"}],
                            fire_criteria=[{"event_type": "audit.verdict"}])
    triggers = make_triggers(trigger_data(match_criteria=[{"event_type": ["compute.*"]}]), verdicts)
    journal = Journal()

    def verdict(events, env):
        source = events[-1]
        return [{"message_id": generated_message_id(env["stream_id"], source["message_id"], "audit.verdict"),
                 "event_type": "audit.verdict", "timestamp": source["timestamp"],
                 "instance_id": source["instance_id"]}]

    ingest(store, triggers, [event("end", "compute.end")])
    pipes = pipelines(on_fire=[journal.handler("audit", add=verdict, fail=False)],
                      report=[journal.handler("report")])
    runner = worker(store, triggers, pipes, T0 + timedelta(hours=1))
    runner.run_until_idle()
    assert runner.stats.generated == 1
    [report] = journal.of("report")
    assert [store.get_event(m)["event_type"] for m in report[2]] == ["audit.verdict"]
    # The same stream run again (reset after an error, say) generates the same id: nothing new.
    instance_stream = next(s for s in store.list_streams() if s.trigger_name == "instance")
    before = store.count_events()
    events = store.stream_events(instance_stream.id)
    result = pipes["on_fire"].run(events, {"stream_id": instance_stream.id})
    Ingester(store, triggers, clock=FixedClock(T0)).add_events(result.generated)
    assert store.count_events() == before


def test_a_stream_opened_by_a_generated_event_is_counted_as_created(store):
    """The worker's stats, its metrics and the dashboard's activity count the streams its
    pipelines' generated events opened, as ingest counts the streams it opens."""
    from winchester.metrics import Metrics

    verdicts = trigger_data(name="verdicts", distinguished_by=["instance_id"], fire_pipeline="report",
                            expire_pipeline=None, match_criteria=[{"event_type": "audit.*"}],
                            fire_criteria=[{"event_type": "audit.verdict"}])
    triggers = make_triggers(trigger_data(), verdicts)

    def verdict(events, env):
        source = events[-1]
        return [{"message_id": generated_message_id(env["stream_id"], source["message_id"], "audit.verdict"),
                 "event_type": "audit.verdict", "timestamp": source["timestamp"],
                 "instance_id": source["instance_id"]}]

    ingest(store, triggers, [event("end-1", "compute.end"), event("end-2", "compute.end", instance="i-2")])
    pipes = pipelines(on_fire=[Journal().handler("audit", add=verdict)], report=[Journal().handler("report")])
    runner = worker(store, triggers, pipes, T0 + timedelta(hours=1))
    metrics = Metrics()
    metrics.watch_worker(runner)
    runner.run_until_idle()

    assert runner.stats.new_streams == {"verdicts": 2}
    assert runner.stats.matched == {"verdicts": 2} and runner.stats.ready == {"verdicts": 2}
    assert runner.stats.as_dict()["streams_created"] == 2
    exposition = metrics.exposition()[0].decode()
    assert 'winchester_streams_created_total{service="worker",trigger="verdicts"} 2.0' in exposition
    created = Counter()
    for _, kind, trigger, count in store.activity_since(datetime(2000, 1, 1)):
        if kind == "streams_created":
            created[trigger] += count
    assert created == {"instance": 2, "verdicts": 2}


def test_generated_events_arrive_when_their_stream_became_due_not_when_a_worker_ran_it(store):
    """A worker that gets to a stream hours late still ingests its outputs as of the stream's due
    time: the streams they join (and when those fire) do not depend on the worker's timing."""
    verdicts = trigger_data(name="verdicts", distinguished_by=["instance_id"], fire_pipeline="report",
                            expire_pipeline=None, fire_delay=60,
                            match_criteria=[{"event_type": "audit.*"}],
                            fire_criteria=[{"event_type": "audit.verdict"}])
    triggers = make_triggers(trigger_data(match_criteria=[{"event_type": ["compute.*"]}]), verdicts)

    def verdict(events, env):
        source = events[-1]
        return [{"message_id": generated_message_id(env["stream_id"], source["message_id"], "audit.verdict"),
                 "event_type": "audit.verdict", "timestamp": source["timestamp"],
                 "instance_id": source["instance_id"]}]

    ingest(store, triggers, [event("end", "compute.end", minutes=5)], at=T0 + timedelta(minutes=5))
    [instance] = store.list_streams()
    pipes = pipelines(on_fire=[Journal().handler("audit", add=verdict)], report=[])
    late = T0 + timedelta(hours=5)
    worker(store, triggers, pipes, late).process(FIRE)
    report = next(s for s in store.list_streams() if s.trigger_name == "verdicts")
    assert report.fire_timestamp == instance.fire_timestamp + timedelta(seconds=60)


def test_a_generated_event_without_an_id_gets_a_deterministic_one(store):
    """A handler that appends an event without message_id: it is named after the stream, reproducibly."""
    triggers = make_triggers()
    journal = Journal()
    add = lambda events, env: [{"event_type": "audit.note", "timestamp": T0}]  # noqa: E731
    ingest(store, triggers, [event("end", "compute.end")])
    pipes = pipelines(on_fire=[journal.handler("note", add=add)])
    worker(store, triggers, pipes, T0 + timedelta(hours=1)).run_until_idle()
    first = pipes["on_fire"].run([store.get_event("end")], {"stream_id": 1}).generated
    second = pipes["on_fire"].run([store.get_event("end")], {"stream_id": 1}).generated
    assert first[0]["message_id"] == second[0]["message_id"]
    assert store.get_event(first[0]["message_id"]) is not None


# -- unknown triggers and pipelines ----------------------------------------------------------


def test_a_stream_of_an_unknown_trigger_goes_to_error_with_the_reason(store):
    """A stream whose trigger was removed from the configuration is not run; the reason is kept."""
    old = make_triggers(trigger_data(name="retired"))
    ingest(store, old, [event("end", "compute.end")])
    runner = worker(store, make_triggers(), pipelines(on_fire=[]), T0 + timedelta(hours=1))
    runner.run_until_idle()
    [stream] = store.list_streams()
    assert stream.state == "error"
    assert "unknown trigger 'retired'" in store.stream_errors([stream.id])[stream.id]


def test_a_stream_whose_pipeline_is_missing_goes_to_error_with_the_reason(store):
    """A trigger naming a pipeline the pipeline configuration lacks: error, naming the pipeline."""
    triggers = make_triggers()
    ingest(store, triggers, [event("end", "compute.end")])
    worker(store, triggers, pipelines(), T0 + timedelta(hours=1)).run_until_idle()
    [stream] = store.list_streams()
    assert stream.state == "error"
    assert "unknown pipeline 'on_fire'" in store.stream_errors([stream.id])[stream.id]


# -- reset -------------------------------------------------------------------------------------


def test_reset_moves_error_streams_to_retry_and_the_worker_runs_them_again(store):
    """error -> retry_fire and expire_error -> retry_expire; the next loop runs them to completion."""
    triggers = make_triggers()
    ingest(store, triggers, [event("end", "compute.end", instance="a"), event("lone", instance="b")])
    broken = pipelines(on_fire=[Journal().handler("x", fail=True)],
                       on_expire=[Journal().handler("y", fail=True)])
    worker(store, triggers, broken, T0 + timedelta(hours=2)).run_until_idle()
    assert sorted(states(store).values()) == ["error", "expire_error"]
    moved = store.reset_streams(None, T0)
    assert sorted(moved.values()) == ["retry_expire", "retry_fire"]
    journal = Journal()
    fixed = pipelines(on_fire=[journal.handler("fire")], on_expire=[journal.handler("expire")])
    assert worker(store, triggers, fixed, T0 + timedelta(hours=2)).run_until_idle() == 2
    assert set(states(store).values()) == {"completed"}
    assert journal.of("fire")[0][3]["reason"] == "fire"
    assert journal.of("expire")[0][3]["reason"] == "expire"


def test_reset_by_id_leaves_other_streams_alone(store):
    """Only the named error streams move; an active stream named is untouched."""
    triggers = make_triggers()
    ingest(store, triggers, [event("end", "compute.end", instance="a"),
                             event("end2", "compute.end", instance="b")])
    worker(store, triggers, pipelines(on_fire=[Journal().handler("x", fail=True)]),
           T0 + timedelta(hours=1)).run_until_idle()
    ingest(store, triggers, [event("new", instance="c")], at=T0 + timedelta(hours=1))
    by_instance = {s.distinguishing_traits["instance_id"]: s.id for s in store.list_streams()}
    moved = store.reset_streams([by_instance["a"], by_instance["c"]], T0)
    assert moved == {by_instance["a"]: "retry_fire"}
    assert states(store)[by_instance["b"]] == "error"
    assert states(store)[by_instance["c"]] == "active"


# -- leases ------------------------------------------------------------------------------------


def test_a_dead_workers_claim_lapses_and_another_worker_completes_the_stream(store):
    """A stream left in firing past its lease is taken over; the dead worker's late finish is refused."""
    triggers = make_triggers()
    ingest(store, triggers, [event("end", "compute.end")])
    now = T0 + timedelta(hours=1)
    [claimed] = store.claim_streams(FIRE, "dead", now, now, now + timedelta(minutes=5), 10)
    assert states(store)[claimed.id] == "firing"
    journal = Journal()
    pipes = pipelines(on_fire=[journal.handler("a")])
    # Within the lease nobody else touches it.
    assert worker(store, triggers, pipes, now + timedelta(minutes=4)).run_until_idle() == 0
    assert worker(store, triggers, pipes, now + timedelta(minutes=6)).run_until_idle() == 1
    assert states(store)[claimed.id] == "completed"
    from winchester.store import StreamOutcome
    assert store.finish_streams("dead", [StreamOutcome(claimed)], now, False).lost == [claimed.id]


def test_a_stream_that_outlives_every_lease_goes_to_error_after_max_attempts(store):
    """A stream whose workers keep dying is not retried forever: after max_attempts it is an error."""
    triggers = make_triggers()
    ingest(store, triggers, [event("end", "compute.end")])
    now = T0 + timedelta(hours=1)
    for attempt in range(3):
        at = now + timedelta(minutes=10 * attempt)
        assert store.claim_streams(FIRE, f"dying-{attempt}", at, at, at + timedelta(minutes=5), 10,
                                   max_attempts=3)
    at = now + timedelta(minutes=30)
    assert store.claim_streams(FIRE, "next", at, at, at + timedelta(minutes=5), 10, max_attempts=3) == []
    [stream] = store.list_streams()
    assert stream.state == "error"
    assert "abandoned after 3 attempts" in store.stream_errors([stream.id])[stream.id]


def test_two_claims_never_take_the_same_stream(store):
    """Once claimed, a stream is not due for anybody else (the claim moved its state and serial)."""
    triggers = make_triggers()
    ingest(store, triggers, [event(f"end{i}", "compute.end", instance=f"i{i}") for i in range(10)])
    now = T0 + timedelta(hours=1)
    first = store.claim_streams(FIRE, "a", now, now, now + timedelta(minutes=5), 6)
    second = store.claim_streams(FIRE, "b", now, now, now + timedelta(minutes=5), 6)
    assert len(first) == 6 and len(second) == 4
    assert not {s.id for s in first} & {s.id for s in second}


# -- stopping ----------------------------------------------------------------------------------


def test_stop_finishes_the_current_stream_and_gives_the_rest_back(store):
    """stop() during a run: that stream completes, the other claimed ones return to active untouched."""
    triggers = make_triggers()
    ingest(store, triggers, [event(f"end{i}", "compute.end", instance=f"i{i}") for i in range(5)])
    journal = Journal()
    holder = {}
    pipes = pipelines(on_fire=[journal.handler("a", action=lambda env: holder["worker"].stop())])
    runner = holder["worker"] = worker(store, triggers, pipes, T0 + timedelta(hours=1))
    assert runner.run_until_idle() == 1
    assert sorted(states(store).values()) == ["active"] * 4 + ["completed"]
    assert runner.stats.released == 4
    rest = worker(store, triggers, pipelines(on_fire=[]), T0 + timedelta(hours=1))
    assert rest.run_until_idle() == 4


# -- trimming ----------------------------------------------------------------------------------


def test_trimming_deletes_old_events_but_never_one_a_live_stream_holds(store):
    """Old events of completed streams and of no stream go; old events of an active stream stay."""
    triggers = make_triggers(trigger_data(expiration="$last + 30d"))
    old = T0 - timedelta(days=20)
    ingest(store, triggers, [
        {**event("done", "compute.end", instance="a"), "timestamp": old},
        {**event("waiting", instance="b"), "timestamp": old},
        {"message_id": "loose", "event_type": "other.thing", "timestamp": old},
        event("recent", instance="c"),
    ], at=old)
    runner = worker(store, triggers, pipelines(on_fire=[]), T0, trim_events=True,
                    trim_events_age="$timestamp - 14d", trim_events_batch_size=1)
    runner.run_until_idle()
    assert runner.stats.trimmed == 2
    assert store.get_event("done") is None and store.get_event("loose") is None
    assert store.get_event("waiting") is not None and store.get_event("recent") is not None
    # The trimmed events' indexed traits and memberships went with them.
    assert store.find_events_by_trait("instance_id", "a") == []
    assert store.find_events_by_trait("instance_id", "b") == ["waiting"]
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql(
            "SELECT count(*) FROM stream_events WHERE event_id NOT IN (SELECT id FROM events)"
        ).scalar_one() == 0
        assert connection.exec_driver_sql(
            "SELECT count(*) FROM event_traits WHERE event_id NOT IN (SELECT id FROM events)"
        ).scalar_one() == 0


# -- the run loop ------------------------------------------------------------------------------


def test_the_loop_sleeps_only_when_idle_and_stops_on_request(store):
    """run(): processes what is due, sleeps the delay when idle, returns after stop()."""
    triggers = make_triggers()
    ingest(store, triggers, [event("end", "compute.end")])
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        runner.stop()

    runner = Worker(store, triggers, pipelines(on_fire=[]), clock=FixedClock(T0 + timedelta(hours=1)),
                    delay=7, sleep=sleep, purge_completed=False)
    runner.run()
    assert sleeps == [7]
    assert runner.stats.fired == 1


def test_the_loop_survives_a_database_outage(tmp_path, caplog):
    """A store that cannot be reached: the error is logged, the loop backs off and carries on."""
    store = Store.from_url(f"sqlite:///{tmp_path / 'missing' / 'nothing.db'}")  # no schema
    triggers = make_triggers()
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 3:
            runner.stop()

    runner = Worker(store, triggers, pipelines(), clock=FixedClock(T0), sleep=sleep)
    with caplog.at_level(logging.ERROR, logger="winchester.services.worker"):
        runner.run()
    store.close()
    assert sleeps == [1.0, 2.0, 4.0]
    assert runner.stats.database_errors == 3
    assert "database unavailable" in caplog.text


@pytest.mark.postgres
def test_the_worker_reconnects_after_postgresql_drops_its_connections(postgres_url):
    """Every pooled connection killed by the server between loops: the next loop reconnects and works."""
    import psycopg
    import sqlalchemy as sa

    from winchester.store import create_engine, upgrade

    engine = create_engine(postgres_url)
    upgrade(engine)
    engine.dispose()
    store = Store.from_url(postgres_url, ["instance_id"])
    triggers = make_triggers()
    ingest(store, triggers, [event("first", "compute.end", instance="a")])
    runner = worker(store, triggers, pipelines(on_fire=[]), T0 + timedelta(hours=1))
    assert runner.run_until_idle() == 1
    with store.engine.connect() as connection:
        backend = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    admin = postgres_url.split("?")[0].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as connection:
        assert connection.execute("SELECT pg_terminate_backend(%s)", (backend,)).fetchone()[0]
    ingest(store, triggers, [event("second", "compute.end", instance="b")])
    assert runner.run_until_idle() == 1
    assert sorted(states(store).values()) == ["completed", "completed"]
    store.close()


# -- failures between running a pipeline and recording it ------------------------------------


def fail_once(monkeypatch, store, method: str, after: int = 0) -> None:
    """``store.<method>`` raises StoreError (the database went away) on call ``after + 1`` only."""
    from winchester.store import StoreError

    real = getattr(store, method)
    calls = iter(range(after + 1))

    def flaky(*args, **kwargs):
        if next(calls, None) == after:
            raise StoreError("database write failed: connection reset")
        return real(*args, **kwargs)

    monkeypatch.setattr(store, method, flaky)


def test_outcomes_that_could_not_be_recorded_are_recorded_later_without_running_again(store, monkeypatch):
    """The database fails while recording: the next loop records the outcomes; no commit() runs twice."""
    from winchester.store import StoreError

    triggers = make_triggers()
    journal = Journal()
    ingest(store, triggers, [event(f"end{i}", "compute.end", instance=f"i{i}") for i in range(3)])
    runner = worker(store, triggers, pipelines(on_fire=[journal.handler("a")]), T0 + timedelta(hours=1))
    fail_once(monkeypatch, store, "finish_streams")
    with pytest.raises(StoreError):
        runner.run_until_idle()
    assert set(states(store).values()) == {"firing"}
    runner.run_until_idle()
    assert set(states(store).values()) == {"completed"}
    assert len(journal.of("a", "commit")) == 3
    assert runner.stats.fired == 3


def test_streams_run_before_a_lease_renewal_failed_are_recorded_not_run_again(store, monkeypatch):
    """The database fails while a long batch renews its leases: what already ran (side effects
    committed) is recorded on the next pass, and only the streams not run yet are run later."""
    from winchester.store import StoreError

    triggers = make_triggers()
    journal = Journal()
    ingest(store, triggers, [event(f"end{i}", "compute.end", instance=f"i{i}") for i in range(3)])
    now = T0 + timedelta(hours=1)
    # A lease of zero renews before every stream: the first renewal works,
    # the second fails after one stream has run.
    runner = worker(store, triggers, pipelines(on_fire=[journal.handler("a")]), now,
                    lease=timedelta(0))
    fail_once(monkeypatch, store, "extend_claims", after=1)
    with pytest.raises(StoreError):
        runner.process(FIRE)
    assert len(journal.of("a", "commit")) == 1
    later = now + timedelta(minutes=10)  # the leases of the streams not run have lapsed
    runner.clock, runner.wall_clock, runner.lease = FixedClock(later), FixedClock(later), timedelta(minutes=5)
    runner.run_until_idle()
    assert set(states(store).values()) == {"completed"}
    assert len(journal.of("a", "commit")) == 3
    assert runner.stats.fired == 3


def test_streams_whose_events_cannot_be_read_are_given_back(store, monkeypatch):
    """Reading the claimed streams' events fails: they return to active at once, not stuck in firing."""
    from winchester.store import StoreError

    triggers = make_triggers()
    ingest(store, triggers, [event("end", "compute.end")])
    runner = worker(store, triggers, pipelines(on_fire=[]), T0 + timedelta(hours=1))

    def unreadable(stream_ids):
        raise StoreError("database read failed: server closed the connection")

    monkeypatch.setattr(store, "load_stream_events", unreadable)
    with pytest.raises(StoreError):
        runner.process(FIRE)
    assert list(states(store).values()) == ["active"]
    monkeypatch.undo()
    assert runner.run_until_idle() == 1


def test_a_stream_taken_over_twice_is_claimed_alone(store):
    """A lapsed stream already claimed twice may be what kills workers: it is run on its own."""
    triggers = make_triggers()
    ingest(store, triggers, [event(f"end{i}", "compute.end", instance=f"i{i}") for i in range(4)])
    now = T0 + timedelta(hours=1)
    first = store.claim_streams(FIRE, "dead-1", now, now, now + timedelta(minutes=1), 10)
    assert len(first) == 4
    later = now + timedelta(minutes=2)
    second = store.claim_streams(FIRE, "dead-2", later, later, later + timedelta(minutes=1), 10)
    assert len(second) == 4  # a first take-over comes in bulk
    latest = later + timedelta(minutes=2)
    third = store.claim_streams(FIRE, "careful", latest, latest, latest + timedelta(minutes=1), 10)
    assert len(third) == 1


def test_trimming_keeps_going_while_there_is_more_to_trim(store):
    """One loop trims batch after batch (not one batch per sleep), so trimming keeps up with ingest."""
    triggers = make_triggers()
    old = T0 - timedelta(days=30)
    ingest(store, triggers, [{"message_id": f"old{i}", "event_type": "other.thing",
                              "timestamp": old} for i in range(250)], at=old)
    runner = worker(store, triggers, pipelines(), T0, trim_events=True, trim_events_batch_size=100)
    assert runner.run_once_through() == 250
    assert store.count_events() == 0


def test_a_generated_event_with_invalid_text_fails_its_stream_only(store):
    """A handler generating text that cannot be stored fails that stream with the reason; others complete."""
    triggers = make_triggers()
    ingest(store, triggers, [event("end-a", "compute.end", instance="a"),
                             event("end-b", "compute.end", instance="b")])

    def bad_text(events, env):
        if env["distinguishing_traits"]["instance_id"] == "b":
            return []
        return [{"message_id": "gen-a", "event_type": "audit.note", "timestamp": T0, "note": "\ud800"}]

    runner = worker(store, triggers, pipelines(on_fire=[Journal().handler("g", add=bad_text)]),
                    T0 + timedelta(hours=1))
    runner.run_until_idle()
    by_instance = {s.distinguishing_traits["instance_id"]: s for s in store.list_streams()}
    assert by_instance["b"].state == "completed"
    assert by_instance["a"].state == "error"
    assert "surrogate" in store.stream_errors([by_instance["a"].id])[by_instance["a"].id]


@pytest.mark.postgres
def test_a_batch_of_streams_is_read_by_index_however_stale_the_statistics(postgres_url):
    """Before the first ANALYZE, PostgreSQL costs "stream_id = ANY(500 ids)" as every row;
    the read must still look each stream up, not scan every membership and event."""
    from winchester.store import create_engine, upgrade
    from winchester.store._work import _pg_stream_events

    engine = create_engine(postgres_url)
    upgrade(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("INSERT INTO event_types (id, name) VALUES (1, 'compute.start')")
        connection.exec_driver_sql(
            "INSERT INTO events (message_id, event_type_id, generated, traits) "
            "SELECT 'm-' || n, 1, now(), '{}' FROM generate_series(1, 50000) AS n")
        connection.exec_driver_sql(
            "INSERT INTO stream_events (stream_id, event_id) "
            "SELECT n / 4, n FROM generate_series(1, 50000) AS n")
    query = _pg_stream_events(list(range(1, 501))).compile(dialect=engine.dialect)
    with engine.connect() as connection:
        plan = "\n".join(connection.exec_driver_sql("EXPLAIN " + str(query), query.params).scalars())
        found = connection.execute(_pg_stream_events([1, 2])).all()
        mode = connection.exec_driver_sql("SHOW plan_cache_mode").scalar()
    engine.dispose()
    assert "Seq Scan on stream_events" not in plan and "Seq Scan on events" not in plan, plan
    assert [(row.stream_id, row.message_id) for row in found] == [
        (1, "m-4"), (1, "m-5"), (1, "m-6"), (1, "m-7"), (2, "m-8"), (2, "m-9"), (2, "m-10"), (2, "m-11")]
    # Statements the driver prepared while the tables were small are planned afresh each time.
    assert mode == "force_custom_plan"
