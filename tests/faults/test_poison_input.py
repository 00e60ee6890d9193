"""Poison input (issue 9): malformed notifications never stop the intake, and every one is accounted for.

Promise 4 of docs/architecture.md: a malformed notification is rejected with a
logged reason, counted, and kept (dead letters for ingest, the archive for the
persistor) -- it never stops the consumer.

The broker test runs the real `winchester ingest` and `winchester persistor`
as subprocesses against RabbitMQ and PostgreSQL (a private exchange, topic,
persistor queue and schema per test, through a generated winchester.yaml),
publishes the poison set between good notifications, and checks the dead
letters, the archive, the events, the Prometheus metrics of both processes
and their exit summaries. The HTTP test posts the same set to
`POST /v1/notifications` on both stores.
"""

from __future__ import annotations

import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import orjson
import pytest
import sqlalchemy as sa
from kombu import Connection, Exchange, Producer
from prometheus_client.parser import text_string_to_metric_families

from tests.test_service_cli import (  # noqa: F401 - corner and scripts are fixtures
    Corner,
    Script,
    corner,
    make_config,
    migrate,
    scripts,
    wait_until,
)
from tests.conftest import free_port
from winchester.api import create_app
from winchester.clock import WallClock
from winchester.config import build_distiller, load_settings, load_trigger_definitions, open_store
from winchester.metrics import Metrics
from winchester.services.ingest import Ingester
from winchester.services.intake import DirectIntake
from winchester.store import Store
from winchester.store._schema import archive as archive_table
from winchester.store._schema import dead_letters as dead_letters_table

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

TYPE = "compute.instance.update"
STAMP = "2024-05-01 10:00:00.000000"
HUGE = 10 * 2**20  # 10 MB
DROP = object()  # a key left out of a poison notification
DEEP_MARK = "DEEP-PAYLOAD-MARK"


def good(tag: str, n: int) -> dict:
    return {"event_type": TYPE, "message_id": f"good-{tag}-{n}", "timestamp": STAMP,
            "publisher_id": "compute.host-1", "priority": "INFO",
            "payload": {"instance_id": f"i-{n % 3}", "tenant_id": "t-1", "state": "active"}}


