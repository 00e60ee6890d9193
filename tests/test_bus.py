"""The bus on both transports: kombu's memory:// and the real RabbitMQ.

Each test gets a private bus name (so its exchanges and queues are its own)
and cleans them up. Waits are on conditions, with generous timeouts; nothing
asserts on timing.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kombu import Connection, Exchange, Producer, Queue
from kombu.transport import memory

from tests.conftest import AMQP_URL, require_service
from tests.conftest import rabbitmq_problem as _rabbitmq_problem
from winchester.bus import (
    Bus,
    BusClosed,
    BusConnectionError,
    BusError,
    BusRemoteError,
    BusTimeout,
    DataSourceDriver,
    DriverStopped,
    PollingDataSourceDriver,
    apply_delta,
)
from winchester.bus._memory import topic_regex
from winchester.bus._tables import diff
from winchester.errors import WinchesterError

WAIT = 10.0


class Buses:
    """Starts Bus objects on one private bus and removes its exchanges and queues afterwards."""

    def __init__(self, url: str):
        self.url = url
        self.name = f"winchester-test-{uuid.uuid4().hex[:12]}"
        self._buses: list[Bus] = []
        self._queues: list[str] = []

    def new(self, **options: Any) -> Bus:
        bus = Bus(self.url, name=self.name, **options)
        self._buses.append(bus)
        return bus.start()

    def queue_name(self, label: str) -> str:
        """A named (durable) queue name, deleted after the test."""
        name = f"{self.name}.{label}"
        self._queues.append(name)
        return name

    def close(self) -> None:
        for bus in self._buses:
            bus.close()
        with Connection(self.url, connect_timeout=3) as connection:
            channel = connection.channel()
            for name in self._queues:
                Queue(name, channel=channel).delete()
            for name in (self.name, f"{self.name}.requests"):
                Exchange(name, channel=channel).delete()
            channel.close()


@contextmanager
def _buses_on(transport: str) -> Iterator[Buses]:
    if transport == "amqp":
        require_service(_rabbitmq_problem())
    buses = Buses(AMQP_URL if transport == "amqp" else "memory://")
    try:
        yield buses
    finally:
        buses.close()


@pytest.fixture(params=["memory", pytest.param("amqp", marks=pytest.mark.rabbitmq)])
def buses(request) -> Iterator[Buses]:
    with _buses_on(request.param) as started:
        yield started


@pytest.fixture
def memory_buses() -> Iterator[Buses]:
    with _buses_on("memory") as started:
        yield started


@pytest.fixture
def amqp_buses() -> Iterator[Buses]:
    with _buses_on("amqp") as started:
        yield started


class Inbox:
    """A callback that records its calls and lets the test wait for them."""

    def __init__(self, react: Callable[..., Any] | None = None):
        self.calls: list[tuple[Any, ...]] = []
        self._react = react
        self._changed = threading.Condition()

    def __call__(self, *args: Any) -> Any:
        with self._changed:
            self.calls.append(args)
            self._changed.notify_all()
        if self._react is not None:
            return self._react(*args)
        return None

    def wait_for(self, predicate: Callable[[list[tuple[Any, ...]]], bool],
                 what: str) -> list[tuple[Any, ...]]:
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.calls), timeout=WAIT):
                raise AssertionError(f"timed out waiting for {what}; got {self.calls!r}")
            return list(self.calls)

    def wait_count(self, count: int) -> list[tuple[Any, ...]]:
        return self.wait_for(lambda calls: len(calls) >= count, f"{count} call(s)")

    def data(self) -> list[Any]:
        return [call[1] for call in self.calls]


class TableCopy(Inbox):
    """A subscribe_table callback that rebuilds the table as it goes."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, Any] = {}

    def __call__(self, kind: str, payload: Any) -> None:
        with self._changed:
            if kind == "snapshot":
                self.rows = dict(payload)
            else:
                apply_delta(self.rows, payload)
            self.calls.append((kind, payload))
            self._changed.notify_all()

    def wait_for_rows(self, rows: dict[str, Any]) -> None:
        self.wait_for(lambda _calls: self.rows == rows, f"the table to become {rows!r}")


