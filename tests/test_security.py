"""Security (issue 9): injection through the query API, tokens, secrets in logs, escaping, no code from YAML.

* SQL injection: classic payloads through every filter of the query API
  (events, streams, their counts, the archive, path ids, and the dashboard's
  pages, which share the parser) on SQLite and PostgreSQL: never a 5xx, the
  data intact afterwards, and an injection-looking value is matched
  literally, on indexed traits, on traits only in the events' JSON, on trait
  names with quotes, on distinguishing traits (a LIKE search underneath:
  ``%`` and ``_`` must not be wildcards), on event types.
* Tokens: every configured token is compared, each with hmac.compare_digest.
* Secrets: the real `ingest`, `persistor` and `serve` with a broker password
  (a RabbitMQ user made for the test) and a database password in their URLs
  never print them, at debug level, on success and on failure.
* Escaping: the dashboard's HTML escaping is tests/test_dashboard.py's
  (test_everything_data_derived_is_escaped); here the API and CLI angles.
* Configuration is data: handler params and event definition names that look
  like code stay strings (the distiller compiles definitions to Python: its
  names must be quoted there); YAML tags that would build Python objects are
  refused in every configuration file.
"""

from __future__ import annotations

import hmac
import re
import shutil
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.test_service_cli import (  # noqa: F401 - scripts is a fixture
    Corner,
    Script,
    make_config,
    migrate,
    script_env,
    scripts,
    wait_until,
)
from tests.conftest import free_port
from winchester.api import create_app
from winchester.clock import FixedClock
from winchester.config import (
    build_distiller,
    load_pipeline_definitions,
    load_settings,
    load_trigger_definitions,
    open_store,
)
from winchester.services.ingest import Ingester
from winchester.services.intake import DirectIntake
from winchester.store import Store
from winchester.store._schema import metadata

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
ETC = ROOT / "etc"
BIN = Path(sys.executable).parent
TOKEN = "security-token-0123456789"
DAY = datetime(2024, 3, 1)

WINCHESTER_YAML = """\
distiller_config: event_definitions.yaml
trigger_definitions: triggers.yaml
pipeline_config: pipelines.yaml
indexed_traits: [instance_id, motto]
log_level: warning
"""
# motto is in the typed, indexed table; slogan and the quoted name only in the events' JSON.
EVENT_DEFINITIONS_YAML = """\
- event_type: "*"
  traits:
    instance_id: {fields: payload.instance_id}
    motto: {fields: payload.motto}
    slogan: {fields: payload.motto}
    'it''s "odd"': {fields: payload.motto}
"""
TRIGGERS_YAML = """\
- name: audit
  distinguished_by: [instance_id]
  expiration: "$last + 1h"
  fire_pipeline: p
  match_criteria:
    - event_type: "*"
  fire_criteria:
    - event_type: never.*
"""
PIPELINES_YAML = "p: [logger]\n"

EVENT_TYPE = "compute.instance.update"
HOSTILE_TYPE = "'; DROP TABLE events; --"
# (message_id, instance_id, motto)
HOSTILE = [
    ("m-1", "i-1", "' OR '1'='1"),
    ("m-2", "i-2", "something else"),
    ("m-3", "' OR 1=1 --", "%' --"),
    ("m-4", "100%", "\\"),
    ("m-5", "a_b", '"; DROP TABLE events; --'),
    ("m-6", "x'y\"z", "it's"),
    ("m-7", "i-7", "<script>alert('x')</script>"),
]
PAYLOADS = [
    "' OR 1=1 --", "' OR '1'='1", '" OR ""="', "'; DROP TABLE events; --",
    '"; DROP TABLE events; --', "%' --", "%", "_", "\\", "\\'", "'", '"',
    "1; SELECT pg_sleep(10)", "') UNION SELECT message_id FROM events --", "$1", ":name", "%s",
    "{}", "*", "[", "1 OR 1=1", "-1", "0x7fffffffffffffff", "\u2019 OR 1=1 --", "\x00",
    "a" * 300, "é'; --", "../../etc/passwd",
]


def notification(message_id: str, instance_id: str, motto: str, n: int,
                 event_type: str = EVENT_TYPE) -> dict:
    return {"event_type": event_type, "message_id": message_id,
            "timestamp": (DAY + timedelta(minutes=n)).isoformat(sep=" "),
            "publisher_id": "compute.host-1", "payload": {"instance_id": instance_id, "motto": motto}}


