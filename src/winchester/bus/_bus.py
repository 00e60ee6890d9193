"""The :class:`Bus`: publish/subscribe, request/reply and tables over one kombu URL."""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import Any

from kombu import Exchange, Queue
from kombu.message import Message
from kombu.utils import json

from winchester.bus._connect import MEMORY_POLLING_INTERVAL, check_url, is_memory, safe_url
from winchester.bus._errors import BusClosed, BusRemoteError, BusTimeout
from winchester.bus._publisher import Publisher
from winchester.bus._tables import (
    TableCallback,
    TableFollower,
    TablePublication,
    table_address,
)
from winchester.bus._worker import Worker

logger = logging.getLogger(__name__)

DEFAULT_NAME = "winchester.bus"
# Headers the bus writes. Classic queues do not count redeliveries, so a
# failed message is republished with its count, and with its original topic
# because the republished copy is routed by queue name.
REDELIVERIES_HEADER = "x-winchester-redeliveries"
TOPIC_HEADER = "x-winchester-topic"

Callback = Callable[[str, Any], None]
Handler = Callable[[Any], Any]
DeadLetterSink = Callable[[str, Any, str, int], None]


@dataclass(frozen=True)
class DeadLetter:
    """A message no callback could process: kept with the last error and the attempts made."""

    topic: str
    data: Any
    error: str
    attempts: int


@dataclass(frozen=True)
class Reply:
    """One server's answer to a request: ``data``, or the ``error`` its handler raised."""

    server: str
    data: Any = None
    error: str | None = None


@dataclass(frozen=True)
class _Consumption:
    id: str
    kind: str  # "topic", "table" or "service"
    target: str  # the pattern, table topic or address
    queue: str
    worker: Worker


_CLOSED = object()  # wakes a request waiting for replies when the bus closes


