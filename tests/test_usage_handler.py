"""The usage auditor: the U0-U8 checks, the verdict events and their ids."""

from __future__ import annotations

import itertools
import logging
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from winchester.events import make_event
from winchester.pipelines._handler import generated_message_id
from winchester.pipelines._usage import (
    FAILED,
    USAGE_CODES,
    VERIFIED,
    WARNINGS,
    UsageHandler,
)

STREAM = 42
DAY = datetime(2014, 8, 1)
NEXT_DAY = DAY + timedelta(days=1)
LAUNCHED = datetime(2014, 7, 1, 12, 0, 0)  # long before the audited day
DELETED = DAY + timedelta(hours=15)

INSTANCE = {
    "instance_id": "inst-1",
    "tenant_id": "tenant-1",
    "instance_flavor_id": 2,
    "os_architecture": "x86_64",
    "os_version": "12.04",
    "os_distro": "ubuntu",
    "launched_at": LAUNCHED,
}

_ids = itertools.count()


def event(event_type: str, at: datetime, **traits: Any) -> dict[str, Any]:
    """An instance event; a trait given as None is left out."""
    built = {"message_id": f"msg-{next(_ids)}", "event_type": event_type, "timestamp": at,
             **INSTANCE, **traits}
    return {key: value for key, value in built.items() if value is not None}


def exists(begin: datetime = DAY, end: datetime = NEXT_DAY, **traits: Any) -> dict[str, Any]:
    """A .exists for the period [begin, end), sent just after it ends; active unless told."""
    traits.setdefault("state", "active")
    return event("compute.instance.exists", end + timedelta(minutes=5),
                 audit_period_beginning=begin, audit_period_ending=end, **traits)


def midday_exists(**traits: Any) -> dict[str, Any]:
    """A .exists nova sends for an operation, in the middle of the day."""
    return exists(DAY, DAY + timedelta(hours=11), **traits)


def op(event_type: str, hour: int = 10, **traits: Any) -> dict[str, Any]:
    return event(f"compute.instance.{event_type}", DAY + timedelta(hours=hour), **traits)


def delete_end(hour: int = 15, **traits: Any) -> dict[str, Any]:
    traits.setdefault("deleted_at", DELETED)
    return op("delete.end", hour, state="deleted", **traits)


def run(events: list[dict[str, Any]], stream_id: Any = STREAM,
        env: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    env = {"stream_id": stream_id} if env is None else env
    return UsageHandler().handle_events(events, env)


def generated(events: list[dict[str, Any]], **kwargs: Any) -> list[dict[str, Any]]:
    return run(events, **kwargs)[len(events):]


def verdicts(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in generated(events) if e["event_type"] in (VERIFIED, FAILED)]


def the_verdict(events: list[dict[str, Any]]) -> dict[str, Any]:
    (verdict,) = verdicts(events)
    return verdict


def warnings_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in generated(events) if e["event_type"] == WARNINGS]


# --- one block: every code, and the verified cases --------------------------------------