def write_config(directory: Path) -> Path:
    directory.mkdir(exist_ok=True)
    for name, text in (("winchester.yaml", WINCHESTER_YAML),
                       ("event_definitions.yaml", EVENT_DEFINITIONS_YAML),
                       ("triggers.yaml", TRIGGERS_YAML), ("pipelines.yaml", PIPELINES_YAML)):
        (directory / name).write_text(text)
    return directory / "winchester.yaml"


@dataclass
class World:
    client: TestClient
    store: Store
    config: Path
    url: str


@pytest.fixture
def world(tmp_path, migrated_url) -> Iterator[World]:
    """The hostile values stored through the HTTP intake (archived, distilled, in streams)."""
    config = write_config(tmp_path / "etc")
    settings = load_settings(config, environ={"WINCHESTER_DATABASE_URL": migrated_url})
    triggers = load_trigger_definitions(settings)
    store = open_store(settings, triggers)
    ingester = Ingester(store, triggers, build_distiller(settings), FixedClock(DAY + timedelta(hours=1)))
    intake = DirectIntake(ingester, store)
    bodies = [notification(*row, n) for n, row in enumerate(HOSTILE)]
    bodies.append(notification("m-8", "i-8", "typed", 9, event_type=HOSTILE_TYPE))
    answer = intake.accept([orjson.dumps(body) for body in bodies])
    assert answer["accepted"] == len(bodies), answer
    app = create_app(store, intake, tokens=(TOKEN,), triggers=triggers,
                     clock=FixedClock(DAY + timedelta(hours=1)))
    try:
        with TestClient(app) as client:
            yield World(client, store, config, migrated_url)
    finally:
        store.close()


def snapshot(store: Store) -> dict:
    with store.engine.connect() as connection:
        tables = set(sa.inspect(connection).get_table_names())
        rows = {table: connection.execute(sa.select(sa.func.count()).select_from(
            metadata.tables[table])).scalar_one() for table in metadata.tables}
        ids = sorted(connection.execute(sa.text("SELECT message_id FROM events")).scalars())
    return {"tables": tables, "rows": rows, "events": ids, "streams": store.count_streams_by_state()}


def variants(payload: str, kind: str) -> list[str]:
    if kind != "traits":
        return [payload]
    return [payload, f"motto:{payload}", f"slogan:{payload}", f"{payload}:v", f"it's \"odd\":{payload}",
            f"motto:int:{payload}", f"motto:datetime:{payload}", f"motto:x;{payload}:y"]


ROUTES = {
    "/v1/events": {"from_datetime": "time", "to_datetime": "time", "event_name": "name",
                   "traits": "traits", "mark": "mark", "limit": "limit"},
    "/v1/events/count": {"from_datetime": "time", "to_datetime": "time", "event_name": "name",
                         "traits": "traits"},
    "/v1/streams": {"older_than": "time", "younger_than": "time", "state": "name",
                    "trigger_name": "name", "name": "name", "distinguishing_traits": "traits",
                    "details": "flag", "mark": "mark", "limit": "limit"},
    "/v1/streams/count": {"older_than": "time", "younger_than": "time", "state": "name",
                          "trigger_name": "name", "name": "name", "distinguishing_traits": "traits"},
    "/v1/archive": {"from_datetime": "time", "to_datetime": "time", "event_name": "name",
                    "mark": "mark", "limit": "limit"},
    # The dashboard's pages parse the same filters (api._queries).
    "/events": {"from_datetime": "time", "to_datetime": "time", "event_name": "name",
                "traits": "traits", "mark": "mark", "limit": "limit"},
    "/streams": {"older_than": "time", "younger_than": "time", "state": "name",
                 "trigger_name": "name", "distinguishing_traits": "traits", "mark": "mark",
                 "limit": "limit"},
}


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_injection_through_every_filter_is_answered_and_changes_nothing(world, route):
    """Each payload in each parameter of the route: 200 or a 400 naming the parameter, never a 5xx."""
    before = snapshot(world.store)
    assert before["tables"] >= set(metadata.tables) and before["rows"]["events"] == 8
    seen_statuses = set()
    for parameter, kind in ROUTES[route].items():
        for payload in PAYLOADS:
            for value in variants(payload, kind):
                response = world.client.get(route, params={parameter: value})
                seen_statuses.add(response.status_code)
                assert response.status_code in (200, 400), (route, parameter, value,
                                                            response.status_code, response.text)
                if route.startswith("/v1/") and response.status_code == 400:
                    detail = response.json()["detail"]
                    # `name` is klugman's spelling of trigger_name, and answered as that.
                    named = "trigger_name" if parameter == "name" else parameter
                    assert detail.startswith(named) or "traits" in detail, (parameter, detail)
    assert seen_statuses == {200, 400}
    assert snapshot(world.store) == before


