"""Query parameters as StackTach's Quincy v1 spells them, parsed strictly.

Every problem is a :class:`BadParameter` naming the parameter (answered
400), never an exception deeper down.

* Datetimes: ISO 8601 (``2015-02-01T00:00:00``, a space instead of ``T``,
  ``Z`` or an offset, a date alone); naive means UTC.
* Any filter given blank (``from_datetime=``, ``state=``) is no filter, as
  if it were absent.
* ``traits`` / ``distinguishing_traits``: ``name:value`` pairs separated by
  ``;`` (``,`` is accepted when there is no ``;``, as klugman sends them).
  A value is text unless it starts with a type: ``int:``, ``float:``,
  ``datetime:`` or ``string:`` (``memory_mb:int:2048``,
  ``launched_at:datetime:2015-02-01T10:00:00``, ``host:string:int:7`` for
  the text ``int:7``).
* ``mark``: the ``_mark`` of the last row seen, a hexadecimal id; ``+``
  before it (or alone) pages oldest first (written as is in a URL, where it
  decodes to a space, or as ``%2B``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from winchester.events import IDENTIFIER_MAX_LENGTH, to_naive_utc
from winchester.store import TraitFilter

DEFAULT_LIMIT = 200
MAX_LIMIT = 10_000
_TYPES = ("string", "int", "float", "datetime")
_INT64 = 2**63


class BadParameter(ValueError):
    def __init__(self, parameter: str, message: str):
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


def parse_datetime(parameter: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        return to_naive_utc(datetime.fromisoformat(value))
    except (ValueError, OverflowError):
        raise BadParameter(parameter, f"{text!r} is not an ISO 8601 datetime "
                                      "(e.g. 2015-02-01T00:00:00 or 2015-02-01 00:00:00Z)") from None


def given(text: str | None) -> str | None:
    """A name filter (event_name, trigger_name): None when absent or blank."""
    return text if text is not None and text.strip() else None


def parse_bound(parameter: str, text: str | None) -> datetime | None:
    """A time bound of a query: blank, like absent, is no bound (as for the other filters)."""
    if text is None or not text.strip():
        return None
    return parse_datetime(parameter, text)


def parse_traits(parameter: str, text: str | None) -> tuple[TraitFilter, ...]:
    if text is None or not text.strip():
        return ()
    separator = ";" if ";" in text or "," not in text else ","
    filters = []
    for pair in text.split(separator):
        if not pair.strip():
            continue
        name, colon, value = pair.partition(":")
        name = name.strip()
        if not colon or not name:
            raise BadParameter(parameter, f"{pair.strip()!r} is not name:value")
        if len(name) > IDENTIFIER_MAX_LENGTH or "\x00" in name:
            raise BadParameter(parameter, f"trait name {name[:40]!r}... is not a trait name")
        filters.append(TraitFilter(name, _typed_value(parameter, name, value.strip())))
    return tuple(filters)


def _typed_value(parameter: str, name: str, text: str):
    kind, colon, rest = text.partition(":")
    if not colon or kind not in _TYPES:
        kind, rest = "string", text
    if "\x00" in rest:
        raise BadParameter(parameter, f"{name}: text must not contain NUL")
    if kind == "string":
        return rest
    if kind == "int":
        try:
            number = int(rest)
        except ValueError:
            raise BadParameter(parameter, f"{name}: {rest!r} is not an int") from None
        if not -_INT64 <= number < _INT64:
            raise BadParameter(parameter, f"{name}: {number} is outside the 64-bit range")
        return number
    if kind == "float":
        try:
            number = float(rest)
        except ValueError:
            raise BadParameter(parameter, f"{name}: {rest!r} is not a float") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise BadParameter(parameter, f"{name}: {rest!r} is not a finite float")
        return number
    return parse_datetime(f"{parameter} ({name})", rest)


@dataclass(frozen=True)
class Mark:
    id: int | None
    ascending: bool


def parse_mark(text: str | None) -> Mark:
    if text is None:
        return Mark(None, False)
    # A '+' written unencoded in a query string arrives as a space ("mark=+3", "mark=+"):
    # a mark never starts with one, so one space before it (and nothing else blank) is
    # the '+' it was.
    if text[:1] == " " and text[1:] == text.strip():
        text = "+" + text[1:]
    if not text.strip():
        return Mark(None, False)
    value = text.strip()
    ascending = value.startswith("+")
    if value[0] in "+-":
        value = value[1:]
    if not value:
        return Mark(None, ascending)
    try:
        number = int(value, 16)
    except ValueError:
        raise BadParameter("mark", f"{text!r} is not a mark (the hexadecimal _mark of a row, "
                                   "with + before it to page oldest first)") from None
    if not 0 <= number < _INT64:
        raise BadParameter("mark", f"{text!r} is out of range")
    return Mark(number, ascending)


def mark_of(row_id: int, ascending: bool) -> str:
    return f"+{row_id:x}" if ascending else f"{row_id:x}"


def parse_limit(text: str | None) -> int:
    if text is None or not text.strip():
        return DEFAULT_LIMIT
    try:
        limit = int(text)
    except ValueError:
        raise BadParameter("limit", f"{text!r} is not a whole number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadParameter("limit", f"must be between 1 and {MAX_LIMIT}, not {limit}")
    return limit


def parse_flag(parameter: str, text: str | None) -> bool:
    if text is None:
        return False
    value = text.strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise BadParameter(parameter, f"{text!r} is not true or false")
