"""The query API (issue 8): Quincy v1 routes for events and streams, explain, triggers, archive.

Every test runs on SQLite and on PostgreSQL (``migrated_url``). The world
they query is built the way production builds it: notifications distilled
by event definitions read from YAML, matched by triggers read from YAML,
archived by the HTTP intake, and moved through their states by a worker
running on a fixed clock (a handler that raises leaves an error stream).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from winchester.api import create_app
from winchester.clock import FixedClock
from winchester.config import build_distiller, load_settings, load_trigger_definitions, open_store
from winchester.pipelines import Handler, Pipeline, PipelineEntry, PipelineSet
from winchester.services.ingest import Ingester
from winchester.services.intake import DirectIntake
from winchester.services.serve import trigger_counters
from winchester.services.worker import Worker
from winchester.store import Store, create_engine, upgrade
from tests.conftest import postgres_schema_url

with warnings.catch_warnings():
    # Starlette's test client would rather use httpx2; the installed httpx works the same here.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

DAY = datetime(2024, 3, 1)
ARRIVAL = timedelta(minutes=1)                   # each notification arrives a minute late
WORKED_AT = DAY.replace(hour=10, minute=30)      # the worker's clock
NOW = DAY.replace(hour=10, minute=40)            # the API's clock (explain)
TOKEN = "query-token-0123456789"

WINCHESTER_YAML = """
distiller_config: event_definitions.yaml
trigger_definitions: triggers.yaml
pipeline_config: pipelines.yaml
indexed_traits: [instance_id, memory_mb, host, load, launched_at]
"""

# One trait of each type in the typed index, and one of each only in the event's JSON.
EVENT_DEFINITIONS_YAML = """
- event_type: "*"
  traits:
    instance_id: {fields: payload.instance_id}
    tenant_id: {fields: payload.tenant_id}
    state: {fields: payload.state}
    memory_mb: {type: int, fields: payload.number}
    vcpus: {type: int, fields: payload.number}
    host: {fields: payload.text}
    flavor: {fields: payload.text}
    load: {type: float, fields: payload.real}
    ratio: {type: float, fields: payload.real}
    launched_at: {type: datetime, fields: payload.moment}
    deleted_at: {type: datetime, fields: payload.moment}
    # Names a JSON path cannot spell plainly.
    größe: {type: int, fields: payload.number}
    'say "when"': {fields: payload.text}
    dotted.name: {fields: payload.text}
"""

TRIGGERS_YAML = """
- name: instance
  debug_level: 1
  distinguished_by: [instance_id]
  expiration: "$last + 1h"
  fire_pipeline: fire_instance
  expire_pipeline: expire_instance
  match_criteria:
    - event_type: compute.instance.*
  fire_criteria:
    - event_type: compute.instance.end
      traits:
        state: active
    - event_type: compute.instance.start
- name: daily
  distinguished_by:
    - tenant_id
    - timestamp: day
  expiration: "$last + 30m"
  fire_pipeline: fire_daily
  expire_pipeline: expire_daily
  match_criteria:
    - event_type: audit.*
  fire_criteria:
    - event_type: audit.exists
      number: 2
"""

PIPELINES_YAML = """
fire_instance: [logger]
expire_instance: [logger]
fire_daily: [logger]
expire_daily: [logger]
"""


def notification(message_id: str, event_type: str, at: datetime, instance: str | None = None,
                 tenant: str = "t-1", **payload: Any) -> dict[str, Any]:
    body = {"tenant_id": tenant, **payload}
    if instance is not None:
        body["instance_id"] = instance
    return {"event_type": event_type, "message_id": message_id, "timestamp": at.isoformat(sep=" "),
            "publisher_id": "compute.host-1", "priority": "INFO", "payload": body}


def at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    return DAY.replace(hour=hour, minute=minute, second=second)


# The typed trait values one event carries (on an indexed and an unindexed trait each).
ONES = {"number": 1, "text": "1", "real": 1.0, "moment": "2024-03-01T09:30:00"}
OTHERS = {"number": 2048, "text": "2048", "real": 0.5, "moment": "2024-03-01T09:45:00Z"}

# In arrival order (the order of their database ids, which is what paging follows).
NOTIFICATIONS = [
    notification("exp-start", "compute.instance.start", at(8), "i-expired"),
    notification("audit-1", "audit.exists", at(9), tenant="t-1"),
    notification("audit-2", "audit.usage", at(9, 5), tenant="t-1"),
    notification("fire-start", "compute.instance.start", at(10), "i-fired", **OTHERS),
    notification("fire-end", "compute.instance.end", at(10, 1), "i-fired", state="active"),
    notification("broken-start", "compute.instance.start", at(10, 2), "i-broken"),
    notification("broken-end", "compute.instance.end", at(10, 3), "i-broken", state="active"),
    notification("active-start", "compute.instance.start", at(10, 4), "i-active", **ONES),
    notification("active-end", "compute.instance.end", at(10, 5), "i-active", state="error"),
    notification("active-update", "compute.instance.update", at(10, 6), "i-active",
                 state="resizing"),
    notification("other-tenant", "image.upload", at(10, 7), tenant="t-2"),
    # An instance notification without an instance: no stream can take it.
    notification("orphan", "compute.instance.update", at(10, 8)),
]
IDS = [n["message_id"] for n in NOTIFICATIONS]


class Failing(Handler):
    """A handler that refuses the streams of one instance (and of every daily stream)."""

    def handle_events(self, events, env):
        traits = env["distinguishing_traits"]
        if traits.get("instance_id") == "i-broken" or "tenant_id" in traits:
            raise RuntimeError(f"no capacity for {traits.get('instance_id', 'the audit')}")
        return events

    def commit(self):
        pass

    def rollback(self):
        pass


PIPELINES = PipelineSet({name: Pipeline(name, (PipelineEntry("failing", Failing, {}),))
                         for name in ("fire_instance", "expire_instance", "fire_daily",
                                      "expire_daily")})


@dataclass
class World:
    client: TestClient
    app: FastAPI
    store: Store
    triggers: Any
    ingester: Ingester
    intake: DirectIntake
    streams: dict[str, int]  # instance id (or "daily") -> stream id

    def make_app(self, **options: Any) -> FastAPI:
        """Another app over the same store (tokens, protect_reads)."""
        return create_app(self.store, self.intake, triggers=self.triggers, clock=FixedClock(NOW),
                          counters=lambda: trigger_counters([self.ingester]), **options)

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def ids(self, path: str = "/v1/events", **params: Any) -> list[str]:
        return [event["message_id"] for event in self.get(path, **params)]


def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "etc"
    directory.mkdir()
    for name, text in (("winchester.yaml", WINCHESTER_YAML),
                       ("event_definitions.yaml", EVENT_DEFINITIONS_YAML),
                       ("triggers.yaml", TRIGGERS_YAML), ("pipelines.yaml", PIPELINES_YAML)):
        (directory / name).write_text(text)
    return directory


def build_world(url: str, tmp_path: Path, **app_options: Any) -> World:
    settings = load_settings(config_dir(tmp_path) / "winchester.yaml",
                             environ={"WINCHESTER_DATABASE_URL": url})
    triggers = load_trigger_definitions(settings)
    store = open_store(settings, triggers)
    clock = FixedClock(DAY)
    ingester = Ingester(store, triggers, build_distiller(settings), clock)
    intake = DirectIntake(ingester, store)
    for body in NOTIFICATIONS:  # one at a time: database ids follow this order
        clock.set(datetime.fromisoformat(body["timestamp"]) + ARRIVAL)
        answer = intake.accept([body])
        assert answer["accepted"] == 1, answer
    Worker(store, triggers, PIPELINES, clock=FixedClock(WORKED_AT),
           wall_clock=FixedClock(WORKED_AT), purge_completed=False).run_until_idle()
    streams = {}
    for stream in store.list_streams():
        streams[stream.distinguishing_traits.get("instance_id", "daily")] = stream.id
    app = create_app(store, intake, triggers=triggers, clock=FixedClock(NOW),
                     counters=lambda: trigger_counters([ingester]), **app_options)
    return World(TestClient(app), app, store, triggers, ingester, intake, streams)


def snapshot(store: Store) -> tuple[Any, ...]:
    return (store.count_events(), store.count_archive(),
            tuple((s.id, s.state, s.event_count) for s in store.list_streams()))


@pytest.fixture(scope="module",
                params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def world(request, tmp_path_factory) -> Iterator[World]:
    """The world on each store, shared by the tests that only read it.

    Its databases are made as ``migrated_url`` makes them (an SQLite file, a
    private PostgreSQL schema, migrated); once per module, since building a
    world takes a while. Tests that change anything use ``fresh``.
    """
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'winchester.db'}"
        else:
            url = stack.enter_context(postgres_schema_url())
        engine = create_engine(url)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        built = build_world(url, tmp_path_factory.mktemp("world"))
        before = snapshot(built.store)
        with built.client:
            yield built
        try:
            assert snapshot(built.store) == before, "a test changed the shared world: use fresh"
        finally:
            built.store.close()


@pytest.fixture
def fresh(migrated_url, tmp_path) -> Iterator[World]:
    """A world of its own (on each store), for tests that delete, reset or add."""
    built = build_world(migrated_url, tmp_path)
    with built.client:
        yield built
    built.store.close()



def dt(value: datetime) -> dict[str, str]:
    """A datetime as Quincy's bodies carry it."""
    return {"__type__": "datetime", "datetime": value.isoformat(timespec="microseconds")}


