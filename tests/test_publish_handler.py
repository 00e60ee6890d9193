"""The publish and notabene handlers, against the real RabbitMQ."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

import orjson
import pytest
import yaml
from kombu import Connection, Exchange, Queue, pools

from tests.conftest import AMQP_URL, require_service
from tests.conftest import rabbitmq_problem as _rabbitmq_problem
from winchester.errors import WinchesterError
from winchester.events import make_event
from winchester.pipelines._publish import (
    NotabeneHandler,
    PublishError,
    PublishHandler,
    close_pools,
    notabene_url,
)

SENTINEL = "test.sentinel"


@pytest.fixture(autouse=True)
def _no_pooled_sockets_outlive_a_test():
    yield
    close_pools()


class Broker:
    """A private exchange with a queue bound to every routing key, read back in order."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.exchange_name = f"winchester-test-{uuid.uuid4().hex[:12]}"
        # Same flags as the handler declares, or RabbitMQ refuses the redeclaration.
        self.exchange = Exchange(self.exchange_name, type="topic", durable=True, auto_delete=False)
        self.queue = Queue(f"{self.exchange_name}-all", self.exchange, routing_key="#",
                           exclusive=True, auto_delete=True)
        self.channel = connection.channel()
        self.queue(self.channel).declare()

    def handler(self, **params: Any) -> PublishHandler:
        params.setdefault("url", AMQP_URL)
        params.setdefault("exchange", self.exchange_name)
        return PublishHandler(**params)

    def received(self, queue: Queue | None = None) -> list[Any]:
        """Every message published before now: a sentinel sent after them marks the end."""
        queue = (queue or self.queue)(self.channel)
        producer = self.connection.Producer(self.channel)
        producer.publish(b"{}", exchange=self.exchange, routing_key=queue.routing_key
                         if queue.routing_key != "#" else SENTINEL,
                         content_type="application/json", content_encoding="utf-8",
                         headers={"sentinel": True})
        messages = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = queue.get(no_ack=True)
            if message is None:
                time.sleep(0.01)
                continue
            if message.headers.get("sentinel"):
                return messages
            messages.append(message)
        raise AssertionError(f"the sentinel never arrived; got {len(messages)} message(s)")

    def bodies(self, queue: Queue | None = None) -> list[dict[str, Any]]:
        return [orjson.loads(message.body) for message in self.received(queue)]

    def close(self) -> None:
        self.exchange(self.channel).delete()
        self.channel.close()


@pytest.fixture
def broker():
    require_service(_rabbitmq_problem())
    with Connection(AMQP_URL, connect_timeout=3) as connection:
        broker = Broker(connection)
        try:
            yield broker
        finally:
            broker.close()


def event(event_type: str = "compute.instance.exists", **traits: Any) -> dict[str, Any]:
    traits.setdefault("message_id", str(uuid.uuid4()))
    traits.setdefault("timestamp", datetime(2015, 2, 1, 0, 0, 0))
    return make_event({"event_type": event_type, **traits})


ENV = {"stream_id": 7, "stream_name": "test_trigger", "reason": "fire",
       "distinguishing_traits": {}, "pipeline": "test_pipeline"}


def run(handler: PublishHandler, events: list[dict[str, Any]], env: dict[str, Any] | None = None):
    env = dict(ENV) if env is None else env
    returned = handler.handle_events(events, env)
    assert returned is events
    handler.commit()


@pytest.mark.rabbitmq
def test_commit_publishes_openstack_notifications(broker):
    """Each event arrives as a legacy OpenStack notification with its traits as the payload."""
    exists = event(message_id="5c1f8ad4-0d3c-4a53-9d4b-8b0c1e3f2a10",
                   timestamp=datetime(2015, 2, 1, 12, 30, 5, 123456),
                   instance_id="abc", memory_mb=512, ratio=0.5,
                   launched_at=datetime(2015, 1, 31, 22, 10))
    run(broker.handler(), [exists])
    [message] = broker.received()
    assert message.delivery_info["routing_key"] == "notifications.info"
    assert message.content_type == "application/json"
    assert message.properties["delivery_mode"] == 2
    assert orjson.loads(message.body) == {
        "message_id": "5c1f8ad4-0d3c-4a53-9d4b-8b0c1e3f2a10",
        "event_type": "compute.instance.exists",
        "timestamp": "2015-02-01 12:30:05.123456",
        "priority": "INFO",
        "publisher_id": "winchester",
        "payload": {"instance_id": "abc", "memory_mb": 512, "ratio": 0.5,
                    "launched_at": "2015-01-31 22:10:00.000000"},
    }