def test_injection_through_path_ids_is_a_404_or_a_refusal_and_changes_nothing(world):
    before = snapshot(world.store)
    write = {"authorization": f"Bearer {TOKEN}"}
    for payload in PAYLOADS:
        encoded = quote(payload, safe="")
        for path in (f"/v1/events/{encoded}", f"/v1/events/{encoded}/explain", f"/events/{encoded}"):
            response = world.client.get(path)
            # 422: longer than any message_id can be (255 characters).
            assert response.status_code in (404, 422), (path, response.status_code, response.text)
        for method in ("GET", "PUT", "DELETE"):
            for path in (f"/v1/streams/{encoded}", f"/v1/streams/{encoded}/explain"):
                if method != "GET" and path.endswith("/explain"):
                    continue
                response = world.client.request(method, path, headers=write)
                assert response.status_code in (400, 404, 405, 422), (method, path, response.text)
        response = world.client.get(f"/streams/{encoded}")
        assert response.status_code in (400, 404), (payload, response.status_code)
    assert snapshot(world.store) == before


def ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return sorted(event["message_id"] for event in response.json())


def test_an_injection_looking_value_is_matched_literally(world):
    get = world.client.get
    # On the indexed trait, on a trait only in the JSON documents, on a name with quotes in it.
    for name in ("motto", "slogan", "it's \"odd\""):
        assert ids(get("/v1/events", params={"traits": f"{name}:' OR '1'='1"})) == ["m-1"], name
        assert get("/v1/events/count", params={"traits": f"{name}:' OR '1'='1"}).json() == [{"count": 1}]
        assert ids(get("/v1/events", params={"traits": f"{name}:%' --"})) == ["m-3"], name
        assert ids(get("/v1/events", params={"traits": f"{name}:\\"})) == ["m-4"], name
        assert ids(get("/v1/events", params={"traits": f"{name}:it's"})) == ["m-6"], name
        # LIKE wildcards and SQL comment syntax mean nothing.
        for pattern in ("%", "_", "%%", "' OR 1=1 --", "%' OR '1'='1", "it_s", "it%"):
            assert ids(get("/v1/events", params={"traits": f"{name}:{pattern}"})) == [], (name, pattern)
    assert ids(get("/v1/events", params={"event_name": HOSTILE_TYPE})) == ["m-8"]
    assert get("/v1/events/count", params={"event_name": HOSTILE_TYPE}).json() == [{"count": 1}]
    assert ids(get("/v1/events", params={"event_name": "' OR 1=1 --"})) == []
    archived = get("/v1/archive", params={"event_name": HOSTILE_TYPE}).json()
    assert [row["message_id"] for row in archived] == ["m-8"]

    def streams(value: str) -> list[str]:
        response = get("/v1/streams", params={"distinguishing_traits": f"instance_id:{value}"})
        assert response.status_code == 200, response.text
        return [stream["distinguishing_traits"]["instance_id"] for stream in response.json()]

    for value in ("' OR 1=1 --", "100%", "a_b", "x'y\"z"):
        assert streams(value) == [value]
    for value in ("%", "_", "a%b", "_-1", "10_%", "i-%", "' OR '1'='1", "%' OR '1'='1' --"):
        assert streams(value) == [], value
    assert get("/v1/streams", params={"trigger_name": "' OR 1=1 --"}).json() == []
    assert get("/v1/streams/count", params={"name": "audit' --"}).json() == [{"count": 0}]
    assert get("/v1/streams/count", params={"name": "audit"}).json() == [{"count": 8}]


def test_hostile_text_comes_back_as_json_data_not_markup(world):
    """The API returns a `<script>` trait as a JSON string, typed as JSON, never as HTML."""
    response = world.client.get("/v1/events/m-7")
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["motto"] == "<script>alert('x')</script>"
    explained = world.client.get("/v1/events/m-7/explain")
    assert explained.headers["content-type"].startswith("application/json")
    # The dashboard's own page for it escapes it (more in tests/test_dashboard.py).
    page = world.client.get("/events/m-7")
    assert page.status_code == 200 and "<script>alert" not in page.text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page.text