def error_of(response: Any, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    return response.json()["detail"]


NEWEST_FIRST = IDS[::-1]


# -- events: bodies, order and paging ------------------------------------------------------------


def test_events_are_flat_quincy_objects_newest_first_with_marks(world):
    """GET /v1/events: newest (last stored) first; flat traits, typed datetimes, a hex _mark."""
    events = world.get("/v1/events")
    assert [event["message_id"] for event in events] == NEWEST_FIRST
    assert [event["_mark"] for event in events] == [f"{n:x}" for n in range(len(IDS), 0, -1)]
    by_id = {event["message_id"]: event for event in events}
    assert by_id["fire-start"] == {
        "message_id": "fire-start", "event_type": "compute.instance.start",
        "timestamp": dt(at(10)), "service": "compute.host-1", "tenant_id": "t-1",
        "instance_id": "i-fired", "memory_mb": 2048, "vcpus": 2048, "host": "2048",
        "flavor": "2048", "load": 0.5, "ratio": 0.5, "launched_at": dt(at(9, 45)),
        "deleted_at": dt(at(9, 45)), "größe": 2048, 'say "when"': "2048", "dotted.name": "2048",
        "_mark": "4"}
    assert by_id["active-end"] == {
        "message_id": "active-end", "event_type": "compute.instance.end",
        "timestamp": dt(at(10, 5)), "service": "compute.host-1", "tenant_id": "t-1",
        "instance_id": "i-active", "state": "error", "_mark": "9"}


def test_one_event_by_message_id_and_404_for_an_unknown_one(world):
    """GET /v1/events/{message_id}: the event, no _mark; an unknown id (even with a NUL) 404."""
    assert world.get("/v1/events/audit-1") == {
        "message_id": "audit-1", "event_type": "audit.exists", "timestamp": dt(at(9)),
        "service": "compute.host-1", "tenant_id": "t-1"}
    assert "no-such-event" in error_of(world.client.get("/v1/events/no-such-event"), 404)
    # PostgreSQL cannot even be asked about a NUL: still an answer, not a database error.
    error_of(world.client.get("/v1/events/a%00b"), 404)
    error_of(world.client.get("/v1/events/a%00b/explain"), 404)


def pages(world: World, path: str, first_mark: str | None, **params: Any) -> list[list[str]]:
    """Every page of ``path`` from ``first_mark`` on, each page's message ids (or stream ids)."""
    found, mark = [], first_mark
    for _ in range(20):
        page = world.get(path, **params, **({} if mark is None else {"mark": mark}))
        if not page:
            return found
        found.append([row.get("message_id", row.get("id")) for row in page])
        mark = page[-1]["_mark"]
    raise AssertionError("paging never ended")


def test_event_pages_follow_the_mark_newest_first(world):
    """limit cuts pages; a page's last _mark fetches the next (older) one; then an empty page."""
    assert pages(world, "/v1/events", None, limit=5) == [
        NEWEST_FIRST[0:5], NEWEST_FIRST[5:10], NEWEST_FIRST[10:]]
    # From a mark in the middle, with a filter: only older events of that type.
    assert world.ids(mark="8", event_name="compute.instance.end") == ["broken-end", "fire-end"]
    # '-' before a mark says newest first explicitly, as Quincy allowed.
    assert world.ids(mark="-8", limit=2) == world.ids(mark="8", limit=2) == [
        "broken-end", "broken-start"]


def test_event_pages_with_a_plus_mark_go_oldest_first(world):
    """mark '+' (alone or before a mark) pages oldest first, and the _marks carry the '+'."""
    first = world.get("/v1/events", mark="+", limit=5)
    assert [event["_mark"] for event in first] == ["+1", "+2", "+3", "+4", "+5"]
    assert pages(world, "/v1/events", "+", limit=5) == [IDS[0:5], IDS[5:10], IDS[10:]]
    assert world.ids(mark="+5", event_name="compute.instance.end") == ["broken-end", "active-end"]
    assert world.get("/v1/events", mark=f"+{len(IDS):x}") == []


def test_a_plus_written_unencoded_in_the_url_still_pages_oldest_first(world):
    """`?mark=+3`, as the README writes it, arrives as " 3" (a raw '+' is a space in a query
    string): it means +3, and a client appending each page's _mark as is reads every row once."""
    assert world.client.get("/v1/events?mark=+&limit=3").json() == \
        world.get("/v1/events", mark="+", limit=3)
    found, mark = [], "+"
    for _ in range(20):
        page = world.client.get(f"/v1/events?limit=5&mark={mark}").json()
        if not page:
            break
        found += [event["message_id"] for event in page]
        mark = page[-1]["_mark"]
    assert found == IDS


def test_limit_bounds_are_accepted(world):
    """limit 1 and 10000 (the bounds) are fine; no limit means the default page of 200."""
    assert world.ids(limit=1) == ["orphan"]
    assert world.ids(limit=10000) == NEWEST_FIRST
    assert world.ids() == NEWEST_FIRST


@pytest.mark.parametrize("params, expected", [
    ({}, 12),
    ({"event_name": "compute.instance.end"}, 3),
    ({"traits": "instance_id:i-active"}, 3),
    ({"from_datetime": "2024-03-01T10:00:00", "to_datetime": "2024-03-01T10:05:00"}, 5),
    ({"mark": "8"}, 7),
    ({"mark": "+8"}, 4),
    ({"mark": "+3", "event_name": "compute.instance.start", "traits": "tenant_id:t-1"}, 3),
    ({"traits": "vcpus:int:1"}, 1),
    ({"event_name": "nothing.like.it"}, 0),
], ids=["all", "event_name", "traits", "between", "mark", "plus-mark", "combined", "unindexed",
        "none"])
def test_event_count_agrees_with_the_list(world, params, expected):
    """GET /v1/events/count: [{"count": N}], N the length of the list with the same filters."""
    assert world.get("/v1/events/count", **params) == [{"count": expected}]
    assert len(world.get("/v1/events", limit=10000, **params)) == expected


# -- events: filters --------------------------------------------------------------------------


@pytest.mark.parametrize("params, expected", [
    # from_datetime is exclusive...
    ({"from_datetime": "2024-03-01T10:05:00"}, ["orphan", "other-tenant", "active-update"]),
    # ...to_datetime inclusive.
    ({"to_datetime": "2024-03-01T09:00:00"}, ["audit-1", "exp-start"]),
    ({"from_datetime": "2024-03-01T09:00:00", "to_datetime": "2024-03-01T10:00:00"},
     ["fire-start", "audit-2"]),
    ({"from_datetime": "2024-03-01T10:05:59.999999", "to_datetime": "2024-03-01T10:06:00"},
     ["active-update"]),
    ({"from_datetime": "2024-03-01T10:06:00", "to_datetime": "2024-03-01T10:06:00"}, []),
    # Offsets are converted to UTC; Z and a space instead of T are fine; a date alone is midnight.
    ({"from_datetime": "2024-03-01T11:05:00+01:00"}, ["orphan", "other-tenant", "active-update"]),
    ({"from_datetime": "2024-03-01 10:05:00Z"}, ["orphan", "other-tenant", "active-update"]),
    ({"to_datetime": "2024-03-01"}, []),
    ({"from_datetime": "2024-03-02"}, []),
], ids=["from-exclusive", "to-inclusive", "between", "microsecond", "empty-range", "offset",
        "zulu", "date-to", "date-from"])
def test_from_and_to_datetime_bound_the_events(world, params, expected):
    """from_datetime < timestamp <= to_datetime, as Quincy's store did."""
    assert world.ids(**params) == expected


@pytest.mark.parametrize("event_name, expected", [
    ("compute.instance.end", ["active-end", "broken-end", "fire-end"]),
    ("audit.usage", ["audit-2"]),
    ("compute.instance.*", []),  # a type, not a pattern
    ("nothing.like.it", []),
    ("", NEWEST_FIRST),  # empty: no filter
])
def test_event_name_filters_by_event_type(world, event_name, expected):
    """event_name keeps the events of exactly that type."""
    assert world.ids(event_name=event_name) == expected


FAMILIES = {
    # Traits copied into the typed, indexed table...
    "indexed": {"int": "memory_mb", "text": "host", "float": "load", "datetime": "launched_at"},
    # ...and traits found only in the event's JSON document.
    "unindexed": {"int": "vcpus", "text": "flavor", "float": "ratio", "datetime": "deleted_at"},
}
TYPED_CASES = [
    ("int", "int:1", ["active-start"]),
    ("int", "int:2048", ["fire-start"]),
    ("int", "1", []),            # the text "1" is not the int 1
    ("int", "string:1", []),
    ("int", "float:1", []),      # nor is the float 1.0
    ("int", "int:2", []),
    ("text", "1", ["active-start"]),
    ("text", "string:1", ["active-start"]),
    ("text", "2048", ["fire-start"]),
    ("text", "int:1", []),
    ("text", "float:1", []),
    ("float", "float:1", ["active-start"]),
    ("float", "float:1.0", ["active-start"]),
    ("float", "float:0.5", ["fire-start"]),
    ("float", "int:1", []),
    ("float", "1", []),
    ("float", "1.0", []),
    ("datetime", "datetime:2024-03-01T09:30:00", ["active-start"]),
    ("datetime", "datetime:2024-03-01 10:30:00+01:00", ["active-start"]),
    ("datetime", "datetime:2024-03-01T09:45:00Z", ["fire-start"]),
    ("datetime", "datetime:2024-03-01T09:30:00.000001", []),
    ("datetime", "2024-03-01T09:30:00", []),  # text, not a datetime
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind, value, expected", TYPED_CASES,
                         ids=[f"{kind}-{value}" for kind, value, _ in TYPED_CASES])
def test_typed_trait_filters_match_value_and_type(world, family, kind, value, expected):
    """traits=name:value: text unless typed (int:, float:, datetime:, string:); types must match."""
    name = FAMILIES[family][kind]
    assert world.ids(traits=f"{name}:{value}") == expected
    assert world.get("/v1/events/count", traits=f"{name}:{value}") == [{"count": len(expected)}]


@pytest.mark.parametrize("name", ["größe", 'say "when"', "dotted.name"])
def test_trait_names_are_taken_literally(world, name):
    """Any trait name filters, on every store: non-ASCII, a quote, a dot (no JSON path syntax)."""
    value = "int:1" if name == "größe" else "1"
    assert world.ids(traits=f"{name}:{value}") == ["active-start"]
    assert world.ids(traits=f"{name}:string:int:1") == []


@pytest.mark.parametrize("traits, expected", [
    ("instance_id:i-active;state:error", ["active-end"]),
    ("instance_id:i-active,state:error", ["active-end"]),  # klugman's separator
    ("instance_id:i-active;state:resizing", ["active-update"]),
    ("state:error;instance_id:i-fired", []),
    ("tenant_id:t-2", ["other-tenant"]),
    ("instance_id:i-active;", ["active-update", "active-end", "active-start"]),
    ("message_id:fire-end", ["fire-end"]),
    ("event_type:audit.usage", ["audit-2"]),
    ("timestamp:datetime:2024-03-01T10:07:00", ["other-tenant"]),
    ("timestamp:2024-03-01T10:07:00", []),
    ("no_such_trait:x", []),
    ("flavor:string:int:1", []),  # the text "int:1"
])
def test_several_trait_filters_must_all_match(world, traits, expected):
    """Pairs separated by ; (or , when there is no ;) must all hold; envelope fields filter too."""
    assert world.ids(traits=traits) == expected


def test_filters_combine(world):
    """event_name, traits, bounds and mark narrow the same list."""
    assert world.ids(event_name="compute.instance.update", traits="tenant_id:t-1") == [
        "orphan", "active-update"]
    assert world.ids(event_name="compute.instance.start", traits="tenant_id:t-1",
                     from_datetime="2024-03-01T09:00:00", to_datetime="2024-03-01T10:02:00",
                     mark="+1") == ["fire-start", "broken-start"]


BAD_EVENT_FILTERS = [
    ({"from_datetime": "yesterday"}, "from_datetime"),
    ({"to_datetime": "2024-13-01T00:00:00"}, "to_datetime"),
    ({"mark": "zz"}, "mark"),
    ({"mark": "+xyz"}, "mark"),
    ({"mark": "+-1"}, "mark"),
    ({"mark": "8000000000000000"}, "mark"),
    ({"traits": "memory_mb"}, "traits"),
    ({"traits": ":1"}, "traits"),
    ({"traits": "memory_mb:int:lots"}, "traits"),
    ({"traits": "memory_mb:int:9223372036854775808"}, "traits"),
    ({"traits": "ratio:float:nan"}, "traits"),
    ({"traits": "ratio:float:one"}, "traits"),
    ({"traits": "launched_at:datetime:soon"}, "traits"),
    ({"event_name": "x" * 256}, "event_name"),
]
BAD_LIMITS = [({"limit": "0"}, "limit"), ({"limit": "10001"}, "limit"), ({"limit": "x"}, "limit"),
              ({"limit": "-5"}, "limit"), ({"limit": "1.5"}, "limit")]


@pytest.mark.parametrize("params, parameter", BAD_EVENT_FILTERS + BAD_LIMITS,
                         ids=[f"{p}={v!s:.20}" for q, _ in BAD_EVENT_FILTERS + BAD_LIMITS
                              for p, v in q.items()])
def test_a_bad_event_parameter_is_a_400_naming_it(world, params, parameter):
    """A bad value answers 400, and the message starts with the parameter's name."""
    detail = error_of(world.client.get("/v1/events", params=params), 400)
    assert detail.startswith(parameter), detail


@pytest.mark.parametrize("params, parameter", BAD_EVENT_FILTERS,
                         ids=[f"{p}={v!s:.20}" for q, _ in BAD_EVENT_FILTERS for p, v in q.items()])
def test_a_bad_event_count_parameter_is_a_400_naming_it(world, params, parameter):
    """The count takes the list's filters, and refuses the same bad values."""
    detail = error_of(world.client.get("/v1/events/count", params=params), 400)
    assert detail.startswith(parameter), detail


@pytest.mark.parametrize("path, parameters", [
    ("/v1/events", ("from_datetime", "to_datetime", "event_name", "traits", "mark", "limit")),
    ("/v1/events/count", ("from_datetime", "to_datetime", "event_name", "traits", "mark")),
    ("/v1/streams", ("older_than", "younger_than", "state", "trigger_name", "name",
                     "distinguishing_traits", "details", "mark", "limit")),
    ("/v1/streams/count", ("older_than", "younger_than", "state", "trigger_name", "name",
                           "distinguishing_traits", "mark")),
    ("/v1/archive", ("from_datetime", "to_datetime", "event_name", "mark", "limit")),
])
def test_a_blank_parameter_is_no_filter(world, path, parameters):
    """name= (as forms and some clients send) means what leaving it out means."""
    everything = world.get(path)
    assert everything  # there is something to lose
    for blank in ("", "  "):
        assert world.get(path, **dict.fromkeys(parameters, blank)) == everything, blank


def test_bad_parameters_say_what_is_wrong(world):
    """The 400's message says what was expected, not just that something was."""
    client = world.client
    assert "between 1 and 10000" in error_of(client.get("/v1/events?limit=0"), 400)
    assert "ISO 8601" in error_of(client.get("/v1/events?from_datetime=soon"), 400)
    assert "not an int" in error_of(client.get("/v1/events?traits=memory_mb:int:x"), 400)
    assert "name:value" in error_of(client.get("/v1/events?traits=memory_mb"), 400)
    assert "hexadecimal" in error_of(client.get("/v1/events?mark=zz"), 400)


# -- streams: bodies and filters -----------------------------------------------------------------


def active_stream_body(world: World) -> dict[str, Any]:
    return {"id": world.streams["i-active"], "name": "instance", "state": "active",
            "first_event": dt(at(10, 4)), "last_event": dt(at(10, 6)), "fire_timestamp": None,
            "expire_timestamp": dt(at(11, 6)), "distinguishing_traits": {"instance_id": "i-active"},
            "event_count": 3, "fire_counts": [0, 1], "accepting_events": True}


def test_streams_are_quincy_objects_newest_first(world):
    """GET /v1/streams: newest first; datetimes typed, a day as a timex.TimeRange, errors shown."""
    streams = world.get("/v1/streams")
    assert [s["id"] for s in streams] == [5, 4, 3, 2, 1]
    assert world.streams == {"i-expired": 1, "daily": 2, "i-fired": 3, "i-broken": 4,
                             "i-active": 5}
    by_id = {s["id"]: s for s in streams}
    assert by_id[5] == {**active_stream_body(world), "_mark": "5"}
    broken = by_id[4]
    assert "RuntimeError: no capacity for i-broken" in broken.pop("error")
    assert broken == {
        "id": 4, "name": "instance", "state": "error", "first_event": dt(at(10, 2)),
        "last_event": dt(at(10, 3)), "fire_timestamp": dt(at(10, 4)),
        "expire_timestamp": dt(at(11, 3)), "distinguishing_traits": {"instance_id": "i-broken"},
        "event_count": 2, "fire_counts": [1, 1], "accepting_events": False, "_mark": "4"}
    daily = by_id[2]
    assert "no capacity for the audit" in daily.pop("error")
    assert daily == {
        "id": 2, "name": "daily", "state": "expire_error", "first_event": dt(at(9)),
        "last_event": dt(at(9, 5)), "fire_timestamp": None, "expire_timestamp": dt(at(9, 35)),
        "distinguishing_traits": {
            "tenant_id": "t-1",
            "timestamp": {"__type__": "timex.TimeRange", "begin": "2024-03-01T00:00:00.000000",
                          "end": "2024-03-02T00:00:00.000000"}},
        "event_count": 2, "fire_counts": [1], "accepting_events": False, "_mark": "2"}
    assert by_id[3]["state"] == by_id[1]["state"] == "completed"
    assert by_id[3]["fire_timestamp"] == dt(at(10, 2)) and by_id[1]["fire_timestamp"] is None
    assert "error" not in by_id[3] and "error" not in by_id[5]


def test_one_stream_is_a_one_element_list_and_an_unknown_one_404(world):
    """GET /v1/streams/{id}: [stream] without a _mark (as Quincy answered); unknown ids 404."""
    assert world.get("/v1/streams/5") == [active_stream_body(world)]
    assert "stream 999 does not exist" in error_of(world.client.get("/v1/streams/999"), 404)
    assert world.client.get("/v1/streams/not-a-number").status_code == 422


def stream_ids(world: World, path: str = "/v1/streams", **params: Any) -> list[int]:
    return [stream["id"] for stream in world.get(path, **params)]


@pytest.mark.parametrize("state, expected", [
    ("active", [5]), ("completed", [3, 1]), ("error", [4]), ("expire_error", [2]),
    ("firing", []), ("expiring", []), ("retry_fire", []), ("retry_expire", []),
    ("Error", [4]),  # states are case-insensitive
])
def test_state_filters_the_streams(world, state, expected):
    """state=S keeps the streams in that state; the count agrees."""
    assert stream_ids(world, state=state) == expected
    assert world.get("/v1/streams/count", state=state) == [{"count": len(expected)}]


@pytest.mark.parametrize("params, expected", [
    ({"trigger_name": "daily"}, [2]),
    ({"name": "daily"}, [2]),  # klugman's spelling
    ({"name": "instance"}, [5, 4, 3, 1]),
    ({"trigger_name": "instance", "state": "completed"}, [3, 1]),
    ({"trigger_name": "no-such-trigger"}, []),
    ({"name": ""}, [5, 4, 3, 2, 1]),
])
def test_trigger_name_and_its_name_alias_filter_the_streams(world, params, expected):
    """trigger_name (or name, its alias) keeps one trigger's streams."""
    assert stream_ids(world, **params) == expected
    assert world.get("/v1/streams/count", **params) == [{"count": len(expected)}]


@pytest.mark.parametrize("traits, expected", [
    ("instance_id:i-active", [5]),
    ("instance_id:I-ACTIVE", []),  # exact, on every database
    ("instance_id:i-act", []),     # not a prefix
    ("instance_id:i_active", []),  # _ and % are not wildcards
    ("instance_id:i%", []),
    ("instance_id:int:5", []),     # typed as for events
    ("tenant_id:t-1", [2]),
    ("tenant_id:t-1;timestamp:datetime:2024-03-01T00:00:00", [2]),  # the day that begins then
    ("timestamp:datetime:2024-03-01", [2]),
    ("timestamp:datetime:2024-03-01T00:00:00+01:00", []),
    ("timestamp:datetime:2024-03-01T12:00:00", []),  # inside the day, not its beginning
    ("timestamp:2024-03-01T00:00:00", []),           # text is not a time
    ("tenant_id:t-1;instance_id:i-active", []),
    ("tenant_id:t-2", []),
])
def test_distinguishing_traits_filter_the_streams(world, traits, expected):
    """distinguishing_traits=name:value;...: streams whose distinguishing traits hold every pair."""
    assert stream_ids(world, distinguishing_traits=traits) == expected
    assert world.get("/v1/streams/count", distinguishing_traits=traits) == [
        {"count": len(expected)}]


@pytest.mark.parametrize("params, expected", [
    ({"older_than": "2024-03-01T10:00:00"}, [2, 1]),   # first event before
    ({"older_than": "2024-03-01T09:00:00"}, [1]),      # strictly before
    ({"younger_than": "2024-03-01T10:03:00"}, [5]),    # last event strictly after
    ({"younger_than": "2024-03-01T10:02:59"}, [5, 4]),
    ({"older_than": "2024-03-01T10:03:00", "younger_than": "2024-03-01T10:00:00"}, [4, 3]),
    ({"older_than": "2024-03-01T11:03:00+01:00"}, [4, 3, 2, 1]),
    ({"younger_than": "2024-03-02"}, []),
])
def test_older_than_and_younger_than_bound_the_streams(world, params, expected):
    """older_than: first_event < it; younger_than: last_event > it."""
    assert stream_ids(world, **params) == expected
    assert world.get("/v1/streams/count", **params) == [{"count": len(expected)}]


def test_details_include_each_streams_events_in_timestamp_order(world):
    """details=true adds 'events' (flat Quincy events, no _mark) to each stream, on both routes."""
    events = {event["message_id"]: {k: v for k, v in event.items() if k != "_mark"}
              for event in world.get("/v1/events")}
    listed = world.get("/v1/streams", details="true")
    assert {s["id"]: [e["message_id"] for e in s["events"]] for s in listed} == {
        5: ["active-start", "active-end", "active-update"], 4: ["broken-start", "broken-end"],
        3: ["fire-start", "fire-end"], 2: ["audit-1", "audit-2"], 1: ["exp-start"]}
    [active] = [s for s in listed if s["id"] == 5]
    assert active["events"] == [events["active-start"], events["active-end"],
                                events["active-update"]]
    assert {k: v for k, v in active.items() if k != "events"} == {
        **active_stream_body(world), "_mark": "5"}
    [one] = world.get("/v1/streams/5", details="yes")
    assert one == {**active_stream_body(world), "events": active["events"]}
    for off in ("false", "0", "no", ""):
        assert all("events" not in s for s in world.get("/v1/streams", details=off))
    assert "events" not in world.get("/v1/streams/5", details="off")[0]


def test_a_late_event_takes_its_place_by_timestamp_in_the_details(fresh):
    """Details list a stream's events by timestamp, not arrival: a late one goes in between."""
    fresh.ingester.clock.set(at(10, 9))
    fresh.intake.accept([notification("active-late", "compute.instance.update", at(10, 4, 30),
                                      "i-active", state="building")])
    expected = ["active-start", "active-late", "active-end", "active-update"]
    [listed] = fresh.get("/v1/streams", details="true",
                         distinguishing_traits="instance_id:i-active")
    assert [event["message_id"] for event in listed["events"]] == expected
    [one] = fresh.get("/v1/streams/5", details="true")
    assert one["events"] == listed["events"] and one["event_count"] == 4
    # Events themselves page by arrival (their database ids), newest first.
    assert fresh.ids(traits="instance_id:i-active") == [
        "active-late", "active-update", "active-end", "active-start"]


def test_stream_pages_follow_the_mark_in_both_directions(world):
    """Streams page like events: newest first by default, oldest first after a '+' mark."""
    assert pages(world, "/v1/streams", None, limit=2) == [[5, 4], [3, 2], [1]]
    assert pages(world, "/v1/streams", "+", limit=2) == [[1, 2], [3, 4], [5]]
    assert [s["_mark"] for s in world.get("/v1/streams", mark="+", limit=2)] == ["+1", "+2"]
    assert pages(world, "/v1/streams", None, limit=1, state="completed") == [[3], [1]]
    assert pages(world, "/v1/streams", "+", limit=1, name="instance",
                 distinguishing_traits="instance_id:i-active") == [[5]]
    assert stream_ids(world, mark="3", details="true") == [2, 1]


@pytest.mark.parametrize("params, expected", [
    ({}, 5),
    ({"state": "completed"}, 2),
    ({"name": "instance"}, 4),
    ({"distinguishing_traits": "tenant_id:t-1"}, 1),
    ({"older_than": "2024-03-01T10:00:00"}, 2),
    ({"mark": "3"}, 2),
    ({"mark": "+3"}, 2),
    ({"trigger_name": "instance", "mark": "+1", "younger_than": "2024-03-01T10:02:00"}, 2),
    ({"distinguishing_traits": "instance_id:i-active", "mark": "5"}, 0),
], ids=["all", "state", "name", "distinguishing", "older", "mark", "plus-mark", "combined",
        "distinguishing-mark"])
def test_stream_count_agrees_with_the_list(world, params, expected):
    """GET /v1/streams/count: [{"count": N}] for the list's filters (its mark too)."""
    assert world.get("/v1/streams/count", **params) == [{"count": expected}]
    assert len(world.get("/v1/streams", limit=10000, **params)) == expected


BAD_STREAM_FILTERS = [
    ({"older_than": "last week"}, "older_than"),
    ({"younger_than": "2024-02-30"}, "younger_than"),
    ({"state": "bogus"}, "state"),
    ({"mark": "g"}, "mark"),
    ({"distinguishing_traits": "instance_id"}, "distinguishing_traits"),
    ({"distinguishing_traits": "timestamp:datetime:nope"}, "distinguishing_traits"),
    ({"distinguishing_traits": "n:int:1.5"}, "distinguishing_traits"),
    ({"trigger_name": "x" * 256}, "trigger_name"),
    ({"name": "x" * 256}, "trigger_name"),
]


@pytest.mark.parametrize("params, parameter", BAD_STREAM_FILTERS + BAD_LIMITS + [
    ({"details": "maybe"}, "details")],
    ids=[f"{p}={v!s:.20}" for q, _ in BAD_STREAM_FILTERS + BAD_LIMITS + [({"details": 1}, "")]
         for p, v in q.items()])
def test_a_bad_stream_parameter_is_a_400_naming_it(world, params, parameter):
    """GET /v1/streams: a bad value answers 400 naming the parameter."""
    detail = error_of(world.client.get("/v1/streams", params=params), 400)
    assert detail.startswith(parameter), detail


@pytest.mark.parametrize("params, parameter", BAD_STREAM_FILTERS,
                         ids=[f"{p}={v!s:.20}" for q, _ in BAD_STREAM_FILTERS
                              for p, v in q.items()])
def test_a_bad_stream_count_parameter_is_a_400_naming_it(world, params, parameter):
    """GET /v1/streams/count refuses the same bad values."""
    detail = error_of(world.client.get("/v1/streams/count", params=params), 400)
    assert detail.startswith(parameter), detail


def test_a_bad_state_lists_the_states_and_bad_details_on_one_stream_is_a_400(world):
    """The state message lists the valid states; details=maybe on one stream is a 400 too."""
    detail = error_of(world.client.get("/v1/streams?state=bogus"), 400)
    assert "active" in detail and "expire_error" in detail and "retry_fire" in detail
    assert error_of(world.client.get("/v1/streams/5?details=maybe"), 400).startswith("details")


# -- DELETE and PUT -------------------------------------------------------------------------------


def test_delete_removes_the_stream_and_keeps_its_events(fresh):
    """DELETE /v1/streams/{id}: gone from every route; its events stay; deleting it again 404."""
    client = fresh.client
    response = client.delete("/v1/streams/5")
    assert response.status_code == 200, response.text
    assert response.json() == {"id": 5, "deleted": True}
    error_of(client.get("/v1/streams/5"), 404)
    error_of(client.get("/v1/streams/5/explain"), 404)
    assert stream_ids(fresh) == [4, 3, 2, 1]
    assert fresh.get("/v1/streams/count") == [{"count": 4}]
    assert fresh.ids(traits="instance_id:i-active") == ["active-update", "active-end",
                                                        "active-start"]
    [instance] = [t for t in fresh.get("/v1/events/active-end/explain")["triggers"]
                  if t["trigger"] == "instance"]
    assert instance["matched"] and instance["stream"] is None
    assert "no stream holds it now" in instance["reason"] and "was deleted" in instance["reason"]
    assert "stream 5 does not exist" in error_of(client.delete("/v1/streams/5"), 404)


@pytest.mark.parametrize("name", ["i-fired", "i-broken", "daily"])
def test_finished_and_failed_streams_can_be_deleted(fresh, name):
    """Completed, error and expire_error streams are not being run: they delete."""
    stream_id = fresh.streams[name]
    assert fresh.client.delete(f"/v1/streams/{stream_id}").json() == {"id": stream_id,
                                                                       "deleted": True}
    assert fresh.store.get_stream(stream_id) is None
    assert fresh.store.count_events() == len(IDS)


def claim(world: World, action: str, now: datetime) -> list[int]:
    """Streams taken by another worker, as if it were running their pipelines right now."""
    lease = now + timedelta(minutes=5)
    return [c.id for c in world.store.claim_streams(action, "other-worker", now, now, lease, 10)]


def test_a_stream_being_fired_or_expired_cannot_be_deleted_or_reset(fresh):
    """While a worker holds a stream (firing, expiring), DELETE and PUT 409 and change nothing."""
    fresh.ingester.clock.set(at(10, 45))
    fresh.intake.accept([notification("busy-start", "compute.instance.start", at(10, 44), "i-busy"),
                         notification("busy-end", "compute.instance.end", at(10, 45), "i-busy",
                                      state="active")])
    [busy] = claim(fresh, "fire", at(10, 50))
    assert claim(fresh, "expire", at(12)) == [5]
    for stream_id, state, doing in ((busy, "firing", "fired"), (5, "expiring", "expired")):
        assert fresh.get(f"/v1/streams/{stream_id}")[0]["state"] == state
        detail = error_of(fresh.client.delete(f"/v1/streams/{stream_id}"), 409)
        assert f"stream {stream_id} is being fired or expired" in detail, doing
        detail = error_of(fresh.client.put(f"/v1/streams/{stream_id}"), 409)
        assert f"stream {stream_id} is {state}, not in error" in detail
        [kept] = fresh.get(f"/v1/streams/{stream_id}", details="true")
        assert kept["state"] == state and len(kept["events"]) == kept["event_count"] >= 2


def test_put_resets_error_streams_for_a_retry_and_a_worker_then_runs_them(fresh):
    """PUT: error -> retry_fire, expire_error -> retry_expire, recorded; a worker then runs them."""
    client = fresh.client
    assert client.put("/v1/streams/4").json() == {"id": 4, "state": "retry_fire"}
    assert client.put("/v1/streams/2").json() == {"id": 2, "state": "retry_expire"}
    [reset] = fresh.get("/v1/streams/4")
    assert reset["state"] == "retry_fire" and "error" not in reset
    report = fresh.get("/v1/streams/4/explain")
    assert report["history"][-1] == {"at": NOW.isoformat(), "state": "retry_fire",
                                     "previous_state": "error", "actor": "api",
                                     "detail": "reset for a retry"}
    assert report["verdict"] == (
        "waiting for a worker to fire it again (it was reset after an error)")
    assert report["error"] is None
    assert stream_ids(fresh, state="retry_expire") == [2]
    # Reset once: a second PUT finds nothing to retry.
    assert "is retry_fire, not in error" in error_of(client.put("/v1/streams/4"), 409)
    passing = PipelineSet({name: Pipeline(name, ()) for name in PIPELINES})
    Worker(fresh.store, fresh.triggers, passing, clock=FixedClock(NOW), wall_clock=FixedClock(NOW),
           purge_completed=False).run_until_idle()
    assert stream_ids(fresh, state="completed") == [4, 3, 2, 1]


@pytest.mark.parametrize("name, state", [("i-active", "active"), ("i-fired", "completed"),
                                         ("i-expired", "completed")])
def test_put_on_a_stream_not_in_error_is_a_409(fresh, name, state):
    """Only error streams can be reset; anything else is a 409 saying its state."""
    stream_id = fresh.streams[name]
    detail = error_of(fresh.client.put(f"/v1/streams/{stream_id}"), 409)
    assert detail == (f"stream {stream_id} is {state}, not in error: there is nothing to retry")
    assert fresh.store.get_stream(stream_id).state == state


def test_writes_on_an_unknown_stream_are_404(world):
    """DELETE and PUT of an id no stream has: 404 (and nothing else changes)."""
    assert "stream 999 does not exist" in error_of(world.client.delete("/v1/streams/999"), 404)
    assert "stream 999 does not exist" in error_of(world.client.put("/v1/streams/999"), 404)
    assert world.client.delete("/v1/streams/0").status_code == 422


# -- explain ---------------------------------------------------------------------------------------


def history_of(report: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    return [(entry["state"], entry["previous_state"], entry["actor"])
            for entry in report["history"]]


def test_explain_a_fired_stream(world):
    """A fired stream: every criterion met by its events, its history, 'fired and completed'."""
    report = world.get("/v1/streams/3/explain")
    assert report["verdict"] == "fired and completed"
    assert report["error"] is None and report["now"] == NOW.isoformat()
    assert history_of(report) == [("active", None, "ingest"), ("firing", "active", "worker"),
                                  ("completed", "firing", "worker")]
    assert report["fire"]["ready"] is True and report["fire"]["fire_at"] == "2024-03-01T10:02:00"
    assert [(c["counted"], c["needed"], c["met"], c["matching_events"], c["closest"])
            for c in report["fire"]["criteria"]] == [(1, 1, True, ["fire-end"], []),
                                                     (1, 1, True, ["fire-start"], [])]
    assert report["events"] == [
        {"message_id": "fire-start", "event_type": "compute.instance.start",
         "timestamp": "2024-03-01T10:00:00"},
        {"message_id": "fire-end", "event_type": "compute.instance.end",
         "timestamp": "2024-03-01T10:01:00"}]
    assert report["stream"]["state"] == "completed" and report["stream"]["trigger"] == "instance"
    assert report["trigger"]["defined"] is True
    assert report["trigger"]["fire_pipeline"] == "fire_instance"


def test_explain_an_active_stream_counts_each_criterion_and_shows_the_closest_misses(world):
    """An active stream: per criterion counted/needed, and the nearest misses with what failed."""
    report = world.get("/v1/streams/5/explain")
    end, start = report["fire"]["criteria"]
    assert end == {
        "index": 0, "description": "event type compute.instance.end, state = active (constant)",
        "needed": 1, "counted": 0, "met": False, "matching_events": [],
        "closest": [
            # The end event passed the type check and failed on the value: closest, first.
            {"message_id": "active-end", "event_type": "compute.instance.end",
             "timestamp": "2024-03-01T10:05:00", "matches": False, "failed": "value",
             "detail": "trait state = 'error' fails state = active (constant)",
             "checks_passed": 1, "checks": 2},
            {"message_id": "active-start", "event_type": "compute.instance.start",
             "timestamp": "2024-03-01T10:04:00", "matches": False, "failed": "event_type",
             "detail": "event type 'compute.instance.start' is not one of "
                       "['compute.instance.end']", "checks_passed": 0, "checks": 2},
            {"message_id": "active-update", "event_type": "compute.instance.update",
             "timestamp": "2024-03-01T10:06:00", "matches": False, "failed": "event_type",
             "detail": "event type 'compute.instance.update' is not one of "
                       "['compute.instance.end']", "checks_passed": 0, "checks": 2}]}
    assert start == {"index": 1, "description": "event type compute.instance.start", "needed": 1,
                     "counted": 1, "met": True, "matching_events": ["active-start"],
                     "closest": []}
    assert report["fire"]["ready"] is False and report["fire"]["fire_at"] is None
    assert report["expiry"] == {"at": "2024-03-01T11:06:00", "seconds_from_now": 1560.0,
                                "in": "26m"}
    assert report["verdict"] == (
        "waiting for fire criterion #0 (event type compute.instance.end, state = active "
        "(constant)): 0 of 1; expires in 26m")
    assert history_of(report) == [("active", None, "ingest")]
    assert report["stream"]["accepting_events"] is True and report["error"] is None


def test_explain_an_expired_stream(world):
    """An expired stream: 'expired and completed', why it never fired, and when it expired."""
    report = world.get("/v1/streams/1/explain")
    assert report["verdict"] == "expired and completed"
    assert history_of(report) == [("active", None, "ingest"), ("expiring", "active", "worker"),
                                  ("completed", "expiring", "worker")]
    unmet, met = report["fire"]["criteria"]
    assert (unmet["counted"], unmet["met"], met["met"]) == (0, False, True)
    assert [(c["message_id"], c["failed"]) for c in unmet["closest"]] == [
        ("exp-start", "event_type")]
    assert report["expiry"]["at"] == "2024-03-01T09:00:00"
    assert report["expiry"]["seconds_from_now"] == -6000.0


def test_explain_an_error_stream_shows_the_recorded_error(world):
    """A stream whose fire pipeline raised: the error as recorded, in the report and the history."""
    report = world.get("/v1/streams/4/explain")
    assert "RuntimeError: no capacity for i-broken" in report["error"]
    assert "fire_instance" in report["error"]
    assert report["verdict"] == (f"its fire pipeline failed: {report['error']}; "
                                 "`winchester streams reset 4` retries it")
    assert history_of(report)[-1] == ("error", "firing", "worker")
    assert report["history"][-1]["detail"] == report["error"]
    assert all(c["met"] for c in report["fire"]["criteria"])


def test_explain_an_expire_error_stream(world):
    """A stream whose expire pipeline raised: its error, and the criterion it was short of."""
    report = world.get("/v1/streams/2/explain")
    assert "no capacity for the audit" in report["error"]
    assert report["verdict"].startswith("its expire pipeline failed: ")
    [criterion] = report["fire"]["criteria"]
    assert (criterion["counted"], criterion["needed"], criterion["matching_events"]) == (
        1, 2, ["audit-1"])
    assert [(c["message_id"], c["failed"]) for c in criterion["closest"]] == [
        ("audit-2", "event_type")]
    assert report["stream"]["distinguishing_traits"] == {
        "tenant_id": "t-1", "timestamp": {"begin": "2024-03-01T00:00:00",
                                          "end": "2024-03-02T00:00:00"}}
    assert history_of(report) == [("active", None, "ingest"), ("expiring", "active", "worker"),
                                  ("expire_error", "expiring", "worker")]


def test_an_event_whose_message_id_holds_a_slash_is_found_and_explained(fresh):
    """Message ids are the publishers' to choose: one with '/' is reachable, encoded or not."""
    answer = fresh.intake.accept([notification("tenant/42/req", "compute.instance.start", at(11),
                                               "i-slash")])
    assert answer["accepted"] == 1, answer
    for path in ("/v1/events/tenant%2F42%2Freq", "/v1/events/tenant/42/req"):
        response = fresh.client.get(path)
        assert response.status_code == 200, response.text
        assert response.json()["message_id"] == "tenant/42/req"
    explained = fresh.client.get("/v1/events/tenant/42/req/explain")
    assert explained.status_code == 200 and explained.json()["event"]["message_id"] == "tenant/42/req"


def test_explain_an_unknown_stream_is_a_404(world):
    """GET /v1/streams/{id}/explain of an unknown id: 404."""
    assert "stream 999 does not exist" in error_of(world.client.get("/v1/streams/999/explain"), 404)


def test_explain_an_event_says_which_triggers_took_it_and_why_not_the_others(world):
    """Event explain: the trigger it matched (its stream, what it adds to each fire criterion)
    and, for the others, the check that failed."""
    report = world.get("/v1/events/active-end/explain")
    assert report["event"] == {"message_id": "active-end", "event_type": "compute.instance.end",
                               "timestamp": "2024-03-01T10:05:00", "service": "compute.host-1",
                               "tenant_id": "t-1", "instance_id": "i-active", "state": "error"}
    instance, daily = report["triggers"]
    assert instance == {
        "trigger": "instance", "matched": True, "reason": "matched",
        "match_criteria": [{"index": 0, "description": "event type compute.instance.*",
                            "matches": True, "failed": None, "detail": "matches",
                            "checks_passed": 1, "checks": 1}],
        "distinguishing_traits": {"instance_id": "i-active"},
        "fire_criteria": [
            {"index": 0, "description": "event type compute.instance.end, state = active "
                                        "(constant)", "needed": 1, "counts": False,
             "matches": False, "failed": "value",
             "detail": "trait state = 'error' fails state = active (constant)",
             "checks_passed": 1, "checks": 2},
            {"index": 1, "description": "event type compute.instance.start", "needed": 1,
             "counts": False, "matches": False, "failed": "event_type",
             "detail": "event type 'compute.instance.end' is not one of "
                       "['compute.instance.start']", "checks_passed": 0, "checks": 1}],
        "stream": {"id": 5, "state": "active"}}
    assert daily["matched"] is False and "stream" not in daily
    assert daily["reason"] == ("match_criteria #0: event type 'compute.instance.end' is not one "
                               "of ['audit.*']")
    assert daily["match_criteria"][0]["failed"] == "event_type"


def test_explain_an_event_that_joined_a_day_stream_and_one_no_stream_could_take(world):
    """An audit event joined its tenant's day; an instance event without an instance joined none."""
    audit = world.get("/v1/events/audit-1/explain")["triggers"][1]
    assert audit["matched"] is True and audit["stream"] == {"id": 2, "state": "expire_error"}
    assert audit["distinguishing_traits"] == {
        "tenant_id": "t-1", "timestamp": {"begin": "2024-03-01T00:00:00",
                                          "end": "2024-03-02T00:00:00"}}
    assert [c["counts"] for c in audit["fire_criteria"]] == [True]
    orphan = world.get("/v1/events/orphan/explain")["triggers"][0]
    assert orphan["matched"] is False
    assert orphan["reason"] == ("match_criteria #0 matches, but the event lacks distinguishing "
                                "trait(s) instance_id")
    assert "no event with message_id 'nope'" in error_of(
        world.client.get("/v1/events/nope/explain"), 404)


def test_explain_an_event_a_newer_trigger_matches_says_why_no_stream_holds_it(world):
    """A trigger added after the event was stored matches it, but no stream of it holds the
    event: explain says so, naming the ways that happens, instead of claiming a purge."""
    from winchester.services.explain import explain_event
    from winchester.triggers import load_triggers

    newer = load_triggers([{"name": "by_tenant", "distinguished_by": ["tenant_id"],
                            "expiration": "$last + 1h", "fire_pipeline": "fire_daily",
                            "match_criteria": [{"event_type": "compute.instance.*"}],
                            "fire_criteria": [{"event_type": "compute.instance.end"}]}],
                          "triggers.yaml")
    [verdict] = explain_event(world.store, newer, "active-end")["triggers"]
    assert verdict["matched"] is True and verdict["stream"] is None
    assert verdict["reason"].startswith("matched, but no stream holds it now:")
    assert "stored before this trigger matched it" in verdict["reason"]
    assert "purge_completed_streams" in verdict["reason"]


# -- triggers ------------------------------------------------------------------------------------


def test_triggers_list_definitions_streams_by_state_and_counters(fresh):
    """GET /v1/triggers: each definition, its streams by state, and this process's counters."""
    instance, daily = fresh.get("/v1/triggers")
    assert instance == {
        "name": "instance", "expiration": "$last + 1h", "fire_pipeline": "fire_instance",
        "expire_pipeline": "expire_instance", "fire_delay": 0.0, "debug_level": 1,
        "distinguished_by": ["instance_id"], "match_criteria": ["event type compute.instance.*"],
        "fire_criteria": [
            {"description": "event type compute.instance.end, state = active (constant)",
             "number": 1},
            {"description": "event type compute.instance.start", "number": 1}],
        "streams": {"active": 1, "completed": 2, "error": 1},
        "last_hour": instance["last_hour"],
        "counters": {"matched": 8, "new_streams": 4, "ready_to_fire": 2}}
    # What every process recorded in the store's activity table (real time, the last hour).
    assert instance["last_hour"]["streams_created"] == 4 and instance["last_hour"]["errors"] == 1
    assert instance["last_hour"]["fired"] + instance["last_hour"]["expired"] == 2
    assert daily["last_hour"] == {"streams_created": 1, "fired": 0, "expired": 0, "errors": 1}
    assert daily["distinguished_by"] == ["tenant_id", {"timestamp": "day"}]
    assert daily["fire_criteria"] == [{"description": "event type audit.exists", "number": 2}]
    assert daily["streams"] == {"expire_error": 1}
    assert daily["counters"] == {"matched": 2, "new_streams": 1, "ready_to_fire": 0}
    # One more instance event: a new stream, counted as it arrives.
    fresh.ingester.clock.set(at(10, 36))
    fresh.intake.accept([notification("new-start", "compute.instance.start", at(10, 35), "i-new")])
    instance, daily = fresh.get("/v1/triggers")
    assert instance["streams"] == {"active": 2, "completed": 2, "error": 1}
    assert instance["counters"] == {"matched": 9, "new_streams": 5, "ready_to_fire": 2}
    assert daily["counters"] == {"matched": 2, "new_streams": 1, "ready_to_fire": 0}


def test_triggers_without_counters_show_none(world):
    """An app given no counters (a read-only API process) shows empty counters."""
    with TestClient(create_app(world.store, triggers=world.triggers)) as client:
        answer = client.get("/v1/triggers").json()
    assert [(t["name"], t["counters"]) for t in answer] == [("instance", {}), ("daily", {})]
    assert answer[0]["streams"] == {"active": 1, "completed": 2, "error": 1}


# -- archive -----------------------------------------------------------------------------------


def test_archive_pages_through_every_notification_in_arrival_order(world):
    """GET /v1/archive: oldest first, each with its raw notification; _marks page through it."""
    rows = world.get("/v1/archive")
    assert [row["message_id"] for row in rows] == IDS
    assert [row["_mark"] for row in rows] == [f"+{n:x}" for n in range(1, len(IDS) + 1)]
    # Received in real time, whatever the ingest clock said (retention counts in real time).
    received = datetime.fromisoformat(rows[4].pop("received_at"))
    assert abs(received - world.store.wall_clock.now()) < timedelta(hours=1)
    assert rows[4] == {
        "id": 5, "_mark": "+5",
        "message_id": "fire-end", "event_type": "compute.instance.end",
        "publisher_id": "compute.host-1", "generated": "2024-03-01T10:01:00.000000",
        "status": "archived", "reason": None, "notification": NOTIFICATIONS[4]}
    assert pages(world, "/v1/archive", None, limit=5) == [IDS[0:5], IDS[5:10], IDS[10:]]
    # A mark with or without its +.
    assert [row["message_id"] for row in world.get("/v1/archive", mark="a")] == IDS[10:]
    assert world.get("/v1/archive", mark=f"+{len(IDS):x}") == []


@pytest.mark.parametrize("params, expected", [
    ({"event_name": "compute.instance.end"}, ["fire-end", "broken-end", "active-end"]),
    ({"event_name": "compute.instance.end", "mark": "+5"}, ["broken-end", "active-end"]),
    # The archive's bounds are replay's: from included, to excluded.
    ({"from_datetime": "2024-03-01T10:06:00"}, ["active-update", "other-tenant", "orphan"]),
    ({"to_datetime": "2024-03-01T09:00:00"}, ["exp-start"]),
    ({"from_datetime": "2024-03-01T09:00:00", "to_datetime": "2024-03-01T10:00:00+00:00"},
     ["audit-1", "audit-2"]),
    ({"event_name": "nothing.like.it"}, []),
])
def test_archive_filters(world, params, expected):
    """The archive by event type and by the notifications' own timestamps."""
    assert [row["message_id"] for row in world.get("/v1/archive", **params)] == expected


def test_a_rejected_notification_is_archived_with_its_reason(fresh):
    """What the intake refused is in the archive too, as received, with why."""
    response = fresh.client.post("/v1/notifications", content=b'{"event_type": "x", "message_id"',
                                 headers={"content-type": "application/json"})
    assert response.status_code == 200 and response.json()["rejected"] == 1
    [row] = fresh.get("/v1/archive", mark=f"+{len(IDS):x}")
    assert row["status"] == "rejected" and "not_json" in row["reason"]
    assert row["message_id"] is None and row["generated"] is None
    assert row["notification"] == '{"event_type": "x", "message_id"'


@pytest.mark.parametrize("params, parameter", [
    ({"from_datetime": "then"}, "from_datetime"),
    ({"to_datetime": "2024-01-01T25:00"}, "to_datetime"),
    ({"limit": "0"}, "limit"), ({"limit": "10001"}, "limit"), ({"limit": "many"}, "limit"),
    ({"mark": "zz"}, "mark"), ({"event_name": "x" * 256}, "event_name"),
    ({"event_name": "a\x00b"}, "event_name"),
])
def test_a_bad_archive_parameter_is_a_400_naming_it(world, params, parameter):
    """The archive refuses bad values as the other routes do (a NUL too, on PostgreSQL as well)."""
    detail = error_of(world.client.get("/v1/archive", params=params), 400)
    assert detail.startswith(parameter), detail


# -- tokens ---------------------------------------------------------------------------------------


READS = ["/v1/events", "/v1/events/count", "/v1/events/fire-end", "/v1/events/fire-end/explain",
         "/v1/streams", "/v1/streams/count", "/v1/streams/5", "/v1/streams/5/explain",
         "/v1/triggers", "/v1/archive"]


def test_with_tokens_writes_need_a_valid_bearer_token_and_reads_do_not(fresh):
    """Tokens set: DELETE/PUT without one, or with a wrong one, 401 (counted); reads stay open."""
    app = fresh.make_app(tokens=(TOKEN,))
    with TestClient(app) as client:
        for path in READS:
            assert client.get(path).status_code == 200, path
        attempts = [client.delete("/v1/streams/5"), client.put("/v1/streams/4"),
                    client.delete("/v1/streams/5", headers={"authorization": "Bearer wrong"}),
                    client.put("/v1/streams/4", headers={"authorization": f"Basic {TOKEN}"}),
                    client.delete("/v1/streams/5", headers={"authorization": TOKEN})]
        for response in attempts:
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
        assert app.state.unauthorised == len(attempts)
        assert fresh.store.get_stream(5).state == "active"
        assert fresh.store.get_stream(4).state == "error"
        bearer = {"authorization": f"Bearer {TOKEN}"}
        assert client.delete("/v1/streams/5", headers=bearer).json() == {"id": 5, "deleted": True}
        assert client.put("/v1/streams/4", headers=bearer).json() == {"id": 4,
                                                                      "state": "retry_fire"}
        assert app.state.unauthorised == len(attempts)


def test_protect_reads_puts_every_read_behind_the_token(world):
    """protect_reads: every query route 401 without the token, 200 with it."""
    app = world.make_app(tokens=(TOKEN,), protect_reads=True)
    with TestClient(app) as client:
        for path in READS:
            response = client.get(path)
            assert response.status_code == 401, path
        assert app.state.unauthorised == len(READS)
        for path in READS:
            response = client.get(path, headers={"authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 200, (path, response.text)
        assert client.get("/v1/streams/5", headers={"authorization": "Bearer nope"}
                          ).status_code == 401
        assert app.state.unauthorised == len(READS) + 1


def test_the_sign_in_cookie_works_like_the_header(fresh):
    """The winchester_token cookie (the dashboard's sign-in) authorises reads and writes."""
    app = fresh.make_app(tokens=(TOKEN,), protect_reads=True)
    with TestClient(app) as client:
        client.cookies.set("winchester_token", "not-the-token")
        assert client.get("/v1/streams").status_code == 401
        assert client.delete("/v1/streams/5").status_code == 401
        assert app.state.unauthorised == 2
        client.cookies.set("winchester_token", TOKEN)
        assert stream_ids_of(client.get("/v1/streams")) == [5, 4, 3, 2, 1]
        assert client.delete("/v1/streams/5").json() == {"id": 5, "deleted": True}
        assert client.put("/v1/streams/4").json() == {"id": 4, "state": "retry_fire"}
        assert app.state.unauthorised == 2


def stream_ids_of(response: Any) -> list[int]:
    assert response.status_code == 200, response.text
    return [stream["id"] for stream in response.json()]


# -- without triggers, or without a database ---------------------------------------------------


def test_without_trigger_definitions_there_is_no_query_api(world):
    """create_app without triggers serves intake and health only."""
    with TestClient(create_app(world.store)) as client:
        assert client.get("/v1/events").status_code == 404
        assert client.get("/v1/streams").status_code == 404
        assert client.get("/healthz").status_code == 200


def test_an_unreachable_database_is_a_503(world, tmp_path):
    """A store whose database cannot be opened: the query routes answer 503, saying so."""
    directory = tmp_path / "a-directory"
    directory.mkdir()
    store = Store.from_url(f"sqlite:///{directory}")
    try:
        with TestClient(create_app(store, triggers=world.triggers)) as client:
            for path in ("/v1/events", "/v1/streams/count", "/v1/streams/1", "/v1/archive"):
                response = client.get(path)
                assert response.status_code == 503, path
                assert "database" in response.json()["detail"]
    finally:
        store.close()