END = {"end": True}


def until_end(calls: list[tuple[Any, ...]]) -> bool:
    return any(call[1] == END for call in calls)


# --- publish / subscribe -------------------------------------------------------------------

def test_every_subscription_gets_every_message(buses):
    """Fan-out: subscriptions in the publishing bus and in another bus each get all, in order."""
    publisher, other = buses.new(), buses.new()
    inboxes = [Inbox(), Inbox(), Inbox()]
    publisher.subscribe("audit.#", inboxes[0])
    other.subscribe("audit.#", inboxes[1])
    other.subscribe("audit.#", inboxes[2])
    for n in range(5):
        publisher.publish("audit.day", {"n": n})
    for inbox in inboxes:
        inbox.wait_count(5)
        assert inbox.calls == [("audit.day", {"n": n}) for n in range(5)]


def test_subscriptions_sharing_a_named_queue_split_its_messages(buses):
    """Work sharing: two buses on one named queue split the messages, none lost or duplicated."""
    queue = buses.queue_name("work")
    both_busy = threading.Barrier(2, timeout=WAIT)
    done = Inbox()  # (worker, n) for every job handled
    for worker in range(2):
        def work(_topic: str, data: dict[str, int], worker: int = worker) -> None:
            if not any(call[0] == worker for call in done.calls):
                # Hold the first job until the other worker has one too, so
                # the split cannot depend on which thread happens to be faster.
                both_busy.wait()
            done(worker, data["n"])

        buses.new().subscribe("jobs.*", work, queue=queue)
    publisher = buses.new()
    count = 40
    for n in range(count):
        publisher.publish("jobs.resize", {"n": n})
    calls = done.wait_count(count)
    assert {worker for worker, _n in calls} == {0, 1}
    assert sorted(n for _worker, n in calls) == list(range(count))


def test_star_matches_one_word_and_hash_zero_or_more(buses):
    """``*`` is exactly one word; ``#`` is zero or more words, at either end or in the middle."""
    bus = buses.new()
    patterns = ["a.*", "a.#", "#.b", "a.#.b", "#", "*.b"]
    inboxes = {pattern: Inbox() for pattern in patterns}
    for pattern, inbox in inboxes.items():
        bus.subscribe(pattern, inbox)
    topics = ["a", "a.b", "a.c", "a.x.b", "a.x.y", "b", "x.b", "x.y.b"]
    for topic in topics:
        bus.publish(topic, {"topic": topic})
    bus.publish("a.b", END)  # matched by every pattern, so it arrives last everywhere
    received = {pattern: {call[0] for call in inbox.wait_for(until_end, "the end marker")
                          if call[1] != END}
                for pattern, inbox in inboxes.items()}
    assert received == {
        "a.*": {"a.b", "a.c"},
        "a.#": {"a", "a.b", "a.c", "a.x.b", "a.x.y"},
        "#.b": {"a.b", "a.x.b", "b", "x.b", "x.y.b"},
        "a.#.b": {"a.b", "a.x.b"},
        "#": set(topics),
        "*.b": {"a.b", "x.b"},
    }


def test_unsubscribe_stops_delivery(buses):
    """After unsubscribe the subscription gets nothing more; another one still does."""
    bus = buses.new()
    leaving, staying = Inbox(), Inbox()
    subscription = bus.subscribe("news", leaving)
    bus.subscribe("news", staying)
    bus.publish("news", {"n": 1})
    leaving.wait_count(1)
    assert bus.unsubscribe(subscription) is True
    assert bus.unsubscribe(subscription) is False
    bus.publish("news", {"n": 2})
    staying.wait_count(2)
    assert leaving.data() == [{"n": 1}]


def test_subscription_ids_are_uuids_unless_given(buses):
    """subscribe() returns a new UUID, or the id the caller chose (which must be unused)."""
    bus = buses.new()
    generated = bus.subscribe("x", Inbox())
    assert str(uuid.UUID(generated)) == generated
    assert bus.subscribe("x", Inbox(), subscription_id="mine") == "mine"
    with pytest.raises(ValueError, match="already has a subscription 'mine'"):
        bus.subscribe("y", Inbox(), subscription_id="mine")