CASES = [
    # Verified.
    pytest.param(lambda: [exists()], "", id="verified-end-of-day-nothing-happened"),
    pytest.param(lambda: [op("rebuild.end"), midday_exists()], "",
                 id="verified-rebuild-agrees"),
    pytest.param(lambda: [op("create.end", launched_at=DAY + timedelta(hours=9)),
                          exists(launched_at=DAY + timedelta(hours=9))], "",
                 id="verified-launched-in-period-with-its-events"),
    pytest.param(lambda: [delete_end(), exists(state="deleted", deleted_at=DELETED)], "",
                 id="verified-deleted-with-delete-event"),
    pytest.param(lambda: [exists(state="deleted", deleted_at=DAY - timedelta(days=3))], "",
                 id="verified-deleted-before-the-period"),
    pytest.param(lambda: [exists(state="stopped", launched_at=None)], "",
                 id="verified-no-launched-at-only-matters-when-active"),
    pytest.param(lambda: [exists(deleted_at="")], "",
                 id="verified-empty-deleted-at-is-absent"),
    pytest.param(lambda: [exists(launched_at=NEXT_DAY)], "",
                 id="verified-period-end-is-exclusive-for-launch"),
    pytest.param(lambda: [exists(state="deleted", deleted_at=NEXT_DAY,
                                 launched_at=LAUNCHED)], "",
                 id="verified-period-end-is-exclusive-for-delete"),
    pytest.param(lambda: [op("rebuild.end", launched_at=LAUNCHED.replace(microsecond=654321)),
                          midday_exists(launched_at=LAUNCHED)], "",
                 id="verified-launched-at-compared-to-the-second"),
    pytest.param(lambda: [op("rebuild.end"), midday_exists(launched_at=LAUNCHED.isoformat(" "))],
                 "", id="verified-iso-string-launched-at-is-parsed"),
    pytest.param(lambda: [op("create.end", instance_flavor_id=99), exists()], "",
                 id="verified-create-end-is-not-an-operation-completion"),
    pytest.param(lambda: [op("rebuild.end", os_distro=None), midday_exists(os_distro="rhel")],
                 "", id="verified-field-missing-on-the-event-is-skipped"),
    pytest.param(lambda: [op("rebuild.end", os_version="14.04"), midday_exists(os_version=None)],
                 "", id="verified-field-missing-on-the-exists-is-skipped"),
    pytest.param(lambda: [op("rebuild.end", tenant_id=""), midday_exists()], "",
                 id="verified-empty-string-field-is-skipped"),
    pytest.param(lambda: [op("rebuild.end", hour=8, instance_flavor_id=1),
                          op("finish_resize.end", hour=9, instance_flavor_id=3),
                          midday_exists(instance_flavor_id=3)], "",
                 id="verified-last-operation-completion-is-compared"),
    # U0
    pytest.param(lambda: [op("create.start"), op("create.end")], "U0",
                 id="U0-no-exists-at-all"),
    # U1
    pytest.param(lambda: [exists(launched_at=None)], "U1", id="U1-active-without-launched-at"),
    pytest.param(lambda: [exists(launched_at="")], "U1", id="U1-empty-launched-at"),
    # U2
    pytest.param(lambda: [op("rebuild.end", instance_flavor_id=1), midday_exists()], "U2",
                 id="U2-rebuild-flavor"),
    pytest.param(lambda: [op("finish_resize.end", launched_at=DAY + timedelta(hours=10)),
                          midday_exists()], "U2", id="U2-finish-resize-launched-at"),
    pytest.param(lambda: [op("rescue.end", tenant_id="tenant-2"), midday_exists()], "U2",
                 id="U2-rescue-tenant"),
    pytest.param(lambda: [op("rebuild.end", os_architecture="arm64"), midday_exists()], "U2",
                 id="U2-os-architecture"),
    pytest.param(lambda: [op("rebuild.end", os_version="14.04"), midday_exists()], "U2",
                 id="U2-os-version"),
    pytest.param(lambda: [op("rebuild.end", os_distro="rhel"), midday_exists()], "U2",
                 id="U2-os-distro"),
    pytest.param(lambda: [op("finish_resize.end", hour=8, instance_flavor_id=3),
                          op("rebuild.end", hour=9, instance_flavor_id=1),
                          midday_exists(instance_flavor_id=3)], "U2",
                 id="U2-only-the-last-completion-counts"),
    pytest.param(lambda: [delete_end(deleted_at=DELETED + timedelta(minutes=1)),
                          exists(state="deleted", deleted_at=DELETED)], "U2",
                 id="U2-delete-event-deleted-at"),
    pytest.param(lambda: [delete_end(launched_at=LAUNCHED + timedelta(days=1)),
                          exists(state="deleted", deleted_at=DELETED)], "U2",
                 id="U2-delete-event-launched-at"),
    # U3
    pytest.param(lambda: [exists(deleted_at=DAY - timedelta(days=3))], "U3",
                 id="U3-deleted-at-but-active"),
    # U4
    pytest.param(lambda: [exists(state="deleted", deleted_at=LAUNCHED - timedelta(days=1))],
                 "U4", id="U4-deleted-before-launched"),
    # U5
    pytest.param(lambda: [exists(state="deleted", deleted_at=DELETED)], "U5",
                 id="U5-deleted-in-period-without-delete-event"),
    pytest.param(lambda: [exists(state="deleted", deleted_at=DAY)], "U5",
                 id="U5-period-beginning-is-inclusive"),
    # U6
    pytest.param(lambda: [delete_end(), exists()], "U6", id="U6-delete-event-but-no-deleted-at"),
    # U7
    pytest.param(lambda: [delete_end(hour=14), delete_end(),
                          exists(state="deleted", deleted_at=DELETED)], "U7",
                 id="U7-two-delete-events"),
    # U8
    pytest.param(lambda: [exists(launched_at=DAY + timedelta(hours=9))], "U8",
                 id="U8-launched-in-period-but-alone"),
    pytest.param(lambda: [exists(launched_at=DAY)], "U8", id="U8-period-beginning-is-inclusive"),
]


