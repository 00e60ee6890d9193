"""Where every component reads "now" from.

Pure code never reads the clock; it is handed a time. Services hold one clock
object and pass its readings down.

* :class:`WallClock` — real UTC time (the default).
* :class:`EventClock` — event time: the newest event timestamp seen so far. It
  never moves backwards, so replaying last week's notifications builds the
  streams they built live instead of finding every stream already expired.
  Given a ``reader`` it follows a value kept in the database, so every ingest
  process and worker shares one event time.
* :class:`FixedClock` — a settable time for tests and ``--now``.

Both real clocks judge each event they observe: one stamped further ahead
than ``max_skew`` (of event time, or of real time) is *ahead*, one further
behind is *late*. Ahead events do not move event time (one notification
stamped next year must not expire every stream), unless a second event
confirms the jump — a quiet night in a replay is a real gap. Either way the
event is still stored; the verdict is only counted and logged.

All readings are naive UTC datetimes, like every datetime in Winchester.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, Protocol

Verdict = Literal["on_time", "ahead", "late"]
ON_TIME: Verdict = "on_time"
AHEAD: Verdict = "ahead"
LATE: Verdict = "late"

DEFAULT_MAX_SKEW = timedelta(hours=1)
# The row of the store's clocks table that holds the shared event time.
SHARED_EVENT_CLOCK = "event"
# Ahead timestamps remembered while waiting for a second event to confirm them.
_CANDIDATES = 16


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Clock(Protocol):
    name: str

    def now(self) -> datetime: ...

    def observe(self, timestamp: datetime) -> Verdict:
        """Tell the clock an event with this timestamp arrived; returns how it stood to the clock."""

    def refresh(self) -> None:
        """Catch up with time kept elsewhere (the shared event clock); a no-op for the others."""


class WallClock:
    """Real time, as naive UTC."""

    name = "wall"

    def __init__(self, max_skew: timedelta = DEFAULT_MAX_SKEW):
        self.max_skew = max_skew

    def now(self) -> datetime:
        return utc_now()

    def observe(self, timestamp: datetime) -> Verdict:
        now = utc_now()
        if timestamp > now + self.max_skew:
            return AHEAD
        if timestamp < now - self.max_skew:
            return LATE
        return ON_TIME

    def refresh(self) -> None:
        pass


class EventClock:
    """Event time: the newest trustworthy event timestamp observed.

    Before the first event (and with nothing to read) it is *unset*:
    :meth:`now` then answers ``start`` if given, else real time, and the first
    event sets it whatever its timestamp. ``reader`` returns the shared value
    kept in the database (or None); :meth:`refresh` folds it in, and
    :meth:`synced` folds in a value a write returned.
    """

    name = "event"

    def __init__(self, start: datetime | None = None, *, max_skew: timedelta = DEFAULT_MAX_SKEW,
                 reader: Callable[[], datetime | None] | None = None):
        self._now = start
        self.max_skew = max_skew
        self._reader = reader
        self._candidates: list[datetime] = []
        # Pipelined ingest observes events in one thread while its writer
        # folds in the shared value in another: without the lock, an observe
        # could overwrite a later synced value and move time backwards.
        self._lock = threading.Lock()
        if reader is not None:
            self.refresh()

    @property
    def is_set(self) -> bool:
        return self._now is not None

    @property
    def shared(self) -> bool:
        return self._reader is not None

    def now(self) -> datetime:
        if self._now is None:
            return utc_now()
        return self._now

    def value(self) -> datetime | None:
        """The reading, or None while unset."""
        return self._now

    def observe(self, timestamp: datetime) -> Verdict:
        with self._lock:
            return self._observe(timestamp)

    def _observe(self, timestamp: datetime) -> Verdict:
        now = self._now
        if now is None:
            self._now = timestamp
            return ON_TIME
        if timestamp <= now:
            return LATE if timestamp < now - self.max_skew else ON_TIME
        if timestamp <= now + self.max_skew:
            self._now = timestamp
            return ON_TIME
        # Far ahead: believe it only once another event agrees with it.
        for candidate in self._candidates:
            if abs(candidate - timestamp) <= self.max_skew:
                self._now = min(candidate, timestamp)
                self._candidates = [c for c in self._candidates if c > self._now + self.max_skew]
                return ON_TIME
        self._candidates.append(timestamp)
        del self._candidates[:-_CANDIDATES]
        return AHEAD

    def synced(self, value: datetime | None) -> None:
        """Fold in the shared value (never moves backwards)."""
        if value is None:
            return
        with self._lock:
            if self._now is None or value > self._now:
                self._now = value

    def refresh(self) -> None:
        if self._reader is not None:
            self.synced(self._reader())


class FixedClock:
    """A clock that says what it is told (tests, ``--now``)."""

    name = "fixed"

    def __init__(self, now: datetime):
        self._now = now

    def now(self) -> datetime:
        return self._now

    def set(self, now: datetime) -> None:
        self._now = now

    def observe(self, timestamp: datetime) -> Verdict:
        return ON_TIME

    def refresh(self) -> None:
        pass


def make_clock(kind: str, *, max_skew: timedelta = DEFAULT_MAX_SKEW,
               reader: Callable[[], datetime | None] | None = None) -> Clock:
    """``wall`` or ``event`` (shared through ``reader`` when given)."""
    if kind == "wall":
        return WallClock(max_skew)
    if kind == "event":
        return EventClock(max_skew=max_skew, reader=reader)
    raise ValueError(f"unknown clock {kind!r}; expected 'wall' or 'event'")


def clock_from_settings(settings: Any, store: Any = None, kind: str | None = None) -> Clock:
    """The clock ``winchester.yaml`` asks for (``kind`` overrides ``clock``).

    With a store, the event clock is the shared one kept in its clocks table.
    """
    kind = kind or settings.clock
    reader = None
    if kind == "event" and store is not None:
        def reader() -> datetime | None:
            return store.read_clock(SHARED_EVENT_CLOCK)
    return make_clock(kind, max_skew=timedelta(seconds=settings.clock_max_skew), reader=reader)