def test_datetimes_travel_as_datetimes(buses):
    """kombu's JSON carries datetimes between buses, so events keep their timestamp type."""
    bus = buses.new()
    inbox = Inbox()
    bus.subscribe("events", inbox)
    when = datetime(2015, 2, 1, 12, 30, 5, 123456)
    bus.publish("events", {"timestamp": when, "traits": [1, "two", None]})
    assert inbox.wait_count(1)[0][1] == {"timestamp": when, "traits": [1, "two", None]}


def test_memory_unsubscribe_leaves_no_queue_behind(memory_buses):
    """memory://: a deleted queue is not recreated by later messages (kombu's would, and grow)."""
    bus = memory_buses.new()
    before = set(memory.Channel.queues)
    subscription = bus.subscribe("leak.#", Inbox())
    assert set(memory.Channel.queues) != before
    bus.unsubscribe(subscription)
    bus.publish("leak.test", {"n": 1})
    assert set(memory.Channel.queues) == before


# --- delivery: acknowledgement, redelivery, dead letters -------------------------------------

def test_callback_failing_once_gets_the_message_exactly_twice(buses):
    """The message is acked only after a callback returned: one failure, one redelivery, done."""
    bus = buses.new()
    failed = threading.Event()

    def flaky(_topic: str, data: dict[str, Any]) -> None:
        if data == {"n": 1} and not failed.is_set():
            failed.set()
            raise RuntimeError("not yet")

    inbox = Inbox(flaky)
    bus.subscribe("jobs", inbox)
    bus.publish("jobs", {"n": 1})
    inbox.wait_count(2)
    bus.publish("jobs", END)  # behind any further redelivery on the same queue
    calls = inbox.wait_for(until_end, "the end marker")
    assert [call[1] for call in calls] == [{"n": 1}, {"n": 1}, END]
    assert bus.dead_lettered == []


def test_failing_callback_is_redelivered_then_dead_lettered(buses, caplog):
    """After max_redeliveries redeliveries the message is kept, with its error, and logged."""
    bus = buses.new(max_redeliveries=2)

    def picky(_topic: str, data: dict[str, Any]) -> None:
        if data != END:
            raise ValueError("cannot handle this")

    inbox = Inbox(picky)
    bus.subscribe("orders.*", inbox)
    with caplog.at_level(logging.ERROR, logger="winchester.bus"):
        bus.publish("orders.new", {"id": 7})
        inbox.wait_count(3)
        bus.publish("orders.new", END)
        calls = inbox.wait_for(until_end, "the end marker")
    assert [call[1] for call in calls] == [{"id": 7}] * 3 + [END]
    [dead] = bus.dead_lettered
    assert (dead.topic, dead.data, dead.error, dead.attempts) == (
        "orders.new", {"id": 7}, "ValueError: cannot handle this", 3)
    assert any("dead-lettered" in record.getMessage() for record in caplog.records)


def test_dead_letters_go_to_the_given_sink(buses):
    """A dead_letters callable gets (topic, data, error, attempts) instead of the list."""
    sink = Inbox()

    def broken(_topic: str, _data: Any) -> None:
        raise KeyError("missing")

    bus = buses.new(dead_letters=sink, max_redeliveries=0)
    bus.subscribe("orders.*", broken)
    bus.publish("orders.paid", {"id": 8})
    assert sink.wait_count(1) == [("orders.paid", {"id": 8}, "KeyError: 'missing'", 1)]
    assert bus.dead_lettered == []


def test_undecodable_message_is_dead_lettered(buses):
    """A message that is not JSON reaches no callback and is dead-lettered at once."""
    sink, inbox = Inbox(), Inbox()
    bus = buses.new(dead_letters=sink)
    bus.subscribe("raw", inbox)
    with Connection(buses.url) as connection:
        Producer(connection.channel()).publish(
            b"not json", exchange=buses.name, routing_key="raw", content_type="text/plain",
            content_encoding="utf-8")
    [(topic, data, error, attempts)] = sink.wait_count(1)
    assert (topic, data, attempts) == ("raw", "not json", 1)
    assert "cannot decode" in error
    assert inbox.calls == []


