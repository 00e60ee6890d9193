"""The one connection a bus publishes through, shared by every thread under a lock."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import amqp.exceptions
from kombu import Connection, Exchange, Producer
from kombu.exceptions import KombuError

from winchester.bus._connect import open_connection, safe_url
from winchester.bus._errors import BusClosed, BusConnectionError

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
# Every way talking to the broker can fail; anything else is a bug and keeps its type.
BROKER_ERRORS = (KombuError, amqp.exceptions.AMQPError, OSError)
# Start retrying at once, then back off a little: a broker restart takes
# seconds, and a caller blocked in publish() must hear about an outage soon.
RETRY_POLICY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 2}


class Publisher:
    """Publishes pre-encoded JSON bodies; reconnects (and retries) when the broker goes away."""

    def __init__(self, url: str, *, connect_timeout: float, declare: Sequence[Exchange]):
        self.url = url
        self._connect_timeout = connect_timeout
        self._declare = list(declare)
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._closed = False

    def open(self) -> None:
        """Connect and declare the exchanges now, so a bad URL or a clash fails at start."""
        with self._lock:
            self._ensure_producer(initial=True)

    def publish(self, body: str | bytes, *, exchange: Exchange | str, routing_key: str,
                headers: dict[str, Any] | None = None, persistent: bool = True,
                content_type: str = CONTENT_TYPE, content_encoding: str = CONTENT_ENCODING,
                **properties: Any) -> None:
        name = exchange.name if isinstance(exchange, Exchange) else exchange
        with self._lock:
            if self._closed:
                raise BusClosed("the bus is closed")
            try:
                producer = self._ensure_producer(initial=False)
                producer.publish(
                    body, exchange=exchange, routing_key=routing_key, headers=headers or {},
                    content_type=content_type, content_encoding=content_encoding,
                    delivery_mode=2 if persistent else 1, retry=True, retry_policy=RETRY_POLICY,
                    **properties)
            except BROKER_ERRORS as exc:
                # A channel error leaves kombu's default channel closed for good:
                # start from a fresh connection next time.
                self._drop()
                raise BusConnectionError(
                    f"publishing to exchange {name!r} (routing key {routing_key!r}) at "
                    f"{safe_url(self.url)} failed: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()

    def _ensure_producer(self, *, initial: bool) -> Producer:
        if self._producer is not None:
            return self._producer
        connection = open_connection(self.url, connect_timeout=self._connect_timeout,
                                     consumer=False)
        try:
            connection.ensure_connection(max_retries=2 if initial else RETRY_POLICY["max_retries"],
                                         interval_start=0.2, interval_step=0.5, interval_max=2)
            channel = connection.default_channel
            for exchange in self._declare:
                exchange(channel).declare()
        except BROKER_ERRORS as exc:
            connection.release()
            raise BusConnectionError(f"cannot connect to {safe_url(self.url)}: "
                                     f"{type(exc).__name__}: {exc}") from exc
        self._connection = connection
        self._producer = Producer(channel)
        return self._producer

    def _drop(self) -> None:
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            try:
                connection.release()
            except BROKER_ERRORS:  # a dead socket may fail to close; it is gone either way
                logger.debug("closing the publishing connection failed", exc_info=True)
