"""The query API against its own OpenAPI document, with schemathesis (v4's Python API).

Every query route (GET, and DELETE/PUT with the token) is called with
generated parameters on an SQLite store holding the query tests' world:
events of every trait type, streams in every settled state, the archive.
Whatever is sent, the answer must not be a server error, and its status,
content type and body must be the ones the document promises. Bounded
(30 examples an operation, derandomised) so it stays quick and repeatable.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis import checks

from tests.test_query_api import TOKEN, TRIGGERS_YAML, build_world
from winchester._yaml import parse_yaml
from winchester.api import create_app
from winchester.store import Store, create_engine, upgrade
from winchester.triggers import load_triggers

WRITES = ("DELETE", "PUT")
CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance]


def _document() -> dict:
    """The OpenAPI document (the same for every store; this one is never opened)."""
    triggers = load_triggers(parse_yaml(TRIGGERS_YAML, "triggers.yaml")[0], "triggers.yaml")
    store = Store.from_url("sqlite://")
    try:
        return create_app(store, triggers=triggers, tokens=(TOKEN,)).openapi()
    finally:
        store.close()


schema = schemathesis.openapi.from_dict(_document()).include(
    path_regex=r"^/v1/(events|streams|triggers|archive)")


def _populated_app(tmp_path_factory) -> Iterator[FastAPI]:
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'winchester.db'}"
    engine = create_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    world = build_world(url, tmp_path_factory.mktemp("fuzz-etc"), tokens=(TOKEN,))
    yield world.app
    world.store.close()


@pytest.fixture(scope="module")
def reading_app(tmp_path_factory) -> Iterator[FastAPI]:
    """The world the reads see (the writes get their own, so reads keep finding streams)."""
    yield from _populated_app(tmp_path_factory)


@pytest.fixture(scope="module")
def writing_app(tmp_path_factory) -> Iterator[FastAPI]:
    yield from _populated_app(tmp_path_factory)


def test_the_document_covers_every_query_route():
    """The fuzzed operations are all of the query API's (so none is silently left out)."""
    operations = sorted(
        (method.upper(), path) for path, item in _document()["paths"].items()
        if path.startswith(("/v1/events", "/v1/streams", "/v1/triggers", "/v1/archive"))
        for method in item)
    assert operations == sorted([
        ("GET", "/v1/archive"), ("GET", "/v1/events"), ("GET", "/v1/events/count"),
        ("GET", "/v1/events/{message_id}"), ("GET", "/v1/events/{message_id}/explain"),
        ("GET", "/v1/streams"), ("GET", "/v1/streams/count"), ("GET", "/v1/streams/{stream_id}"),
        ("DELETE", "/v1/streams/{stream_id}"), ("PUT", "/v1/streams/{stream_id}"),
        ("GET", "/v1/streams/{stream_id}/explain"), ("GET", "/v1/triggers")])


@schema.parametrize()
@settings(max_examples=30, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented_and_none_is_a_server_error(case, reading_app, writing_app):
    """Generated requests: never a 5xx; status, content type and body as the document says."""
    if case.method in WRITES:
        case.call_and_validate(app=writing_app, headers={"authorization": f"Bearer {TOKEN}"},
                               checks=CHECKS)
    else:
        case.call_and_validate(app=reading_app, checks=CHECKS)