@pytest.mark.rabbitmq
def test_a_consumer_reconnects_after_losing_its_connection(amqp_buses):
    """When the connection drops, consumers are declared again and a named queue loses nothing."""
    consumer, publisher = amqp_buses.new(), amqp_buses.new()
    inbox = Inbox()
    consumer.subscribe("jobs", inbox, queue=amqp_buses.queue_name("durable"))
    publisher.publish("jobs", {"n": 1})
    inbox.wait_count(1)
    # Cut the subscriptions thread's socket, as a network failure would.
    consumer._subscriber._connection.connection.sock.shutdown(socket.SHUT_RDWR)
    publisher.publish("jobs", {"n": 2})
    inbox.wait_for(lambda calls: any(call[1] == {"n": 2} for call in calls), "message 2")
    # The cut may come before the broker saw the first message's ack: then it
    # is delivered again (at least once), but nothing is lost.
    first_arrivals = []
    for data in inbox.data():
        if data not in first_arrivals:
            first_arrivals.append(data)
    assert first_arrivals == [{"n": 1}, {"n": 2}]


# --- request / reply -----------------------------------------------------------------------

def test_request_returns_the_servers_reply(buses):
    """request() sends data to an address and returns what the handler returned."""
    server, client = buses.new(), buses.new()
    server.serve("math.double", lambda data: {"result": data["x"] * 2})
    assert client.request("math.double", {"x": 21}) == {"result": 42}


def test_request_all_collects_every_servers_reply(buses):
    """Several servers on one address: request_all gets each reply, request the first one."""
    client = buses.new()
    servers = [buses.new() for _ in range(3)]
    for server in servers:
        server.serve("inventory", lambda _data, server=server: {"from": server.address})
    replies = client.request_all("inventory", {}, timeout=1.0)
    assert sorted(reply.server for reply in replies) == sorted(s.address for s in servers)
    assert all(reply.data == {"from": reply.server} and reply.error is None for reply in replies)
    assert client.request("inventory", {})["from"] in {s.address for s in servers}


def test_every_bus_answers_at_its_own_address(buses):
    """bus.address is unique and answers any request with the bus's status."""
    first, second = buses.new(), buses.new()
    assert first.address != second.address
    assert first.address.startswith(f"{buses.name}.")
    status = second.request(first.address, {"ping": True})
    assert status["address"] == first.address
    assert status["state"] == "running"


def test_request_without_a_server_times_out(buses):
    """No server: request() raises BusTimeout (a WinchesterError); request_all returns []."""
    bus = buses.new()
    with pytest.raises(BusTimeout, match="no reply from 'nobody.home' within 0.2 s") as caught:
        bus.request("nobody.home", {}, timeout=0.2)
    assert isinstance(caught.value, WinchesterError)
    assert bus.request_all("nobody.home", {}, timeout=0.2) == []


def test_unsubscribe_stops_a_service(buses):
    """The id serve() returns works with unsubscribe: the address stops answering."""
    server, client = buses.new(), buses.new()
    service = server.serve("echo", lambda data: data)
    assert client.request("echo", "hello") == "hello"
    assert server.unsubscribe(service) is True
    with pytest.raises(BusTimeout):
        client.request("echo", "anyone?", timeout=0.2)


def test_a_failing_handler_sends_its_error_back(buses):
    """A handler that raises makes request() raise BusRemoteError naming the server and error."""
    server, client = buses.new(), buses.new()

    def divide(data: dict[str, int]) -> float:
        return data["a"] / data["b"]

    server.serve("math.divide", divide)
    with pytest.raises(BusRemoteError) as caught:
        client.request("math.divide", {"a": 1, "b": 0})
    assert caught.value.server == server.address
    assert caught.value.error == "ZeroDivisionError: division by zero"


# --- tables --------------------------------------------------------------------------------

