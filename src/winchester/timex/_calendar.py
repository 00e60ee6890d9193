"""Calendar arithmetic on naive UTC datetimes, shared by the compiler and the values.

Everything here works on naive datetimes that are taken to be UTC, so a day
is always exactly 24 hours and only months and years need calendar rules.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from winchester.errors import TimexEvaluationError, TimexTypeError

MIN_YEAR = 1
MAX_YEAR = 9999
RANGE_UNITS = ("year", "month", "day", "hour")

ONE_HOUR = timedelta(hours=1)
ONE_DAY = timedelta(days=1)

_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def is_leap_year(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def days_in_month(year: int, month: int) -> int:
    if month == 2 and is_leap_year(year):
        return 29
    return _DAYS_IN_MONTH[month - 1]


def add_months(moment: datetime, months: int) -> datetime:
    """Move by calendar months, clamping the day to the target month's length."""
    index = moment.year * 12 + moment.month - 1 + months
    year, month_index = divmod(index, 12)
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise TimexEvaluationError(
            f"moving {moment.isoformat()} by {months} months leaves years 1-9999"
        )
    month = month_index + 1
    day = moment.day
    if day > 28:
        day = min(day, days_in_month(year, month))
    # The constructor, not .replace(): keyword-argument replace is several times slower.
    return datetime(year, month, day, moment.hour, moment.minute, moment.second, moment.microsecond)


def shifter(months: int, delta: timedelta) -> Callable[[datetime], datetime] | None:
    """A function adding ``months`` (calendar, first) then ``delta``; None when it is the identity."""
    if months:
        if delta:

            def shift_both(moment: datetime) -> datetime:
                return add_months(moment, months) + delta

            return shift_both

        def shift_months(moment: datetime) -> datetime:
            return add_months(moment, months)

        return shift_months
    if delta:

        def shift_delta(moment: datetime) -> datetime:
            return moment + delta

        return shift_delta
    return None


def replacer(fields: dict[str, int]) -> Callable[[datetime], datetime] | None:
    """A function setting the given datetime fields, clamping the day to its month.

    Clamping applies whether the day is kept or set, so ``@ 2mo`` on 31 January
    lands on the last day of February rather than failing.
    """
    if not fields:
        return None
    year = fields.get("year")
    month = fields.get("month")
    day = fields.get("day")
    hour = fields.get("hour")
    minute = fields.get("minute")
    second = fields.get("second")
    microsecond = fields.get("microsecond")

    def replace(moment: datetime) -> datetime:
        new_year = moment.year if year is None else year
        new_month = moment.month if month is None else month
        new_day = moment.day if day is None else day
        if new_day > 28:
            new_day = min(new_day, days_in_month(new_year, new_month))
        return datetime(
            new_year,
            new_month,
            new_day,
            moment.hour if hour is None else hour,
            moment.minute if minute is None else minute,
            moment.second if second is None else second,
            moment.microsecond if microsecond is None else microsecond,
        )

    return replace


def _start_of_hour(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, moment.day, moment.hour)


def _start_of_day(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, moment.day)


def _start_of_month(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, 1)


def _start_of_year(moment: datetime) -> datetime:
    return datetime(moment.year, 1, 1)


def _hour_after(begin: datetime) -> datetime:
    return begin + ONE_HOUR


def _day_after(begin: datetime) -> datetime:
    return begin + ONE_DAY


def _month_after(begin: datetime) -> datetime:
    return add_months(begin, 1)


def _year_after(begin: datetime) -> datetime:
    return add_months(begin, 12)


def _exact_repinner(unit_length: timedelta) -> Callable[[datetime, datetime], datetime]:
    def repin(begin: datetime, pin: datetime) -> datetime:
        return begin + ((pin - begin) // unit_length) * unit_length

    return repin


def _calendar_repinner(unit_months: int) -> Callable[[datetime, datetime], datetime]:
    def repin(begin: datetime, pin: datetime) -> datetime:
        # Step from the original begin (not from the previous step) so that a
        # begin on the 31st comes back to the 31st after passing through February.
        months_apart = (pin.year - begin.year) * 12 + pin.month - begin.month
        steps = months_apart - months_apart % unit_months
        candidate = add_months(begin, steps)
        while candidate > pin:
            steps -= unit_months
            candidate = add_months(begin, steps)
        while True:
            window_end = add_months(candidate, unit_months)
            if pin < window_end:
                return candidate
            steps += unit_months
            following = add_months(begin, steps)
            if following > pin:
                # Clamping left a gap between this window's end and the next
                # anchored begin; the pin is in that gap, so start at the end.
                return window_end
            candidate = following

    return repin


UNIT_START: dict[str, Callable[[datetime], datetime]] = {
    "hour": _start_of_hour,
    "day": _start_of_day,
    "month": _start_of_month,
    "year": _start_of_year,
}
UNIT_END: dict[str, Callable[[datetime], datetime]] = {
    "hour": _hour_after,
    "day": _day_after,
    "month": _month_after,
    "year": _year_after,
}
# repin(begin, pin): the begin moved by whole units so that begin <= pin < begin + 1 unit.
UNIT_REPIN: dict[str, Callable[[datetime, datetime], datetime]] = {
    "hour": _exact_repinner(ONE_HOUR),
    "day": _exact_repinner(ONE_DAY),
    "month": _calendar_repinner(1),
    "year": _calendar_repinner(12),
}


def as_naive_utc(value: object, name: str) -> datetime:
    """A plain naive UTC datetime: aware values are converted, naive ones taken as UTC.

    Subclasses are rebuilt as plain datetimes so arithmetic behaves the same
    whatever library produced the value.
    """
    if not isinstance(value, datetime):
        raise TimexTypeError(f"${name} must be a datetime, not {type(value).__name__}")
    offset = value.utcoffset()
    if offset is not None:
        value = value - offset
    return datetime(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
    )
