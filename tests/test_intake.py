"""Intake and persistor against the real RabbitMQ: oslo.messaging's wire format in, committed rows out."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from kombu import Connection, Exchange, Producer, Queue

from winchester.clock import FixedClock
from winchester.config import build_distiller, load_settings, load_trigger_definitions, open_store
from winchester.config._settings import IntakeSettings, PersistorSettings
from winchester.services._consumer import IntakeError
from winchester.services.ingest import Ingester
from winchester.services.intake import IngestService, Persistor

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 11, 22, 12, 0)


def wait_until(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def notification(n: int, event_type: str = "compute.instance.create.end", **extra) -> dict:
    return {"message_id": f"msg-{n:06d}", "event_type": event_type, "publisher_id": "compute.host-a",
            "priority": "INFO", "timestamp": "2026-11-22 10:00:00.000000",
            "payload": {"instance_id": f"instance-{n % 7}", "tenant_id": "t1", "state": "active"},
            **extra}


class Broker:
    """A private corner of the real RabbitMQ: unique exchanges and topic, removed afterwards."""

    def __init__(self, url: str, durable: bool = False):
        self.url = url
        tag = uuid.uuid4().hex[:10]
        self.exchanges = [f"nova-{tag}", f"glance-{tag}"]
        self.topic = f"notifications-{tag}"
        self.durable = durable
        self.extra_queues: list[str] = []

    def intake(self, **overrides) -> IntakeSettings:
        settings = IntakeSettings(exchanges=tuple(self.exchanges), topic=self.topic,
                                  priorities=("info", "error"), durable=self.durable,
                                  batch_size=50, batch_seconds=0.2)
        return replace(settings, **overrides)

    def publish(self, bodies, exchange: str | None = None, priority: str = "info") -> None:
        """Publish raw bodies (dicts are JSON-encoded) as oslo does: persistent, with confirms."""
        exchange = Exchange(exchange or self.exchanges[0], type="topic", durable=self.durable)
        with Connection(self.url, transport_options={"confirm_publish": True}) as connection:
            producer = Producer(connection.channel(), exchange=exchange)
            for body in bodies:
                data = body if isinstance(body, bytes) else orjson.dumps(body)
                producer.publish(data, routing_key=f"{self.topic}.{priority}", declare=[exchange],
                                 content_type="application/json", content_encoding="utf-8",
                                 delivery_mode=2)

    def waiting(self, queue: str) -> int:
        with Connection(self.url) as connection:
            return Queue(queue, durable=self.durable)(connection.channel()).queue_declare(passive=True).message_count

    def cleanup(self) -> None:
        with Connection(self.url) as connection:
            channel = connection.channel()
            for queue in [f"{self.topic}.{p}" for p in ("info", "warn", "error")] + self.extra_queues:
                try:
                    channel.queue_delete(queue)
                except Exception:  # noqa: BLE001 - it may never have been declared
                    channel = connection.channel()
            for exchange in self.exchanges:
                try:
                    channel.exchange_delete(exchange)
                except Exception:  # noqa: BLE001
                    channel = connection.channel()


@pytest.fixture
def broker(amqp_url):
    broker = Broker(amqp_url)
    yield broker
    broker.cleanup()


@pytest.fixture
def parts(migrated_url):
    settings = load_settings(ROOT / "etc" / "winchester.yaml",
                             environ={"WINCHESTER_DATABASE_URL": migrated_url})
    triggers = load_trigger_definitions(settings)
    store = open_store(settings, triggers)
    yield settings, triggers, store
    store.close()


def start(service) -> threading.Thread:
    failure: list[BaseException] = []

    def run():
        try:
            service.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.failure = failure  # type: ignore[attr-defined]
    thread.start()
    wait_until(lambda: service.consumer.ready.is_set() or failure, 30, "the consumer to start")
    if failure:
        raise failure[0]
    return thread


def stop(service, thread: threading.Thread) -> None:
    service.stop()
    thread.join(30)
    assert not thread.is_alive()
    if thread.failure:  # type: ignore[attr-defined]
        raise thread.failure[0]  # type: ignore[attr-defined]


OSLO_PUBLISHER = textwrap.dedent('''
    import sys, warnings
    warnings.simplefilter("ignore")
    from oslo_config import cfg
    import oslo_messaging
    from oslo_context import context

    url, exchange, topic, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    conf = cfg.ConfigOpts()
    conf([], project="winchester-test")
    transport = oslo_messaging.get_notification_transport(conf, url=url)
    conf.set_override("control_exchange", exchange)
    notifier = oslo_messaging.Notifier(transport, publisher_id="compute.host-a",
                                       driver="messagingv2", topics=[topic])
    ctxt = context.RequestContext(user_id="u1", project_id="t1")
    for n in range(count):
        payload = {"instance_id": f"instance-{n % 5}", "tenant_id": "t1", "state": "active",
                   "instance_type_id": 2, "memory_mb": 512, "launched_at": "2026-11-22 01:00:00"}
        if n % 4 == 3:
            notifier.error(ctxt, "compute.instance.delete.end", payload)
        else:
            notifier.info(ctxt, "compute.instance.update", payload)
    transport.cleanup()
''')


@pytest.mark.rabbitmq
def test_oslo_messaging_notifier_output_becomes_events_and_streams(broker, parts):
    """Notifications sent by oslo.messaging's own Notifier (v2 envelope) are stored as events, in streams."""
    settings, triggers, store = parts
    ingester = Ingester(store, triggers, build_distiller(settings), FixedClock(NOW))
    service = IngestService(broker.url, broker.intake(), ingester)
    thread = start(service)
    oslo_url = broker.url.replace("amqp://", "rabbit://").rstrip("/") + "/"
    subprocess.run([sys.executable, "-c", OSLO_PUBLISHER, oslo_url, broker.exchanges[0], broker.topic,
                    "40"], check=True, timeout=120)
    wait_until(lambda: store.count_events() == 40, what="40 events")
    stop(service, thread)
    by_type = store.count_events_by_type()
    assert by_type == {"compute.instance.update": 30, "compute.instance.delete.end": 10}
    assert {s.distinguishing_traits["instance_id"] for s in store.list_streams()} == {
        f"instance-{n}" for n in range(5)}
    assert store.count_dead_letters() == 0
    assert broker.waiting(f"{broker.topic}.info") == 0 and broker.waiting(f"{broker.topic}.error") == 0