# -- tokens ---------------------------------------------------------------------------------------


def test_every_configured_token_is_compared_in_constant_time(tmp_path, monkeypatch, migrated_url):
    """hmac.compare_digest decides, for every token, whatever the match (API header, cookie, sign-in)."""
    config = write_config(tmp_path / "etc")
    settings = load_settings(config, environ={"WINCHESTER_DATABASE_URL": migrated_url})
    triggers = load_trigger_definitions(settings)
    store = open_store(settings, triggers)
    tokens = ("first-token-0123456789", "second-token-0123456789", "third-token-0123456789")
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    try:
        client = TestClient(create_app(store, tokens=tokens, triggers=triggers, protect_reads=True))
        for presented, status in (("wrong-token-0123456789", 401), (tokens[0], 404), (tokens[2], 404),
                                  ("", 401), ("first-token-012345678", 401)):
            calls.clear()
            response = client.delete("/v1/streams/424242", headers={"authorization": f"Bearer {presented}"})
            assert response.status_code == status, (presented, response.text)
            assert len(calls) == len(tokens), (presented, calls)
            assert {b for _, b in calls} == {token.encode() for token in tokens}
            assert {a for a, _ in calls} == {presented.encode()}
        calls.clear()
        client.cookies.set("winchester_token", tokens[1])
        assert client.get("/v1/streams/count").status_code == 200
        assert len(calls) == len(tokens)
        client.cookies.clear()
        calls.clear()
        response = client.post("/signin", data={"token": tokens[1], "next": "/"},
                               headers={"origin": "http://testserver"}, follow_redirects=False)
        assert response.status_code in (302, 303), response.text
        assert len(calls) == len(tokens) and {a for a, _ in calls} == {tokens[1].encode()}
    finally:
        store.close()


# -- secrets in logs ------------------------------------------------------------------------------


@dataclass
class Secrets:
    broker_url: str
    broker_user: str
    broker_password: str
    database_url: str
    database_password: str

    @property
    def all(self) -> tuple[str, str]:
        return (self.broker_password, self.database_password)


@pytest.fixture
def secrets(amqp_url, postgres_url) -> Iterator[Secrets]:
    """A RabbitMQ user with a password of its own, and PostgreSQL (trust) reached with a password."""
    tag = uuid.uuid4().hex[:10]
    user, password = f"wsec-{tag}", f"AmqpSecret-{tag}"
    broker = urlsplit(amqp_url)
    created = False
    try:
        subprocess.run(["rabbitmqctl", "add_user", user, password], check=True, capture_output=True,
                       timeout=60)
        created = True
        subprocess.run(["rabbitmqctl", "set_permissions", "-p", "/", user, ".*", ".*", ".*"],
                       check=True, capture_output=True, timeout=60)
        database_password = f"PgSecret-{tag}"
        database_url = make_url(postgres_url).set(password=database_password).render_as_string(
            hide_password=False)
        yield Secrets(f"amqp://{user}:{password}@{broker.hostname}:{broker.port or 5672}//", user,
                      password, migrate(database_url), database_password)
    finally:
        if created:
            subprocess.run(["rabbitmqctl", "delete_user", user], capture_output=True, timeout=60)


def assert_no_secret(secrets: Secrets, *texts: str) -> None:
    for text in texts:
        for secret in secrets.all:
            assert secret not in text, f"{secret!r} printed:\n{text}"




@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_ingest_and_persistor_never_print_the_passwords(tmp_path, secrets, scripts):
    corner = Corner(secrets.broker_url)
    try:
        config = make_config(tmp_path, *corner.config_lines(), url=secrets.database_url,
                             log_level="debug")
        port = free_port()
        ingest = Script(tmp_path, "ingest", "ingest", "-c", str(config), "--name", "ingest-sec",
                        "--metrics-port", str(port))
        persistor = Script(tmp_path, "persistor", "persistor", "-c", str(config), "--name", "pers-sec")
        scripts.extend([ingest, persistor])
        ingest.wait_for("ingest-sec: consuming")
        persistor.wait_for("pers-sec: consuming")
        corner.publish([notification(f"s-{n}", f"i-{n}", "m", n) for n in range(5)]
                       + [{"event_type": EVENT_TYPE}])  # one rejected: its warning is logged too
        store = Store.from_url(secrets.database_url)
        try:
            wait_until(lambda: store.count_events() == 5 and store.count_archive() == 6, 120,
                       f"stored\n{ingest.log}")
        finally:
            store.close()
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert ingest.terminate(60) == 0 and persistor.terminate(60) == 0
        # What was said about the broker is said with the password masked.
        assert f"amqp://{secrets.broker_user}:**@" in ingest.log
        assert_no_secret(secrets, ingest.log, ingest.output, persistor.log, persistor.output, metrics)
    finally:
        corner.cleanup()


