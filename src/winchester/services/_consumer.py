"""Consuming OpenStack notifications from RabbitMQ the way oslo.messaging listeners do.

Exchanges are topic exchanges named per service (``nova``, ``glance``...);
notifications are routed with ``<topic>.<priority>``. Without a queue name the
consumer reads the queues the publishers themselves create (``notifications.info``
...), competing with any other consumer of them, as an oslo listener without
a pool does; with a name, it reads one queue of that name bound to every
exchange and priority (a private copy, shared by every process using the name).

Messages are taken in batches (by size, or by age of the oldest) and
acknowledged only after the batch handler returned, i.e. after what it stored
has committed. A crash or a lost connection before that leaves them
unacknowledged, and the broker delivers them again; the stores recognise the
duplicates by ``message_id``.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kombu import Connection, Consumer, Exchange, Queue, binding
from kombu.exceptions import OperationalError as KombuOperationalError

from winchester.bus._connect import open_connection
from winchester.errors import WinchesterError

logger = logging.getLogger(__name__)

MAX_BACKOFF = 30.0


class IntakeError(WinchesterError):
    """The broker refused our exchanges or queues (fix the configuration)."""


class _Abandoned(Exception):
    """Stopping while a batch could not be stored: leave it unacknowledged."""


@dataclass(frozen=True)
class Delivery:
    """One message as received: the raw body and where it came from."""

    body: bytes
    exchange: str
    routing_key: str
    redelivered: bool


# Charsets whose bytes are already what the distiller reads (JSON is UTF-8).
_AS_IS_ENCODINGS = frozenset({"", "utf-8", "utf8", "binary", "ascii", "us-ascii"})


def wire_body(body: Any, content_encoding: Any, compression: Any) -> bytes:
    """A message's body as JSON bytes: kombu's compression (oslo.messaging's
    ``kombu_compression``) undone and another ``content_encoding`` transcoded to
    UTF-8. What cannot be undone is kept as it came (and is then rejected, archived
    and dead-lettered, like any body that is not JSON): never an exception, which
    would send the message back to the broker and stop every consumer it reaches."""
    if isinstance(body, str):  # a transport that decoded it already
        try:
            return body.encode("utf-8")
        except UnicodeEncodeError:
            return body.encode("utf-8", "surrogatepass")
    raw = bytes(body) if not isinstance(body, bytes) else body
    if compression:
        try:
            from kombu.compression import decompress

            raw = decompress(raw, str(compression))
        except Exception:  # noqa: BLE001 - zlib, bz2, lzma and lookup errors alike
            logger.debug("a body marked compressed (%s) does not decompress; kept as received",
                         compression)
    encoding = str(content_encoding or "").strip().lower()
    if encoding not in _AS_IS_ENCODINGS:
        try:
            raw = raw.decode(encoding).encode("utf-8")
        except (LookupError, UnicodeError, ValueError):
            pass  # an unknown charset, or bytes that are not in it: kept as received
    return raw


@dataclass
class ConsumerStats:
    received: int = 0
    batches: int = 0
    acknowledged: int = 0
    reconnects: int = 0
    handler_failures: int = 0
    last_error: str | None = None


@dataclass(frozen=True)
class Subscription:
    """Which exchanges, routing keys and queues to consume."""

    exchanges: Sequence[str]
    topic: str = "notifications"
    priorities: Sequence[str] = ("info", "warn", "error")
    queue: str = ""           # empty: the publishers' queues "<topic>.<priority>"
    durable: bool = False

    def routing_keys(self) -> list[str]:
        return [f"{self.topic}.{priority}" for priority in self.priorities]

    def declarations(self) -> tuple[list[Exchange], list[Queue]]:
        exchanges = [Exchange(name, type="topic", durable=self.durable, auto_delete=False)
                     for name in self.exchanges]
        if self.queue:
            queues = [Queue(self.queue, durable=self.durable, auto_delete=False, bindings=[
                binding(exchange, routing_key=key) for exchange in exchanges
                for key in self.routing_keys()])]
        else:
            queues = [Queue(key, durable=self.durable, auto_delete=False,
                            bindings=[binding(exchange, routing_key=key) for exchange in exchanges])
                      for key in self.routing_keys()]
        return exchanges, queues


BatchHandler = Callable[[Any], None]


class NotificationConsumer:
    """Feeds batches of raw notifications to ``handle_batch``; acks after it returns.

    ``handle_batch`` must either store the whole batch (committed) or raise;
    when it raises the batch stays unacknowledged and is offered again after
    a back-off (the database may be down), for as long as it takes.

    With ``prepare_batch``, each batch's deliveries go through it first, on
    the consuming thread while the batch before is being stored, and
    ``handle_batch`` gets what it returned: CPU work that needs no database
    then overlaps the store's round trips. It must not raise for bad input
    (if it raises anyway, ``handle_batch`` gets the deliveries themselves).
    """

    def __init__(self, url: str, subscription: Subscription, handle_batch: BatchHandler, *,
                 batch_size: int = 1000, batch_seconds: float = 1.0, name: str = "intake",
                 connect_timeout: float = 5.0, sleep: Callable[[float], Any] | None = None,
                 prepare_batch: Callable[[list[Delivery]], Any] | None = None):
        self.url = url
        self.subscription = subscription
        self.handle_batch = handle_batch
        self.prepare_batch = prepare_batch
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.name = name
        self.connect_timeout = connect_timeout
        self.stats = ConsumerStats()
        self._stopping = threading.Event()
        self._sleep = sleep or self._stopping.wait
        self._batch: list[tuple[Delivery, Any]] = []
        self._in_flight: tuple[Future, list[tuple[Delivery, Any]]] | None = None
        self._channel: Any = None
        self._store_thread: ThreadPoolExecutor | None = None
        self._batch_started = 0.0
        self.ready = threading.Event()  # set once declared and consuming (tests, serve)
        probe = Connection(url)
        # kombu's OperationalError is what a refused reconnection attempt
        # raises: the broker is still down, keep waiting for it.
        self._recoverable = (OSError, KombuOperationalError, *probe.recoverable_connection_errors,
                             *probe.recoverable_channel_errors)
        self._channel_errors = probe.channel_errors
        self._safe_url = probe.as_uri()  # kombu masks the password
        # Only AMQP honours "acknowledge everything up to here"; the virtual
        # transports (memory://) acknowledge one message per call.
        self._ack_multiple = probe.transport.driver_type == "amqp"

    def stop(self) -> None:
        """Stop consuming; the batch in hand is still handled and acknowledged (signal-safe)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def safe_url(self) -> str:
        return self._safe_url

    def _connection(self) -> Connection:
        if self._ack_multiple:
            return Connection(self.url, connect_timeout=self.connect_timeout)
        # memory:// through the bus's own transport, which fixes kombu's
        # in-process routing races (the bus shares the same queues).
        return open_connection(self.url, connect_timeout=self.connect_timeout, consumer=True)

    def run(self) -> None:
        """Consume until :meth:`stop`; connection losses are waited out with back-off.

        Raises :class:`IntakeError` when the broker refuses a declaration
        (typically a durability mismatch with the publishers).
        """
        backoff = 1.0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-store") as pool:
            self._store_thread = pool
            self._run(backoff)

    def _run(self, backoff: float) -> None:
        while not self.stopping:
            try:
                with self._connection() as connection:
                    connection.ensure_connection(max_retries=1)
                    backoff = 1.0
                    self._consume(connection)
                    return
            except _Abandoned:
                logger.warning("%s: stopped with %d unstored message(s) left unacknowledged "
                               "(the broker delivers them again)", self.name,
                               len(self._batch) + self._forget_in_flight())
                self._batch.clear()
                return
            except IntakeError:
                raise
            except (*self._recoverable, *self._channel_errors) as exc:
                if not self.ready.is_set() and not isinstance(exc, self._recoverable):
                    raise  # refused before we ever consumed: a configuration problem
                # After a channel was closed on us while running (e.g. RabbitMQ's
                # consumer_timeout during a long database outage), start over too.
                # Unacknowledged messages go back to the queue with the connection.
                dropped = len(self._batch) + self._forget_in_flight()
                self._batch.clear()
                self.stats.reconnects += 1
                self.stats.last_error = str(exc)
                self.ready.clear()
                logger.warning("%s: lost the broker at %s (%s: %s)%s; reconnecting in %.0fs",
                               self.name, self.safe_url(), type(exc).__name__, exc,
                               f"; {dropped} unacknowledged message(s) will be redelivered"
                               if dropped else "", backoff)
                self._sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)

    def _consume(self, connection: Connection) -> None:
        channel = connection.channel()
        # Bodies come as bytes; wire_body decodes them without ever raising (py-amqp's
        # own decoding by content_encoding can leave text that does not encode back).
        channel.auto_decode = False
        self._declare(connection, channel)
        _, queues = self.subscription.declarations()
        # Enough prefetch for a full batch plus the next one arriving meanwhile.
        channel.basic_qos(0, min(65535, self.batch_size * 2), False)
        self._channel = channel
        names = ", ".join(queue.name for queue in queues)
        if self._ack_multiple:
            # On AMQP, straight from the protocol library: kombu's message
            # objects and decoding cost a fifth of the time per notification,
            # and bodies are kept as raw bytes anyway.
            tags = [channel.basic_consume(queue=queue.name, callback=self._on_amqp_message,
                                          no_ack=False) for queue in queues]
            try:
                self._loop(connection, names)
            finally:
                for tag in tags:
                    try:
                        channel.basic_cancel(tag)
                    except Exception:  # noqa: BLE001 - the connection may be gone already
                        pass
        else:
            with Consumer(channel, queues, on_message=self._on_message, no_ack=False):
                self._loop(connection, names)
        # Stop receiving, then finish what is in hand.
        if self._batch:
            self._flush()
        self._settle()

    def _loop(self, connection: Connection, names: str) -> None:
        logger.info("%s: consuming %s from %s", self.name, names, self.safe_url())
        self.ready.set()
        while not self.stopping:
            wait = 1.0
            if self._in_flight is not None:
                if self._in_flight[0].done():
                    self._settle()  # acknowledged as soon as stored, not at the next batch
                else:
                    wait = 0.05
            if self._batch:
                due = self._batch_started + self.batch_seconds - time.monotonic()
                if due <= 0 or len(self._batch) >= self.batch_size:
                    self._flush()
                    continue
                wait = min(wait, due)
            try:
                connection.drain_events(timeout=wait)
            except socket.timeout:
                pass
            if len(self._batch) >= self.batch_size:
                self._flush()

    def _declare(self, connection: Connection, channel) -> None:
        exchanges, queues = self.subscription.declarations()
        for entity in (*exchanges, *queues):
            kind = "exchange" if isinstance(entity, Exchange) else "queue"
            try:
                entity.maybe_bind(channel)
                entity.declare()
            except connection.channel_errors as exc:
                if "PRECONDITION_FAILED" in str(exc) or getattr(exc, "reply_code", None) == 406:
                    argument = re.search(r"inequivalent arg '([^']+)'", str(exc))
                    if argument and argument.group(1) != "durable":
                        # Quorum queues, TTLs, length limits: set by whoever declared it.
                        raise IntakeError(
                            f"the broker at {self.safe_url()} refused to declare {kind} "
                            f"{entity.name!r}: it already exists with argument "
                            f"{argument.group(1)!r} ({exc}), which Winchester does not set. Give "
                            "Winchester a queue of its own (intake.queue, persistor.queue), or "
                            "declare that one without the argument") from None
                    raise IntakeError(
                        f"the broker at {self.safe_url()} refused to declare {kind} {entity.name!r} "
                        f"with durable={self.subscription.durable}: it already exists with other "
                        f"properties ({exc}). Set intake.durable to match the publishers "
                        "(oslo.messaging's amqp_durable_queues)") from None
                raise

    def _on_amqp_message(self, message) -> None:
        if not self._batch:
            self._batch_started = time.monotonic()
        info = message.delivery_info
        properties = message.properties
        body = wire_body(message.body, properties.get("content_encoding"),
                         (properties.get("application_headers") or {}).get("compression"))
        self._batch.append((Delivery(body, info.get("exchange", ""), info.get("routing_key", ""),
                                     bool(info.get("redelivered"))), info["delivery_tag"]))
        self.stats.received += 1

    def _on_message(self, message) -> None:
        if not self._batch:
            self._batch_started = time.monotonic()
        info = message.delivery_info
        body = wire_body(message.body, message.content_encoding,
                         (message.headers or {}).get("compression"))
        self._batch.append((Delivery(body, info.get("exchange", ""), info.get("routing_key", ""),
                                     bool(info.get("redelivered"))), message))
        self.stats.received += 1

    def _flush(self) -> None:
        """Hand the batch in hand to the store thread; acknowledge the previous one once stored.

        One batch is stored while the next is received: the store's database
        round trips and the broker's deliveries overlap instead of taking
        turns. At most two batches are unacknowledged (the prefetch allows it).
        """
        work: Any = [delivery for delivery, _ in self._batch]
        if self.prepare_batch is not None:
            try:
                work = self.prepare_batch(work)
            except Exception:  # noqa: BLE001 - handle_batch then does it all, with its retries
                logger.exception("%s: preparing a batch of %d failed; storing it unprepared",
                                 self.name, len(work))
        # Settled first: if acknowledging fails (the broker went away), this
        # batch is still in hand and counted among the unacknowledged.
        self._settle()
        batch, self._batch = self._batch, []
        future = self._store_thread.submit(self._store, work)
        self._in_flight = (future, batch)

    def _settle(self) -> None:
        """Wait for the batch being stored, then acknowledge it (on this, the channel's thread)."""
        if self._in_flight is None:
            return
        future, batch = self._in_flight
        future.result()  # _Abandoned when stopping with it unstored
        if self._ack_multiple:
            # One acknowledgement covers the whole batch: it came on this channel,
            # and every earlier message is acknowledged already.
            self._channel.basic_ack(batch[-1][1], multiple=True)
        else:
            for _, message in batch:
                message.ack()
        # Only now: a batch stored but not acknowledged (the connection died)
        # is counted with what the broker delivers again.
        self._in_flight = None
        self.stats.acknowledged += len(batch)
        self.stats.batches += 1

    def _forget_in_flight(self) -> int:
        """After losing the connection: let the batch being stored finish, unacknowledged."""
        if self._in_flight is None:
            return 0
        future, batch = self._in_flight
        self._in_flight = None
        try:
            future.result()
        except BaseException:  # noqa: BLE001 - it is redelivered either way
            pass
        return len(batch)

    def _store(self, work: Any) -> None:
        backoff = 1.0
        while True:
            try:
                self.handle_batch(work)
                return
            except Exception as exc:  # noqa: BLE001 - the batch stays unacknowledged; retry
                self.stats.handler_failures += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                logger.error("%s: could not store a batch of %d (%s); retrying in %.0fs", self.name,
                             len(work), self.stats.last_error, backoff,
                             exc_info=not isinstance(exc, WinchesterError))
                if self.stopping:
                    raise _Abandoned from exc
                self._sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)


__all__ = ["ConsumerStats", "Delivery", "IntakeError", "NotificationConsumer", "Subscription"]
