"""Trait type conversion and the datetime formats OpenStack emits."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from winchester.events import to_naive_utc

TRAIT_TYPES = ("text", "int", "float", "datetime")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

# What datetime.fromisoformat (3.11) does not take: a space before the offset
# ("2014-08-01 01:00:00.123456 +0000"), "UTC"/"GMT" suffixes, and more than six
# fractional digits.
_LENIENT = re.compile(
    r"""^\s*(?P<date>\d{4}-\d{2}-\d{2})
        (?:[T ](?P<time>\d{2}:\d{2}(?::\d{2})?)(?:[.,](?P<fraction>\d+))?)?
        \s*(?P<zone>Z|UTC|GMT|[+-]\d{2}:?\d{2}|[+-]\d{2})?\s*$""",
    re.VERBOSE | re.IGNORECASE,
)


class ConversionError(ValueError):
    """The value cannot be converted to the trait's type."""


def describe_value(value: Any) -> str:
    """``repr(value)`` for a message, short; an int too long to print is described instead."""
    try:
        text = repr(value)
    except ValueError:  # an int of more than sys.get_int_max_str_digits() digits, maybe inside
        if isinstance(value, int):
            return f"an int of {value.bit_length()} bits"
        return f"a {type(value).__name__} holding an int too long to print"
    return text if len(text) <= 200 else text[:197] + "..."


def parse_datetime(text: str) -> datetime:
    """Parse ISO 8601 and OpenStack's ``2014-08-01 01:00:00.123456`` forms to naive UTC."""
    try:
        return _parse_datetime(text)
    except OverflowError:  # an offset pushing the instant past year 1 or 9999
        raise ConversionError(f"datetime out of range: {text!r}") from None


def _parse_datetime(text: str) -> datetime:
    try:
        return to_naive_utc(datetime.fromisoformat(text))
    except ValueError:
        pass
    match = _LENIENT.match(text)
    if not match:
        raise ConversionError(f"not a recognisable datetime: {text!r}")
    parts = match.groupdict()
    try:
        result = datetime.fromisoformat(f"{parts['date']}T{parts['time'] or '00:00:00'}")
    except ValueError as exc:
        raise ConversionError(f"not a valid datetime: {text!r} ({exc})") from None
    if parts["fraction"]:
        result = result.replace(microsecond=int(parts["fraction"][:6].ljust(6, "0")))
    zone = (parts["zone"] or "").upper()
    if zone and zone not in ("Z", "UTC", "GMT"):
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
        if offset >= timedelta(hours=24):
            raise ConversionError(f"not a valid UTC offset in {text!r}")
        result = to_naive_utc(result.replace(tzinfo=timezone(sign * offset)))
    return result


def is_storable_text(text: str) -> bool:
    """No NUL and no lone surrogate: text every SQL store takes (as the event model requires)."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a decoder that lets them through
        return False
    return True


def to_text(value: Any) -> str:
    if type(value) is str:
        if is_storable_text(value):
            return value
        text = value
    elif isinstance(value, (dict, list)):
        # Containers become compact JSON, which tools can read back, rather
        # than Python's repr.
        try:
            text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        except TypeError as exc:
            # Nested deeper than orjson writes (255 levels; it reads 1024), an
            # int past 64 bits or a key that is not a string (decoded dicts).
            raise ConversionError(f"a {type(value).__name__} that cannot be written as JSON "
                                  f"({exc})") from None
    else:
        try:
            text = str(value)
        except ValueError as exc:  # an int of more than sys.get_int_max_str_digits() digits
            raise ConversionError(f"a {type(value).__name__} that cannot be text ({exc})") from None
    if "\x00" in text:
        raise ConversionError("text contains NUL characters, which no SQL store accepts")
    if not is_storable_text(text):
        raise ConversionError("text holds a lone surrogate (not valid Unicode), which no SQL store "
                              "accepts")
    return text


def to_int(value: Any) -> int:
    if type(value) is int:
        result = value
    elif isinstance(value, bool):
        result = int(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ConversionError(f"{value!r} is not a finite number")
        result = int(value)  # truncates, as StackDistiller and Ceilometer did
    elif isinstance(value, str):
        try:
            result = int(value.strip())
        except ValueError:
            raise ConversionError(f"{value!r} is not an integer") from None
    else:
        raise ConversionError(f"a {type(value).__name__} is not an integer")
    if not _INT64_MIN <= result <= _INT64_MAX:
        raise ConversionError(f"{describe_value(result)} is outside the signed 64-bit range")
    return result


def to_float(value: Any) -> float:
    if isinstance(value, (int, float, str)):
        try:
            result = float(value.strip() if isinstance(value, str) else value)
        except (ValueError, OverflowError):
            raise ConversionError(f"{describe_value(value)} is not a number") from None
        if not math.isfinite(result):
            raise ConversionError(f"{value!r} is not a finite number")
        return result
    raise ConversionError(f"a {type(value).__name__} is not a number")


def to_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return to_naive_utc(value)
    if isinstance(value, str):
        return parse_datetime(value)
    raise ConversionError(f"a {type(value).__name__} is not a datetime")


CONVERTERS = {"text": to_text, "int": to_int, "float": to_float, "datetime": to_datetime}