@pytest.mark.rabbitmq
def test_malformed_messages_are_dead_lettered_acknowledged_and_the_rest_stored(broker, parts):
    """Bad bodies go to the dead letters with their reason; good ones are stored; nothing stays queued."""
    settings, triggers, store = parts
    ingester = Ingester(store, triggers, build_distiller(settings), FixedClock(NOW))
    service = IngestService(broker.url, broker.intake(), ingester)
    thread = start(service)
    envelope = {"oslo.version": "2.0", "oslo.message": orjson.dumps(notification(2)).decode()}
    broker.publish([notification(1), envelope, b"not json", b"[1, 2]",
                    {**notification(3), "event_type": None}, {k: v for k, v in notification(4).items()
                                                              if k != "message_id"},
                    {**notification(5), "timestamp": 12}, notification(6)],
                   exchange=broker.exchanges[1])
    wait_until(lambda: store.count_events() == 3 and store.count_dead_letters() == 5,
               what="3 events and 5 dead letters")
    stop(service, thread)
    assert broker.waiting(f"{broker.topic}.info") == 0
    assert sorted(e["message_id"] for e in store.find_events()) == ["msg-000001", "msg-000002", "msg-000006"]


@pytest.mark.rabbitmq
def test_compressed_transcoded_and_undecodable_bodies_neither_stop_intake_nor_get_lost(broker,
                                                                                      parts):
    """kombu compression (oslo's kombu_compression) is undone and another content_encoding
    transcoded; a body that will not decode (py-amqp's own decoding left text that could not be
    encoded back, and the consumer died on it at every redelivery) is dead-lettered, and the
    notifications behind it are stored."""
    settings, triggers, store = parts
    ingester = Ingester(store, triggers, build_distiller(settings), FixedClock(NOW))
    service = IngestService(broker.url, broker.intake(), ingester)
    thread = start(service)
    exchange = Exchange(broker.exchanges[0], type="topic", durable=broker.durable)
    accented = notification(3)
    accented["payload"]["display_name"] = "caf\u00e9"
    latin = json.dumps(accented, ensure_ascii=False).encode("latin-1")
    with Connection(broker.url, transport_options={"confirm_publish": True}) as connection:
        producer = Producer(connection.channel(), exchange=exchange)
        key = f"{broker.topic}.info"
        for number, compression in ((1, "gzip"), (2, "bzip2")):
            producer.publish(orjson.dumps(notification(number)), routing_key=key, declare=[exchange],
                             content_type="application/json", compression=compression)
        producer.publish(latin, routing_key=key, content_type="application/json",
                         content_encoding="latin-1")
        producer.publish(b'{"event_type": "x", "payload": "\\ud800"}', routing_key=key,
                         content_type="application/json", content_encoding="unicode_escape")
    broker.publish([notification(4)])  # behind the poison
    wait_until(lambda: store.count_events() == 4 and store.count_dead_letters() == 1,
               what="4 events and 1 dead letter")
    assert thread.is_alive() and not thread.failure  # type: ignore[attr-defined]
    stop(service, thread)
    assert broker.waiting(f"{broker.topic}.info") == 0
    assert store.get_event("msg-000003")["display_name"] == "café"


