"""A connection drained by one thread, and the consumers it owns.

kombu connections are not thread-safe, so a :class:`Worker` owns one
connection and one thread. Other threads hand it work (:meth:`Worker.call`,
:meth:`Worker.post`), which it runs between two ``drain_events``; message
callbacks run on it too. A blocked ``drain_events`` cannot be interrupted,
so on RabbitMQ handing work over also sends an empty message to the
worker's private wake-up queue; on memory:// the drain polls anyway.

When the connection fails the worker reconnects with backoff and declares
its consumers again: private (exclusive) queues come back empty, since the
broker deleted them with the old connection, while named queues kept their
messages and the unacknowledged ones are redelivered.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any, TypeVar

from kombu import Connection, Consumer, Queue
from kombu.message import Message

from winchester.bus._connect import open_connection, safe_url
from winchester.bus._errors import BusClosed, BusConnectionError, BusError
from winchester.bus._publisher import BROKER_ERRORS

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How long a drain waits for a message before it runs handed-over work and
# checks heartbeats (py-amqp wants that about once a second).
DRAIN_SECONDS = 1.0
# A subscribe() waits this long for the worker to take it (the worker may be
# reconnecting, or busy in a long callback) before giving up.
COMMAND_TIMEOUT = 30.0
RECONNECT_FIRST_DELAY = 0.1
RECONNECT_MAX_DELAY = 5.0


class _Stopping(Exception):
    """Raised inside the worker thread to leave a reconnect loop when asked to stop."""


@dataclass
class _Stream:
    queue: Queue
    on_message: Callable[[Message], None]
    private: bool
    prefetch: int
    channel: Any = None
    consumer: Consumer | None = None


class Worker:
    """One thread draining one connection; each consumer gets its own channel.

    A channel per consumer lets :meth:`cancel` close it, so the broker
    requeues whatever that consumer had prefetched instead of holding it
    unacknowledged until the whole connection closes.
    """

    def __init__(self, url: str, role: str, owner: str, *, connect_timeout: float,
                 drain_seconds: float = DRAIN_SECONDS, wake_queue: str | None = None,
                 send_wake: Callable[[str], None] | None = None):
        self.url = url
        self.role = role
        #: How messages name it: "subscriptions thread of <bus address>".
        self.label = f"{role} thread of {owner}"
        self._connect_timeout = connect_timeout
        self._drain_seconds = drain_seconds
        self._wake_queue = wake_queue
        self._send_wake = send_wake
        self._streams: dict[str, _Stream] = {}
        # Kept apart from the consumers: their keys are the caller's ids.
        self._wake_stream: _Stream | None = None
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = (
            queue.SimpleQueue())
        self._stopping = threading.Event()
        # Taken to hand work over and to refuse it at shutdown, so no command
        # slips in after the last one was answered.
        self._hand_over_lock = threading.Lock()
        self._accepting = False
        self._thread: threading.Thread | None = None
        self._connection: Connection | None = None

    # -- life cycle (any thread) ---------------------------------------------------------------

    def start(self) -> None:
        """Connect (failing fast with :class:`BusConnectionError`) and start draining."""
        self._connection = self._connect(max_retries=2)
        if self._wake_queue is not None:
            wake = _Stream(queue=Queue(self._wake_queue, exclusive=True, auto_delete=True),
                           on_message=lambda message: message.ack(), private=True, prefetch=0)
            try:
                self._declare(wake)
            except BusError:
                self._drop_connection()
                raise
            self._wake_stream = wake
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name=f"winchester-bus-{self.role}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Cancel every consumer, delete private queues, close the connection.

        Waits for a callback in progress to return, unless called from that
        callback (then the worker stops as soon as it returns).
        """
        self.request_stop()
        self.join()

    def request_stop(self) -> None:
        """Ask the worker to stop, without waiting (see :meth:`join`)."""
        if not self._stopping.is_set():
            self._stopping.set()
            self._wake()

    def join(self) -> None:
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    @property
    def on_worker_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def call(self, work: Callable[[], T], timeout: float = COMMAND_TIMEOUT) -> T:
        """Run ``work`` on the worker thread and return its result (or raise its error)."""
        if self.on_worker_thread:
            return work()
        future = self._hand_over(work)
        wait([future], timeout)
        if not future.done() and future.cancel():
            raise BusConnectionError(
                f"the {self.label} did not take the request within {timeout:g} s "
                f"(is {safe_url(self.url)} unreachable, or is a callback still running?)")
        return future.result()

    def post(self, work: Callable[[], Any]) -> None:
        """Run ``work`` on the worker thread later; its errors are logged."""
        future = self._hand_over(work)
        future.add_done_callback(self._log_failure)

    def consume(self, key: str, queue: Queue, on_message: Callable[[Message], None], *,
                private: bool, prefetch: int) -> None:
        """Declare ``queue`` and consume it until :meth:`cancel` (``private``: delete it then)."""
        stream = _Stream(queue=queue, on_message=on_message, private=private, prefetch=prefetch)
        self.call(lambda: self._add(key, stream))

    def cancel(self, key: str) -> None:
        """Stop consuming ``key`` once the worker thread is free.

        From inside a callback the removal is posted: it must wait until the
        message in hand is acknowledged (closing its channel first would fail
        the acknowledgement and force a reconnect). From elsewhere it is
        waited for; if the worker is too busy, it is posted rather than lost.
        """
        if self._thread is None or not self._thread.is_alive():
            return
        try:
            if self.on_worker_thread:
                self.post(lambda: self._remove(key))
                return
            try:
                self.call(lambda: self._remove(key))
            except BusConnectionError:
                self.post(lambda: self._remove(key))  # removed as soon as the worker is free
        except BusClosed:
            pass  # stopped meanwhile, which cancelled everything

    # -- on the worker thread ------------------------------------------------------------------

    def _hand_over(self, work: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        with self._hand_over_lock:
            if not self._accepting or self._stopping.is_set():
                raise BusClosed(f"the {self.label} is not running")
            self._commands.put((work, future))
        self._wake()
        return future

    def _wake(self) -> None:
        thread = self._thread
        if self._wake_queue is None or self._send_wake is None or thread is None \
                or not thread.is_alive() or thread is threading.current_thread():
            return
        try:
            self._send_wake(self._wake_queue)
        except BusError as exc:
            # The work still runs after the current drain times out.
            logger.debug("%s: could not wake it: %s", self.label, exc)

    @staticmethod
    def _log_failure(future: Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            error = future.exception()
            logger.error("bus background work failed: %s: %s", type(error).__name__, error,
                         exc_info=error)

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    self._drain()
                except Exception as exc:  # noqa: BLE001 - a new connection is the remedy for all
                    if self._stopping.is_set():
                        logger.debug("%s: failed while stopping: %s", self.label, exc)
                        return
                    self._log_connection_error(exc)
                    self._reconnect()
        except _Stopping:
            pass
        finally:
            self._shut_down()

    def _drain(self) -> None:
        while not self._stopping.is_set():
            self._run_commands()
            assert self._connection is not None
            try:
                self._connection.drain_events(timeout=self._drain_seconds)
            except TimeoutError:
                self._connection.heartbeat_check()

    def _log_connection_error(self, error: Exception) -> None:
        connection = self._connection
        recoverable = BROKER_ERRORS if connection is None else (
            *connection.recoverable_connection_errors, *connection.recoverable_channel_errors,
            *BROKER_ERRORS)
        if isinstance(error, recoverable):
            logger.warning("%s: lost the connection to %s (%s: %s); reconnecting",
                           self.label, safe_url(self.url), type(error).__name__, error)
        else:
            logger.error("%s: unexpected error while consuming from %s; reconnecting",
                         self.label, safe_url(self.url), exc_info=error)

    def _run_commands(self) -> None:
        while True:
            try:
                work, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(work())
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                future.set_exception(exc)

    def _add(self, key: str, stream: _Stream) -> None:
        if key in self._streams:
            raise ValueError(f"{key!r} is already consumed by this bus")
        self._declare(stream)
        self._streams[key] = stream

    def _remove(self, key: str) -> None:
        stream = self._streams.pop(key, None)
        if stream is not None:
            self._close_stream(stream)

    def _declare(self, stream: _Stream) -> None:
        assert self._connection is not None
        channel = self._connection.channel()
        try:
            stream.queue(channel).declare()
            consumer = Consumer(channel, queues=[stream.queue], on_message=stream.on_message,
                                accept=["json"], prefetch_count=stream.prefetch,
                                auto_declare=False)
            consumer.consume()
        except BROKER_ERRORS as exc:
            self._quietly(channel.close)
            raise BusConnectionError(
                f"cannot consume queue {stream.queue.name!r} at {safe_url(self.url)}: "
                f"{type(exc).__name__}: {exc}") from exc
        stream.channel, stream.consumer = channel, consumer

    def _close_stream(self, stream: _Stream) -> None:
        # Never fails: a dead connection took the consumer (and an exclusive
        # queue) with it already, and the next drain notices and reconnects.
        if stream.consumer is not None:
            self._quietly(stream.consumer.cancel)
        if stream.private and stream.channel is not None:
            self._quietly(stream.queue(stream.channel).delete)
        if stream.channel is not None:
            self._quietly(stream.channel.close)
        stream.channel = stream.consumer = None

    def _connect(self, *, max_retries: int) -> Connection:
        connection = open_connection(self.url, connect_timeout=self._connect_timeout,
                                     consumer=True)
        try:
            connection.ensure_connection(max_retries=max_retries, interval_start=0.2,
                                         interval_step=0.5, interval_max=2)
        except BROKER_ERRORS as exc:
            self._quietly(connection.release)
            raise BusConnectionError(f"cannot connect to {safe_url(self.url)}: "
                                     f"{type(exc).__name__}: {exc}") from exc
        return connection

    def _reconnect(self) -> None:
        """Replace the connection and declare every consumer again, backing off between tries.

        kombu's own retry loop sleeps in whole seconds and cannot be
        interrupted, so the back-off waits on the stop event instead.
        """
        self._forget_connection()
        delay = RECONNECT_FIRST_DELAY
        while True:
            if self._stopping.wait(delay):
                raise _Stopping
            try:
                self._connection = self._connect(max_retries=0)
                self._declare_again()
            except Exception as exc:  # noqa: BLE001 - keep trying until stopped
                self._forget_connection()
                delay = min(delay * 2, RECONNECT_MAX_DELAY)
                logger.warning("%s: still cannot consume from %s (%s); retrying in %.1f s",
                               self.label, safe_url(self.url), exc, delay)
                continue
            logger.info("%s: reconnected to %s", self.label, safe_url(self.url))
            return

    def _forget_connection(self) -> None:
        """Drop the connection and every channel and consumer opened on it."""
        for stream in self._every_stream():
            stream.channel = stream.consumer = None
        self._drop_connection()

    def _every_stream(self) -> list[_Stream]:
        wake = [] if self._wake_stream is None else [self._wake_stream]
        return [*wake, *self._streams.values()]

    def _declare_again(self) -> None:
        if self._wake_stream is not None:
            self._declare(self._wake_stream)
        for key, stream in self._streams.items():
            try:
                self._declare(stream)
            except BusError as exc:
                if self._connection is None or not self._connection.connected:
                    raise
                # The broker refuses this one queue (its flags changed, say):
                # the others must not stay down for it.
                logger.error("%s: cannot consume %r again after reconnecting (%s); it stays "
                             "idle until the next reconnection", self.label, key, exc)

    def _shut_down(self) -> None:
        for key in list(self._streams):
            self._remove(key)
        if self._wake_stream is not None:
            self._close_stream(self._wake_stream)
        self._drop_connection()
        with self._hand_over_lock:
            self._accepting = False
            while True:
                try:
                    _work, future = self._commands.get_nowait()
                except queue.Empty:
                    break
                if future.set_running_or_notify_cancel():
                    future.set_exception(BusClosed(f"the {self.label} has stopped"))

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._quietly(connection.release)

    def _quietly(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except BROKER_ERRORS:
            logger.debug("%s: cleanup step failed on a broken connection", self.label,
                         exc_info=True)