def test_table_subscriber_gets_a_snapshot_then_deltas(buses):
    """A new subscriber gets the full snapshot, then only deltas, and rebuilds the table exactly."""
    publisher, subscriber = buses.new(), buses.new()
    versions = [
        {"host-a": {"state": "up"}, "host-b": {"state": "up"}},
        {"host-a": {"state": "up"}, "host-b": {"state": "down"}, "host-c": {"state": "up"}},
        {"host-b": {"state": "down"}, "host-c": {"state": "up", "load": [0.5, 0.25]}},
    ]
    publisher.publish_table("hosts", versions[0])
    copy = TableCopy()
    subscriber.subscribe_table("hosts", copy)
    assert copy.wait_count(1) == [("snapshot", versions[0])]
    sent = [publisher.publish_table("hosts", rows) for rows in versions[1:]]
    assert publisher.publish_table("hosts", versions[-1]) is None  # no change, nothing sent
    copy.wait_for_rows(versions[-1])
    assert sent == [
        {"added": {"host-c": {"state": "up"}}, "changed": {"host-b": {"state": "down"}},
         "removed": []},
        {"added": {}, "changed": {"host-c": {"state": "up", "load": [0.5, 0.25]}},
         "removed": ["host-a"]},
    ]
    assert copy.calls[1:] == [("delta", delta) for delta in sent]


def test_every_bus_message_is_counted_both_ways(buses):
    """Table deltas, requests and replies count as bus messages (the metric said 0 while a
    table was being published): each side counts what it sent and what it took in."""
    publisher, subscriber = buses.new(), buses.new()
    publisher.publish_table("hosts", {"host-a": {"state": "up"}})
    copy = TableCopy()
    subscriber.subscribe_table("hosts", copy)  # a snapshot request and its reply
    copy.wait_count(1)
    publisher.publish_table("hosts", {"host-a": {"state": "down"}})  # one delta
    copy.wait_for_rows({"host-a": {"state": "down"}})
    assert publisher.messages_out >= 2  # the snapshot reply and the delta
    assert publisher.messages_in >= 1 and subscriber.messages_out >= 1  # the snapshot request
    assert subscriber.messages_in >= 2  # the reply and the delta


def test_late_table_subscriber_gets_the_current_snapshot(buses):
    """A subscriber arriving after several changes starts from the table as it is now."""
    publisher = buses.new()
    for n in range(4):
        publisher.publish_table("counters", {f"c{i}": i for i in range(n + 1)})
    late = TableCopy()
    buses.new().subscribe_table("counters", late)
    assert late.wait_count(1) == [("snapshot", {"c0": 0, "c1": 1, "c2": 2, "c3": 3})]


def test_table_subscriber_started_before_its_publisher(buses):
    """With no publisher yet the first snapshot is empty; the first change then fills it."""
    subscriber, publisher = buses.new(), buses.new()
    copy = TableCopy()
    subscriber.subscribe_table("flavors", copy, timeout=0.2)
    assert copy.wait_count(1) == [("snapshot", {})]
    publisher.publish_table("flavors", {"m1.small": {"ram": 2048}})
    copy.wait_for_rows({"m1.small": {"ram": 2048}})
    assert copy.calls[1] == ("delta", {"added": {"m1.small": {"ram": 2048}}, "changed": {},
                                       "removed": []})


def test_a_restarted_table_publisher_replaces_the_table(buses):
    """A new publisher of the table (a new epoch) makes subscribers take its full snapshot."""
    first, subscriber = buses.new(), buses.new()
    first.publish_table("zones", {"z1": "open", "z2": "open"})
    copy = TableCopy()
    subscriber.subscribe_table("zones", copy)
    copy.wait_count(1)
    first.close()
    second = buses.new()
    second.publish_table("zones", {"z3": "open"})
    copy.wait_for_rows({"z3": "open"})
    assert copy.calls[-1] == ("snapshot", {"z3": "open"})


# --- data-source drivers -------------------------------------------------------------------