@pytest.mark.rabbitmq
def test_a_named_queue_gets_every_exchange_and_priority(broker, parts):
    """With intake.queue, one private queue bound to every exchange and priority receives them all."""
    settings, triggers, store = parts
    ingester = Ingester(store, triggers, build_distiller(settings), FixedClock(NOW))
    pool = f"pool-{uuid.uuid4().hex[:8]}"
    broker.extra_queues.append(pool)
    service = IngestService(broker.url, broker.intake(queue=pool), ingester)
    thread = start(service)
    broker.publish([notification(1)], exchange=broker.exchanges[0], priority="info")
    broker.publish([notification(2)], exchange=broker.exchanges[1], priority="error")
    wait_until(lambda: store.count_events() == 2, what="2 events")
    stop(service, thread)


@pytest.mark.rabbitmq
def test_a_durability_mismatch_is_a_clear_startup_error(broker, parts):
    """Exchanges declared non-durable by the publishers, intake.durable true: refused, naming exchange and key."""
    settings, triggers, store = parts
    broker.publish([notification(1)])  # declares the first exchange as oslo does: not durable
    service = IngestService(broker.url, broker.intake(durable=True),
                            Ingester(store, triggers, build_distiller(settings)))
    with pytest.raises(IntakeError) as caught:
        service.run()
    message = str(caught.value)
    assert broker.exchanges[0] in message and "intake.durable" in message
    assert "guest:guest" not in message


@pytest.mark.rabbitmq
def test_a_queue_declared_with_other_arguments_is_refused_naming_the_argument(broker, parts):
    """A queue someone declared with a TTL (or as a quorum queue): the refusal names the
    argument and what to do, not intake.durable, which would not help."""
    settings, triggers, store = parts
    queue = f"{broker.topic}.info"
    with Connection(broker.url) as connection:
        Queue(queue, durable=False, queue_arguments={"x-message-ttl": 60000})(
            connection.channel()).declare()
    service = IngestService(broker.url, broker.intake(),
                            Ingester(store, triggers, build_distiller(settings)))
    with pytest.raises(IntakeError) as caught:
        service.run()
    message = str(caught.value)
    assert f"{queue!r}: it already exists with argument 'x-message-ttl'" in message
    assert "a queue of its own (intake.queue, persistor.queue)" in message
    assert "intake.durable" not in message


@pytest.mark.rabbitmq
def test_the_persistor_archives_every_notification_exactly_once(broker, parts):
    """Duplicates are archived once; malformed bodies and unknown types are archived too, as received."""
    settings, triggers, store = parts
    queue = f"persistor-{uuid.uuid4().hex[:8]}"
    broker.extra_queues.append(queue)
    persistor = Persistor(broker.url, broker.intake(), PersistorSettings(queue=queue, batch_size=40,
                                                                          batch_seconds=0.2),
                          store, clock=FixedClock(NOW))
    thread = start(persistor)
    bodies = [notification(n) for n in range(100)]
    bodies += [notification(n) for n in range(0, 100, 3)]  # redelivered duplicates
    bodies += [notification(500, "some.unknown.type"), b"\xff not json"]
    broker.publish(bodies)
    wait_until(lambda: store.count_archive() == 102, what="102 archived")
    time.sleep(0.5)  # any further (wrong) row would have arrived by now
    stop(persistor, thread)
    rows = list(store.iter_archive())
    assert len(rows) == 102
    assert len({r.message_id for r in rows if r.message_id}) == 101
    rejected = [r for r in rows if r.status == "rejected"]
    assert len(rejected) == 1 and rejected[0].body == b"\xff not json" and "not_json" in rejected[0].reason
    unknown = next(r for r in rows if r.event_type == "some.unknown.type")
    assert orjson.loads(unknown.body)["message_id"] == "msg-000500"
    assert unknown.publisher_id == "compute.host-a" and unknown.received_at == NOW
    assert persistor.duplicates == 34 and broker.waiting(queue) == 0