@pytest.mark.rabbitmq
def test_events_are_published_in_order_with_the_configured_identity(broker):
    """Several events keep their order; publisher_id and priority come from the params."""
    events = [event(f"compute.instance.{n}", n=n) for n in ("create.start", "create.end")]
    run(broker.handler(publisher_id="stv3", priority="warning"), events)
    bodies = broker.bodies()
    assert [b["event_type"] for b in bodies] == ["compute.instance.create.start",
                                                 "compute.instance.create.end"]
    assert {(b["publisher_id"], b["priority"]) for b in bodies} == {("stv3", "WARN")}


@pytest.mark.rabbitmq
def test_nothing_is_published_before_commit_or_on_rollback(broker):
    """handle_events only remembers; rollback forgets; commit afterwards sends nothing."""
    handler = broker.handler()
    handler.handle_events([event()], dict(ENV))
    assert broker.received() == []
    handler.rollback()
    handler.commit()
    assert broker.received() == []


@pytest.mark.rabbitmq
def test_event_types_select_what_is_published(broker):
    """Only events matching an event_types glob are published (``!`` excludes)."""
    events = [event("compute.instance.exists"), event("compute.instance.exists.verified"),
              event("compute.instance.exists.failed"), event("compute.instance.create.end")]
    run(broker.handler(event_types=["compute.instance.exists.*", "!*.failed"]), events)
    assert [b["event_type"] for b in broker.bodies()] == ["compute.instance.exists.verified"]


@pytest.mark.rabbitmq
def test_env_keys_publish_what_other_handlers_left_in_env(broker):
    """With env_keys only the env's events go out, unless publish_events asks for both."""
    stream_event = event("compute.instance.exists")
    verdict = event("compute.instance.exists.verified", original_message_id="x")
    env = {**ENV, "usage_notifications": [verdict]}
    run(broker.handler(env_keys=["usage_notifications", "absent"]), [stream_event], env)
    assert [b["message_id"] for b in broker.bodies()] == [verdict["message_id"]]

    # The usage handler also returns its verdicts: each is sent once.
    both = broker.handler(env_keys=["usage_notifications"], publish_events=True)
    run(both, [stream_event, verdict], env)
    assert [b["message_id"] for b in broker.bodies()] == [stream_event["message_id"],
                                                          verdict["message_id"]]


@pytest.mark.rabbitmq
def test_notification_shaped_env_items_keep_their_fields(broker):
    """An env item that already is a notification is sent as is, datetimes as text."""
    item = {"message_id": uuid.UUID("9a4cd9ab-4b0e-4c42-9a6b-6f0e2c8d7e11"),
            "event_type": "compute.instance.exists.verified.old", "publisher_id": "stv3",
            "timestamp": datetime(2015, 2, 1), "original_message_id": "abc",
            "payload": {"launched_at": datetime(2015, 1, 1, 1, 2, 3), "bandwidth": {"public": 1}}}
    env = {**ENV, "usage_notifications": [item]}
    run(broker.handler(env_keys=["usage_notifications"]), [], env)
    assert broker.bodies() == [{
        "message_id": "9a4cd9ab-4b0e-4c42-9a6b-6f0e2c8d7e11",
        "event_type": "compute.instance.exists.verified.old", "publisher_id": "stv3",
        "priority": "INFO", "timestamp": "2015-02-01 00:00:00.000000",
        "original_message_id": "abc",
        "payload": {"launched_at": "2015-01-01 01:02:03.000000", "bandwidth": {"public": 1}},
    }]