@pytest.mark.parametrize(("build", "code"), CASES)
def test_single_block_verdict(build, code):
    """Each block gets the verdict of the first failed check (or verified, with code "")."""
    (verdict,) = verdicts(build())
    assert verdict["error_code"] == code, verdict["error"]
    assert verdict["event_type"] == (VERIFIED if code == "" else FAILED)
    assert (verdict["error"] == "") == (code == "")


ORDER_CASES = [
    pytest.param(lambda: [exists(launched_at=None, deleted_at=DELETED)], "U1",
                 id="U1-before-U3"),
    pytest.param(lambda: [exists(launched_at=DAY + timedelta(hours=1), deleted_at=DELETED)],
                 "U8", id="U8-before-U3"),
    pytest.param(lambda: [op("rebuild.end", instance_flavor_id=1), delete_end(hour=10),
                          midday_exists()], "U2", id="U2-operation-before-U6"),
    pytest.param(lambda: [delete_end(hour=14), delete_end(), exists()], "U6",
                 id="U6-before-U7"),
    pytest.param(lambda: [exists(state="stopped", deleted_at=DELETED)], "U3",
                 id="U3-before-U5"),
    pytest.param(lambda: [exists(state="deleted", launched_at=DAY + timedelta(hours=5),
                                 deleted_at=DAY + timedelta(hours=2))], "U4",
                 id="U4-before-U5"),
    pytest.param(lambda: [delete_end(hour=14, deleted_at=DELETED - timedelta(hours=1)),
                          delete_end(), exists(state="deleted", deleted_at=DELETED)], "U7",
                 id="U7-before-delete-U2"),
]


@pytest.mark.parametrize(("build", "code"), ORDER_CASES)
def test_first_failure_wins(build, code):
    """When several checks would fail, the first in the documented order is reported."""
    assert the_verdict(build())["error_code"] == code


def test_every_code_is_documented():
    """USAGE_CODES names exactly U0-U8, each with a one-line meaning."""
    assert list(USAGE_CODES) == [f"U{n}" for n in range(9)]
    assert all(meaning and "\n" not in meaning for meaning in USAGE_CODES.values())


# --- verdict and warning events ---------------------------------------------------------

def test_verified_event_copies_the_exists():
    """A verdict is the .exists's traits plus its verdict, with a derived id and same timestamp."""
    the_exists = exists(bandwidth_in=5)
    verdict = the_verdict([the_exists])
    expected = {key: value for key, value in the_exists.items()
                if key not in ("message_id", "event_type")}
    expected.update(
        message_id=generated_message_id(STREAM, the_exists["message_id"], VERIFIED),
        event_type=VERIFIED,
        original_message_id=the_exists["message_id"],
        error="",
        error_code="",
        stream_id=STREAM,
    )
    assert verdict == expected
    assert make_event(verdict) == verdict


def test_failed_event_carries_code_and_message():
    """A failed verdict names its code and says which field disagreed."""
    the_exists = midday_exists()
    verdict = the_verdict([op("rebuild.end", instance_flavor_id=1), the_exists])
    assert verdict["event_type"] == FAILED
    assert verdict["message_id"] == generated_message_id(STREAM, the_exists["message_id"], FAILED)
    assert verdict["error_code"] == "U2"
    assert "instance_flavor_id" in verdict["error"]
    assert verdict["timestamp"] == the_exists["timestamp"]


def test_midday_exists_without_operation_warns():
    """A non-end-of-day .exists with no operation-completion event is verified with a warning."""
    the_exists = midday_exists()
    out = generated([the_exists])
    assert [e["event_type"] for e in out] == [VERIFIED, WARNINGS]
    warned = out[1]
    assert warned["message_id"] == generated_message_id(STREAM, the_exists["message_id"], WARNINGS)
    assert warned["original_message_id"] == the_exists["message_id"]
    assert warned["timestamp"] == the_exists["timestamp"]
    assert warned["warning_count"] == 1
    assert "not end-of-day" in warned["warnings"]
    assert warned["error_code"] == "" and warned["stream_id"] == STREAM
    assert make_event(warned) == warned


@pytest.mark.parametrize("build", [
    pytest.param(lambda: [exists()], id="end-of-day"),
    pytest.param(lambda: [op("rescue.end"), midday_exists()], id="midday-with-operation"),
])
def test_no_warning_when_expected(build):
    """End-of-day .exists, or a mid-day one with its operation, produce no warnings event."""
    assert warnings_of(build()) == []


