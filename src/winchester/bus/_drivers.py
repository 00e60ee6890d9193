"""Data-source drivers: bus publishers fed from outside, which can be started and stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from winchester.bus._bus import Bus, describe
from winchester.bus._errors import DriverStopped
from winchester.clock import Clock, WallClock

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriverStatus:
    """A driver's state; the counters add up over every start since it was made."""

    name: str
    topic: str
    running: bool
    published: int  # successful publish() / publish_table() calls
    polls: int  # poll attempts, failed ones included (polling drivers)
    errors: int  # failed polls, and errors reported with record_error()
    last_error: str | None
    last_poll_at: datetime | None  # naive UTC, when the last poll started


class DataSourceDriver:
    """Base of push sources: the subclass calls :meth:`publish` when data arrives.

    A driver does nothing until :meth:`start`; override :meth:`on_start` and
    :meth:`on_stop` to open and close whatever feeds it (they run inside
    ``start()`` / ``stop()``). It can be started again after a stop.
    Publishing while stopped raises :class:`DriverStopped`.
    """

    def __init__(self, bus: Bus, topic: str, *, name: str | None = None,
                 clock: Clock | None = None):
        if not isinstance(topic, str) or not topic:
            raise TypeError(f"topic must be a non-empty string, not {topic!r}")
        self.bus = bus
        self.topic = topic
        self.name = name or type(self).__name__
        self.clock = clock or WallClock()
        self._lock = threading.Lock()
        self._lifecycle = threading.RLock()
        self._running = False
        self._published = 0
        self._polls = 0
        self._errors = 0
        self._last_error: str | None = None
        self._last_poll_at: datetime | None = None

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<{type(self).__name__} {self.name!r} on {self.topic!r} ({state})>"

    def start(self) -> None:
        """Start the driver; starting a running driver does nothing."""
        # The whole of a start or stop, hooks included, runs alone: a stop
        # racing a start must not stop the wrong run's thread or miss it.
        with self._lifecycle:
            with self._lock:
                if self._running:
                    return
                self._running = True
            try:
                self.on_start()
            except BaseException:
                with self._lock:
                    self._running = False
                raise
        logger.info("driver %s started", self.name)

    def stop(self) -> None:
        """Stop the driver; stopping a stopped driver does nothing."""
        if self._on_own_thread():
            # From inside a poll: no waiting for ourselves (nor for a stop
            # that is waiting for this very poll to end).
            with self._lock:
                if not self._running:
                    return
                self._running = False
            self.on_stop()
            return
        with self._lifecycle:
            with self._lock:
                if not self._running:
                    return
                self._running = False
            self.on_stop()
        logger.info("driver %s stopped", self.name)

    def _on_own_thread(self) -> bool:
        return False

    @property
    def running(self) -> bool:
        return self._running

    def on_start(self) -> None:
        """Hook: begin receiving data (called by :meth:`start`)."""

    def on_stop(self) -> None:
        """Hook: stop receiving data (called by :meth:`stop`)."""

    def publish(self, data: Any) -> None:
        """Publish ``data`` on the driver's topic."""
        self._check_running()
        self.bus.publish(self.topic, data)
        with self._lock:
            self._published += 1

    def publish_table(self, rows: Mapping[str, Any]) -> None:
        """Publish ``rows`` as the table on the driver's topic (see :meth:`Bus.publish_table`)."""
        self._check_running()
        self.bus.publish_table(self.topic, rows)
        with self._lock:
            self._published += 1

    def record_error(self, error: BaseException) -> None:
        """Count and log an error of the source; the driver carries on."""
        with self._lock:
            self._errors += 1
            self._last_error = describe(error)
        logger.error("driver %s: %s", self.name, describe(error), exc_info=error)

    def status(self) -> DriverStatus:
        with self._lock:
            return DriverStatus(name=self.name, topic=self.topic, running=self._running,
                                published=self._published, polls=self._polls,
                                errors=self._errors, last_error=self._last_error,
                                last_poll_at=self._last_poll_at)

    def _check_running(self) -> None:
        if not self._running:
            raise DriverStopped(f"driver {self.name!r} is stopped; start() it first")


class PollingDataSourceDriver(DataSourceDriver):
    """Base of pull sources: :meth:`poll` returns the table, published every ``interval`` s.

    Polls run on the driver's own thread: the first at :meth:`start`, then
    ``interval`` seconds after each one ends. A poll that raises is logged
    and counted (:meth:`status`), and polling goes on. :meth:`stop` wakes
    the thread at once and waits for a poll in progress to end.
    """

    def __init__(self, bus: Bus, topic: str, *, interval: float, name: str | None = None,
                 clock: Clock | None = None):
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) \
                or not interval > 0:
            raise ValueError(f"interval must be a positive number of seconds, not {interval!r}")
        super().__init__(bus, topic, name=name, clock=clock)
        self.interval = float(interval)
        self._wake: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def poll(self) -> Mapping[str, Any]:
        """Return the current table: a mapping of string keys to JSON rows."""
        raise NotImplementedError(f"{type(self).__name__} must implement poll()")

    def on_start(self) -> None:
        # A fresh event per run: a thread from a previous run that is still
        # finishing its poll must not be revived by this start.
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._wake,),
                                        name=f"winchester-driver-{self.name}", daemon=True)
        self._thread.start()

    def _on_own_thread(self) -> bool:
        return self._thread is threading.current_thread()

    def on_stop(self) -> None:
        assert self._wake is not None and self._thread is not None
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._poll_once(stop)
            stop.wait(self.interval)

    def _poll_once(self, stop: threading.Event) -> None:
        with self._lock:
            self._polls += 1
            self._last_poll_at = self.clock.now()
        try:
            rows = self.poll()
            if stop.is_set():
                return  # stopped while polling: publish nothing after stop()
            # Not publish_table(): stop() waits for this, so the check would only race it.
            self.bus.publish_table(self.topic, rows)
            with self._lock:
                self._published += 1
        except Exception as exc:  # noqa: BLE001 - a failing source must not stop the driver
            self.record_error(exc)