@pytest.mark.rabbitmq
@pytest.mark.parametrize("param", ["routing_key", "topic"])
def test_routing_key_or_its_alias_topic_is_used(broker, param):
    """Messages carry the configured routing key, whichever name configures it."""
    run(broker.handler(**{param: "monitor.info"}), [event()])
    [message] = broker.received()
    assert message.delivery_info["routing_key"] == "monitor.info"


@pytest.mark.rabbitmq
def test_notabene_with_the_original_params_delivers_to_its_queue(broker, real_data):
    """The sandbox's notabene entry works unchanged, bar names private to this test."""
    path = real_data / "stacktach/sandbox_winchester/pipelines.yaml"
    pipelines = yaml.safe_load(path.read_text())
    [params] = [entry["params"] for entry in pipelines["test_fire_pipeline"]
                if isinstance(entry, dict) and entry["name"] == "notabene"]
    assert params["vhost"] == "/" and params["library"] == "librabbitmq"
    # A private exchange and queue instead of the shared "nova" and "monitor.info".
    params = {**params, "exchange": broker.exchange_name,
              "queue_name": f"{broker.exchange_name}.monitor.info"}
    handler = NotabeneHandler(**params)
    assert handler.url == "amqp://guest:guest@localhost:5672/%2F"
    verdict = event("compute.instance.exists.verified")
    queue = Queue(params["queue_name"], broker.exchange, routing_key=params["queue_name"],
                  durable=True, auto_delete=False)
    try:
        # Only env_keys are published, as the original did.
        run(handler, [event("compute.instance.exists")], {**ENV, "usage_notifications": [verdict]})
        [body] = broker.bodies(queue)
        assert body["message_id"] == verdict["message_id"]
        assert body["event_type"] == "compute.instance.exists.verified"
    finally:
        queue(broker.channel).delete()


@pytest.mark.rabbitmq
def test_connections_are_pooled_across_runs(broker):
    """Handlers with the same settings reuse one pooled connection, run after run."""
    for _ in range(3):
        run(broker.handler(), [event()])
    assert len(broker.bodies()) == 3
    pool = pools.connections[broker.handler()._connection()]
    # The pool holds lazy placeholders until a connection is really made.
    made = [c for c in pool._resource.queue if isinstance(c, Connection)]
    assert len(made) == 1


@pytest.mark.rabbitmq
def test_a_refused_declaration_fails_commit_and_the_pool_recovers(broker):
    """A broker-side refusal raises PublishError; the next run reconnects and publishes."""
    # Our private exchange is durable: declaring it non-durable is refused (406).
    with pytest.raises(PublishError, match="PRECONDITION_FAILED|inequivalent") as failure:
        run(broker.handler(durable=False), [event()])
    assert broker.exchange_name in str(failure.value)
    run(broker.handler(), [event("compute.instance.exists.verified")])
    assert [b["event_type"] for b in broker.bodies()] == ["compute.instance.exists.verified"]


@pytest.mark.rabbitmq
def test_publisher_confirms_turn_a_lost_message_into_an_error(broker):
    """A publish the broker drops raises, and the next run declares the exchange again."""
    run(broker.handler(), [event()])
    assert len(broker.received()) == 1
    # The pooled connection remembers it declared the exchange; delete it behind its back.
    broker.exchange(broker.channel).delete()
    with pytest.raises(PublishError, match="NOT_FOUND"):
        run(broker.handler(), [event()])
    broker.queue(broker.channel).declare()  # recreates the exchange and the binding
    run(broker.handler(), [event("compute.instance.exists.verified")])
    assert [b["event_type"] for b in broker.bodies()] == ["compute.instance.exists.verified"]


def test_an_unreachable_broker_fails_commit_quickly_without_the_password():
    """Commit raises a WinchesterError naming the broker, with the password masked."""
    handler = PublishHandler(url="amqp://guest:s3cr3t@127.0.0.1:1//", exchange="nova",
                             connect_timeout=1, max_retries=1)
    handler.handle_events([event()], dict(ENV))
    with pytest.raises(PublishError) as failure:
        handler.commit()
    assert isinstance(failure.value, WinchesterError)
    message = str(failure.value)
    assert "127.0.0.1:1" in message and "'nova'" in message
    assert "s3cr3t" not in message