@pytest.mark.rabbitmq
def test_a_broker_restart_during_a_run_loses_nothing(amqp_url, parts):
    """rabbitmqctl stop_app / start_app while publishing and ingesting: count in == count stored."""
    settings, triggers, store = parts
    broker = Broker(amqp_url, durable=True)  # only durable queues survive a broker restart
    ingester = Ingester(store, triggers, build_distiller(settings), FixedClock(NOW))
    service = IngestService(broker.url, broker.intake(batch_size=100), ingester)
    total = 3000
    try:
        thread = start(service)
        published = threading.Event()

        def publish_all():
            pending = [notification(n) for n in range(total)]
            while pending:
                try:
                    broker.publish(pending[:100])
                    pending = pending[100:]
                except Exception:  # noqa: BLE001 - the broker is restarting; send the chunk again
                    time.sleep(0.5)
            published.set()

        publisher = threading.Thread(target=publish_all, daemon=True)
        publisher.start()
        wait_until(lambda: store.count_events() > 300, what="ingest under way")
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=120)
        time.sleep(1)
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)
        assert published.wait(180)
        wait_until(lambda: store.count_events() == total, 180, f"{total} events")
        stop(service, thread)
        assert service.consumer.stats.reconnects >= 1
        assert store.count_events() == total
    finally:
        subprocess.run(["rabbitmqctl", "start_app"], capture_output=True, timeout=120)
        wait_until(lambda: _reachable(amqp_url), 120, "RabbitMQ back")
        broker.cleanup()


def _reachable(url: str) -> bool:
    try:
        with Connection(url, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1)
        return True
    except Exception:  # noqa: BLE001
        return False


def test_the_in_memory_transport_feeds_ingest_too(parts):
    """memory:// (the embedded default): notifications published in-process are consumed the same way."""
    settings, triggers, store = parts
    url = f"memory://{uuid.uuid4().hex[:8]}"
    intake = IntakeSettings(exchanges=("nova",), batch_size=10, batch_seconds=0.1)
    service = IngestService(url, intake, Ingester(store, triggers, build_distiller(settings), FixedClock(NOW)))
    thread = start(service)
    exchange = Exchange("nova", type="topic", durable=False)
    with Connection(url) as connection:
        producer = Producer(connection.channel(), exchange=exchange)
        for n in range(25):
            producer.publish(orjson.dumps(notification(n)), routing_key="notifications.info",
                             content_type="application/json", content_encoding="utf-8")
    wait_until(lambda: store.count_events() == 25, what="25 events")
    stop(service, thread)


@pytest.mark.rabbitmq
def test_the_next_batch_is_distilled_while_the_one_before_is_stored(broker, parts):
    """Distilling does not wait for the database: batch 2 is prepared while batch 1 is being
    stored, and both are stored, in order, once the store is free."""
    settings, triggers, store = parts
    ingester = Ingester(store, triggers, build_distiller(settings), FixedClock(NOW))
    store_free = threading.Event()
    prepared: list[int] = []
    commit, prepare = ingester.commit, ingester.prepare

    def slow_commit(batch, **options):
        store_free.wait(30)
        return commit(batch, **options)

    def counted_prepare(bodies):
        prepared.append(len(bodies))
        return prepare(bodies)

    ingester.commit, ingester.prepare = slow_commit, counted_prepare
    service = IngestService(broker.url, broker.intake(batch_size=10), ingester)
    thread = start(service)
    try:
        broker.publish([notification(n) for n in range(20)])
        wait_until(lambda: len(prepared) == 2, timeout=15, what="the second batch distilled")
        assert store.count_events() == 0  # the first batch is still being stored
    finally:
        store_free.set()
    wait_until(lambda: store.count_events() == 20, what="20 events")
    stop(service, thread)
    assert prepared == [10, 10] and service.consumer.stats.acknowledged == 20


@pytest.mark.rabbitmq
def test_two_ingest_processes_share_a_queue_and_a_database(broker, parts):
    """Two consumers of one queue, one store: every notification stored once, none lost."""
    settings, triggers, store = parts
    services = [IngestService(broker.url, broker.intake(batch_size=20),
                              Ingester(open_store(settings, triggers), triggers, build_distiller(settings),
                                       FixedClock(NOW)), name=f"ingest-{n}") for n in range(2)]
    threads = [start(service) for service in services]
    broker.publish([notification(n) for n in range(600)])
    wait_until(lambda: store.count_events() == 600, what="600 events")
    for service, thread in zip(services, threads, strict=True):
        stop(service, thread)
        service.ingester.store.close()
    assert all(service.consumer.stats.acknowledged > 0 for service in services)
    assert sum(service.ingester.stats.saved for service in services) == 600
    assert len({s.distinguishing_traits["instance_id"] for s in store.list_streams()}) == 7