class Counter(PollingDataSourceDriver):
    """Polls a counter; the poll numbers listed in ``failing`` raise."""

    def __init__(self, bus: Bus, topic: str, *, interval: float, failing: set[int] = frozenset()):
        super().__init__(bus, topic, interval=interval)
        self.failing = failing
        self.polled = Inbox()

    def poll(self) -> dict[str, Any]:
        number = len(self.polled.calls) + 1
        self.polled(number)
        if number in self.failing:
            raise ConnectionError(f"poll {number} failed")
        return {"count": number}


def test_polling_driver_starts_stops_and_restarts(buses):
    """Nothing happens before start(); stop() is prompt even mid-interval; start() resumes."""
    bus = buses.new()
    copy = TableCopy()
    bus.subscribe_table("counter", copy, timeout=0.2)  # nobody publishes it yet
    copy.wait_count(1)
    driver = Counter(bus, "counter", interval=3600)
    assert driver.status().running is False and driver.status().polls == 0
    driver.start()
    driver.polled.wait_count(1)
    copy.wait_for_rows({"count": 1})
    driver.stop()  # would take an hour if it slept through the interval
    assert driver.status().running is False
    driver.start()
    driver.polled.wait_count(2)
    copy.wait_for_rows({"count": 2})
    driver.stop()
    status = driver.status()
    assert (status.running, status.polls, status.published, status.errors) == (False, 2, 2, 0)
    assert status.last_poll_at is not None


def test_polling_driver_survives_failing_polls(buses, caplog):
    """A poll that raises is logged and counted, and polling goes on."""
    bus = buses.new()
    driver = Counter(bus, "counter", interval=0.01, failing={1, 3})
    with caplog.at_level(logging.ERROR, logger="winchester.bus"):
        driver.start()
        try:
            driver.polled.wait_count(5)
            assert driver.status().running is True
        finally:
            driver.stop()
    status = driver.status()
    assert status.errors == 2
    assert status.last_error == "ConnectionError: poll 3 failed"
    assert status.polls >= 5
    assert sum("poll 1 failed" in record.getMessage() for record in caplog.records) == 1


def test_push_driver_publishes_only_while_running(buses):
    """A push driver refuses to publish until started, and after it is stopped."""

    class Webhook(DataSourceDriver):
        def on_start(self) -> None:
            self.listening = True

        def on_stop(self) -> None:
            self.listening = False

        def received(self, payload: dict[str, Any]) -> None:
            self.publish(payload)

    bus = buses.new()
    inbox = Inbox()
    bus.subscribe("hooks", inbox)
    driver = Webhook(bus, "hooks")
    with pytest.raises(DriverStopped):
        driver.received({"n": 0})
    driver.start()
    assert driver.listening
    driver.received({"n": 1})
    assert inbox.wait_count(1) == [("hooks", {"n": 1})]
    driver.stop()
    assert not driver.listening
    with pytest.raises(DriverStopped, match="Webhook"):
        driver.received({"n": 2})
    assert driver.status().published == 1


# --- life cycle and argument checks --------------------------------------------------------

def test_a_bus_works_only_while_running(buses):
    """Before start() and after close() the bus refuses work with BusClosed; close is idempotent."""
    bus = Bus(buses.url, name=buses.name)
    with pytest.raises(BusClosed):
        bus.publish("x", {})
    with bus:
        assert bus.running
    bus.close()
    with pytest.raises(BusClosed):
        bus.subscribe("x", Inbox())
    with pytest.raises(BusClosed):
        bus.start()


def test_connection_errors_hide_the_password():
    """An unreachable broker fails start() with BusConnectionError; the URL shows no password."""
    bus = Bus("amqp://guest:s3cret@127.0.0.1:1//", connect_timeout=1)
    with pytest.raises(BusConnectionError) as caught:
        bus.start()
    assert "127.0.0.1:1" in str(caught.value)
    assert "s3cret" not in str(caught.value) and "s3cret" not in repr(bus)
    assert isinstance(caught.value, BusError)