def test_notabene_url_quotes_the_vhost_and_credentials():
    """vhost "/" becomes %2F, and characters that would split the URL are quoted."""
    assert notabene_url(host="localhost", port=5672, user="guest", password="guest",
                        vhost="/") == "amqp://guest:guest@localhost:5672/%2F"
    assert notabene_url(host="::1", port=5672, user="a@b", password="p/w:d",
                        vhost="usage") == "amqp://a%40b:p%2Fw%3Ad@[::1]:5672/usage"
    assert Connection(notabene_url(host="h", port=1, user="u", password="p",
                                   vhost="/")).virtual_host == "/"


def test_notabene_needs_no_broker_to_be_built():
    """Construction and handle_events do no I/O, so pipelines load without a broker."""
    handler = NotabeneHandler(host="127.0.0.1", port=1, exchange="nova", queue_name="monitor.info",
                              library="librabbitmq", env_keys=["usage_notifications"])
    assert handler.routing_key == handler.queue == "monitor.info"
    assert handler.handle_events([], {**ENV, "usage_notifications": [event()]}) == []
    assert len(handler.pending) == 1


@pytest.mark.parametrize(("params", "named"), [
    ({}, "exchange"),
    ({"exchange": ""}, "exchange"),
    ({"exchange": "nova", "url": "http://localhost/"}, "url"),
    ({"exchange": "nova", "exchange_type": "fan-out"}, "exchange_type"),
    ({"exchange": "nova", "routing_key": "a", "topic": "b"}, "topic"),
    ({"exchange": "nova", "event_types": "compute.*"}, None),  # one pattern is fine
    ({"exchange": "nova", "event_types": [1]}, "event_types"),
    ({"exchange": "nova", "env_keys": {"a": 1}}, "env_keys"),
    ({"exchange": "nova", "durable": "yes"}, "durable"),
    ({"exchange": "nova", "priority": "loud"}, "priority"),
    ({"exchange": "nova", "connect_timeout": 0}, "connect_timeout"),
    ({"exchange": "nova", "max_retries": -1}, "max_retries"),
    ({"exchange": "nova", "publish_events": 1}, "publish_events"),
])
def test_bad_params_are_refused_naming_the_param(params, named):
    """Every invalid param is refused at construction with its name in the message."""
    if named is None:
        PublishHandler(**params)
        return
    with pytest.raises((TypeError, ValueError), match=named):
        PublishHandler(**params)


@pytest.mark.parametrize(("params", "named"), [
    ({"queue_name": None}, "queue_name"),
    ({"port": "5672"}, "port"),
    ({"vhost": None}, "vhost"),
    ({"password": 5}, "password"),
])
def test_bad_notabene_params_are_refused_naming_the_param(params, named):
    """The original's param names are checked too."""
    base = {"exchange": "nova", "queue_name": "monitor.info"}
    with pytest.raises((TypeError, ValueError), match=named):
        NotabeneHandler(**{**base, **params})


def test_the_url_password_is_not_echoed_in_errors():
    """A malformed URL is reported by its scheme only."""
    with pytest.raises(ValueError, match="url") as failure:
        PublishHandler(exchange="nova", url="rabbit://guest:s3cr3t@host//")
    assert "s3cr3t" not in str(failure.value)


def test_events_that_cannot_be_sent_fail_the_run_not_the_commit():
    """A malformed env item raises in handle_events, so the run rolls back."""
    handler = PublishHandler(exchange="nova", env_keys=["usage_notifications"])
    with pytest.raises(PublishError, match=r"env\['usage_notifications'\] #0"):
        handler.handle_events([], {**ENV, "usage_notifications": [{"event_type": "x"}]})
    with pytest.raises(PublishError, match="must be a list"):
        handler.handle_events([], {**ENV, "usage_notifications": "oops"})
