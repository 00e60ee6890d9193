"""What time expressions evaluate to: instants, ranges, pinned ranges, and durations.

The result classes are immutable and hashable. They use ``__slots__`` and are
built by the evaluator through the ``new_*`` factories below, which skip the
validation the public constructors do: an expression is evaluated hundreds of
thousands of times a second, and the evaluator already guarantees the
invariants.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from winchester.errors import TimexTypeError
from winchester.timex._calendar import RANGE_UNITS, as_naive_utc

_new_object = object.__new__


class _Frozen:
    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")


def _membership_operand(value: object) -> datetime:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value
    if isinstance(value, Timestamp):
        return value.timestamp
    try:
        return as_naive_utc(value, "operand of 'in'")
    except TimexTypeError:
        raise TimexTypeError(
            f"'in' needs a datetime or Timestamp on the left, not {type(value).__name__}"
        ) from None


class Timestamp(_Frozen):
    """A single instant (naive UTC); ``begin`` and ``end`` are the instant itself."""

    __slots__ = ("timestamp",)
    timestamp: datetime

    def __init__(self, timestamp: datetime):
        if not isinstance(timestamp, datetime):
            raise TypeError(f"Timestamp needs a datetime, not {type(timestamp).__name__}")
        _set_timestamp(self, timestamp)

    @property
    def begin(self) -> datetime:
        return self.timestamp

    @property
    def end(self) -> datetime:
        return self.timestamp

    def __contains__(self, value: object) -> bool:
        """Only the instant itself is "in" a timestamp."""
        return _membership_operand(value) == self.timestamp

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Timestamp):
            return self.timestamp == other.timestamp
        return NotImplemented

    def __hash__(self) -> int:
        return hash((Timestamp, self.timestamp))

    def __repr__(self) -> str:
        return f"Timestamp({self.timestamp!r})"

    def __str__(self) -> str:
        return self.timestamp.isoformat()

    def __reduce__(self) -> tuple[Any, ...]:
        return (Timestamp, (self.timestamp,))


class TimeRange(_Frozen):
    """The half-open interval ``[begin, end)``: begin is inside, end is not.

    Two ranges are equal when they cover the same span, whatever produced
    them: a pinned range equals a plain one with the same bounds, so ranges
    can serve as grouping keys.
    """

    __slots__ = ("begin", "end")
    begin: datetime
    end: datetime

    def __init__(self, begin: datetime, end: datetime):
        if not (isinstance(begin, datetime) and isinstance(end, datetime)):
            raise TypeError("TimeRange needs two datetimes")
        if end < begin:
            raise ValueError(
                f"TimeRange ends ({end.isoformat()}) before it begins ({begin.isoformat()})"
            )
        _set_begin(self, begin)
        _set_end(self, end)

    @property
    def timestamp(self) -> datetime:
        return self.begin

    def __contains__(self, value: object) -> bool:
        return self.begin <= _membership_operand(value) < self.end

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TimeRange):
            return self.begin == other.begin and self.end == other.end
        return NotImplemented

    def __hash__(self) -> int:
        return hash((TimeRange, self.begin, self.end))

    def __repr__(self) -> str:
        return f"TimeRange(begin={self.begin!r}, end={self.end!r})"

    def __str__(self) -> str:
        return f"[{self.begin.isoformat()}, {self.end.isoformat()})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (TimeRange, (self.begin, self.end))


class PinnedTimeRange(TimeRange):
    """One whole ``unit`` (hour, day, month or year) that contains ``timestamp``.

    ``timestamp`` is the pin: the instant the range was built around, which
    stays inside the range through every shift of it.
    """

    __slots__ = ("timestamp", "unit")
    unit: str
    timestamp: datetime

    def __init__(self, begin: datetime, end: datetime, unit: str, timestamp: datetime):
        super().__init__(begin, end)
        if unit not in RANGE_UNITS:
            raise ValueError(f"unit must be one of {', '.join(RANGE_UNITS)}, not {unit!r}")
        if not isinstance(timestamp, datetime):
            raise TypeError("PinnedTimeRange needs a datetime timestamp")
        if not begin <= timestamp < end:
            raise ValueError("a PinnedTimeRange must contain its timestamp")
        _set_unit(self, unit)
        _set_pin(self, timestamp)

    def __repr__(self) -> str:
        return (
            f"PinnedTimeRange(begin={self.begin!r}, end={self.end!r}, "
            f"unit={self.unit!r}, timestamp={self.timestamp!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (PinnedTimeRange, (self.begin, self.end, self.unit, self.timestamp))


_set_timestamp = Timestamp.__dict__["timestamp"].__set__
_set_begin = TimeRange.__dict__["begin"].__set__
_set_end = TimeRange.__dict__["end"].__set__
_set_unit = PinnedTimeRange.__dict__["unit"].__set__
_set_pin = PinnedTimeRange.__dict__["timestamp"].__set__


def new_timestamp(moment: datetime) -> Timestamp:
    value = _new_object(Timestamp)
    _set_timestamp(value, moment)
    return value


def new_time_range(begin: datetime, end: datetime) -> TimeRange:
    value = _new_object(TimeRange)
    _set_begin(value, begin)
    _set_end(value, end)
    return value


def new_pinned_range(begin: datetime, end: datetime, unit: str, pin: datetime) -> PinnedTimeRange:
    value = _new_object(PinnedTimeRange)
    _set_begin(value, begin)
    _set_end(value, end)
    _set_unit(value, unit)
    _set_pin(value, pin)
    return value


COMPONENT_SYMBOLS = ("y", "mo", "d", "h", "m", "s", "us")


@dataclass(frozen=True, slots=True)
class Duration:
    """A length written as components: ``1y 2mo 3d 4h 5m 6s 7us``.

    Years and months are calendar amounts (their length depends on where they
    are applied); days and smaller are exact.
    """

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0
    minutes: int = 0
    seconds: int = 0
    microseconds: int = 0

    def __post_init__(self) -> None:
        for value in self.components:
            if type(value) is not int:
                raise TypeError(f"Duration components must be int, not {type(value).__name__}")
            if value < 0:
                raise ValueError("Duration components must not be negative")

    @classmethod
    def parse(cls, text: str) -> Duration:
        """Parse a duration on its own, such as ``"6h 30m"``; every number needs a unit."""
        from winchester.timex._parser import parse_duration

        return parse_duration(text)

    @property
    def components(self) -> tuple[int, int, int, int, int, int, int]:
        """(years, months, days, hours, minutes, seconds, microseconds)."""
        return (
            self.years,
            self.months,
            self.days,
            self.hours,
            self.minutes,
            self.seconds,
            self.microseconds,
        )

    @property
    def calendar_months(self) -> int:
        return self.years * 12 + self.months

    @property
    def fixed_delta(self) -> timedelta:
        """The days-and-smaller part; raises OverflowError beyond timedelta's range."""
        return timedelta(
            days=self.days,
            hours=self.hours,
            minutes=self.minutes,
            seconds=self.seconds,
            microseconds=self.microseconds,
        )

    def __str__(self) -> str:
        parts = [
            f"{value}{symbol}" for value, symbol in zip(self.components, COMPONENT_SYMBOLS) if value
        ]
        return " ".join(parts) or "0s"
