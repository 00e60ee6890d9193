"""The event model: validation, normalisation and type-preserving JSON."""

from __future__ import annotations

import enum
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from winchester.errors import EventError, WinchesterError
from winchester.events import dumps_event, event_from_jsonable, loads_event, make_event

BASE = {"message_id": "m-1", "event_type": "compute.instance.create.end",
        "timestamp": datetime(2014, 8, 1, 1, 0)}


def test_valid_event_keeps_its_traits():
    """A flat mapping with the three required keys is an event with its traits unchanged."""
    event = make_event({**BASE, "memory_mb": 512, "host": "h1", "ratio": 0.5,
                        "launched_at": datetime(2014, 8, 1)})
    assert event == {**BASE, "memory_mb": 512, "host": "h1", "ratio": 0.5,
                     "launched_at": datetime(2014, 8, 1)}


@pytest.mark.parametrize("missing", ["message_id", "event_type", "timestamp"])
def test_missing_required_key_is_named(missing):
    """Leaving out a required key raises EventError naming that key."""
    mapping = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(EventError) as info:
        make_event(mapping)
    assert info.value.key == missing
    assert missing in str(info.value) and "required" in str(info.value)


def test_event_error_is_a_winchester_error():
    """Callers can catch every deliberate error through WinchesterError."""
    assert issubclass(EventError, WinchesterError)


def test_aware_datetimes_are_converted_to_utc_not_stripped():
    """An aware datetime becomes the same instant in naive UTC."""
    plus_two = timezone(timedelta(hours=2))
    event = make_event({**BASE, "timestamp": datetime(2014, 8, 1, 3, 0, tzinfo=plus_two),
                        "deleted_at": datetime(2014, 8, 1, 23, 30, tzinfo=timezone(timedelta(hours=-5)))})
    assert event["timestamp"] == datetime(2014, 8, 1, 1, 0)
    assert event["timestamp"].tzinfo is None
    assert event["deleted_at"] == datetime(2014, 8, 2, 4, 30)


def test_bool_is_stored_as_int():
    """Booleans are not a trait type: True/False become 1/0 (documented)."""
    event = make_event({**BASE, "is_admin": True, "disabled": False})
    assert event["is_admin"] == 1 and type(event["is_admin"]) is int
    assert event["disabled"] == 0 and type(event["disabled"]) is int


def test_none_trait_is_dropped():
    """A None value means the trait is absent."""
    assert "deleted_at" not in make_event({**BASE, "deleted_at": None})


def test_enum_subclasses_become_base_types():
    """IntEnum / str-mixin values are stored as plain int / str."""

    class Size(enum.IntEnum):
        SMALL = 1

    class Colour(str, enum.Enum):
        RED = "red"

    event = make_event({**BASE, "size": Size.SMALL, "colour": Colour.RED})
    assert type(event["size"]) is int and event["size"] == 1
    assert type(event["colour"]) is str and event["colour"] == "red"


@pytest.mark.parametrize("value, reason", [
    ({"a": 1}, "nested"),
    ([1, 2], "nested"),
    (b"bytes", "unsupported trait type bytes"),
    (float("nan"), "not finite"),
    (float("inf"), "not finite"),
    (2**63, "64-bit"),
    ("a\x00b", "NUL"),
])
def test_unsupported_trait_values_are_rejected_with_reason(value, reason):
    """Nested, binary, non-finite, oversized and NUL-containing values name the trait and why."""
    with pytest.raises(EventError) as info:
        make_event({**BASE, "payload": value})
    assert info.value.key == "payload"
    assert reason in str(info.value)


@pytest.mark.parametrize("key, value", [
    ("message_id", 42), ("message_id", ""), ("event_type", ["a"]),
    ("timestamp", "2014-08-01T01:00:00"), ("timestamp", 1406854800),
])
def test_required_keys_have_types(key, value):
    """message_id and event_type must be non-empty strings; timestamp a datetime."""
    with pytest.raises(EventError) as info:
        make_event({**BASE, key: value})
    assert info.value.key == key


def test_non_string_trait_name_is_rejected():
    """Trait names must be strings."""
    with pytest.raises(EventError, match="trait names must be strings"):
        make_event({**BASE, 3: "x"})


def test_json_round_trip_keeps_types():
    """Serialised and parsed back, a datetime is a datetime, an int an int, a float a float."""
    event = make_event({**BASE, "count": 3, "ratio": 3.0, "when": datetime(2014, 8, 1, 0, 0, 0, 5),
                        "date_like_text": "2014-08-01T00:00:00"})
    back = loads_event(dumps_event(event))
    assert back == event
    assert {k: type(v) for k, v in back.items()} == {k: type(v) for k, v in event.items()}


def test_json_form_marks_datetimes():
    """The JSON form of a datetime carries a type marker (the documented convention)."""
    raw = dumps_event(make_event(BASE))
    assert b'"timestamp":{"__type__":"datetime","datetime":"2014-08-01T01:00:00.000000"}' in raw


def test_plain_iso_timestamp_is_accepted_when_decoding():
    """An ISO string for timestamp (which can only be a datetime) is accepted on input."""
    event = event_from_jsonable({"message_id": "m", "event_type": "t",
                                 "timestamp": "2014-08-01T03:00:00+02:00"})
    assert event["timestamp"] == datetime(2014, 8, 1, 1, 0)


@pytest.mark.parametrize("raw, message", [
    (b"not json", "not valid JSON"),
    (b"[1,2]", "must be a JSON object"),
    (b'{"message_id":"m","event_type":"t","timestamp":"yesterday"}', "bad datetime"),
    (b'{"message_id":"m","event_type":"t","timestamp":"2014-08-01","x":{"y":1}}', "nested"),
])
def test_bad_json_events_raise_event_error(raw, message):
    """Malformed JSON events raise EventError with the reason, never another exception."""
    with pytest.raises(EventError, match=message):
        loads_event(raw)


trait_values = st.one_of(
    st.text().filter(lambda s: "\x00" not in s),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.datetimes(),
)


@given(st.dictionaries(st.text(min_size=1).filter(
    lambda k: k not in ("message_id", "event_type", "timestamp")), trait_values, max_size=8))
def test_any_valid_event_round_trips_through_json(traits):
    """Every valid event survives JSON serialisation with equal values and identical types."""
    event = make_event({**BASE, **traits})
    back = loads_event(dumps_event(event))
    assert back == event
    assert [type(v) for v in back.values()] == [type(v) for v in event.values()]


@given(st.dictionaries(st.text(), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children), max_leaves=5)))
def test_arbitrary_json_raises_only_event_error(data):
    """Any JSON object either decodes to an event or raises EventError."""
    try:
        event_from_jsonable(data)
    except EventError:
        pass


@pytest.mark.parametrize("key", ["message_id", "event_type"])
def test_identifiers_longer_than_the_store_allows_are_rejected(key):
    """message_id and event_type longer than 255 characters raise EventError naming the key."""
    with pytest.raises(EventError, match="at most 255"):
        make_event({**BASE, key: "x" * 256})
    assert make_event({**BASE, key: "x" * 255})[key] == "x" * 255