@pytest.mark.rabbitmq
@pytest.mark.postgres
def test_serve_never_prints_the_passwords(tmp_path, secrets, scripts):
    corner = Corner(secrets.broker_url)
    try:
        config = make_config(tmp_path, *corner.config_lines(), "api:", "  port: 0",
                             f"  tokens: [{TOKEN}]", url=secrets.database_url, log_level="debug")
        serve = Script(tmp_path, "serve", "serve", "-c", str(config))
        scripts.append(serve)
        serve.wait_for("API at")
        [api] = re.findall(r"API at (http://[\d.]+:\d+)/docs", serve.log)
        headers = {"authorization": f"Bearer {TOKEN}"}
        posted = httpx.post(f"{api}/v1/notifications", headers=headers, timeout=30, content=b"\n".join(
            [orjson.dumps(notification("h-1", "i-1", "m", 1)), b"not json"]))
        assert posted.status_code == 200 and posted.json()["rejected"] == 1, posted.text
        corner.publish([notification("b-1", "i-2", "m", 2)])
        health = httpx.get(f"{api}/healthz", timeout=30)
        wait_until(lambda: "b-1" in httpx.get(f"{api}/v1/events", timeout=30).text, 120, "b-1 stored")
        pages = [httpx.get(f"{api}{path}", timeout=30).text
                 for path in ("/metrics", "/v1/triggers", "/", "/openapi.json")]
        assert serve.terminate(60) == 0, serve.log
        banner = [line for line in serve.log.splitlines() if line.startswith("winchester serving")]
        rest = "\n".join(line for line in serve.log.splitlines() if line not in banner)
        assert_no_secret(secrets, rest, serve.output, health.text, *pages)
        assert secrets.database_password not in "\n".join(banner)
        assert secrets.broker_password not in "\n".join(banner)
    finally:
        corner.cleanup()


@pytest.mark.rabbitmq
def test_a_refused_broker_login_does_not_print_the_password(tmp_path, amqp_url):
    password = f"Wrong-{uuid.uuid4().hex[:10]}"
    broker = urlsplit(amqp_url)
    config = make_config(tmp_path, "bus:", f"  url: amqp://nobody:{password}@{broker.hostname}:{broker.port}//",
                         "intake:", f"  exchanges: [sec-{uuid.uuid4().hex[:8]}]",
                         url=migrate(f"sqlite:///{tmp_path / 'w.db'}"))
    result = subprocess.run([str(BIN / "winchester"), "ingest", "-c", str(config)], capture_output=True,
                            text=True, env=script_env(), timeout=120, check=False)
    assert result.returncode != 0
    assert password not in result.stdout + result.stderr
    assert "refused" in result.stderr.lower(), result.stderr


