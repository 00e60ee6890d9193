"""End to end: the example configuration audits the bench workload and finds exactly what was broken."""

from __future__ import annotations

import itertools
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from winchester.clock import EventClock, FixedClock
from winchester.config import (
    build_distiller,
    load_pipeline_definitions,
    load_settings,
    load_trigger_definitions,
    open_store,
)
from winchester.services.ingest import Ingester
from winchester.services.worker import build_worker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from workload import EXISTS, Workload, WorkloadSpec  # noqa: E402

VERIFIED = "compute.instance.exists.verified"
FAILED = "compute.instance.exists.failed"
EXPECTED_CODE = {"launched_at_mismatch": "U2", "deleted_at_while_active": "U3", "missing_exists": "U0"}


@pytest.fixture
def audited(migrated_url):
    """The workload ingested with the example configuration, then worked until nothing is due."""
    settings = load_settings(ROOT / "etc" / "winchester.yaml",
                             environ={"WINCHESTER_DATABASE_URL": migrated_url})
    triggers = load_trigger_definitions(settings)
    store = open_store(settings, triggers)
    clock = EventClock()
    ingester = Ingester(store, triggers, build_distiller(settings), clock)
    workload = Workload(WorkloadSpec(instances=240, days=3, seed=7, broken_fraction=0.05))
    lines = workload.lines()
    while batch := list(itertools.islice(lines, 500)):
        ingester.add_notifications(batch)
    pipelines = load_pipeline_definitions(settings)
    now = FixedClock(clock.now())
    worker = build_worker(settings, store, triggers, pipelines, clock=now, name="audit")
    fired_at_end_of_input = worker.run_until_idle()
    # Two days later every stream without its .exists has expired too.
    now.set(clock.now() + timedelta(days=3))
    expired_later = worker.run_until_idle()
    yield store, workload.truth, worker, fired_at_end_of_input, expired_later
    store.close()


def test_every_verdict_matches_what_the_workload_broke(audited):
    """Verified and failed counts, and each failure's instance and code, are what the generator put in."""
    store, truth, worker, _, _ = audited
    broken = truth.broken
    assert len(broken) >= 9 and set(Counter(b.kind for b in broken.values())) == set(EXPECTED_CODE)
    sent_broken = sum(1 for b in broken.values() if b.kind != "missing_exists")
    verified = store.find_events(VERIFIED)
    failed = store.find_events(FAILED)

    assert len(verified) == truth.by_type[EXISTS] - sent_broken
    assert {(f["instance_id"], f["error_code"]) for f in failed} == {
        (instance_id, EXPECTED_CODE[b.kind]) for instance_id, b in broken.items()}
    assert len(failed) == len(broken)
    # The missing .exists are exactly the instance-days whose lifecycle never got one.
    assert len(set(truth.events) - truth.exists) == sum(
        1 for b in broken.values() if b.kind == "missing_exists")
    assert sum(worker.stats.errors.values()) == 0 and worker.stats.commit_errors == 0


def test_streams_fire_on_their_exists_and_the_rest_expire_later(audited):
    """Every stream with its .exists fires; the ones without expire once their time is up."""
    store, truth, worker, fired_at_end_of_input, expired_later = audited
    missing = sum(1 for b in truth.broken.values() if b.kind == "missing_exists")
    assert worker.stats.expired == missing
    # The streams of the last days were still waiting for their .exists at the end of the input.
    assert expired_later >= 1
    assert fired_at_end_of_input + expired_later == worker.stats.fired + worker.stats.expired
    assert worker.stats.fired == len(truth.exists)
    assert store.count_streams() == 0  # purge_completed_streams: true in the example


def test_verdicts_carry_the_audit_record_and_where_they_came_from(audited):
    """A verdict copies the .exists traits and names its source event and stream."""
    store, truth, _, _, _ = audited
    failed = {f["instance_id"]: f for f in store.find_events(FAILED)}
    instance_id, broken = next((i, b) for i, b in truth.broken.items() if b.kind == "launched_at_mismatch")
    verdict = failed[instance_id]
    source = store.get_event(verdict["original_message_id"])
    assert source["event_type"] == EXISTS
    assert verdict["launched_at"] == source["launched_at"]
    assert verdict["audit_period_beginning"].date() == broken.day
    assert "launched_at" in verdict["error"] and isinstance(verdict["stream_id"], int)


def test_working_again_changes_nothing(audited):
    """A second pass finds nothing due and generates no event twice."""
    store, _, worker, _, _ = audited
    before = store.count_events_by_type()
    assert worker.run_until_idle() == 0
    assert store.count_events_by_type() == before
