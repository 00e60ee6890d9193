"""The benchmark workload (bench/workload.py): seeded, ordered, realistic, and true to its truth."""

from __future__ import annotations

import itertools
import sys
from collections import Counter
from datetime import datetime, time, timedelta
from pathlib import Path

import orjson
import pytest

from winchester._yaml import parse_yaml
from winchester.distill import Distiller, available_plugins, load_definitions, parse_datetime

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))

from workload import BROKEN_KINDS, Workload, WorkloadSpec  # noqa: E402

SMALL = WorkloadSpec(instances=120, days=3)


@pytest.fixture(scope="module")
def small() -> tuple[Workload, list[dict]]:
    workload = Workload(SMALL)
    return workload, list(workload.notifications())


def end_of_day_day(payload: dict) -> datetime | None:
    """The audited day of a midnight-to-midnight .exists payload, else None."""
    beginning = parse_datetime(payload["audit_period_beginning"])
    ending = parse_datetime(payload["audit_period_ending"])
    if beginning.time() == time() and ending - beginning == timedelta(days=1):
        return beginning
    return None


def test_same_seed_same_notifications():
    """The same spec gives the same first 500 notifications, byte for byte."""
    first = list(itertools.islice(Workload(SMALL).lines(), 500))
    second = list(itertools.islice(Workload(SMALL).lines(), 500))
    assert len(first) == 500
    assert first == second


def test_notifications_restart_on_each_call():
    """A second notifications() call on the same Workload starts over and resets truth."""
    workload = Workload(SMALL)
    first = list(itertools.islice(workload.notifications(), 50))
    assert list(itertools.islice(workload.notifications(), 50)) == first
    assert workload.truth.notifications == 50


def test_different_seeds_differ():
    """Another seed gives other notifications."""
    one = list(itertools.islice(Workload(SMALL).lines(), 100))
    other = list(itertools.islice(Workload(WorkloadSpec(instances=120, days=3, seed=7)).lines(), 100))
    assert one != other
    assert not {orjson.loads(line)["message_id"] for line in one} & {
        orjson.loads(line)["message_id"] for line in other}


def test_timestamp_order_and_unique_message_ids(small):
    """Notifications come in timestamp order, each with its own message_id."""
    _, notifications = small
    stamps = [parse_datetime(n["timestamp"]) for n in notifications]
    assert stamps == sorted(stamps)
    assert len({n["message_id"] for n in notifications}) == len(notifications)
    assert all(len(n["timestamp"]) == len("2015-02-01 00:00:00.000000") for n in notifications)


def test_one_end_of_day_exists_per_instance_day(small):
    """Every instance that exists during a day gets exactly one midnight-to-midnight .exists for it."""
    workload, notifications = small
    created, deleted, audits = {}, {}, Counter()
    for n in notifications:
        if not n["event_type"].startswith("compute.instance."):
            continue
        payload = n["payload"]
        instance = payload["instance_id"]
        created[instance] = parse_datetime(payload["created_at"])
        if n["event_type"] == "compute.instance.delete.end":
            deleted[instance] = parse_datetime(payload["deleted_at"])
        if n["event_type"] == "compute.instance.exists":
            day = end_of_day_day(payload)
            if day is not None:
                audits[(instance, day)] += 1
                assert parse_datetime(n["timestamp"]) - (day + timedelta(days=1)) <= timedelta(hours=2)
                assert payload["deleted_at"] == ("" if instance not in deleted
                                                 or deleted[instance] >= day + timedelta(days=1)
                                                 else payload["deleted_at"])
    expected = set()
    for instance, created_at in created.items():
        for index in range(SMALL.days):
            day = SMALL.start + timedelta(days=index)
            if created_at < day + timedelta(days=1) and deleted.get(instance, day) >= day:
                expected.add((instance, day))
    assert set(audits) == expected
    assert set(audits.values()) == {1}
    assert len(deleted) > 0 and len(created) > round(SMALL.instances * 0.5)  # churn happened
    assert {(i, d.date()) for i, d in audits} == workload.truth.exists


def test_deleted_instance_gets_final_exists(small):
    """An instance deleted during a day gets that day's .exists, with deleted_at set and state deleted."""
    _, notifications = small
    deleted = {n["payload"]["instance_id"]: n["payload"]["deleted_at"] for n in notifications
               if n["event_type"] == "compute.instance.delete.end"}
    finals = {n["payload"]["instance_id"]: n["payload"] for n in notifications
              if n["event_type"] == "compute.instance.exists"
              and n["payload"]["instance_id"] in deleted and n["payload"]["deleted_at"]}
    assert set(finals) == set(deleted)
    for instance, payload in finals.items():
        assert payload["deleted_at"] == deleted[instance]
        assert payload["state"] == "deleted"
        assert end_of_day_day(payload) is not None