def test_failed_block_keeps_its_warnings():
    """Warnings found before the failing check are still emitted, next to the failed verdict."""
    out = generated([midday_exists(deleted_at=DELETED)])
    assert [(e["event_type"], e["error_code"]) for e in out] == [(FAILED, "U3"), (WARNINGS, "U3")]


def test_unreadable_datetime_is_absent_and_warned():
    """A datetime trait that does not parse counts as absent, and the warning says so once."""
    out = generated([exists(launched_at="yesterday")])
    assert [(e["event_type"], e["error_code"]) for e in out] == [(FAILED, "U1"), (WARNINGS, "U1")]
    assert out[1]["warning_count"] == 1
    assert "'yesterday' is not a datetime" in out[1]["warnings"]


# --- streams with several blocks --------------------------------------------------------

def test_two_exists_one_verified_one_failed():
    """Each .exists is judged on its own block: the day's delete does not excuse the next day."""
    day1 = exists()
    day2 = exists(NEXT_DAY, NEXT_DAY + timedelta(days=1), state="deleted",
                  deleted_at=NEXT_DAY + timedelta(hours=3))
    out = generated([day1, day2])
    assert [(e["event_type"], e["original_message_id"], e["error_code"]) for e in out] == [
        (VERIFIED, day1["message_id"], ""),
        (FAILED, day2["message_id"], "U5"),
    ]


def test_warnings_attach_to_their_block():
    """Only the block that produced warnings gets a warnings event, pointing at its .exists."""
    first = midday_exists()
    rebuilt = DAY + timedelta(hours=12)
    second = exists(launched_at=rebuilt)
    out = generated([first, op("rebuild.end", hour=12, launched_at=rebuilt), second])
    assert [(e["event_type"], e["original_message_id"]) for e in out] == [
        (VERIFIED, first["message_id"]),
        (WARNINGS, first["message_id"]),
        (VERIFIED, second["message_id"]),
    ]


def test_events_of_earlier_blocks_do_not_count():
    """U8 looks only at its own block: an event before the previous .exists does not count."""
    day2 = exists(NEXT_DAY, NEXT_DAY + timedelta(days=1),
                  launched_at=NEXT_DAY + timedelta(hours=1))
    out = verdicts([op("update"), exists(), day2])
    assert [v["error_code"] for v in out] == ["", "U8"]


def test_trailing_events_give_u0():
    """Events after the last .exists give one more failed verdict, U0, from the last of them."""
    last = delete_end(hour=30)
    out = generated([exists(), op("delete.start", hour=29), last])
    assert [e["error_code"] for e in out] == ["", "U0"]
    assert out[1] == {
        "message_id": generated_message_id(STREAM, last["message_id"], FAILED),
        "event_type": FAILED,
        "timestamp": last["timestamp"],
        "instance_id": "inst-1",
        "tenant_id": "tenant-1",
        "original_message_id": last["message_id"],
        "stream_id": STREAM,
        "error": out[1]["error"],
        "error_code": "U0",
    }
    assert out[1]["error"]
    assert make_event(out[1]) == out[1]


def test_u0_without_tenant():
    """A U0 verdict leaves out tenant_id when the last event has none."""
    (verdict,) = generated([op("create.end", tenant_id=None)])
    assert "tenant_id" not in verdict
    assert verdict["instance_id"] == "inst-1"


def test_incoming_verdicts_are_ignored():
    """Earlier verdict events are neither lifecycle events (U8) nor trailing events (U0)."""
    old = {"message_id": "old-verdict", "event_type": VERIFIED,
           "timestamp": DAY + timedelta(hours=1), "instance_id": "inst-1"}
    assert the_verdict([old, exists(launched_at=DAY + timedelta(hours=9))])["error_code"] == "U8"
    late = dict(old, message_id="late-warning", event_type=WARNINGS, timestamp=NEXT_DAY)
    assert len(generated([exists(), late])) == 1


def test_empty_stream_produces_nothing():
    """No events: no verdicts, and an empty usage_notifications."""
    env = {"stream_id": STREAM}
    assert run([], env=env) == []
    assert env["usage_notifications"] == []


# --- ids, env and the returned list ------------------------------------------------------

def stream_with_everything() -> list[dict[str, Any]]:
    return [op("create.end"), midday_exists(), delete_end(hour=20),
            exists(state="deleted", deleted_at=DELETED), op("update", hour=30)]


def test_ids_are_deterministic():
    """The same stream gives the same ids every run; another stream id gives other ids."""
    events = stream_with_everything()
    first = [e["message_id"] for e in generated(events)]
    again = [e["message_id"] for e in generated(events)]
    other = [e["message_id"] for e in generated(events, stream_id=STREAM + 1)]
    assert first == again
    assert len(first) == 4 and len(set(first)) == 4
    assert not set(first) & set(other)


