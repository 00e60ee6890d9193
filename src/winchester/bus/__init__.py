"""The bus: a small data services engine on kombu.

One API over two transports: ``memory://`` (the embedded default, no server;
every :class:`Bus` in the process shares it, nothing crosses processes) and
RabbitMQ (``amqp://user:password@host:5672//``)::

    with Bus("memory://") as bus:
        bus.subscribe("compute.instance.#", lambda topic, data: print(topic, data))
        bus.publish("compute.instance.create.end", {"instance_id": "abc"})

        bus.serve("hosts", lambda request: {"count": 3})
        bus.request("hosts", {})                  # {"count": 3}

        bus.publish_table("hosts.state", {"host-a": {"up": True}})
        bus.subscribe_table("hosts.state", lambda kind, payload: ...)

Topics and wildcards
    ``publish(topic, data)`` sends JSON-serialisable ``data`` (kombu's JSON,
    which also carries datetimes, dates, UUIDs and decimals between buses).
    ``subscribe(pattern, callback)`` takes AMQP topic patterns: ``*`` is one
    dot-separated word, ``#`` zero or more. Each subscription has a private
    queue and gets every matching message (fan-out); subscriptions naming the
    same ``queue=`` share one durable queue and split its messages (work
    sharing, across buses and processes).

Delivery
    A message is acknowledged only after its callback returned. A callback
    that raises gets the message again, up to ``max_redeliveries`` times
    (counted in a header, since classic queues do not count); then the
    message is dead-lettered: handed to ``dead_letters(topic, data, error,
    attempts)``, by default logged at ERROR and kept in ``bus.dead_lettered``.
    Nothing is dropped silently. Messages undecodable as JSON are
    dead-lettered at once.

Threads
    Subscription and table callbacks run one at a time on the bus's
    subscriptions thread; serve handlers on its services thread; replies are
    collected on a third. Each thread owns its connection and reconnects with
    backoff when it is lost; private queues are then recreated empty.

Request / reply
    ``serve(address, handler)`` answers requests to an address; several
    servers may share one. ``request(address, data, timeout)`` returns the
    first reply (raising :class:`BusTimeout`, or :class:`BusRemoteError` if
    the handler raised); ``request_all`` collects every :class:`Reply` until
    the timeout. Every bus serves its own unique ``bus.address`` with its
    :meth:`Bus.status`. Requests go through a direct exchange
    ``<name>.requests`` beside the topic exchange ``<name>``, so topic
    subscribers never see them.

Tables
    ``publish_table(topic, rows)`` publishes a table (string keys, JSON rows);
    a :meth:`Bus.subscribe_table` callback first receives ``("snapshot",
    rows)``, then ``("delta", {"added": {...}, "changed": {...}, "removed":
    [...]})`` for each change (:func:`apply_delta` rebuilds the table). The
    snapshot is fetched from the publisher by request; deltas carry a
    version, so a follower notices a gap or a restarted publisher and
    fetches a fresh snapshot, which replaces the table.

Data sources
    :class:`DataSourceDriver` (push: the subclass calls ``publish``) and
    :class:`PollingDataSourceDriver` (pull: ``poll()`` every ``interval``
    seconds, published as a table) do nothing until ``start()``, stop
    promptly, restart, and report :class:`DriverStatus`.
"""

from winchester.bus._bus import DEFAULT_NAME, Bus, DeadLetter, Reply
from winchester.bus._drivers import DataSourceDriver, DriverStatus, PollingDataSourceDriver
from winchester.bus._errors import (
    BusClosed,
    BusConnectionError,
    BusError,
    BusRemoteError,
    BusTimeout,
    DriverStopped,
)
from winchester.bus._tables import apply_delta

__all__ = [
    "DEFAULT_NAME",
    "Bus",
    "BusClosed",
    "BusConnectionError",
    "BusError",
    "BusRemoteError",
    "BusTimeout",
    "DataSourceDriver",
    "DeadLetter",
    "DriverStatus",
    "DriverStopped",
    "PollingDataSourceDriver",
    "Reply",
    "apply_delta",
]