def nested(depth: int) -> bytes:
    """JSON ``depth`` levels deep, objects and lists alternating (orjson itself stops at 1024)."""
    return b'{"d":[' * (depth // 2) + b'"bottom"' + b"]}" * (depth // 2)


@dataclass(frozen=True)
class Poison:
    """One bad (or merely odd) notification and what must become of it.

    ``outcome`` is ``rejected`` (dead-lettered with ``reason``; archived as
    rejected), ``stored`` (an event of ``TYPE``: odd but usable), or
    ``unconverted`` (no event definition: archived only).
    """

    label: str
    body: bytes
    outcome: str
    reason: str | None = None


def poison_set(tag: str) -> list[Poison]:
    def notification(name: str, **changes) -> dict:
        body = {"event_type": TYPE, "message_id": f"poison-{tag}-{name}", "timestamp": STAMP,
                "publisher_id": "compute.host-1", "payload": {"instance_id": f"p-{name}"}}
        body.update(changes)
        return {key: value for key, value in body.items() if value is not DROP}

    def dumped(name: str, **changes) -> bytes:
        return orjson.dumps(notification(name, **changes))

    envelope = {"oslo.version": "2.0", "oslo.message": "{not json"}
    return [
        # Not JSON at all, in every way a body can fail to be.
        Poison("text", b"this is not json", "rejected", "not_json"),
        Poison("truncated", b'{"event_type": "compute.instance.update", "message_id"', "rejected",
               "not_json"),
        Poison("empty", b"", "rejected", "not_json"),
        Poison("huge garbage", b"x" * HUGE, "rejected", "not_json"),
        Poison("invalid utf-8", dumped("utf8").replace(b"p-utf8", b"p-\xff\xfe-utf8"), "rejected",
               "not_json"),
        Poison("lone surrogate", dumped("surrogate").replace(b"p-surrogate", b"p-\\ud800"),
               "rejected", "not_json"),
        Poison("too deep", dumped("deep", payload=DEEP_MARK).replace(
            b'"' + DEEP_MARK.encode() + b'"', nested(5000)), "rejected", "not_json"),
        # JSON, but not an object.
        Poison("array", b"[1, 2, 3]", "rejected", "not_an_object"),
        Poison("string", b'"a string"', "rejected", "not_an_object"),
        Poison("null", b"null", "rejected", "not_an_object"),
        Poison("number", b"42", "rejected", "not_an_object"),
        # Objects missing what every notification needs, or with it of the wrong type.
        Poison("no event_type", dumped("no-type", event_type=DROP), "rejected", "no_event_type"),
        Poison("event_type number", dumped("type-number", event_type=42), "rejected",
               "no_event_type"),
        Poison("event_type empty", dumped("type-empty", event_type=""), "rejected", "no_event_type"),
        Poison("no message_id", dumped("x", message_id=DROP), "rejected", "no_message_id"),
        Poison("message_id list", dumped("x", message_id=["a", "b"]), "rejected", "no_message_id"),
        Poison("no timestamp", dumped("no-ts", timestamp=DROP), "rejected", "no_timestamp"),
        Poison("timestamp number", dumped("ts-number", timestamp=1714557600), "rejected",
               "no_timestamp"),
        Poison("timestamp words", dumped("ts-words", timestamp="yesterday"), "rejected",
               "bad_timestamp"),
        Poison("timestamp impossible", dumped("ts-impossible", timestamp="2024-13-45 99:00:00"),
               "rejected", "bad_timestamp"),
        Poison("NUL in message_id", dumped("x", message_id=f"poison-{tag}-nul\x00id"), "rejected",
               "bad_identifier"),
        Poison("event_type too long", dumped("long-type", event_type="compute." + "x" * 300),
               "rejected", "bad_identifier"),
        Poison("envelope not JSON", orjson.dumps(envelope), "rejected", "bad_envelope"),
        Poison("envelope version", orjson.dumps({"oslo.version": "1.0", "oslo.message": orjson.dumps(
            notification("old-envelope")).decode()}), "rejected", "bad_envelope"),
        # Usable notifications with odd payloads: events (without the traits they lack).
        Poison("payload string", dumped("payload-string", payload="just text"), "stored"),
        Poison("payload list", dumped("payload-list", payload=[1, "two", None]), "stored"),
        Poison("payload null", dumped("payload-null", payload=None), "stored"),
        Poison("payload wrong types", dumped("payload-types", payload={
            "instance_id": {"not": "text"}, "memory_mb": "lots", "launched_at": 12,
            "tenant_id": ["t"], "state": 3.5}), "stored"),
        Poison("huge payload", dumped("huge", payload={"instance_id": "p-huge", "blob": "y" * HUGE}),
               "stored"),
        Poison("deep payload", dumped("nested", payload={"instance_id": "p-nested",
                                                          "tree": DEEP_MARK}).replace(
            b'"' + DEEP_MARK.encode() + b'"', nested(900)), "stored"),
        # A text trait nested deeper than JSON can be written back (orjson reads 1024 levels,
        # writes 255): the trait is dropped, the event kept.
        Poison("deep trait", dumped("deep-trait", payload={"instance_id": DEEP_MARK}).replace(
            b'"' + DEEP_MARK.encode() + b'"', nested(600)), "stored"),
        Poison("huge trait", dumped("huge-trait", payload={"instance_id": "p-huge-trait",
                                                            "display_name": "z" * 100_000}),
               "stored"),
        # Event types no definition knows: archived, not events.
        Poison("unknown type", dumped("unknown", event_type="poison.unknown.type"), "unconverted"),
        Poison("injection type", dumped("sql-type", event_type="'; DROP TABLE events; --"),
               "unconverted"),
    ]


@dataclass
class Expected:
    """What the poison set (and the good notifications around it) must add up to."""

    good: int
    poison: list[Poison]
    duplicates: int = 0

    @property
    def received(self) -> int:
        return self.good + len(self.poison) + self.duplicates

    @property
    def rejected(self) -> Counter[str]:
        return Counter(p.reason for p in self.poison if p.outcome == "rejected")

    @property
    def stored(self) -> int:
        return self.good + sum(p.outcome == "stored" for p in self.poison)

    @property
    def unconverted(self) -> int:
        return sum(p.outcome == "unconverted" for p in self.poison)


def dead_letters(store: Store) -> list:
    with store.engine.connect() as connection:
        return list(connection.execute(sa.select(dead_letters_table).order_by(dead_letters_table.c.id)))


def archive_rows(store: Store) -> list:
    with store.engine.connect() as connection:
        return list(connection.execute(sa.select(archive_table).order_by(archive_table.c.id)))


def check_kept(store: Store, expected: Expected, source_prefix: str) -> None:
    """Dead letters: one per rejected notification, its reason and body as received."""
    letters = dead_letters(store)
    assert Counter(row.reason for row in letters) == expected.rejected
    rejected = [p for p in expected.poison if p.outcome == "rejected"]
    assert sorted(bytes(row.body) for row in letters) == sorted(p.body for p in rejected)
    assert all(row.source.startswith(source_prefix) for row in letters), {r.source for r in letters}
    assert all(row.detail for row in letters)


def check_archived(store: Store, expected: Expected) -> None:
    """The archive: every notification once, as received; the malformed ones marked rejected."""
    rows = archive_rows(store)
    assert len(rows) == expected.received - expected.duplicates
    by_body = {bytes(row.body): row for row in rows}
    for poison in expected.poison:
        row = by_body[poison.body]
        if poison.outcome == "rejected":
            assert row.status == "rejected", poison.label
            assert row.reason.startswith(f"{poison.reason}: "), (poison.label, row.reason)
        else:
            assert row.status == "archived" and row.reason is None, poison.label
            assert row.message_id and row.message_id.startswith("poison-"), poison.label
    assert {row.event_type for row in rows if row.status == "archived"} == {
        TYPE, "poison.unknown.type", "'; DROP TABLE events; --"}


def check_events(store: Store, expected: Expected, tag: str) -> None:
    assert store.count_events() == expected.stored
    assert store.count_events_by_type() == {TYPE: expected.stored}
    stored = {event["message_id"] for event in store.find_events()}
    assert {f"poison-{tag}-{name}" for name in ("payload-string", "payload-list", "payload-null",
                                                "payload-types", "huge", "nested", "deep-trait",
                                                "huge-trait")} <= stored
    assert "instance_id" not in store.get_event(f"poison-{tag}-deep-trait")
    odd = store.get_event(f"poison-{tag}-payload-types")
    # A trait whose value has the wrong type is dropped or converted, never fatal.
    assert "memory_mb" not in odd and "launched_at" not in odd
    assert odd["instance_id"] == '{"not":"text"}' and odd["state"] == "3.5"
    assert len(store.get_event(f"poison-{tag}-huge-trait")["display_name"]) == 100_000


# -- the broker ---------------------------------------------------------------------------------


def publish_raw(corner: Corner, bodies: list[bytes]) -> None:
    """Publish bodies exactly as given (oslo's way: a non-durable topic exchange, <topic>.info)."""
    exchange = Exchange(corner.exchange, type="topic", durable=False)
    with Connection(corner.url, transport_options={"confirm_publish": True}) as connection:
        producer = Producer(connection.channel(), exchange=exchange)
        for body in bodies:
            producer.publish(body, routing_key=f"{corner.topic}.info", declare=[exchange],
                             content_type="application/json", content_encoding="binary")




def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value; empty while the process is not listening yet."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def metric(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def by_label(samples: dict, name: str, label: str, **fixed: str) -> dict[str, float]:
    found = {}
    for (sample, labels), value in samples.items():
        labels = dict(labels)
        if sample == name and all(labels.get(k) == v for k, v in fixed.items()):
            found[labels[label]] = value
    return found


@pytest.fixture
def pg_url(postgres_url) -> str:
    return migrate(postgres_url)


@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_poison_from_the_broker_is_dead_lettered_archived_counted_and_never_stops_the_services(
        tmp_path, corner, pg_url, scripts):
    tag = uuid.uuid4().hex[:8]
    config = make_config(tmp_path, *corner.config_lines(), url=pg_url, log_level="info")
    ingest_port, persistor_port = free_port(), free_port()
    ingest = Script(tmp_path, "ingest", "ingest", "-c", str(config), "--name", "ingest-poison",
                    "--metrics-port", str(ingest_port))
    scripts.append(ingest)
    persistor = Script(tmp_path, "persistor", "persistor", "-c", str(config), "--name",
                       "persistor-poison", "--metrics-port", str(persistor_port))
    scripts.append(persistor)
    ingest.wait_for("ingest-poison: consuming")
    persistor.wait_for("persistor-poison: consuming")

    poison = poison_set(tag)
    before = [orjson.dumps(good(tag, n)) for n in range(5)]
    after = [orjson.dumps(good(tag, n)) for n in range(5, 10)]
    publish_raw(corner, [*before, *(p.body for p in poison), *after])
    expected = Expected(good=10, poison=poison)

    def acknowledged(port: int, service: str) -> float | None:
        return metric(scrape(port), "winchester_bus_notifications_acknowledged_total", service=service)

    wait_until(lambda: acknowledged(ingest_port, "ingest") == expected.received
               and acknowledged(persistor_port, "persistor") == expected.received, 120,
               f"{expected.received} acknowledged by both\n{ingest.log}\n{persistor.log}")

    # Still consuming after the poison: more good notifications are stored, and one redelivered
    # is recognised, stored and archived once. (Sent in a batch of its own: see
    # test_a_duplicate_within_one_batch_is_counted_once_by_type below.)
    later = [orjson.dumps(good(tag, n)) for n in range(10, 15)]
    publish_raw(corner, [before[0], *later])
    expected.good += len(later)
    expected.duplicates = 1
    wait_until(lambda: acknowledged(ingest_port, "ingest") == expected.received
               and acknowledged(persistor_port, "persistor") == expected.received, 120,
               f"the later notifications\n{ingest.log}\n{persistor.log}")
    assert ingest.proc.poll() is None and persistor.proc.poll() is None

    found = scrape(ingest_port)
    assert metric(found, "winchester_notifications_received_total", service="ingest") == expected.received
    assert metric(found, "winchester_bus_notifications_received_total", service="ingest") == expected.received
    assert by_label(found, "winchester_notifications_rejected_total", "reason",
                    service="ingest") == expected.rejected
    assert metric(found, "winchester_notifications_unconverted_total",
                  service="ingest") == expected.unconverted
    assert by_label(found, "winchester_events_stored_total", "event_type",
                    service="ingest") == {TYPE: expected.stored}
    assert metric(found, "winchester_events_duplicate_total", service="ingest",
                  event_type=TYPE) == expected.duplicates
    # Every message is accounted for exactly once.
    assert (sum(expected.rejected.values()) + expected.unconverted + expected.stored
            + expected.duplicates) == expected.received
    assert metric(found, "winchester_bus_batch_failures_total", service="ingest") == 0

    found = scrape(persistor_port)
    assert metric(found, "winchester_archive_stored_total") == expected.received - expected.duplicates
    assert metric(found, "winchester_archive_duplicates_total") == expected.duplicates
    assert metric(found, "winchester_bus_batch_failures_total", service="persistor") == 0

    assert ingest.terminate(60) == 0, ingest.log
    assert persistor.terminate(60) == 0, persistor.log
    log = ingest.log
    assert (f"ingest stopped: {expected.received} received, {expected.stored} saved, "
            f"{expected.duplicates} duplicates, {expected.unconverted} unconverted, "
            f"{sum(expected.rejected.values())} rejected") in log
    assert (f"persistor stopped: {expected.received - expected.duplicates} archived, "
            f"{expected.duplicates} duplicates skipped, 0 trimmed") in persistor.log
    # Each reason is logged (once: the rest are counted).
    for reason in expected.rejected:
        assert f"rejected a notification: notification rejected ({reason})" in log, reason
    assert "Traceback" not in log + persistor.log and "could not store" not in log + persistor.log

    store = Store.from_url(pg_url)
    try:
        check_kept(store, expected, f"amqp:{corner.exchange}/{corner.topic}.info")
        check_archived(store, expected)
        check_events(store, expected, tag)
    finally:
        store.close()


# -- the HTTP intake ----------------------------------------------------------------------------


@pytest.fixture
def http_intake(tmp_path, migrated_url) -> Iterator[tuple[TestClient, Store, Metrics]]:
    """The API with its HTTP intake over the example definitions, with this process's metrics."""
    config = make_config(tmp_path, url=migrated_url)
    settings = load_settings(config, environ={})
    triggers = load_trigger_definitions(settings)
    store = open_store(settings, triggers)
    ingester = Ingester(store, triggers, build_distiller(settings), WallClock())
    metrics = Metrics()
    metrics.watch_ingester(ingester, "http")
    app = create_app(store, DirectIntake(ingester, store), triggers=triggers, metrics=metrics)
    try:
        with TestClient(app) as client:
            yield client, store, metrics
    finally:
        store.close()


def post(client: TestClient, body: bytes) -> dict:
    response = client.post("/v1/notifications", content=body,
                           headers={"content-type": "application/x-ndjson"})
    assert response.status_code == 200, response.text
    return response.json()


def test_poison_over_http_is_rejected_with_its_reason_kept_and_counted(http_intake):
    """The same set as JSON lines in one request: each rejection named by index and reason."""
    client, store, metrics = http_intake
    tag = uuid.uuid4().hex[:8]
    # An empty line is no notification over HTTP (it is skipped), unlike an empty AMQP message.
    poison = [p for p in poison_set(tag) if p.body]
    lines = [orjson.dumps(good(tag, n)) for n in range(3)] + [p.body for p in poison] + [
        orjson.dumps(good(tag, n)) for n in range(3, 6)]
    answer = post(client, b"\n".join(lines))
    expected = Expected(good=6, poison=poison)
    assert answer["received"] == len(lines)
    assert answer["accepted"] == expected.stored
    assert answer["unconverted"] == expected.unconverted
    assert answer["rejected"] == sum(expected.rejected.values())
    assert answer["archived"] == len(lines)
    reasons = {r["index"]: r["reason"] for r in answer["rejections"]}
    assert reasons == {3 + i: p.reason for i, p in enumerate(poison) if p.outcome == "rejected"}

    # The intake keeps taking notifications; a repeat is a duplicate, not an error.
    again = post(client, orjson.dumps(good(tag, 0)) + b"\n" + orjson.dumps(good(tag, 99)))
    assert (again["accepted"], again["duplicates"], again["rejected"]) == (1, 1, 0)
    expected.good += 1
    expected.duplicates = 1

    found = {(s.name, frozenset(s.labels.items())): s.value
             for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples}
    assert metric(found, "winchester_notifications_received_total", service="http") == expected.received
    assert by_label(found, "winchester_notifications_rejected_total", "reason",
                    service="http") == expected.rejected
    assert metric(found, "winchester_notifications_unconverted_total", service="http") == expected.unconverted
    assert by_label(found, "winchester_events_stored_total", "event_type",
                    service="http") == {TYPE: expected.stored}

    check_kept(store, expected, "http:")
    check_archived(store, expected)
    check_events(store, expected, tag)


def test_each_poison_posted_alone_is_answered_never_a_server_error(http_intake):
    """Every poison body as a request of its own: a 200 with rejections (or a 400), never a 5xx.

    A body that is itself valid JSON is parsed as the request (an array is
    several notifications), so the reasons may differ from the broker's: a
    JSON string is taken as the text of a notification (not_json), for instance.
    """
    client, store, _ = http_intake
    tag = uuid.uuid4().hex[:8]
    poison = [p for p in poison_set(tag) if p.label not in DEEPER_THAN_ORJSON_WRITES]  # posted alone below
    for item in poison:
        response = client.post("/v1/notifications", content=item.body)
        if not item.body:
            assert response.status_code == 400, response.text  # no notification in it
            continue
        assert response.status_code == 200, (item.label, response.text)
        answer = response.json()
        if item.outcome == "rejected":
            assert answer["accepted"] == 0 and answer["rejected"] >= 1, (item.label, answer)
            assert {r["reason"] for r in answer["rejections"]} <= REASONS, (item.label, answer)
        elif item.outcome == "stored":
            assert answer["accepted"] == 1, (item.label, answer)
        else:
            assert answer["unconverted"] == 1, (item.label, answer)
    assert post(client, orjson.dumps(good(tag, 1)))["accepted"] == 1
    assert store.count_events() == 1 + sum(p.outcome == "stored" for p in poison)


DEEPER_THAN_ORJSON_WRITES = ("deep payload", "deep trait")
REASONS = {"not_json", "not_an_object", "bad_envelope", "no_event_type", "no_message_id",
           "no_timestamp", "bad_timestamp", "bad_identifier"}


@pytest.mark.parametrize("label", DEEPER_THAN_ORJSON_WRITES)
def test_a_deeply_nested_notification_posted_alone_is_stored(http_intake, label):
    client, store, _ = http_intake
    [deep] = [p for p in poison_set(uuid.uuid4().hex[:8]) if p.label == label]
    answer = post(client, deep.body)
    assert answer["accepted"] == 1 and answer["archived"] == 1


def test_a_duplicate_within_one_batch_is_counted_once_by_type(http_intake):
    client, store, metrics = http_intake
    line = orjson.dumps(good(uuid.uuid4().hex[:8], 1))
    answer = post(client, line + b"\n" + line)
    assert (answer["accepted"], answer["duplicates"]) == (1, 1)
    found = {(s.name, frozenset(s.labels.items())): s.value
             for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples}
    assert metric(found, "winchester_events_stored_total", service="http", event_type=TYPE) == 1
    assert metric(found, "winchester_events_duplicate_total", service="http", event_type=TYPE) == 1
