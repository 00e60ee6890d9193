"""Where every component reads "now" from.

Pure code never reads the clock; it is handed a time. Services hold one clock
object and pass its readings down.

* :class:`WallClock` — real UTC time (the default).
* :class:`EventClock` — event time: the newest event timestamp seen so far. It
  never moves backwards, so replaying last week's notifications builds the
  streams they built live instead of finding every stream already expired.
* :class:`FixedClock` — a settable time for tests and ``--now``.

All readings are naive UTC datetimes, like every datetime in Winchester.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...

    def observe(self, timestamp: datetime) -> None:
        """Tell the clock an event with this timestamp was seen (event time uses it)."""


class WallClock:
    """Real time, as naive UTC."""

    name = "wall"

    def now(self) -> datetime:
        return datetime.now(timezone.utc).replace(tzinfo=None)

    def observe(self, timestamp: datetime) -> None:
        pass


class EventClock:
    """The newest event timestamp observed; before the first event, ``start`` (or wall time)."""

    name = "event"

    def __init__(self, start: datetime | None = None):
        self._now = start

    def now(self) -> datetime:
        if self._now is None:
            return WallClock().now()
        return self._now

    def observe(self, timestamp: datetime) -> None:
        if self._now is None or timestamp > self._now:
            self._now = timestamp


class FixedClock:
    """A clock that says what it is told (tests, ``--now``)."""

    name = "fixed"

    def __init__(self, now: datetime):
        self._now = now

    def now(self) -> datetime:
        return self._now

    def set(self, now: datetime) -> None:
        self._now = now

    def observe(self, timestamp: datetime) -> None:
        pass


def make_clock(kind: str) -> Clock:
    """``wall`` or ``event``."""
    if kind == "wall":
        return WallClock()
    if kind == "event":
        return EventClock()
    raise ValueError(f"unknown clock {kind!r}; expected 'wall' or 'event'")
