"""``publish`` and ``notabene``: send a run's events to RabbitMQ as OpenStack notifications.

Each event becomes one AMQP message whose body is a legacy (oslo "format
1.0", no envelope) notification, the form StackTach's notabene published and
oslo listeners accept::

    {"message_id": "...", "event_type": "compute.instance.exists.verified",
     "timestamp": "2015-02-01 00:00:00.000000", "priority": "INFO",
     "publisher_id": "winchester",
     "payload": {"instance_id": "...", "launched_at": "2015-01-31 22:10:00.000000", ...}}

The payload holds the event's traits; datetimes are written the way
``str(utcnow())`` writes them in OpenStack, always with microseconds. Items
found in ``env`` that already are notifications (their ``payload`` is a
mapping) are sent as they are, with only their datetimes turned into text.

``handle_events`` only builds the bodies (so a bad item fails the run and
rolls it back); ``commit`` publishes them through kombu's shared connection
pool, with publisher confirms, so a message the broker did not take raises
instead of vanishing.
"""

from __future__ import annotations

import atexit
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

import amqp.exceptions
import orjson
from kombu import Connection, Exchange, Queue, pools
from kombu.exceptions import KombuError
from kombu.utils.collections import eqhash

from winchester.distill import EventTypeMatcher
from winchester.errors import WinchesterError
from winchester.events import REQUIRED_KEYS, Event, to_naive_utc
from winchester.pipelines._handler import Handler

logger = logging.getLogger(__name__)

DEFAULT_URL = "amqp://guest:guest@localhost:5672//"
DEFAULT_ROUTING_KEY = "notifications.info"
# str(datetime) as OpenStack writes it, but never dropping a zero fraction,
# so every timestamp we send has one shape.
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
PRIORITIES = ("AUDIT", "DEBUG", "INFO", "WARN", "ERROR", "CRITICAL", "SAMPLE")
EXCHANGE_TYPES = ("topic", "direct", "fanout", "headers")
URL_SCHEMES = ("amqp", "amqps", "pyamqp")

# Every way a publish can fail once the broker is involved; anything else is a bug
# and keeps its own type.
_PUBLISH_ERRORS = (KombuError, amqp.exceptions.AMQPError, amqp.exceptions.MessageNacked, OSError)


class PublishError(WinchesterError):
    """Events could not be turned into notifications, or the broker did not take them."""


# --- parameter checks (messages name the param; the loader adds where it is) ------------

def _text(name: str, value: Any, *, secret: bool = False) -> str:
    if not isinstance(value, str) or not value:
        shown = "" if secret else f", not {value!r}"
        raise TypeError(f"{name} must be a non-empty string{shown}")
    return value


def _names(name: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) and v for v in value):
        raise TypeError(f"{name} must be a list of non-empty strings, not {value!r}")
    return tuple(value)


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number >= 0, not {value!r}")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, not {value!r}")
    return value


def _priority(value: Any) -> str:
    text = value.upper() if isinstance(value, str) else value
    text = "WARN" if text == "WARNING" else text  # oslo's warning() sends WARN
    if text not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, not {value!r}")
    return text


def _check_url(value: Any) -> str:
    # The URL may carry a password: never echo it back.
    if not isinstance(value, str) or not value:
        raise TypeError("url must be a non-empty string such as amqp://user:password@host:5672//")
    scheme = urlsplit(value).scheme
    if scheme not in URL_SCHEMES:
        raise ValueError(f"url must start with {', '.join(s + '://' for s in URL_SCHEMES)}; "
                         f"its scheme is {scheme!r}")
    return value


# --- notification bodies -------------------------------------------------------------------

