"""The HTTP API: POST /v1/notifications (object, array, JSON lines), auth, health, OpenAPI."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

import winchester.api._app as api_module
from winchester.api import create_app
from winchester.clock import EventClock
from winchester.config import build_distiller, load_settings, load_trigger_definitions, open_store
from winchester.services.ingest import Ingester
from winchester.services.intake import DirectIntake
from winchester.store import Store
from winchester.store._schema import dead_letters

with warnings.catch_warnings():
    # Starlette's test client would rather use httpx2; the installed httpx works the same here.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "etc" / "winchester.yaml"
DAY = datetime(2024, 3, 1, 8, 0)
TOKEN = "s3cret-token-0123456789"
OTHER_TOKEN = "another-token-9876543210"
NOTIFICATIONS = "/v1/notifications"


def nova(n: int, event_type: str = "compute.instance.create.start", **extra) -> dict:
    """A legacy nova notification the example event definitions convert."""
    return {"event_type": event_type, "message_id": f"api-msg-{n:05d}",
            "timestamp": (DAY + timedelta(minutes=n)).isoformat(sep=" "),
            "publisher_id": "compute.host-1", "_context_request_id": "req-1",
            "payload": {"instance_id": f"i-{n % 3}", "tenant_id": "t-1", "state": "active"},
            **extra}


def line(notification: dict) -> bytes:
    return orjson.dumps(notification)


@dataclass
class Api:
    client: TestClient
    app: FastAPI
    store: Store


def build(url: str, environ: dict[str, str] | None = None) -> tuple[FastAPI, Store]:
    """Store, ingester, DirectIntake and app from the example configuration on ``url``."""
    settings = load_settings(CONFIG, environ={"WINCHESTER_DATABASE_URL": url, **(environ or {})})
    triggers = load_trigger_definitions(settings)
    store = open_store(settings, triggers)
    ingester = Ingester(store, triggers, build_distiller(settings), EventClock())
    app = create_app(store, DirectIntake(ingester, store), tokens=settings.api.tokens)
    return app, store


@pytest.fixture
def api(migrated_url) -> Iterator[Api]:
    app, store = build(migrated_url)
    with TestClient(app) as client:
        yield Api(client, app, store)
    store.close()


@pytest.fixture
def secured(migrated_url) -> Iterator[Api]:
    app, store = build(migrated_url, {"WINCHESTER_API_TOKENS": f"{TOKEN}, {OTHER_TOKEN}"})
    with TestClient(app) as client:
        yield Api(client, app, store)
    store.close()


def counts(answer: dict) -> tuple[int, int, int, int]:
    return answer["accepted"], answer["duplicates"], answer["unconverted"], answer["rejected"]


def dead_letter_rows(store: Store) -> list:
    with store.engine.connect() as connection:
        return connection.execute(sa.select(dead_letters).order_by(dead_letters.c.id)).all()


# -- POST /v1/notifications -------------------------------------------------------------------


def test_a_single_object_is_accepted_stored_and_archived(api):
    """One JSON object: accepted, stored as an event, archived."""
    response = api.client.post(NOTIFICATIONS, json=nova(1))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["received"] == 1 and counts(answer) == (1, 0, 0, 0)
    assert answer["rejections"] == [] and answer["archived"] == 1
    assert api.store.get_event("api-msg-00001")["event_type"] == "compute.instance.create.start"
    assert api.store.count_events() == 1 and api.store.count_archive() == 1


def test_an_array_counts_accepted_unconverted_and_rejected_with_index(api):
    """A JSON array: each item counted; a rejected one reported with its index and reason."""
    missing_id = {key: value for key, value in nova(3).items() if key != "message_id"}
    body = [nova(1), nova(2, "image.upload"), missing_id, nova(4, "compute.instance.delete.end")]
    response = api.client.post(NOTIFICATIONS, json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["received"] == 4 and counts(answer) == (2, 0, 1, 1)
    assert [(r["index"], r["reason"]) for r in answer["rejections"]] == [(2, "no_message_id")]
    assert "message_id" in answer["rejections"][0]["detail"]
    assert api.store.count_events() == 2
    assert api.store.count_events_by_type() == {"compute.instance.create.start": 1,
                                                "compute.instance.delete.end": 1}
    # Everything is archived, the unconverted and rejected ones too.
    assert answer["archived"] == 4 and api.store.count_archive() == 4
    assert api.store.count_dead_letters() == 1


def test_a_json_string_is_rejected_not_decoded_a_second_time(api):
    """A JSON string holding an object, posted alone or in an array, is not a notification."""
    inner = orjson.dumps(nova(1)).decode()
    for body in (orjson.dumps(inner), orjson.dumps([inner, nova(2)])):
        response = api.client.post(NOTIFICATIONS, content=body,
                                   headers={"content-type": "application/json"})
        assert response.status_code == 200, response.text
        [rejection] = response.json()["rejections"]
        assert rejection["index"] == 0 and rejection["reason"] == "not_an_object"
        assert "not str" in rejection["detail"]
    assert api.store.get_event("api-msg-00001") is None
    assert api.store.count_events() == 1


def test_documents_nested_deeper_than_orjson_writes_are_kept_not_a_server_error(api):
    """orjson reads 1024 levels but writes 255: a deep list in an array, and a deep object that
    is rejected, are dead-lettered and archived whole; the valid notification beside them is stored."""
    deep_list = b"[" * 300 + b"]" * 300
    deep_rejected = b'{"message_id": "deep-1", "x": ' + deep_list + b"}"  # no event_type
    body = b"[" + line(nova(1)) + b"," + deep_list + b"," + deep_rejected + b"]"
    response = api.client.post(NOTIFICATIONS, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert counts(answer) == (1, 0, 0, 2) and answer["archived"] == 3
    assert [(r["index"], r["reason"]) for r in answer["rejections"]] == [
        (1, "not_an_object"), (2, "no_event_type")]
    assert api.store.get_event("api-msg-00001") is not None
    kept = [orjson.loads(row.body) for row in dead_letter_rows(api.store)]
    assert kept == [orjson.loads(deep_list), orjson.loads(deep_rejected)]


def test_message_ids_longer_than_the_archive_keeps_are_never_taken_for_duplicates(api):
    """Two different ids of 300 characters sharing their first 255: both notifications are
    rejected as events (bad_identifier) and both are archived, not the second dropped as a copy."""
    shared = "m" * 255
    body = [nova(1, message_id=shared + "a" * 45), nova(2, message_id=shared + "b" * 45)]
    answer = api.client.post(NOTIFICATIONS, json=body).json()
    assert [r["reason"] for r in answer["rejections"]] == ["bad_identifier", "bad_identifier"]
    assert answer["archived"] == 2 and api.store.count_archive() == 2


def test_json_lines_are_accepted(api):
    """JSON lines (application/x-ndjson): one notification per line, blank lines ignored."""
    body = b"\n".join(line(nova(n)) for n in range(5)) + b"\n\n"
    response = api.client.post(NOTIFICATIONS, content=body,
                               headers={"content-type": "application/x-ndjson"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["received"] == 5 and counts(answer) == (5, 0, 0, 0)
    assert api.store.count_events() == 5 and api.store.count_archive() == 5
    assert len(api.store.list_streams()) == 3  # one per instance (and day)


def test_posting_the_same_again_is_all_duplicates_and_leaves_the_archive_alone(api):
    """The same notifications again: all duplicates, no new events, the archive unchanged."""
    body = b"\n".join(line(nova(n)) for n in range(6))
    headers = {"content-type": "application/x-ndjson"}
    first = api.client.post(NOTIFICATIONS, content=body, headers=headers).json()
    assert counts(first) == (6, 0, 0, 0)
    archived = list(api.store.iter_archive())
    again = api.client.post(NOTIFICATIONS, content=body, headers=headers)
    assert again.status_code == 200, again.text
    answer = again.json()
    assert counts(answer) == (0, 6, 0, 0) and answer["archived"] == 0
    assert api.store.count_events() == 6
    assert list(api.store.iter_archive()) == archived


def test_a_malformed_line_is_rejected_dead_lettered_and_archived_the_rest_accepted(api):
    """A bad line among good ones: rejected with its reason, dead-lettered, archived as rejected."""
    bad = b'{"event_type": "compute.instance.update", "message_id"'
    body = b"\n".join([line(nova(1)), bad, line(nova(2)), line(nova(3))])
    response = api.client.post(NOTIFICATIONS, content=body,
                               headers={"content-type": "application/x-ndjson"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["received"] == 4 and counts(answer) == (3, 0, 0, 1)
    [rejection] = answer["rejections"]
    assert rejection["index"] == 1 and rejection["reason"] == "not_json"
    assert "not valid JSON" in rejection["detail"]
    assert api.store.count_events() == 3
    assert api.store.count_dead_letters() == 1
    [letter] = dead_letter_rows(api.store)
    assert letter.source == "http:1" and letter.reason == "not_json" and bytes(letter.body) == bad
    rows = list(api.store.iter_archive())
    assert api.store.count_archive() == 4 and len(rows) == 4
    [rejected] = [row for row in rows if row.status == "rejected"]
    assert rejected.body == bad and rejected.message_id is None and "not_json" in rejected.reason
    assert sorted(row.message_id for row in rows if row.status == "archived") == [
        "api-msg-00001", "api-msg-00002", "api-msg-00003"]


@pytest.mark.parametrize("body", [b"", b"   \n\n  ", b"[]"], ids=["empty", "blank", "empty-array"])
def test_a_body_without_notifications_is_a_400(api, body):
    """An empty body (or an empty array) is refused with 400 and stores nothing."""
    response = api.client.post(NOTIFICATIONS, content=body,
                               headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "no notification" in response.json()["detail"]
    assert api.store.count_archive() == 0 and api.store.count_events() == 0


def test_too_large_a_body_or_too_many_notifications_is_a_413(api, monkeypatch):
    """Over the byte limit, or over the notification limit: 413, nothing stored."""
    monkeypatch.setattr(api_module, "MAX_BODY_BYTES", 1000)
    big = b"\n".join(line(nova(n)) for n in range(10))
    assert len(big) > 1000
    response = api.client.post(NOTIFICATIONS, content=big,
                               headers={"content-type": "application/x-ndjson"})
    assert response.status_code == 413 and "1000 bytes" in response.json()["detail"]
    monkeypatch.setattr(api_module, "MAX_BODY_BYTES", 64 * 2**20)
    monkeypatch.setattr(api_module, "MAX_NOTIFICATIONS", 3)
    response = api.client.post(NOTIFICATIONS, json=[nova(n) for n in range(4)])
    assert response.status_code == 413 and "4 notifications" in response.json()["detail"]
    assert api.store.count_archive() == 0 and api.store.count_events() == 0


def test_without_an_intake_posting_is_a_404(migrated_url):
    """An app built without a DirectIntake does not take notifications (404)."""
    store = Store.from_url(migrated_url)
    try:
        with TestClient(create_app(store)) as client:
            response = client.post(NOTIFICATIONS, json=nova(1))
            assert response.status_code == 404
            assert client.get("/healthz").status_code == 200
    finally:
        store.close()


# -- tokens -------------------------------------------------------------------------------------


def test_with_tokens_writes_need_a_valid_bearer_token(secured):
    """Tokens configured (WINCHESTER_API_TOKENS): no or wrong token 401 and counted; a right one 200."""
    client, app = secured.client, secured.app
    assert app.state.unauthorised == 0
    response = client.post(NOTIFICATIONS, json=nova(1))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert client.post(NOTIFICATIONS, json=nova(1),
                       headers={"authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    assert client.post(NOTIFICATIONS, json=nova(1),
                       headers={"authorization": f"Basic {TOKEN}"}).status_code == 401
    assert app.state.unauthorised == 3
    assert secured.store.count_archive() == 0 and secured.store.count_events() == 0
    for n, token in ((1, TOKEN), (2, OTHER_TOKEN)):
        response = client.post(NOTIFICATIONS, json=nova(n), headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 1
    assert app.state.unauthorised == 3
    assert secured.store.count_events() == 2


def test_with_tokens_healthz_needs_none(secured):
    """GET /healthz answers without a token, and is not counted as unauthorised."""
    response = secured.client.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert secured.app.state.unauthorised == 0


# -- health and the OpenAPI document ------------------------------------------------------------


def test_healthz_reports_the_database_ok(api):
    """GET /healthz: 200 with database ok and the version."""
    from winchester import __version__

    response = api.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "version": __version__}


@pytest.fixture(params=["sqlite-directory", "postgresql-closed-port"])
def unreachable_store(request, tmp_path) -> Iterator[Store]:
    """A store whose database cannot be opened: an SQLite 'file' that is a directory, or a closed port."""
    if request.param == "sqlite-directory":
        directory = tmp_path / "a-directory"
        directory.mkdir()
        url = f"sqlite:///{directory}"
    else:
        url = "postgresql+psycopg://winchester@127.0.0.1:1/winchester?connect_timeout=3"
    store = Store.from_url(url)
    yield store
    store.close()


def test_healthz_is_503_when_the_database_is_unreachable(unreachable_store):
    """GET /healthz: 503 with the database error when the store's database cannot be reached."""
    with TestClient(create_app(unreachable_store)) as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    answer = response.json()
    assert answer["status"] == "unavailable" and "database read failed" in answer["database"]


def test_posting_while_the_database_is_unreachable_is_a_503(tmp_path):
    """POST when the store cannot write: 503 saying to post again (duplicates are recognised)."""
    directory = tmp_path / "a-directory"
    directory.mkdir()
    settings = load_settings(CONFIG, environ={"WINCHESTER_DATABASE_URL": f"sqlite:///{directory}"})
    triggers = load_trigger_definitions(settings)
    store = Store.from_url(settings.database_url)
    intake = DirectIntake(Ingester(store, triggers, build_distiller(settings)), store)
    try:
        with TestClient(create_app(store, intake)) as client:
            response = client.post(NOTIFICATIONS, json=nova(1))
    finally:
        store.close()
    assert response.status_code == 503
    assert "post them again" in response.json()["detail"]


def test_the_openapi_document_lists_the_routes(api):
    """GET /openapi.json lists /v1/notifications (POST) and /healthz (GET)."""
    response = api.client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["info"]["title"] == "Winchester"
    assert "post" in document["paths"][NOTIFICATIONS]
    assert "get" in document["paths"]["/healthz"]