def test_bad_arguments_are_refused(memory_buses):
    """Wildcards in a topic, non-JSON data, unknown URL schemes and bad counts are refused."""
    bus = memory_buses.new()
    with pytest.raises(ValueError, match="wildcards"):
        bus.publish("a.*", {})
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        bus.publish("a", {"x": object()})
    with pytest.raises(TypeError, match="keys must be strings"):
        bus.publish_table("t", {1: "one"})
    with pytest.raises(ValueError, match="scheme is 'redis'"):
        Bus("redis://:secret@localhost")
    with pytest.raises(ValueError, match="max_redeliveries"):
        Bus(max_redeliveries=-1)
    with pytest.raises(ValueError, match="interval"):
        Counter(bus, "t", interval=0)


# --- pure pieces ---------------------------------------------------------------------------

def _amqp_topic_match(pattern: list[str], words: list[str]) -> bool:
    """The AMQP topic rule, written the slow obvious way, to check the regex against."""
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_amqp_topic_match(rest, words[i:]) for i in range(len(words) + 1))
    return bool(words) and head in ("*", words[0]) and _amqp_topic_match(rest, words[1:])


@given(st.lists(st.sampled_from(["a", "b", "*", "#"]), min_size=1, max_size=5),
       st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=5))
def test_memory_topic_patterns_follow_the_amqp_rule(pattern, words):
    """The memory transport's topic regex matches exactly what the AMQP rule matches."""
    regex = re.compile(topic_regex(".".join(pattern)))
    assert bool(regex.match(".".join(words))) == _amqp_topic_match(pattern, words)


rows_strategy = st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 3) | st.none())


@given(rows_strategy, rows_strategy)
def test_a_delta_turns_the_old_table_into_the_new(old, new):
    """apply_delta(old, diff(old, new)) gives new, for any pair of tables."""
    rows = dict(old)
    apply_delta(rows, diff(old, new))
    assert rows == new


def test_a_callback_may_unsubscribe_itself_without_losing_other_messages(buses):
    """Unsubscribing from inside the callback ("handle once") loses nothing for the other subscriptions."""
    bus = buses.new()
    holder: dict[str, str] = {}
    once = Inbox(lambda topic, data: bus.unsubscribe(holder["id"]))
    holder["id"] = bus.subscribe("jobs", once)
    everything = Inbox()
    bus.subscribe("jobs", everything)
    for n in range(60):
        bus.publish("jobs", {"n": n})
    everything.wait_count(60)
    assert sorted(data["n"] for _, data in everything.calls) == list(range(60))
    assert len(once.calls) >= 1


def test_a_callback_cut_short_by_close_is_neither_redelivered_nor_dead_lettered(buses, caplog):
    """A callback that fails only because the bus is closing (its publish raises BusClosed) is not
    the message's fault: no redelivery warning, no dead letter, the message goes back to its queue."""
    bus = buses.new()
    started, closing = threading.Event(), threading.Event()

    def forward(topic, data):
        started.set()
        closing.wait(WAIT)
        bus.publish("forwarded", data)

    bus.subscribe("incoming", forward)
    bus.publish("incoming", {"n": 1})
    assert started.wait(WAIT)
    closer = threading.Thread(target=bus.close)
    with caplog.at_level(logging.WARNING, logger="winchester.bus"):
        closer.start()
        while bus.running:
            time.sleep(0.01)
        closing.set()
        closer.join(WAIT)
    assert not closer.is_alive()
    assert bus.dead_lettered == []
    assert [r.getMessage() for r in caplog.records if "redelivering" in r.getMessage()] == []


def test_close_does_not_wait_for_requests_pending_in_callbacks(buses):
    """A callback blocked in request() gives up when the bus closes, instead of at its timeout."""
    bus = buses.new()
    outcome: list[str] = []
    started = threading.Event()

    def ask(topic, data):
        started.set()
        try:
            bus.request("nobody.answers.here", {}, timeout=60)
        except Exception as exc:  # noqa: BLE001 - the test records which error it was
            outcome.append(type(exc).__name__)

    bus.subscribe("ask", ask)
    bus.publish("ask", {})
    assert started.wait(WAIT)
    closer = threading.Thread(target=bus.close)
    closer.start()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert outcome == ["BusClosed"]