class _Proxy:
    """A TCP relay in front of RabbitMQ that can be taken away and brought back (a broker outage)."""

    def __init__(self, target: tuple[str, int], port: int = 0):
        import socket

        self.target = target
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.sockets: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source, sink) -> None:
        import socket

        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        import socket

        for sock in [self.listener, *self.sockets]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


@pytest.mark.rabbitmq
def test_the_consumer_waits_out_a_long_broker_outage(broker, parts):
    """The broker unreachable for several reconnection attempts: ingest keeps retrying, then carries on."""
    settings, triggers, store = parts
    proxy = _Proxy(("127.0.0.1", 5672))
    proxied = broker.url.replace("127.0.0.1:5672", f"127.0.0.1:{proxy.port}")
    sleeps = []
    service = IngestService(proxied, broker.intake(), Ingester(store, triggers, build_distiller(settings),
                                                               FixedClock(NOW)))
    service.consumer._sleep = lambda seconds: (sleeps.append(seconds), time.sleep(0.2))
    thread = start(service)
    port = proxy.port
    proxy.close()
    wait_until(lambda: len(sleeps) >= 3, what="three failed reconnection attempts")
    proxy = _Proxy(("127.0.0.1", 5672), port)
    try:
        wait_until(service.consumer.ready.is_set, what="reconnected")
        broker.publish([notification(n) for n in range(10)])
        wait_until(lambda: store.count_events() == 10, what="10 events")
        assert thread.is_alive() and service.consumer.stats.reconnects >= 3
        stop(service, thread)
    finally:
        proxy.close()


def test_archive_rows_never_carry_nul_and_find_ceilometer_ids():
    """NUL (PostgreSQL cannot store it) is replaced in text columns; Ceilometer's metadata id is used."""
    from winchester.services.intake import archive_row

    bad = archive_row(orjson.dumps({**notification(1), "publisher_id": "compute\x00host"}), NOW)
    assert bad["publisher_id"] == "compute\ufffdhost" and bad["status"] == "archived"
    rejected = archive_row(orjson.dumps({**notification(2), "message_id": "m\x002"}), NOW)
    assert rejected["status"] == "rejected" and "\x00" not in rejected["message_id"]
    ceilometer = {"event_type": "compute.instance.update", "payload": {},
                  "metadata": {"message_id": "from-metadata", "timestamp": "2026-11-22 10:00:00"}}
    assert archive_row(orjson.dumps(ceilometer), NOW)["message_id"] == "from-metadata"


def test_retention_deletes_a_backlog_batch_after_batch_and_keeps_what_is_recent(parts, monkeypatch):
    """archive_retention works off everything past it, not one batch a minute (which a busy
    persistor outgrew), and keeps what was received since."""
    import winchester.services.intake as intake_module
    from winchester.services.intake import archive_row

    settings, _, store = parts
    monkeypatch.setattr(intake_module, "TRIM_BATCH", 3)
    now = datetime(2026, 12, 4, 12, 0)
    old = [archive_row(orjson.dumps(notification(n)), datetime(2026, 8, 1)) for n in range(10)]
    recent = [archive_row(orjson.dumps(notification(n)), now) for n in range(10, 12)]
    store.archive_notifications(old + recent)
    persistor = Persistor("memory://", settings.intake, settings.persistor, store,
                          retention="$timestamp - 90d")
    assert persistor.trim(now) == 10
    assert store.count_archive() == 2


def test_the_http_intake_stamps_archived_notifications_with_real_time_under_an_event_clock(parts):
    """received_at is when the notification arrived, in real time, even when "now" follows the
    events (a replay of 2015's capture): retention, which counts in real time, must not delete
    what was just received."""
    from winchester.clock import EventClock
    from winchester.services.intake import DirectIntake

    settings, triggers, store = parts
    intake = DirectIntake(Ingester(store, triggers, build_distiller(settings), EventClock()), store)
    before = store.wall_clock.now()
    for n in (1, 2):  # the first sets the event clock; the second arrives by it
        intake.accept([orjson.dumps(notification(n, timestamp=f"2015-02-01 04:5{n}:00.000000"))])
    rows = store.archive_page(None, None, None, 0, 10)
    assert [row.generated.year for row in rows] == [2015, 2015]
    assert all(row.received_at >= before for row in rows)
