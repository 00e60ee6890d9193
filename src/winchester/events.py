"""The event model: a flat mapping of typed traits.

An event is a plain ``dict`` so that handlers written for the original
Winchester keep working. Three keys are required: ``message_id`` (str),
``event_type`` (str) and ``timestamp`` (datetime). Every other key is a
*trait* whose value is one of:

=========  ==========================================================
``str``    text; must not contain NUL (PostgreSQL cannot store it)
``int``    a signed 64-bit integer (the SQL ``BIGINT`` range)
``float``  a finite float (NaN and infinities compare unequal to
           themselves and would make stream matching unpredictable)
datetime   stored as naive UTC: aware values are *converted* to UTC,
           naive values are taken to be UTC already
=========  ==========================================================

``bool`` is not a trait type. ``True``/``False`` are stored as the ints
``1``/``0`` — a trait criterion ``{int: 1}`` then matches ``True`` — because
every SQL store can index and compare an integer the same way, whereas
booleans differ between SQLite and PostgreSQL. ``None`` means "no such
trait": the key is dropped.

JSON keeps every type: ``int`` and ``float`` already round-trip through JSON
(orjson writes ``3.0`` for a float), and a datetime is written as
``{"__type__": "datetime", "datetime": "2014-08-01T01:00:00.123456"}``, so a
string that merely looks like a date stays a string.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import orjson

from winchester.errors import EventError

REQUIRED_KEYS = ("message_id", "event_type", "timestamp")
TraitValue = str | int | float | datetime
Event = dict[str, Any]

# message_id and event_type are indexed columns of this width on every store.
IDENTIFIER_MAX_LENGTH = 255
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
DATETIME_MARKER = "__type__"


def to_naive_utc(value: datetime) -> datetime:
    """Return ``value`` as naive UTC, converting (not stripping) any offset."""
    if value.tzinfo is None:
        return value
    offset = value.utcoffset()
    if offset is None:
        return value.replace(tzinfo=None)
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def normalize_trait(name: str, value: Any) -> TraitValue | None:
    """Check one trait value and bring it to its canonical form.

    Returns ``None`` for ``None`` (the caller drops the trait); raises
    :class:`EventError` naming the trait for anything unsupported.
    """
    # Order matters: bool is a subclass of int, datetime is checked before str.
    value_type = type(value)
    if value_type is str:
        if "\x00" in value:
            raise EventError(name, "text must not contain NUL characters")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                # A lone surrogate (from a badly decoded source) cannot be stored as text.
                raise EventError(name, "text is not valid Unicode (it holds a lone surrogate)") from None
        return value
    if value_type is int:
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise EventError(name, f"integer {value} is outside the signed 64-bit range")
        return value
    if value_type is float:
        if not math.isfinite(value):
            raise EventError(name, f"float {value} is not finite")
        return value
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, datetime):
        return to_naive_utc(value)
    # Subclasses (IntEnum, StrEnum, numpy-free float subclasses) become the base type.
    if isinstance(value, str):
        return normalize_trait(name, str.__str__(value))
    if isinstance(value, int):
        return normalize_trait(name, int(value))
    if isinstance(value, float):
        return normalize_trait(name, float(value))
    if isinstance(value, (Mapping, list, tuple, set)):
        raise EventError(name, f"nested {value_type.__name__} values are not allowed; events are flat")
    raise EventError(name, f"unsupported trait type {value_type.__name__}")


def make_event(mapping: Mapping[str, Any]) -> Event:
    """Validate ``mapping`` and return a new, normalised event dict.

    Raises :class:`EventError` saying which key is wrong and why.
    """
    if not isinstance(mapping, Mapping):
        raise EventError(None, f"an event must be a mapping, not {type(mapping).__name__}")
    for key in REQUIRED_KEYS:
        if key not in mapping or mapping[key] is None:
            raise EventError(key, "is required")
    event: Event = {}
    for key, value in mapping.items():
        if type(key) is not str:
            raise EventError(repr(key), "trait names must be strings")
        if not key:
            raise EventError(key, "trait names must not be empty")
        normalized = normalize_trait(key, value)
        if normalized is not None:
            event[key] = normalized
    for key in ("message_id", "event_type"):
        if type(event[key]) is not str or not event[key]:
            raise EventError(key, f"must be a non-empty string, not {mapping[key]!r}")
        if len(event[key]) > IDENTIFIER_MAX_LENGTH:
            raise EventError(key, f"is {len(event[key])} characters long; at most "
                                  f"{IDENTIFIER_MAX_LENGTH} are allowed")
    if type(event["timestamp"]) is not datetime:
        raise EventError("timestamp", f"must be a datetime, not {type(mapping['timestamp']).__name__}")
    return event


def encode_value(value: TraitValue) -> Any:
    """A trait value in its JSON form (datetimes carry a type marker)."""
    if type(value) is datetime:
        return {DATETIME_MARKER: "datetime", "datetime": value.isoformat(timespec="microseconds")}
    return value


def decode_value(name: str, value: Any) -> TraitValue | None:
    """The inverse of :func:`encode_value`; raises :class:`EventError` on anything else."""
    if isinstance(value, dict):
        if value.get(DATETIME_MARKER) == "datetime" and isinstance(value.get("datetime"), str):
            try:
                return to_naive_utc(datetime.fromisoformat(value["datetime"]))
            except ValueError as exc:
                raise EventError(name, f"bad datetime {value['datetime']!r}: {exc}") from None
        raise EventError(name, "nested objects are not allowed unless they are a typed datetime")
    return value


def event_to_jsonable(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event as a JSON-ready dict, every datetime marked with its type."""
    return {key: encode_value(value) for key, value in event.items()}


def dumps_event(event: Mapping[str, Any]) -> bytes:
    """Serialise an event to JSON bytes, keeping every trait's type."""
    return orjson.dumps(event_to_jsonable(event))


def event_from_jsonable(data: Any) -> Event:
    """Rebuild and validate an event from its JSON form.

    For convenience a plain ISO 8601 string is accepted for ``timestamp``
    (it can only be a datetime); other strings stay strings.
    """
    if not isinstance(data, dict):
        raise EventError(None, f"an event must be a JSON object, not {type(data).__name__}")
    decoded = {key: decode_value(key, value) for key, value in data.items()}
    timestamp = decoded.get("timestamp")
    if isinstance(timestamp, str):
        try:
            decoded["timestamp"] = datetime.fromisoformat(timestamp)
        except ValueError as exc:
            raise EventError("timestamp", f"bad datetime {timestamp!r}: {exc}") from None
    return make_event(decoded)


def loads_event(raw: bytes | str) -> Event:
    """Parse JSON produced by :func:`dumps_event` back into an event."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventError(None, f"not valid JSON: {exc}") from None
    return event_from_jsonable(data)