@pytest.mark.rabbitmq
def test_a_refused_broker_login_is_a_clear_error(tmp_path, amqp_url):
    broker = urlsplit(amqp_url)
    config = make_config(tmp_path, "bus:", f"  url: amqp://nobody:wrong@{broker.hostname}:{broker.port}//",
                         url=migrate(f"sqlite:///{tmp_path / 'w.db'}"))
    result = subprocess.run([str(BIN / "winchester"), "ingest", "-c", str(config)], capture_output=True,
                            text=True, env=script_env(), timeout=120, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


@pytest.mark.postgres
def test_database_failures_do_not_print_the_password(tmp_path, postgres_url):
    password = f"PgSecret-{uuid.uuid4().hex[:10]}"
    base = make_url(postgres_url).set(password=password)
    config = make_config(tmp_path)
    for url, command in ((base.set(database="no_such_database"), ("worker", "--once")),
                         (base.set(port=1), ("ingest",)), (base, ("db", "current")),
                         (base, ("worker", "--once"))):
        env = script_env(WINCHESTER_DATABASE_URL=url.render_as_string(hide_password=False))
        result = subprocess.run([str(BIN / "winchester"), *command, "-c", str(config)],
                                capture_output=True, text=True, env=env, timeout=120, check=False)
        assert result.returncode != 0, (command, result.stdout, result.stderr)
        assert password not in result.stdout + result.stderr, (command, result.stderr)
        assert "Traceback" not in result.stderr, (command, result.stderr)


def test_check_does_not_print_the_database_password(tmp_path):
    password = f"PgSecret-{uuid.uuid4().hex[:10]}"
    config = make_config(tmp_path, url=f"postgresql+psycopg://winchester:{password}@db.example/w")
    result = subprocess.run([str(BIN / "winchester"), "check", "-c", str(config)], capture_output=True,
                            text=True, env=script_env(), timeout=120, check=False)
    assert result.returncode == 0, result.stdout
    assert password not in result.stdout + result.stderr


# -- the query CLI and hostile text ---------------------------------------------------------------


@pytest.fixture
def hostile_cli(tmp_path) -> Path:
    """An SQLite store holding an event whose traits look like rich markup and HTML."""
    url = migrate(f"sqlite:///{tmp_path / 'w.db'}")
    config = make_config(tmp_path, url=url)
    line = orjson.dumps({"event_type": EVENT_TYPE, "message_id": "markup-1",
                         "timestamp": "2024-03-01 10:00:00", "publisher_id": "compute.host-1",
                         "payload": {"instance_id": "[/bold] [red]x[/red] <script>alert(1)</script>",
                                     "display_name": "[link=http://evil.example]click[/link]"}})
    (tmp_path / "n.jsonl").write_bytes(line + b"\n")
    result = subprocess.run([str(BIN / "winchester"), "ingest-file", "-c", str(config),
                             str(tmp_path / "n.jsonl"), "--quiet"], capture_output=True, text=True,
                            env=script_env(), timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return config


def test_the_query_cli_prints_hostile_text_in_json_as_data(hostile_cli):
    for command in (("events", "list", "--json"), ("events", "show", "markup-1", "--json"),
                    ("streams", "list", "--json")):
        result = subprocess.run([str(BIN / "winchester"), *command, "-c", str(hostile_cli)],
                                capture_output=True, text=True, env=script_env(), timeout=120,
                                check=False)
        assert result.returncode == 0, (command, result.stderr)
        assert "[/bold] [red]x[/red] <script>alert(1)</script>" in result.stdout, (command, result.stdout)
        orjson.loads(result.stdout)


def test_the_query_cli_tables_print_hostile_text_literally(hostile_cli):
    for command in (("events", "list"), ("events", "show", "markup-1"), ("streams", "list")):
        result = subprocess.run([str(BIN / "winchester"), *command, "-c", str(hostile_cli)],
                                capture_output=True, text=True, env=script_env(), timeout=120,
                                check=False)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (command, result.stderr)
        assert "[/bold] [red]x[/red] <script>alert(1)</script>" in result.stdout, (command, result.stdout)
        if command[0] == "events":  # streams show only their distinguishing traits
            assert "[link=http://evil.example]click[/link]" in result.stdout, (command, result.stdout)


# -- configuration is data ------------------------------------------------------------------------

CODE = "__import__('os').system('touch {marker}')"


def test_handler_params_and_definition_names_that_look_like_code_stay_strings(tmp_path):
    marker = tmp_path / "executed"
    code = CODE.format(marker=marker)
    module = f"recorder_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "class Recorder:\n"
        "    seen = []\n"
        "    def __init__(self, **params):\n"
        "        self.params = params\n"
        "        Recorder.seen.append(params)\n"
        "    def handle_events(self, events, env):\n"
        "        return events\n"
        "    def commit(self):\n"
        "        pass\n"
        "    def rollback(self):\n"
        "        pass\n")
    directory = tmp_path / "etc"
    directory.mkdir()
    for name in ("winchester.yaml", "triggers.yaml"):
        shutil.copy(ETC / name, directory / name)
    with (directory / "winchester.yaml").open("a") as extra:
        extra.write(f"\npipeline_handlers:\n  recorder: '{tmp_path}|{module}:Recorder'\n")
    params = {"command": code, "template": "{{ 7 * 7 }} ${7*7} #{7*7}", "nested": {"eval": f"eval({code!r})"},
              "list": [code, f"lambda: {code}"]}
    (directory / "pipelines.yaml").write_text(orjson.dumps({
        "usage_audit": [{"name": "recorder", "params": params}, "logger"],
        "usage_missing_exists": ["logger"]}).decode())
    # Trait names and field paths end up in the distiller's generated Python: quoted, never run.
    hostile_name = "x'); " + code + " #"
    double_quoted = code.replace("'", '"')
    (directory / "event_definitions.yaml").write_text(orjson.dumps([{
        "event_type": "*", "traits": {
            hostile_name: {"fields": "payload.instance_id"},
            "y": {"fields": f"payload.'{double_quoted}'"},
            'z"""': {"fields": ["payload.missing", "payload.a"]}}}]).decode())
    settings = load_settings(directory / "winchester.yaml", environ={})
    pipelines = load_pipeline_definitions(settings)
    distiller = build_distiller(settings)
    event = distiller.distill({"event_type": "compute.instance.update", "message_id": "m",
                               "timestamp": "2024-03-01T00:00:00",
                               "payload": {"instance_id": "i-1", double_quoted: "v", "a": "a"}})
    assert event[hostile_name] == "i-1" and event["y"] == "v" and event['z"""'] == "a"
    result = pipelines["usage_audit"].run([event], {
        "stream_id": 1, "stream_name": "usage_audit", "distinguishing_traits": {}, "reason": "fire",
        "pipeline": "usage_audit"})
    assert result.ok
    recorder = sys.modules[module].Recorder
    assert recorder.seen and all(seen == params for seen in recorder.seen)
    assert all(type(seen["command"]) is str for seen in recorder.seen)
    check = subprocess.run([str(BIN / "winchester"), "check", "-c", str(directory / "winchester.yaml")],
                           capture_output=True, text=True, env=script_env(), timeout=120, check=False)
    assert check.returncode == 0, check.stdout
    assert not marker.exists()


TAGS = ["!!python/object/apply:os.system ['touch {marker}']",
        "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
        "!!python/name:os.system", "!!python/module:os"]


@pytest.mark.parametrize("file", ["winchester.yaml", "event_definitions.yaml", "triggers.yaml",
                                  "pipelines.yaml", "logging.yaml"])
def test_python_yaml_tags_are_refused_in_every_configuration_file(tmp_path, file):
    marker = tmp_path / "executed"
    directory = tmp_path / "etc"
    directory.mkdir()
    for name in ("winchester.yaml", "event_definitions.yaml", "triggers.yaml", "pipelines.yaml"):
        shutil.copy(ETC / name, directory / name)
    main = directory / "winchester.yaml"
    main.write_text(main.read_text().replace("log_level: info", "log_level: warning")
                    + "logging_config: logging.yaml\n")
    (directory / "logging.yaml").write_text("version: 1\ndisable_existing_loggers: false\n")
    target = directory / file
    env = script_env(WINCHESTER_DATABASE_URL=f"sqlite:///{tmp_path / 'never.db'}")
    for number, tag in enumerate(TAGS):
        tag = tag.format(marker=marker)
        line = {"winchester.yaml": f"statistics_period: {tag}\n",
                "event_definitions.yaml": f"- event_type: {tag}\n  traits: {{}}\n",
                "triggers.yaml": f"- name: {tag}\n",
                "pipelines.yaml": f"p:\n  - {tag}\n",
                "logging.yaml": f"version: 1\nroot: {tag}\n"}[file]
        original = target.read_text()
        target.write_text(line if file != "winchester.yaml" else original + line)
        try:
            shown = tag.split(" ")[0]
            for command, status in ((("check",), 1), (("worker", "--once"), 2), (("ingest",), 2)):
                if file == "event_definitions.yaml" and command[0] == "worker":
                    continue  # the worker does not read event definitions
                if file == "pipelines.yaml" and command[0] == "ingest":
                    continue  # nor ingest pipelines
                if number and command[0] != "check":
                    continue  # the services read files as check does: one tag each is enough
                result = subprocess.run([str(BIN / "winchester"), *command, "-c", str(main)],
                                        capture_output=True, text=True, env=env, timeout=120,
                                        check=False)
                said = result.stdout if command == ("check",) else result.stderr
                assert result.returncode == status, (tag, command, result.stdout, result.stderr)
                assert f"{target}:" in said and f"YAML tag '{shown}' is not allowed" in said, (
                    tag, command, said)
                assert "Traceback" not in result.stderr
        finally:
            target.write_text(original)
    assert not marker.exists()
    assert not (tmp_path / "never.db").exists()