def encode(data: Any, what: str) -> str:
    try:
        return json.dumps(data)
    except TypeError as exc:
        raise TypeError(f"{what} is not JSON-serialisable: {exc}") from exc


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _check_name(what: str, value: Any, *, wildcards: bool = False) -> str:
    """``value`` if it can be a routing key or queue name (with ``*`` / ``#`` words if allowed)."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"{what} must be a non-empty string, not {value!r}")
    if len(value.encode()) > 255:
        raise ValueError(f"{what} must be at most 255 bytes long (an AMQP limit)")
    if not wildcards and ("*" in value.split(".") or "#" in value.split(".")):
        raise ValueError(f"{what} {value!r} cannot contain the wildcards * or #")
    return value


class Bus:
    """One participant on a bus: publish and subscribe, request and serve, tables.

    ``url`` is ``memory://`` (the default: every Bus in the process shares one
    in-memory broker) or ``amqp://user:password@host:port/vhost``. ``name``
    names the bus, that is its topic exchange (default ``winchester.bus``);
    Bus objects with the same name and URL talk to each other. Use
    :meth:`start` and :meth:`close`, or ``with Bus(...) as bus:``.

    Threads: subscription callbacks (and table callbacks) run on this bus's
    *subscriptions* thread, one at a time; serve handlers run on its
    *services* thread; replies are collected on a third. Callbacks and
    handlers may publish, subscribe and request; a serve handler that
    requests an address served by its own bus waits for itself and times out.

    Delivery: a message is acknowledged after its callback returned. A
    callback that raises gets the message again, up to ``max_redeliveries``
    times; then it is dead-lettered: passed to ``dead_letters(topic, data,
    error, attempts)``, by default logged at ERROR and kept in
    :attr:`dead_lettered`.
    """

    def __init__(self, url: str = "memory://", *, name: str | None = None,
                 dead_letters: DeadLetterSink | None = None, max_redeliveries: int = 3,
                 prefetch_count: int = 10, connect_timeout: float = 5.0):
        self.url = check_url(url)
        self.name = _check_name("the bus name", DEFAULT_NAME if name is None else name)
        if isinstance(max_redeliveries, bool) or not isinstance(max_redeliveries, int) \
                or max_redeliveries < 0:
            raise ValueError(f"max_redeliveries must be a whole number >= 0, "
                             f"not {max_redeliveries!r}")
        if isinstance(prefetch_count, bool) or not isinstance(prefetch_count, int) \
                or prefetch_count < 1:
            raise ValueError(f"prefetch_count must be a whole number >= 1, not {prefetch_count!r}")
        if dead_letters is not None and not callable(dead_letters):
            raise TypeError("dead_letters must be callable (topic, data, error, attempts)")
        self.max_redeliveries = max_redeliveries
        self.prefetch_count = prefetch_count
        #: This bus's own address: it answers any request there with :meth:`status`.
        self.address = f"{self.name}.{uuid.uuid4().hex}"
        #: Dead letters kept by the default ``dead_letters`` sink.
        self.dead_lettered: list[DeadLetter] = []
        #: Messages this bus published, and subscription messages it handed to callbacks (metrics).
        self.messages_out = 0
        self.messages_in = 0
        self._dead_letters = dead_letters or self._keep_dead_letter
        # Durable, so named queues bound to them survive a broker restart.
        self._topics = Exchange(self.name, type="topic", durable=True, auto_delete=False)
        self._requests = Exchange(f"{self.name}.requests", type="direct", durable=True,
                                  auto_delete=False)
        self._reply_queue = Queue(f"{self.address}.replies", exclusive=True, auto_delete=True)
        self._publisher = Publisher(self.url, connect_timeout=connect_timeout,
                                    declare=[self._topics, self._requests])
        self._subscriber, self._server, self._replies = (
            self._worker(label, connect_timeout) for label in ("subscriptions", "services",
                                                               "replies"))
        self._lock = threading.Lock()
        self._state = "new"
        self._started_at: datetime | None = None
        self._consumptions: dict[str, _Consumption] = {}
        self._waiting: dict[str, queue.SimpleQueue[Any]] = {}
        self._tables: dict[str, TablePublication] = {}
        self._tables_lock = threading.Lock()

    def _worker(self, label: str, connect_timeout: float) -> Worker:
        if is_memory(self.url):
            # Nothing to wake on memory://: the drain polls, so keep its wait short.
            return Worker(self.url, label, self.address, connect_timeout=connect_timeout,
                          drain_seconds=MEMORY_POLLING_INTERVAL)
        return Worker(self.url, label, self.address, connect_timeout=connect_timeout,
                      wake_queue=f"{self.address}.wake-{label}", send_wake=self._send_wake)

    def _send(self, body: Any, **options: Any) -> None:
        """Publish one bus message (topic, table delta, request, reply, redelivery), counted."""
        self._publisher.publish(body, **options)
        self.messages_out += 1

    def _send_wake(self, queue_name: str) -> None:
        self._publisher.publish(b"", exchange="", routing_key=queue_name, persistent=False,
                                content_type="application/octet-stream",
                                content_encoding="binary")

    def __repr__(self) -> str:
        return f"<Bus {self.name!r} at {safe_url(self.url)} ({self._state})>"

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> Bus:
        """Connect and start consuming; raises :class:`BusConnectionError` if the broker is away.

        Starting a running bus does nothing; a closed bus cannot start again.
        """
        with self._lock:
            if self._state == "running":
                return self
            if self._state != "new":
                raise BusClosed(f"{self!r} cannot be started again")
            self._state = "starting"
        try:
            self._publisher.open()
            for worker in (self._subscriber, self._server, self._replies):
                worker.start()
            self._replies.consume("replies", self._reply_queue, self._on_reply, private=True,
                                  prefetch=self.prefetch_count)
            self._state = "running"
            self._started_at = datetime.now(timezone.utc).replace(tzinfo=None)
            self.serve(self.address, lambda _request: self.status())
        except BaseException:
            self._shut_down()
            raise
        logger.info("bus %r started at %s as %s", self.name, safe_url(self.url), self.address)
        return self

    def close(self) -> None:
        """Stop consuming and disconnect; waits for callbacks in progress. Idempotent."""
        with self._lock:
            if self._state == "closed":
                return
            self._state = "closed"
        self._shut_down()

    def __enter__(self) -> Bus:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._state == "running"

    def status(self) -> dict[str, Any]:
        """What this bus does, as served at :attr:`address` (JSON-ready)."""
        with self._lock:
            consumptions = list(self._consumptions.values())
        return {
            "address": self.address,
            "name": self.name,
            "url": safe_url(self.url),
            "transport": "memory" if is_memory(self.url) else "amqp",
            "state": self._state,
            "started_at": self._started_at.isoformat() if self._started_at else None,
            "subscriptions": sorted(c.target for c in consumptions if c.kind == "topic"),
            "tables_followed": sorted(c.target for c in consumptions if c.kind == "table"),
            # A copy, taken in one step: publish_table may be adding a table.
            "tables_published": sorted(self._tables.copy()),
            "serving": sorted(c.target for c in consumptions if c.kind == "service"),
            "dead_lettered": len(self.dead_lettered),
        }

    def _shut_down(self) -> None:
        self._state = "closed"
        workers = (self._subscriber, self._server, self._replies)
        for worker in workers:
            worker.request_stop()
        # Requests waiting for replies (maybe inside a callback the joins
        # below wait for) give up now rather than at their timeout.
        for inbox in list(self._waiting.values()):
            inbox.put(_CLOSED)
        for worker in workers:
            worker.join()
        with self._lock:
            self._consumptions.clear()
        self._publisher.close()

    def _check_running(self) -> None:
        if self._state != "running":
            raise BusClosed(f"{self!r} is not running; start() it first")

    # -- publish / subscribe -------------------------------------------------------------------

    def publish(self, topic: str, data: Any) -> None:
        """Send ``data`` (JSON-serialisable) to every subscription whose pattern matches ``topic``.

        On RabbitMQ the message is persistent and confirmed: when this
        returns, the broker has it (or :class:`BusConnectionError` was raised).
        """
        _check_name("topic", topic)
        body = encode(data, f"data published on {topic!r}")
        self._check_running()
        self._send(body, exchange=self._topics, routing_key=topic)

    def subscribe(self, pattern: str, callback: Callback, *, subscription_id: str | None = None,
                  queue: str | None = None) -> str:
        """Call ``callback(topic, data)`` for every message whose topic matches ``pattern``.

        ``pattern`` uses AMQP topic wildcards: ``*`` is one word, ``#`` zero
        or more (``compute.instance.#``). Without ``queue`` the subscription
        has a private queue and gets every matching message; subscriptions
        (in any Bus, in any process) naming the same ``queue`` share one
        durable queue and split its messages between them. One Bus consumes
        a named queue at most once: its callbacks run on one thread anyway.

        Returns the subscription id (``subscription_id``, or a new UUID).
        """
        _check_name("pattern", pattern, wildcards=True)
        if not callable(callback):
            raise TypeError("callback must be callable (topic, data)")
        if queue is not None:
            _check_name("queue", queue)
        return self._consume("topic", pattern, partial(self._deliver, callback),
                             subscription_id=subscription_id, shared_queue=queue)

    def unsubscribe(self, subscription_id: str) -> bool:
        """Stop a subscription, table subscription or service; False if there was none.

        A private queue is deleted with whatever it still holds; a named
        queue stays, with its messages, for its other consumers.
        """
        with self._lock:
            consumption = self._consumptions.pop(subscription_id, None)
        if consumption is None:
            return False
        consumption.worker.cancel(subscription_id)
        return True

    def _consume(self, kind: str, target: str, on_message: Callable[..., None], *,
                 subscription_id: str | None, shared_queue: str | None = None) -> str:
        self._check_running()
        consumption_id = str(uuid.uuid4()) if subscription_id is None else subscription_id
        _check_name("subscription_id", consumption_id, wildcards=True)
        if kind == "service":
            worker, exchange = self._server, self._requests
        else:
            worker, exchange = self._subscriber, self._topics
        queue_name = shared_queue or f"{self.address}.{consumption_id}"
        consumption = _Consumption(consumption_id, kind, target, queue_name, worker)
        with self._lock:
            if consumption_id in self._consumptions:
                raise ValueError(f"this bus already has a subscription {consumption_id!r}")
            if shared_queue is not None and any(
                    c.queue == shared_queue for c in self._consumptions.values()):
                raise ValueError(f"this bus already consumes queue {shared_queue!r}")
            self._consumptions[consumption_id] = consumption
        if shared_queue is None:
            kombu_queue = Queue(queue_name, exchange, routing_key=target, durable=False,
                                exclusive=True, auto_delete=True)
        else:
            kombu_queue = Queue(queue_name, exchange, routing_key=target, durable=True,
                                exclusive=False, auto_delete=False)
        try:
            worker.consume(consumption_id, kombu_queue, partial(on_message, consumption),
                           private=shared_queue is None, prefetch=self.prefetch_count)
        except BaseException:
            with self._lock:
                self._consumptions.pop(consumption_id, None)
            raise
        return consumption_id

    def _deliver(self, callback: Callback, consumption: _Consumption, message: Message) -> None:
        """Run one subscription callback; on the subscriptions thread."""
        headers = message.headers or {}
        topic = headers.get(TOPIC_HEADER) or message.delivery_info.get("routing_key", "")
        attempts = _count(headers.get(REDELIVERIES_HEADER)) + 1
        self.messages_in += 1
        try:
            data = message.decode()
        except Exception as exc:  # noqa: BLE001 - kombu raises several types for bad content
            body = message.body.decode("utf-8", "replace") if isinstance(message.body, bytes) \
                else message.body
            self._dead_letter(topic, body, f"cannot decode the message: {describe(exc)}",
                              attempts)
            message.ack()
            return
        try:
            callback(topic, data)
        except Exception as exc:  # noqa: BLE001 - any callback failure means "try again"
            if self._state != "running":
                # The bus closed under the callback (BusClosed from a publish or a
                # request): not the message's fault. Back to its queue for the next
                # consumer, neither counted as an attempt nor dead-lettered.
                logger.debug("subscription %s: bus closing, %r goes back to its queue (%s)",
                             consumption.id, topic, describe(exc))
                message.requeue()
                return
            if attempts <= self.max_redeliveries:
                logger.warning("subscription %s: callback failed on %r (attempt %d of %d), "
                               "redelivering: %s", consumption.id, topic, attempts,
                               self.max_redeliveries + 1, describe(exc))
                # Published before the ack: a crash in between duplicates, never loses.
                self._send(
                    message.body, exchange="", routing_key=consumption.queue,
                    headers={**headers, REDELIVERIES_HEADER: attempts, TOPIC_HEADER: topic},
                    content_type=message.content_type,
                    content_encoding=message.content_encoding)
            else:
                self._dead_letter(topic, data, describe(exc), attempts)
        message.ack()

    def _dead_letter(self, topic: str, data: Any, error: str, attempts: int) -> None:
        try:
            self._dead_letters(topic, data, error, attempts)
        except Exception:  # noqa: BLE001 - the message must not be lost with the sink
            logger.exception("the dead_letters callable failed; keeping the message in "
                             "bus.dead_lettered instead")
            self._keep_dead_letter(topic, data, error, attempts)

    def _keep_dead_letter(self, topic: str, data: Any, error: str, attempts: int) -> None:
        logger.error("dead-lettered a message on %r after %d attempt(s): %s", topic, attempts,
                     error)
        self.dead_lettered.append(DeadLetter(topic, data, error, attempts))

    # -- request / reply -----------------------------------------------------------------------

    def serve(self, address: str, handler: Handler) -> str:
        """Answer requests to ``address`` with ``handler(data)``; returns an id for unsubscribe.

        Several servers (in this or other buses) may serve one address: each
        gets every request. A handler that raises sends back its error (the
        requester's :meth:`request` raises :class:`BusRemoteError`).
        """
        _check_name("address", address)
        if not callable(handler):
            raise TypeError("handler must be callable (data) -> reply")
        return self._consume("service", address, partial(self._answer, handler),
                             subscription_id=None)

    def request(self, address: str, data: Any, timeout: float = 5.0) -> Any:
        """Send ``data`` to ``address`` and return the first reply.

        Raises :class:`BusTimeout` if no server replied within ``timeout``
        seconds, :class:`BusRemoteError` if the first reply is an error.
        """
        replies = self._ask(address, data, timeout, first_only=True)
        if not replies:
            raise BusTimeout(f"no reply from {address!r} within {timeout:g} s")
        reply = replies[0]
        if reply.error is not None:
            raise BusRemoteError(address, reply.server, reply.error)
        return reply.data

    def request_all(self, address: str, data: Any, timeout: float = 5.0) -> list[Reply]:
        """Send ``data`` to ``address`` and collect every :class:`Reply` until ``timeout``."""
        return self._ask(address, data, timeout, first_only=False)

    def _ask(self, address: str, data: Any, timeout: float, *, first_only: bool) -> list[Reply]:
        _check_name("address", address)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        body = encode(data, f"the request to {address!r}")
        self._check_running()
        correlation_id = uuid.uuid4().hex
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting[correlation_id] = inbox
        try:
            # The expiration stops a server that comes late from answering a
            # requester that gave up (RabbitMQ only; memory:// ignores it).
            self._send(body, exchange=self._requests, routing_key=address,
                                    persistent=False, reply_to=self._reply_queue.name,
                                    correlation_id=correlation_id, expiration=timeout)
            deadline = time.monotonic() + timeout
            replies: list[Reply] = []
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    reply = inbox.get(timeout=remaining)
                except queue.Empty:
                    break
                if reply is _CLOSED:
                    raise BusClosed(f"{self!r} closed while waiting for {address!r}")
                replies.append(reply)
                if first_only:
                    break
            return replies
        finally:
            del self._waiting[correlation_id]

    def _answer(self, handler: Handler, consumption: _Consumption, message: Message) -> None:
        """Run one serve handler and send its reply; on the services thread."""
        self.messages_in += 1
        properties = message.properties or {}
        reply_to = properties.get("reply_to")
        try:
            body = encode({"server": self.address, "data": handler(message.decode())},
                          f"the reply from {consumption.target!r}")
        except Exception as exc:  # noqa: BLE001 - the requester gets the error instead
            logger.warning("serving %r: the handler failed: %s", consumption.target,
                           describe(exc))
            body = encode({"server": self.address, "error": describe(exc)}, "an error reply")
        if reply_to:
            self._send(body, exchange="", routing_key=reply_to, persistent=False,
                                    correlation_id=properties.get("correlation_id"))
        message.ack()

    def _on_reply(self, message: Message) -> None:
        """Hand a reply to the request waiting for it; on the replies thread."""
        self.messages_in += 1
        correlation_id = (message.properties or {}).get("correlation_id")
        inbox = self._waiting.get(correlation_id)
        if inbox is None:
            logger.debug("dropped a reply nobody waits for any more (%s)", correlation_id)
        else:
            try:
                body = message.decode()
                reply = Reply(server=str(body.get("server")), data=body.get("data"),
                              error=body.get("error"))
            except Exception as exc:  # noqa: BLE001 - a foreign reply must not kill the thread
                reply = Reply(server="?", error=f"undecodable reply: {describe(exc)}")
            inbox.put(reply)
        message.ack()

    # -- tables --------------------------------------------------------------------------------

    def publish_table(self, topic: str, rows: Mapping[str, Any]) -> dict[str, Any] | None:
        """Publish the current state of a table (string keys, JSON rows) on ``topic``.

        The first call makes this bus the table's publisher: it serves the
        snapshot to new subscribers (:meth:`subscribe_table`). Each call
        publishes only the delta from the previous snapshot; returns it
        (``{"added", "changed", "removed"}``), or None if nothing changed.
        One publisher per table topic.
        """
        _check_name("topic", topic)
        self._check_running()
        with self._tables_lock:
            publication = self._tables.get(topic)
            if publication is None:
                publication = TablePublication(topic)
                self.serve(table_address(topic), publication.snapshot)
                self._tables[topic] = publication
        with publication.lock:
            message = publication.update(rows)
            if message is None:
                return None
            self._send(encode(message, f"the table {topic!r}"),
                                    exchange=self._topics, routing_key=topic)
        return message["delta"]

    def subscribe_table(self, topic: str, callback: TableCallback, *,
                        subscription_id: str | None = None, timeout: float = 5.0) -> str:
        """Follow the table published on ``topic``: ``callback("snapshot", rows)``, then deltas.

        The callback first gets ``("snapshot", {key: row})``, then
        ``("delta", {"added": {...}, "changed": {...}, "removed": [...]})`` for
        each change (see :func:`apply_delta`). A later snapshot replaces the
        whole table: it comes when the publisher restarted or a change was
        missed. Without a publisher answering within ``timeout`` seconds the
        first snapshot is empty, and the table fills from the publisher's
        first change. Callbacks run on the subscriptions thread.
        """
        _check_name("topic", topic)
        if not callable(callback):
            raise TypeError("callback must be callable (kind, payload)")
        follower = TableFollower(topic, callback, partial(
            self.request, table_address(topic), {"topic": topic}, timeout))
        consumption_id = self._consume("table", topic, partial(self._deliver, follower.on_message),
                                       subscription_id=subscription_id)
        # After the queue is bound, so no change between snapshot and first delta is lost.
        self._subscriber.post(follower.start)
        return consumption_id


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