def test_every_notification_distills(small):
    """The example event definitions turn every notification into an event, dropping no trait."""
    _, notifications = small
    path = ROOT / "etc" / "event_definitions.yaml"
    data, _ = parse_yaml(path.read_text(), str(path))
    plugins, _ = available_plugins()
    distiller = Distiller(load_definitions(data, str(path), plugins))
    for notification in notifications:
        event = distiller.distill(notification)
        assert event is not None, notification["event_type"]
        if notification["event_type"].startswith("compute.instance."):
            assert event["instance_id"] == notification["payload"]["instance_id"]
            assert event["host"] == notification["publisher_id"].split(".", 1)[1]
    assert not distiller.stats.trait_warnings


def test_realistic_sizes_and_shape(small):
    """Payloads look like the real samples: 1.5-4 KB of JSON with the usual nova keys."""
    _, notifications = small
    sizes = [len(orjson.dumps(n)) for n in notifications]
    assert 1500 <= sum(sizes) / len(sizes) <= 4000
    exists = next(n for n in notifications if n["event_type"] == "compute.instance.exists")
    assert exists["publisher_id"].startswith("compute.host-")
    assert {"_context_request_id", "_context_user_id", "_unique_id", "priority",
            "message_id"} <= exists.keys()
    assert {"tenant_id", "user_id", "instance_id", "display_name", "instance_type",
            "instance_type_id", "memory_mb", "disk_gb", "root_gb", "ephemeral_gb", "vcpus",
            "state", "state_description", "launched_at", "deleted_at", "terminated_at",
            "created_at", "image_meta", "host", "node", "architecture", "os_type", "bandwidth",
            "metadata", "audit_period_beginning", "audit_period_ending"} <= exists["payload"].keys()
    assert "org.openstack__1__os_distro" in exists["payload"]["image_meta"]
    kinds = Counter(n["event_type"] for n in notifications)
    for operation in ("create.end", "resize.prep.start", "finish_resize.end", "rebuild.end",
                      "power_off.end", "delete.end", "update"):
        assert kinds[f"compute.instance.{operation}"] > 0, operation


def test_truth_counts_match_notifications(small):
    """truth counts each type and each instance-day stream as the notifications do."""
    workload, notifications = small
    truth = workload.truth
    assert truth.notifications == len(notifications)
    assert truth.by_type == Counter(n["event_type"] for n in notifications)
    streams = Counter()
    for n in notifications:
        if n["event_type"].startswith("compute.instance."):
            payload = n["payload"]
            day = (parse_datetime(payload["audit_period_beginning"])
                   if n["event_type"] == "compute.instance.exists"
                   else parse_datetime(n["timestamp"]))
            streams[(payload["instance_id"], day.date())] += 1
    assert truth.events == streams
    assert truth.instance_days == len(streams)


def test_broken_fraction_is_recorded():
    """broken_fraction breaks that share of instances, each recorded with what was sent."""
    spec = WorkloadSpec(instances=150, days=2, broken_fraction=0.1)
    workload = Workload(spec)
    notifications = list(workload.notifications())
    truth = workload.truth
    # Exact up to rounding, less a launched_at break deferred past the last day
    # (an instance born then would have broken on its first full day).
    assert truth.instances * 0.1 - 2 <= len(truth.broken) <= truth.instances * 0.1 + 1
    assert {b.kind for b in truth.broken.values()} == set(BROKEN_KINDS)
    audits = {}
    launches = {}
    for n in notifications:
        payload = n["payload"]
        if n["event_type"] in ("compute.instance.create.end", "compute.instance.rebuild.end",
                               "compute.instance.finish_resize.end"):
            launches.setdefault(payload["instance_id"], []).append(
                (parse_datetime(n["timestamp"]), payload["launched_at"]))
        if n["event_type"] == "compute.instance.exists" and end_of_day_day(payload):
            audits[(payload["instance_id"], end_of_day_day(payload).date())] = payload
    for instance, broken in truth.broken.items():
        sent = audits.get((instance, broken.day))
        if broken.kind == "missing_exists":
            assert sent is None
        elif broken.kind == "deleted_at_while_active":
            assert sent["state"] == "active" and sent["deleted_at"] == broken.sent["deleted_at"] != ""
        else:
            day_end = datetime.combine(broken.day, time()) + timedelta(days=1)
            last_launch = [launched for moment, launched in launches[instance] if moment < day_end][-1]
            assert sent["launched_at"] == broken.sent["launched_at"]
            assert broken.expected["launched_at"] == last_launch != sent["launched_at"]
    # The others are consistent: launched_at is that of the last launch event before midnight.
    for (instance, day), payload in audits.items():
        day_end = datetime.combine(day, time()) + timedelta(days=1)
        before = [launched for moment, launched in launches.get(instance, ()) if moment < day_end]
        if instance not in truth.broken and before:
            assert payload["launched_at"] == before[-1]