def test_env_usage_notifications_filled():
    """Generated events are also appended to env['usage_notifications'], after what was there."""
    events = stream_with_everything()
    env: dict[str, Any] = {"stream_id": STREAM, "usage_notifications": ["earlier"]}
    result = run(events, env=env)
    assert env["usage_notifications"] == ["earlier", *result[len(events):]]


def test_original_events_come_first_and_are_untouched():
    """The result is the input events, unchanged and in order, then the generated ones."""
    events = stream_with_everything()
    snapshot = [dict(e) for e in events]
    result = run(events)
    assert all(a is b for a, b in zip(result, events))
    assert len(result) == len(events) + 4
    assert events == snapshot


def test_string_stream_id():
    """A text stream id is kept as text in the verdict and in the id."""
    the_exists = exists()
    verdict = generated([the_exists], stream_id="s-7")[0]
    assert verdict["stream_id"] == "s-7"
    assert verdict["message_id"] == generated_message_id("s-7", the_exists["message_id"], VERIFIED)


def test_one_log_warning_per_failure(caplog):
    """Each failure logs one warning with the stream id and code; verified blocks log nothing."""
    caplog.set_level(logging.DEBUG, logger="winchester.pipelines.usage")
    run([exists(), exists(launched_at=None), op("update", hour=30)])
    records = [r for r in caplog.records if r.name == "winchester.pipelines.usage"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.WARNING]
    assert "U1" in records[0].getMessage() and str(STREAM) in records[0].getMessage()
    assert "U0" in records[1].getMessage()


def test_handler_contract(caplog):
    """Params (which the original accepted) are ignored with a warning; commit/rollback do nothing."""
    UsageHandler(region="dfw")
    assert "region" in caplog.text
    handler = UsageHandler()
    assert handler.commit() is None
    assert handler.rollback() is None


# --- property ----------------------------------------------------------------------------

LIFECYCLE_TYPES = [
    "compute.instance.create.end", "compute.instance.update", "compute.instance.rebuild.end",
    "compute.instance.finish_resize.end", "compute.instance.rescue.end",
    "compute.instance.delete.end", VERIFIED, WARNINGS,
]
maybe_moment = st.none() | st.just("") | st.sampled_from(
    [LAUNCHED, DAY, DAY + timedelta(hours=3), NEXT_DAY, DAY - timedelta(days=40)])


@st.composite
def streams(draw) -> tuple[list[dict[str, Any]], int, bool]:
    """Blocks of random events, each ended by a random .exists, then random trailing events."""
    events: list[dict[str, Any]] = []
    clock = itertools.count()

    def add(event_type: str, **traits: Any) -> None:
        events.append(event(event_type, DAY + timedelta(minutes=next(clock)), **traits))

    n_blocks = draw(st.integers(0, 4))
    for _ in range(n_blocks):
        for event_type in draw(st.lists(st.sampled_from(LIFECYCLE_TYPES), max_size=4)):
            add(event_type, instance_flavor_id=draw(st.sampled_from([1, 2, None])))
        midday = draw(st.booleans())
        add("compute.instance.exists",
            state=draw(st.sampled_from(["active", "deleted", "stopped", None])),
            launched_at=draw(maybe_moment), deleted_at=draw(maybe_moment),
            audit_period_beginning=DAY,
            audit_period_ending=DAY + (timedelta(hours=11) if midday else timedelta(days=1)))
    trailing = draw(st.lists(st.sampled_from(LIFECYCLE_TYPES), max_size=3))
    for event_type in trailing:
        add(event_type)
    has_trailing = any(not t.startswith("compute.instance.exists.") for t in trailing)
    return events, n_blocks, has_trailing


@given(streams(), st.integers(0, 10))
def test_one_verdict_per_exists_plus_trailing(stream, stream_id):
    """Any stream gets one verdict per .exists, plus one U0 for trailing events; ids are unique."""
    events, n_exists, has_trailing = stream
    out = generated(events, stream_id=stream_id)
    found = [e for e in out if e["event_type"] in (VERIFIED, FAILED)]
    assert len(found) == n_exists + (1 if has_trailing else 0)
    ids = [e["message_id"] for e in out]
    assert len(set(ids)) == len(ids)
    assert not set(ids) & {e["message_id"] for e in events}
    for e in out:
        assert make_event(e) == e
        assert e["error_code"] in ("", *USAGE_CODES)