def format_timestamp(value: datetime) -> str:
    """A datetime as OpenStack notifications write it (naive UTC, microseconds)."""
    return to_naive_utc(value).strftime(TIMESTAMP_FORMAT)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _identifier(item: Mapping[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if isinstance(value, uuid.UUID):  # the original's usage handler made UUID objects
        value = str(value)
    if not isinstance(value, str) or not value:
        raise PublishError(f"{where}: {key} must be a non-empty string, not {value!r}")
    return value


class PublishHandler(Handler):
    """Publish the run's events (or those handlers left in ``env``) as OpenStack notifications.

    Params:

    ``exchange`` (required)
        Name of the exchange, declared on first use with ``exchange_type``
        (``topic``) and ``durable`` (true). RabbitMQ refuses to redeclare an
        exchange with other flags: oslo's own exchanges (``nova``, ...) are
        not durable unless ``amqp_durable_queues`` is set.
    ``url``
        The broker, ``amqp://user:password@host:5672/vhost`` (``//`` is the
        default vhost ``/``). Default ``amqp://guest:guest@localhost:5672//``.
    ``routing_key`` (alias ``topic``)
        Default ``notifications.info``, what oslo listeners bind to.
    ``queue``
        Optional queue to declare and bind with the routing key, so messages
        are kept even while nobody consumes (the original notabene did this).
    ``event_types``
        Shell-glob patterns (``compute.instance.exists.*``; ``!glob``
        excludes); only matching events are published. Default: all.
    ``env_keys``
        Publish the events other handlers left in ``env`` under these keys
        (the usage handler leaves its verdicts in ``usage_notifications``).
    ``publish_events``
        Whether the run's own events are published. Default: only when no
        ``env_keys`` are given. Events are sent once even if listed twice.
    ``publisher_id`` / ``priority``
        Written into each notification (``winchester`` / ``INFO``).
    ``connect_timeout`` (5 s), ``max_retries`` (3), ``confirm`` (true), ``confirm_timeout`` (10 s)
        Connection and retry behaviour; ``confirm`` waits for the broker to
        acknowledge each message.
    """

    def __init__(self, *, exchange: str, url: str = DEFAULT_URL, exchange_type: str = "topic",
                 routing_key: str | None = None, topic: str | None = None,
                 queue: str | None = None, event_types: Sequence[str] | None = None,
                 env_keys: Sequence[str] | None = None, publish_events: bool | None = None,
                 durable: bool = True, publisher_id: str = "winchester", priority: str = "INFO",
                 connect_timeout: float = 5.0, max_retries: int = 3, confirm: bool = True,
                 confirm_timeout: float = 10.0):
        super().__init__()
        self.url = _check_url(url)
        self.exchange = _text("exchange", exchange)
        if exchange_type not in EXCHANGE_TYPES:
            raise ValueError(f"exchange_type must be one of {', '.join(EXCHANGE_TYPES)}, "
                             f"not {exchange_type!r}")
        self.exchange_type = exchange_type
        if routing_key is not None and topic is not None and routing_key != topic:
            raise ValueError(f"routing_key {routing_key!r} and topic {topic!r} disagree; "
                             "topic is another name for routing_key, give one of them")
        self.routing_key = _text("routing_key" if topic is None else "topic",
                                 routing_key if routing_key is not None
                                 else topic if topic is not None else DEFAULT_ROUTING_KEY)
        self.queue = None if queue is None else _text("queue", queue)
        self.event_types = _names("event_types", event_types)
        self.env_keys = _names("env_keys", env_keys) or ()
        if publish_events is None:
            publish_events = not self.env_keys
        self.publish_events = _flag("publish_events", publish_events)
        self.durable = _flag("durable", durable)
        self.publisher_id = _text("publisher_id", publisher_id)
        self.priority = _priority(priority)
        self.connect_timeout = _seconds("connect_timeout", connect_timeout)
        self.max_retries = _count("max_retries", max_retries)
        self.confirm = _flag("confirm", confirm)
        self.confirm_timeout = _seconds("confirm_timeout", confirm_timeout)
        self._matcher = EventTypeMatcher(list(self.event_types)) if self.event_types else None
        # (event_type, message_id, JSON body) of what commit() will send.
        self.pending: list[tuple[str, str, bytes]] = []

    # -- the run --------------------------------------------------------------------------

    def handle_events(self, events: list[Event], env: dict[str, Any]) -> list[Event]:
        sources: list[tuple[str, Any]] = []
        if self.publish_events:
            sources.append(("the run's events", events))
        for key in self.env_keys:
            items = env.get(key)
            if items is None:
                continue
            if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
                raise PublishError(f"env[{key!r}] must be a list of events, "
                                   f"not {type(items).__name__}")
            sources.append((f"env[{key!r}]", items))
        pending = []
        seen: set[str] = set()
        for label, items in sources:
            for position, item in enumerate(items):
                where = f"{label} #{position}"
                if not isinstance(item, Mapping):
                    raise PublishError(f"{where} is a {type(item).__name__}, not an event")
                event_type = _identifier(item, "event_type", where)
                if self._matcher is not None and not self._matcher(event_type):
                    continue
                body = self.notification(item, where)
                if body["message_id"] in seen:
                    continue
                seen.add(body["message_id"])
                try:
                    encoded = orjson.dumps(body)
                except TypeError as exc:
                    raise PublishError(f"{where} ({event_type} {body['message_id']}) cannot be "
                                       f"written as JSON: {exc}") from None
                pending.append((event_type, body["message_id"], encoded))
        self.pending = pending
        return events

    def notification(self, item: Mapping[str, Any], where: str = "event") -> dict[str, Any]:
        """The OpenStack notification for one event (or notification-shaped item)."""
        event_type = _identifier(item, "event_type", where)
        message_id = _identifier(item, "message_id", where)
        timestamp = item.get("timestamp")
        if isinstance(timestamp, datetime):
            timestamp = format_timestamp(timestamp)
        elif not isinstance(timestamp, str) or not timestamp:
            raise PublishError(f"{where} ({message_id}): timestamp must be a datetime, "
                               f"not {timestamp!r}")
        if isinstance(item.get("payload"), Mapping):
            body = {key: _plain(value) for key, value in item.items()}
            body.update(message_id=message_id, timestamp=timestamp)
            if not isinstance(body.get("publisher_id"), str):
                body["publisher_id"] = self.publisher_id
            if not isinstance(body.get("priority"), str):
                body["priority"] = self.priority
            return body
        # The key order oslo.messaging writes.
        return {"message_id": message_id, "publisher_id": self.publisher_id,
                "event_type": event_type, "priority": self.priority,
                "payload": {key: _plain(value) for key, value in item.items()
                            if key not in REQUIRED_KEYS},
                "timestamp": timestamp}

    def commit(self) -> None:
        pending, self.pending = self.pending, []
        if not pending:
            return
        exchange = Exchange(self.exchange, type=self.exchange_type, durable=self.durable,
                            auto_delete=False)
        declare: list[Any] = [exchange]
        if self.queue is not None:
            declare.append(Queue(self.queue, exchange, routing_key=self.routing_key,
                                 durable=self.durable, auto_delete=False))
        retry_policy = self._retry_policy()
        key = self._connection()
        sent = 0
        try:
            # On an error inside the block kombu replaces the pooled connection,
            # so one broken channel does not poison later runs.
            with pools.producers[key].acquire(block=True, timeout=self.connect_timeout) as producer:
                for event_type, message_id, body in pending:
                    producer.publish(
                        body, exchange=exchange, routing_key=self.routing_key, declare=declare,
                        content_type="application/json", content_encoding="utf-8",
                        delivery_mode=2, retry=True, retry_policy=retry_policy,
                        confirm_timeout=self.confirm_timeout if self.confirm else None)
                    sent += 1
                    logger.debug("published %s %s to exchange %r with routing key %r",
                                 event_type, message_id, self.exchange, self.routing_key)
        except _PUBLISH_ERRORS as exc:
            raise PublishError(
                f"publishing to exchange {self.exchange!r} (routing key {self.routing_key!r}) at "
                f"{key.as_uri()} failed after {sent} of {len(pending)} notification(s): "
                f"{type(exc).__name__}: {exc}") from exc

    def rollback(self) -> None:
        self.pending = []

    def describe_commit(self) -> str:
        """What commit() would send (for dry runs)."""
        if not self.pending:
            return "would publish nothing"
        types = Counter(event_type for event_type, _, _ in self.pending)
        return (f"would publish {len(self.pending)} notification(s) to exchange {self.exchange!r} "
                f"with routing key {self.routing_key!r}: "
                + ", ".join(f"{count} {name}" for name, count in sorted(types.items())))

    # -- connections ----------------------------------------------------------------------

    def _retry_policy(self) -> dict[str, Any]:
        # Start retrying at once, then back off a little: a broker restart
        # takes seconds, and the worker must not stall for minutes.
        return {"max_retries": self.max_retries, "interval_start": 0,
                "interval_step": 0.5, "interval_max": 2}

    def _connection(self) -> Connection:
        """The (never connected) key of this handler's pool in ``kombu.pools``."""
        options = {"confirm_publish": self.confirm, **self._retry_policy()}
        # kombu keys its pools by host, credentials, vhost and transport
        # options, so handlers with the same settings share connections.
        connection = Connection(self.url, connect_timeout=self.connect_timeout,
                                transport_options=options)
        with _pool_lock:
            _pool_keys.setdefault(eqhash(connection), connection)
        return connection


class NotabeneHandler(PublishHandler):
    """The original's ``notabene`` handler, with its parameter names.

    ``host``, ``port``, ``user``, ``password`` and ``vhost`` make the URL;
    ``queue_name`` is both the routing key and a durable queue declared and
    bound so nothing is lost; only the events under ``env_keys`` are
    published, as the original did. ``library`` (``librabbitmq``, ...) is
    accepted and ignored: kombu's pure-Python transport is used. The other
    :class:`PublishHandler` params are accepted too.
    """

    def __init__(self, *, exchange: str, queue_name: str, host: str = "localhost",
                 port: int = 5672, user: str = "guest", password: str = "guest",
                 vhost: str = "/", library: str | None = None, exchange_type: str = "topic",
                 env_keys: Sequence[str] | None = None, publish_events: bool = False,
                 event_types: Sequence[str] | None = None, durable: bool = True,
                 publisher_id: str = "winchester", priority: str = "INFO",
                 connect_timeout: float = 5.0, max_retries: int = 3, confirm: bool = True,
                 confirm_timeout: float = 10.0):
        if library is not None:
            logger.debug("notabene: library %r ignored; kombu chooses the transport", library)
        super().__init__(
            url=notabene_url(host=host, port=port, user=user, password=password, vhost=vhost),
            exchange=exchange, exchange_type=exchange_type,
            routing_key=_text("queue_name", queue_name), queue=queue_name,
            event_types=event_types, env_keys=env_keys, publish_events=publish_events,
            durable=durable, publisher_id=publisher_id, priority=priority,
            connect_timeout=connect_timeout, max_retries=max_retries, confirm=confirm,
            confirm_timeout=confirm_timeout)


def notabene_url(*, host: str, port: int, user: str, password: str, vhost: str) -> str:
    """The kombu URL for the original's connection params (``vhost`` ``/`` is ``%2F``)."""
    host = _text("host", host)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port must be a whole number from 1 to 65535, not {port!r}")
    user = _text("user", user)
    if not isinstance(password, str):
        raise TypeError("password must be a string")
    if not isinstance(vhost, str):
        raise TypeError(f"vhost must be a string, not {vhost!r}")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    # Quote everything: "/" in the vhost or "@" in a password would
    # otherwise change how the URL splits.
    return (f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/"
            f"{quote(vhost, safe='')}")


# --- the shared pools ----------------------------------------------------------------------

_pool_lock = threading.Lock()
_pool_keys: dict[Any, Connection] = {}


def close_pools() -> None:
    """Close the pooled connections the publish handlers opened (idempotent).

    Registered with :mod:`atexit` so the broker sees a clean close; tests call
    it so no socket outlives them. Handlers used later open new pools.
    """
    with _pool_lock:
        keys = list(_pool_keys.values())
        _pool_keys.clear()
    for key in keys:
        for group in (pools.producers, pools.connections):
            if eqhash(key) in group:
                pool = group[key]
                del group[key]
                try:
                    pool.force_close_all()
                except Exception:  # noqa: BLE001 - a dead socket may fail to close; it is gone
                    logger.debug("closing a publish connection pool failed", exc_info=True)


atexit.register(close_pools)
