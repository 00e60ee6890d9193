"""The dashboard: its pages over a real store, filters, 400/404/401/403, sign-in, CSRF, escaping;
then the same pages in a real browser (Chromium through Playwright) against a real server.

The store is the bundled sample (two days of a 60-instance nova cell) ingested with the example
configuration and worked as an operator would find it the evening after: the first day's streams
fired (two of them failed in a billing export that refuses some instances) and one expired
without its audit record; the second day's are ready but no worker has got to them yet; one
is still waiting for its ``.exists``. The ingest is spread over the last hour of real time
(the store's wall clock is set minute by minute), so the activity chart has something to draw.
"""

from __future__ import annotations

import gzip
import os
import shutil
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import orjson
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import free_port, require_service
from winchester.api import create_app
from winchester.clock import EventClock, FixedClock, WallClock
from winchester.config import (
    build_distiller,
    load_pipeline_definitions,
    load_settings,
    load_trigger_definitions,
    open_store,
)
from winchester.pipelines import Handler, Pipeline, PipelineEntry, PipelineSet
from winchester.services.ingest import Ingester
from winchester.services.serve import trigger_counters
from winchester.services.worker import Worker
from winchester.store import Store, create_engine, upgrade

with warnings.catch_warnings():
    # Starlette's test client would rather use httpx2; the installed httpx works the same here.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "etc" / "winchester.yaml"
SAMPLES = ROOT / "etc" / "samples" / "nova-notifications.jsonl.gz"
TOKEN = "dashboard-token-0123456789"
OTHER_TOKEN = "second-token-9876543210"
ORIGIN = "http://testserver"
SAME_SITE = {"Origin": ORIGIN}
# Everything up to the first day's audit records is ingested before the worker runs.
FIRST_PART_BEFORE = datetime(2015, 2, 2, 2, 0)
# The evening after the sample's second day: the worker's clock, and the dashboard's.
NOW = datetime(2015, 2, 3, 23, 30)
# Two instances of the sample whose first day's streams fire: the billing export refuses them.
REFUSED = frozenset({"4f4a9eb9-c49d-443c-95ad-9872bb549ee2",
                     "84ea7ea3-53ce-4059-8303-fbadad8192f1"})


class BillingExport(Handler):
    """The last handler of the fire pipeline here: it refuses some instances, as a flaky
    downstream service would (those streams go to ``error``)."""

    def handle_events(self, events, env):
        instance = env["distinguishing_traits"]["instance_id"]
        if instance in REFUSED:
            raise ConnectionError(f"billing export refused instance {instance}: "
                                  "HTTP 503 from billing.example.net")
        return events

    def commit(self):
        pass

    def rollback(self):
        pass


@dataclass
class Seeded:
    """What the sample came to, by stream id."""

    counters: dict = field(default_factory=dict)
    errors: list[int] = field(default_factory=list)
    waiting: int = 0          # active, not ready: waiting for its .exists
    ready: list[int] = field(default_factory=list)
    expired: int = 0          # expired without its .exists (completed)
    fired: list[int] = field(default_factory=list)
    # instance -> its .exists message ids
    exists_ids: dict[str, list[str]] = field(default_factory=dict)
    stored: int = 0


def lines_of_the_sample() -> list[bytes]:
    return gzip.decompress(SAMPLES.read_bytes()).splitlines()


def stamp(line: bytes) -> datetime:
    return datetime.fromisoformat(orjson.loads(line)["timestamp"])


def seed(url: str) -> Seeded:
    """Ingest the sample and work it as the module docstring tells; the store is closed after."""
    settings_ = load_settings(CONFIG, environ={"WINCHESTER_DATABASE_URL": url})
    triggers = load_trigger_definitions(settings_)
    store = open_store(settings_, triggers)
    try:
        clock = EventClock()
        ingester = Ingester(store, triggers, build_distiller(settings_), clock)
        lines = lines_of_the_sample()
        first = [line for line in lines if stamp(line) < FIRST_PART_BEFORE]
        second = [line for line in lines if stamp(line) >= FIRST_PART_BEFORE]
        minute = WallClock().now().replace(second=0, microsecond=0) - timedelta(minutes=50)

        def at(offset: int) -> None:
            store.wall_clock = FixedClock(minute + timedelta(minutes=offset, seconds=30))

        def ingest(batch: list[bytes]) -> None:
            ingester.commit(ingester.prepare(batch), dead_letter_source=lambda _: "dashboard-test")

        for index in range(0, len(first), 15):
            at(index // 15)
            ingest(first[index:index + 15])
        offset = len(first) // 15 + 1
        at(offset)  # a redelivery (duplicates) and a truncated message (rejected)
        ingest(first[-20:] + [b'{"event_type": "compute.instance.update", "message_id": '])
        at(offset + 1)
        loaded = load_pipeline_definitions(settings_)
        pipelines = PipelineSet({
            "usage_audit": Pipeline("usage_audit", loaded["usage_audit"].entries + (
                PipelineEntry("billing_export", BillingExport, {}),)),
            "usage_missing_exists": loaded["usage_missing_exists"]})
        worker_clock = FixedClock(NOW)
        Worker(store, triggers, pipelines, name="worker-1", clock=worker_clock,
               wall_clock=store.wall_clock, purge_completed=False).run_until_idle()
        for index in range(0, len(second), 15):
            at(offset + 3 + index // 15)
            ingest(second[index:index + 15])
        store.wall_clock = WallClock()

        seeded = Seeded(counters=trigger_counters([ingester]), stored=store.count_events())
        for stream in store.list_streams():
            if stream.state == "error":
                seeded.errors.append(stream.id)
            elif stream.state == "active" and stream.fire_timestamp is None:
                seeded.waiting = stream.id
            elif stream.state == "active":
                seeded.ready.append(stream.id)
            elif stream.state == "completed" and stream.fire_timestamp is None:
                seeded.expired = stream.id
            elif stream.state == "completed":
                seeded.fired.append(stream.id)
        for event in store.find_events("compute.instance.exists"):
            seeded.exists_ids.setdefault(event["instance_id"], []).append(event["message_id"])
        return seeded
    finally:
        store.close()


def new_sqlite(path: Path) -> str:
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return url


@dataclass
class Site:
    """A seeded store and what it holds; ``app()`` builds the API (and dashboard) over it."""

    url: str
    store: Store
    triggers: object
    seeded: Seeded

    def app(self, tokens=(), protect_reads=False):
        counters = self.seeded.counters
        return create_app(self.store, None, tokens, triggers=self.triggers,
                          protect_reads=protect_reads, clock=FixedClock(NOW),
                          counters=lambda: counters)

    def client(self, tokens=(), protect_reads=False) -> TestClient:
        return TestClient(self.app(tokens, protect_reads), follow_redirects=False)


def open_site(url: str, seeded: Seeded) -> Site:
    settings_ = load_settings(CONFIG, environ={"WINCHESTER_DATABASE_URL": url})
    triggers = load_trigger_definitions(settings_)
    return Site(url, open_store(settings_, triggers), triggers, seeded)


@pytest.fixture(scope="module")
def seeded_file(tmp_path_factory) -> tuple[Path, Seeded]:
    """The seeded SQLite database, made once; tests that change it work on a copy."""
    path = tmp_path_factory.mktemp("dashboard") / "seeded.db"
    return path, seed(new_sqlite(path))


@pytest.fixture(scope="module")
def site(seeded_file) -> Iterator[Site]:
    """Read-only tests share this one."""
    path, seeded = seeded_file
    opened = open_site(f"sqlite:///{path}", seeded)
    yield opened
    opened.store.close()


@pytest.fixture
def own_site(seeded_file, tmp_path) -> Iterator[Site]:
    """A private copy, for tests that reset or delete."""
    path, seeded = seeded_file
    copy = tmp_path / "copy.db"
    shutil.copyfile(path, copy)
    opened = open_site(f"sqlite:///{copy}", seeded)
    yield opened
    opened.store.close()


@pytest.fixture(scope="module")
def client(site) -> Iterator[TestClient]:
    with site.client() as opened:
        yield opened


def stream_ids_listed(html: str) -> list[int]:
    """The stream ids a streams table shows, in order."""
    ids = []
    for part in html.split('class="stream-link">#')[1:]:
        ids.append(int(part.split("<", 1)[0]))
    return ids


# -- the pages ------------------------------------------------------------------------------


def test_the_seeded_store_has_every_kind_of_stream(site):
    """The scenario the pages are checked on: fired, expired, ready, waiting and error streams."""
    seeded = site.seeded
    assert len(seeded.errors) == 2 and seeded.waiting and seeded.expired
    assert len(seeded.fired) > 40 and len(seeded.ready) > 40
    assert {site.store.get_stream(i).distinguishing_traits["instance_id"]
            for i in seeded.errors} == REFUSED


def test_overview_shows_streams_by_state_and_trigger_the_last_hour_and_the_errors(site, client):
    """Counts by state and trigger link to the filtered list; two charts; the error streams."""
    response = client.get("/")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    by_state = site.store.count_streams_by_trigger_and_state()["usage_audit"]
    assert by_state["error"] == 2 and by_state["active"] == len(site.seeded.ready) + 1
    for state, count in by_state.items():
        assert (f'<a href="/streams?state={state}"><span class="count">{count}</span> '
                f'{state}</a>') in html
    assert '<a href="/triggers/usage_audit">usage_audit</a>' in html
    assert (f'<a href="/streams?trigger_name=usage_audit&amp;state=active">'
            f'{by_state["active"]}</a>') in html
    # The hour: what was stored, redelivered and rejected; what fired, expired and failed.
    assert html.count('<svg viewBox="0 0 720 170" role="img"') == 2
    lines = len(lines_of_the_sample())
    assert f"events stored {lines}, duplicates 20, rejected 1" in html
    fired, expired = len(site.seeded.fired), 1
    assert f"fired {fired}, expired {expired}, pipeline errors 2" in html
    assert 'class="bar-stored"' in html and 'class="bar-errors"' in html
    # The error streams, newest first, with their errors.
    recent = html.split('id="errors"', 1)[1]
    assert sorted(stream_ids_listed(recent)) == sorted(site.seeded.errors)
    assert "billing export refused instance 4f4a9eb9" in recent


def test_streams_list_takes_the_api_filters_and_pages_like_it(site, client):
    """Each filter gives the rows the API gives for the same query string; marks page on."""
    instance = site.store.get_stream(site.seeded.errors[0]).distinguishing_traits["instance_id"]
    queries = ["state=error", "trigger_name=usage_audit&state=completed",
               f"distinguishing_traits=instance_id:{instance}",
               f"distinguishing_traits=instance_id:{instance};timestamp:datetime:2015-02-01",
               "older_than=2015-02-01T12:00:00", "younger_than=2015-02-03T01:50:00Z",
               "state=active&limit=5", "mark=%2B10&limit=3", "name=usage_audit&limit=4"]
    for query in queries:
        page = client.get(f"/streams?{query}")
        assert page.status_code == 200, (query, page.text)
        api_query = query if "limit" in query else query + "&limit=50"
        api = client.get(f"/v1/streams?{api_query}")
        assert api.status_code == 200, (query, api.text)
        assert stream_ids_listed(page.text) == [s["id"] for s in api.json()], query
    # Paging: the next link carries the filters and the last row's mark.
    first = client.get("/streams?state=active&limit=5").text
    assert "5 streams" not in first and f"{len(site.seeded.ready) + 1} streams match" in first
    next_href = first.split('rel="next"', 1)[0].rsplit('href="', 1)[1].split('"', 1)[0]
    next_href = next_href.replace("&amp;", "&")
    assert parse_qs(urlsplit(next_href).query) == {
        "state": ["active"], "limit": ["5"], "mark": [f"{stream_ids_listed(first)[-1]:x}"]}
    second = client.get(next_href).text
    assert stream_ids_listed(second) == [s["id"] for s in client.get(
        "/v1/streams?state=active&limit=10").json()][5:]
    # The form shows what was asked.
    assert '<option value="active" selected>active</option>' in first


@pytest.mark.parametrize(("query", "parameter"), [
    ("state=bogus", "state"),
    ("older_than=yesterday", "older_than"),
    ("younger_than=2015-13-01", "younger_than"),
    ("distinguishing_traits=no-colon-here", "distinguishing_traits"),
    ("distinguishing_traits=memory_mb:int:lots", "distinguishing_traits"),
    ("limit=0", "limit"),
    ("limit=many", "limit"),
    ("mark=not-hex", "mark"),
    ("trigger_name=a%00b", "trigger_name"),
])
def test_a_bad_stream_filter_is_a_400_naming_the_parameter(client, query, parameter):
    """A bad value shows the form again with a message naming the parameter (400, not 500)."""
    response = client.get(f"/streams?{query}")
    assert response.status_code == 400
    assert f'Bad filter <code class="param">{parameter}</code>' in response.text
    assert 'class="filters"' in response.text and "stream-link" not in response.text


@pytest.mark.parametrize(("query", "parameter"), [
    ("from_datetime=soon", "from_datetime"),
    ("to_datetime=2015-02-30", "to_datetime"),
    ("traits=launched_at:datetime:never", "traits (launched_at)"),
    ("traits=flavor", "traits"),
    ("event_name=" + "x" * 300, "event_name"),
    ("limit=10001", "limit"),
])
def test_a_bad_event_filter_is_a_400_naming_the_parameter(client, query, parameter):
    response = client.get(f"/events?{query}")
    assert response.status_code == 400
    assert f'Bad filter <code class="param">{parameter}</code>' in response.text


def test_a_waiting_stream_shows_its_timeline_and_why_it_has_not_fired(site, client):
    """Summary, explain (verdict, expiry, criterion progress, closest misses), timeline."""
    stream = site.store.get_stream(site.seeded.waiting)
    response = client.get(f"/streams/{stream.id}")
    assert response.status_code == 200, response.text
    html = response.text
    instance = stream.distinguishing_traits["instance_id"]
    assert f"<dd>{instance}" in html and "2015-02-02 (day)" in html
    assert (f'href="/events?traits=instance_id%3A{instance}%3B">its events</a>') in html
    # Explain: the verdict, the expiry and time until it, progress, the closest misses.
    explain = html.split('id="explain"', 1)[1].split('id="timeline"', 1)[0]
    until = stream.expire_timestamp - NOW
    hours, minutes = divmod(int(until.total_seconds()) // 60, 60)
    assert f"in <strong>{hours}h {minutes}m" in explain
    assert "waiting for fire criterion #0" in html
    assert ('<td class="num">0</td>\n        <td class="num">1</td>' in explain
            and "✗ not yet" in explain)
    closest = explain.split("Closest events that did not count for criterion #0", 1)[1]
    closest = closest.split("</table>", 1)[0]
    assert closest.count("<tr>") == 1 + 5  # the header, and the five closest
    assert "<code>event_type</code>" in closest
    assert "event type &#39;compute.instance.update&#39; is not one of" in closest
    assert "0 of 2" in closest
    assert "created by its first event" in explain
    # The timeline: every event in timestamp order, with its traits.
    events = site.store.stream_events(stream.id)
    timeline = html.split('id="timeline"', 1)[1]
    assert timeline.count("<details>") == len(events) == stream.event_count
    positions = [timeline.index(e["message_id"]) for e in events]
    assert positions == sorted(positions)
    assert "<th scope=\"row\">instance_id</th>" in timeline and events[0]["host"] in timeline
    # The JSON the API answers, for copying.
    assert f"&#34;id&#34;: {stream.id}," in html


def test_an_error_stream_shows_its_error_history_and_the_buttons(site, client):
    """Without tokens anyone may write: reset and delete are offered."""
    stream_id = site.seeded.errors[0]
    html = client.get(f"/streams/{stream_id}").text
    assert '<h3>Recorded error</h3>' in html and "HTTP 503 from billing.example.net" in html
    assert "its fire pipeline failed" in html
    assert "worker-1" in html  # the history names the worker that failed it
    assert f'action="/streams/{stream_id}/reset"' in html and 'id="reset"' in html
    assert f'action="/streams/{stream_id}/delete"' in html
    # A fired stream: its criterion met, by the .exists that fired it; no reset offered.
    fired = client.get(f"/streams/{site.seeded.fired[0]}").text
    assert "fired and completed" in fired and "✓ met" in fired
    assert "counts for criterion #0" in fired
    assert 'id="reset"' not in fired and 'id="delete"' in fired
    expired = client.get(f"/streams/{site.seeded.expired}").text
    assert "expired and completed" in expired and "Expiry passed at" in expired


@pytest.mark.parametrize("path", [
    "/streams/999999", "/streams/0", "/streams/-1", "/streams/abc", "/streams/1.5",
    "/streams/99999999999999999999999", "/streams/%C2%B2", "/triggers/nope", "/triggers/",
    "/events/nope", "/events/" + "m" * 300, "/static/nope.css", "/static/..%2Fdashboard.py",
])
def test_unknown_things_are_404_pages(client, path):
    response = client.get(path)
    assert response.status_code == 404, response.text
    if not path.startswith("/static"):
        assert response.headers["content-type"].startswith("text/html")
        assert "Not found" in response.text


def test_the_trigger_page_shows_its_definition_and_counters(site, client):
    response = client.get("/triggers/usage_audit")
    assert response.status_code == 200, response.text
    html = response.text
    assert "<code>$last + 2d</code>" in html and "<code>usage_missing_exists</code>" in html
    assert "<code>timestamp</code> <span class=\"muted\">as</span> <code>day</code>" in html
    assert "audit_period_ending in $audit_period_beginning + 1d" in html
    assert "1 needed" in html
    by_state = site.store.count_streams_by_trigger_and_state()["usage_audit"]
    assert (f'<a href="/streams?trigger_name=usage_audit&amp;state=completed">'
            f'{by_state["completed"]}</a>') in html
    counters = site.seeded.counters["usage_audit"]
    assert f'<th scope="row">matched</th><td class="num">{counters["matched"]}</td>' in html
    assert f'<th scope="row">fired</th><td class="num">{len(site.seeded.fired)}</td>' in html
    assert html.count('role="img"') == 1


def test_event_search_finds_events_and_each_links_to_its_explain(site, client):
    """The filters of GET /v1/events; the event page says what it matched and which stream."""
    instance, message_ids = next(iter(sorted(site.seeded.exists_ids.items())))
    page = client.get("/events", params={"event_name": "compute.instance.exists",
                                         "traits": f"instance_id:{instance}"})
    assert page.status_code == 200, page.text
    for message_id in message_ids:
        assert (f'href="/events/{message_id}" class="event-link">compute.instance.exists'
                in page.text)
    assert page.text.count('class="event-link"') == len(message_ids)
    everything = client.get("/events").text
    assert everything.count('class="event-link"') == 50 and 'rel="next"' in everything
    window = client.get("/events?from_datetime=2015-02-01T10:00:00&to_datetime=2015-02-01T10:30:00"
                        "&limit=500").text
    api = client.get("/v1/events?from_datetime=2015-02-01T10:00:00&to_datetime=2015-02-01T10:30:00"
                     "&limit=500").json()
    assert window.count('class="event-link"') == len(api) > 0

    event = client.get(f"/events/{message_ids[0]}")
    assert event.status_code == 200, event.text
    html = event.text
    assert '<span class="yes">matched</span>' in html and "stream #" in html
    assert "fire criterion #0" in html and '<th scope="row">audit_period_beginning</th>' in html
    stream_id = int(html.split('class="stream-link">stream #', 1)[1].split("<", 1)[0])
    assert site.store.get_stream(stream_id).distinguishing_traits["instance_id"] == instance


def test_reset_and_delete_are_form_posts_that_redirect_back(own_site):
    """Reset moves an error stream to retry_fire (history says who); delete removes a stream."""
    stream_id = own_site.seeded.errors[0]
    with own_site.client() as client:
        reset = client.post(f"/streams/{stream_id}/reset", headers=SAME_SITE)
        assert reset.status_code == 303
        assert reset.headers["location"] == f"/streams/{stream_id}?notice=reset"
        assert own_site.store.get_stream(stream_id).state == "retry_fire"
        assert own_site.store.stream_history(stream_id)[-1].actor == "dashboard"
        page = client.get(reset.headers["location"]).text
        assert "Reset: the stream will be retried" in page and "state-retry_fire" in page
        again = client.post(f"/streams/{stream_id}/reset", headers=SAME_SITE)
        assert again.headers["location"] == f"/streams/{stream_id}?notice=not-in-error"

        deleted = client.post(f"/streams/{stream_id}/delete", headers=SAME_SITE)
        assert deleted.status_code == 303
        assert deleted.headers["location"] == f"/streams?notice=deleted&deleted={stream_id}"
        assert own_site.store.get_stream(stream_id) is None
        assert "Stream deleted" in client.get(deleted.headers["location"]).text
        assert client.get(f"/streams/{stream_id}").status_code == 404
        assert client.post(f"/streams/{stream_id}/delete", headers=SAME_SITE).status_code == 404
        assert client.post(f"/streams/{stream_id}/reset", headers=SAME_SITE).status_code == 404
        assert client.post("/streams/x/reset", headers=SAME_SITE).status_code == 404
        assert client.get(f"/streams/{stream_id}/reset").status_code == 405


@pytest.mark.parametrize("headers", [
    {},
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://testserver.evil.example"},
    {"Referer": "https://evil.example/streams/1"},
    {"Origin": ORIGIN, "Sec-Fetch-Site": "cross-site"},
    {"Origin": ORIGIN, "Sec-Fetch-Site": "same-site"},
])
def test_forms_posted_from_elsewhere_are_refused(own_site, headers):
    """CSRF: a form POST must come from this server's own pages (Origin, else Referer)."""
    stream_id = own_site.seeded.errors[0]
    with own_site.client() as client:
        for action in ("reset", "delete"):
            response = client.post(f"/streams/{stream_id}/{action}", headers=headers)
            assert response.status_code == 403, response.text
            assert "must be sent from the dashboard&#39;s own pages" in response.text
        assert client.post("/signout", headers=headers).status_code == 403
    assert own_site.store.get_stream(stream_id).state == "error"


def test_a_same_origin_referer_is_enough_without_origin(own_site):
    stream_id = own_site.seeded.errors[0]
    with own_site.client() as client:
        response = client.post(f"/streams/{stream_id}/reset",
                               headers={"Referer": f"{ORIGIN}/streams/{stream_id}",
                                        "Sec-Fetch-Site": "same-origin"})
    assert response.status_code == 303
    assert own_site.store.get_stream(stream_id).state == "retry_fire"


def test_with_tokens_the_buttons_wait_for_a_sign_in(own_site):
    """Reads stay open; writes need the cookie that signing in sets (HttpOnly, SameSite=Strict)."""
    stream_id = own_site.seeded.errors[0]
    with own_site.client(tokens=(TOKEN, OTHER_TOKEN)) as client:
        page = client.get(f"/streams/{stream_id}").text
        assert 'id="reset"' not in page and 'id="delete"' not in page
        assert f'href="/signin?next=%2Fstreams%2F{stream_id}">Sign in</a> to reset' in page
        refused = client.post(f"/streams/{stream_id}/reset",
                              headers={**SAME_SITE, "Referer": f"{ORIGIN}/streams/{stream_id}"})
        assert refused.status_code == 401 and 'name="token"' in refused.text
        # Signing in from there leads back to the stream's page, not to the POST-only address.
        assert f'name="next" value="/streams/{stream_id}"' in refused.text
        assert own_site.store.get_stream(stream_id).state == "error"

        wrong = client.post("/signin", data={"token": "not-the-token-at-all", "next": "/streams"},
                            headers=SAME_SITE)
        assert wrong.status_code == 401 and "not one of this server&#39;s API tokens" in wrong.text
        assert "set-cookie" not in wrong.headers
        signed = client.post("/signin", data={"token": OTHER_TOKEN,
                                              "next": f"/streams/{stream_id}"}, headers=SAME_SITE)
        assert signed.status_code == 303
        assert signed.headers["location"] == f"/streams/{stream_id}?notice=signed-in"
        cookie = signed.headers["set-cookie"]
        assert cookie.startswith(f"winchester_token={OTHER_TOKEN};")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        client.cookies.set("winchester_token", OTHER_TOKEN)

        page = client.get(f"/streams/{stream_id}?notice=signed-in").text
        assert "Signed in." in page and 'id="reset"' in page and "Sign out" in page
        assert client.post(f"/streams/{stream_id}/reset", headers=SAME_SITE).status_code == 303
        assert own_site.store.get_stream(stream_id).state == "retry_fire"
        # A reverse proxy's Basic auth header rides along on every request: the cookie still counts.
        basic = {**SAME_SITE, "Authorization": "Basic cHJveHk6cGFzcw=="}
        assert "Sign out" in client.get(f"/streams/{stream_id}", headers=basic).text
        # The same cookie is what the API's own write check accepts, Basic header or not.
        assert client.delete(f"/v1/streams/{own_site.seeded.errors[1]}",
                             headers=basic).status_code == 200

        out = client.post("/signout", headers=SAME_SITE)
        assert out.status_code == 303 and out.headers["location"] == "/?notice=signed-out"
        cleared = out.headers["set-cookie"]
        assert 'winchester_token=""' in cleared and "Max-Age=0" in cleared


def test_behind_a_path_prefix_links_and_redirects_keep_it(own_site):
    """Served under a root_path (a reverse proxy's prefix), every link and redirect carries it."""
    stream_id = own_site.seeded.errors[0]
    with TestClient(own_site.app(), root_path="/winchester", follow_redirects=False) as client:
        page = client.get("/winchester/streams?state=error").text
        assert 'href="/winchester/static/dashboard.css"' in page
        assert f'href="/winchester/streams/{stream_id}" class="stream-link"' in page
        assert 'href="/winchester/v1/streams?state=error&amp;limit=50"' in page
        reset = client.post(f"/winchester/streams/{stream_id}/reset", headers=SAME_SITE)
        assert reset.headers["location"] == f"/winchester/streams/{stream_id}?notice=reset"


def test_streams_of_a_trigger_no_longer_defined_are_still_shown(site):
    """A trigger removed from the definitions: its streams show, flagged; its page is a 404."""
    from winchester.triggers import TriggerSet

    app = create_app(site.store, None, triggers=TriggerSet("triggers.yaml", ()),
                     clock=FixedClock(NOW))
    with TestClient(app) as client:
        overview = client.get("/")
        assert overview.status_code == 200 and "not defined</span>" in overview.text
        stream = client.get(f"/streams/{site.seeded.waiting}")
        assert stream.status_code == 200
        assert "is not in the trigger definitions" in stream.text
        assert client.get("/triggers/usage_audit").status_code == 404
        message_id = next(iter(site.seeded.exists_ids.values()))[0]
        event = client.get(f"/events/{message_id}")
        assert event.status_code == 200 and "No trigger is defined." in event.text


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil.example",
                                    "evil", "/ok\r\nLocation: x"])
def test_signing_in_never_sends_the_browser_elsewhere(site, target):
    with site.client(tokens=(TOKEN,)) as client:
        response = client.post("/signin", data={"token": TOKEN, "next": target}, headers=SAME_SITE)
    assert response.status_code == 303 and response.headers["location"] == "/?notice=signed-in"


def test_protected_reads_show_the_sign_in_page(site):
    """With api.protect_reads every page needs the token; the stylesheet does not."""
    with site.client(tokens=(TOKEN,), protect_reads=True) as client:
        for path in ("/", "/streams?state=error", f"/streams/{site.seeded.waiting}",
                     "/triggers/usage_audit", "/events", "/events/nope"):
            response = client.get(path)
            assert response.status_code == 401, path
            assert 'name="token"' in response.text and "stream-link" not in response.text
        page = client.get("/streams?state=error").text
        assert 'name="next" value="/streams?state=error"' in page
        assert client.get("/static/dashboard.css").status_code == 200
        assert client.get("/signin").status_code == 200
        client.cookies.set("winchester_token", TOKEN)
        assert client.get("/").status_code == 200
        client.cookies.set("winchester_token", "a-wrong-token-of-some-length")
        assert client.get("/").status_code == 401


def test_without_tokens_there_is_nothing_to_sign_in_to(client):
    page = client.get("/signin")
    assert page.status_code == 200 and "no API tokens configured" in page.text
    assert 'name="token"' not in page.text and "Sign in</a>" not in client.get("/").text
    response = client.post("/signin", data={"token": "whatever", "next": "/events"},
                           headers=SAME_SITE)
    assert response.status_code == 303 and response.headers["location"] == "/events"


def test_pages_carry_security_headers_and_load_nothing_from_elsewhere(client):
    for path in ("/", "/streams", "/events", "/streams/nope"):
        response = client.get(path)
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        assert response.headers["x-frame-options"] == "DENY"
        assert "http://" not in response.text.replace("http://testserver", "")
        assert "https://" not in response.text
        assert " style=" not in response.text and "<script>" not in response.text
    css = client.get("/static/dashboard.css")
    assert css.headers["content-type"].startswith("text/css") and "url(" not in css.text
    assert client.get("/static/dashboard.js").headers["content-type"].startswith("text/javascript")


def test_an_unavailable_database_is_a_503_page(own_site, monkeypatch):
    from sqlalchemy.exc import OperationalError

    def down(*args, **kwargs):
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    with own_site.client() as client:
        for name in ("count_streams_by_trigger_and_state", "query_streams", "get_stream",
                     "query_events"):
            monkeypatch.setattr(own_site.store, name, down)
        for path in ("/", "/streams", f"/streams/{own_site.seeded.waiting}", "/events"):
            response = client.get(path)
            assert response.status_code == 503, path
            assert "the database is unavailable" in response.text
            assert response.headers["content-type"].startswith("text/html")


# -- escaping ---------------------------------------------------------------------------------

HOSTILE = "<script>alert('x')</script>"


@pytest.fixture
def hostile_site(tmp_path) -> Iterator[Site]:
    """Events whose traits, types and ids carry markup, and a pipeline error that does too."""
    url = new_sqlite(tmp_path / "hostile.db")
    settings_ = load_settings(CONFIG, environ={"WINCHESTER_DATABASE_URL": url})
    triggers = load_trigger_definitions(settings_)
    store = open_store(settings_, triggers)
    day = datetime(2015, 2, 1, 10)
    events = [
        {"message_id": f"m-{HOSTILE}", "event_type": f"compute.instance.{HOSTILE}",
         "timestamp": day, "instance_id": HOSTILE,
         "display_name": '"><img src=x onerror=alert(1)>'},
        {"message_id": "m-exists", "event_type": "compute.instance.exists", "timestamp": day,
         "instance_id": HOSTILE, "audit_period_beginning": datetime(2015, 2, 1),
         "audit_period_ending": datetime(2015, 2, 2)},
    ]
    Ingester(store, triggers, clock=FixedClock(day)).add_events(events)

    class Hostile(Handler):
        def handle_events(self, events, env):
            raise RuntimeError(f"refused {HOSTILE} <b>bold</b>")

        def commit(self):
            pass

        def rollback(self):
            pass

    pipes = PipelineSet({"usage_audit": Pipeline("usage_audit", (PipelineEntry("h", Hostile, {}),)),
                         "usage_missing_exists": Pipeline("usage_missing_exists", ())})
    Worker(store, triggers, pipes, clock=FixedClock(day + timedelta(hours=1)),
           purge_completed=False).run_until_idle()
    opened = Site(url, store, triggers, Seeded())
    yield opened
    store.close()


def test_everything_data_derived_is_escaped(hostile_site):
    """Markup in traits, event types, message ids, errors and parameters is shown, never run."""
    [stream] = hostile_site.store.list_streams()
    assert stream.state == "error"
    with hostile_site.client() as client:
        pages = [client.get(path) for path in (
            "/", "/streams", f"/streams/{stream.id}", "/events",
            "/events?traits=instance_id:" + HOSTILE, f"/events/m-{HOSTILE}",
            f"/streams?state={HOSTILE}", f"/events?from_datetime={HOSTILE}",
            f"/triggers/{HOSTILE}", f"/streams/{HOSTILE}", f"/signin?next=/{HOSTILE}")]
        for response in pages:
            assert response.status_code < 500, response.url
            assert "<script>alert" not in response.text, response.url
            assert "<img src=x" not in response.text and "<b>bold</b>" not in response.text
        stream_page = pages[2].text
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in stream_page
        assert "refused &lt;script&gt;" in stream_page and "&lt;b&gt;bold&lt;/b&gt;" in stream_page
        assert "&lt;script&gt;" in pages[4].text and "&lt;script&gt;" in pages[5].text
        assert pages[6].status_code == 400 and "&lt;script&gt;" in pages[6].text


# -- no input makes a page fail --------------------------------------------------------------

PARAMETERS = ("state", "trigger_name", "name", "distinguishing_traits", "older_than",
              "younger_than", "mark", "limit", "event_name", "traits", "from_datetime",
              "to_datetime", "next", "notice", "deleted")
HINTS = st.sampled_from(["", " ", "0", "-1", "+", "+ff", "ffffffffffffffffff", "10000", "10001",
                         "instance_id:x", "a:int:9223372036854775808", "a:float:nan",
                         "a:datetime:0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                         "2015-02-01", "error", "usage_audit", ";;", ",", "x:y,z:w", "\x00",
                         "é" * 300, "%", "_", "\\"])


@settings(max_examples=120, suppress_health_check=[HealthCheck.too_slow])
@given(page=st.sampled_from(["/", "/streams", "/events", "/signin", "/triggers/usage_audit",
                             "/streams/1"]),
       params=st.dictionaries(st.sampled_from(PARAMETERS), st.one_of(HINTS, st.text(max_size=40)),
                              max_size=4),
       template=st.sampled_from(["/streams/{}", "/events/{}", "/triggers/{}"]),
       segment=st.one_of(HINTS, st.text(max_size=30)).filter(lambda text: text.strip()))
def test_no_input_makes_a_page_fail(client, page, params, template, segment):
    """Any query string on any page, and any path segment, is a page (never a 500)."""
    response = client.get(page, params=params)
    assert response.status_code in (200, 400), (page, params, response.text[:500])
    response = client.get(template.format(quote(segment, safe="")))
    # 307: a trailing slash (the segment was only slashes) is redirected away.
    assert response.status_code in (200, 307, 404), (template, segment, response.text[:500])


# -- on every store ---------------------------------------------------------------------------


def test_every_page_on_each_store(migrated_url):
    """The same scenario on SQLite and PostgreSQL: every page renders, with the same streams."""
    seeded = seed(migrated_url)
    opened = open_site(migrated_url, seeded)
    try:
        with opened.client() as client:
            for path in ("/", "/streams", "/streams?state=active&limit=500",
                         f"/streams/{seeded.waiting}", f"/streams/{seeded.errors[0]}",
                         f"/streams/{seeded.expired}", "/triggers/usage_audit", "/events",
                         "/events?event_name=compute.instance.exists&traits=instance_id:"
                         + next(iter(seeded.exists_ids)),
                         f"/events/{next(iter(seeded.exists_ids.values()))[0]}", "/signin"):
                response = client.get(path)
                assert response.status_code == 200, (path, response.text[:2000])
            active = client.get("/streams?state=active&limit=500").text
            assert sorted(stream_ids_listed(active)) == sorted([*seeded.ready, seeded.waiting])
    finally:
        opened.store.close()


# -- in a real browser -----------------------------------------------------------------------

CHROMIUM = Path(os.environ.get("WINCHESTER_CHROMIUM", "/usr/bin/chromium"))


def chromium_problem() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"Playwright is not installed: {exc}"
    if not CHROMIUM.exists():
        return f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    return None


@dataclass
class Live:
    base: str
    site: Site
    shots: list[Path]

    def shoot(self, page, name: str, full_page: bool = True) -> None:
        """A screenshot into the test's directory and, with WINCHESTER_SCREENSHOTS, there too
        (lists only as far as the window shows them)."""
        for directory in self.shots:
            directory.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(directory / f"{name}.png"), full_page=full_page)




@pytest.fixture(scope="module")
def live(seeded_file, tmp_path_factory) -> Iterator[Live]:
    """uvicorn in a thread on a free port, with tokens, over a copy of the seeded store."""
    require_service(chromium_problem())  # skips locally, fails under WINCHESTER_REQUIRE_SERVICES=1
    path, seeded = seeded_file
    copy = tmp_path_factory.mktemp("live") / "live.db"
    shutil.copyfile(path, copy)
    opened = open_site(f"sqlite:///{copy}", seeded)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(opened.app(tokens=(TOKEN,)), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="off",
                                           ws="none"))
    thread = threading.Thread(target=server.run, name="dashboard-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    shots = [tmp_path_factory.mktemp("screenshots")]
    if os.environ.get("WINCHESTER_SCREENSHOTS"):
        shots.append(Path(os.environ["WINCHESTER_SCREENSHOTS"]))
    try:
        yield Live(f"http://127.0.0.1:{port}", opened, shots)
    finally:
        server.should_exit = True
        thread.join(10)
        opened.store.close()


@pytest.fixture(scope="module")
def browser(live) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser, live):
    context = browser.new_context(viewport={"width": 1360, "height": 900}, base_url=live.base)
    context.set_default_timeout(5000)
    opened = context.new_page()
    problems: list[str] = []

    def console(message) -> None:
        # A wrong token is answered 401, which the browser logs as a failed load.
        if message.type == "error" and "status of 401" not in message.text:
            problems.append(message.text)

    opened.on("console", console)
    opened.on("pageerror", lambda e: problems.append(str(e)))
    yield opened
    context.close()
    assert problems == [], problems  # no CSP violation, no script error, no missing file


def test_browser_overview_to_a_stream_and_its_explain(live, page):
    """Overview -> the active streams -> the waiting one -> its explain; then its trigger."""
    from playwright.sync_api import expect

    page.goto("/")
    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.locator("svg.chart-svg")).to_have_count(2)
    assert page.locator("svg.chart-svg rect.bar-stored").count() > 10
    live.shoot(page, "overview")

    page.locator(".tile-active a").click()
    expect(page).to_have_url(f"{live.base}/streams?state=active")
    expect(page.locator("p.summary")).to_contain_text(
        f"{len(live.site.seeded.ready) + 1} streams match")
    live.shoot(page, "streams", full_page=False)

    waiting = live.site.seeded.waiting
    page.locator(f'a.stream-link[href="/streams/{waiting}"]').click()
    expect(page.locator("h1")).to_contain_text(f"Stream #{waiting}")
    page.get_by_role("link", name="explain", exact=True).click()
    expect(page).to_have_url(f"{live.base}/streams/{waiting}#explain")
    explain = page.locator("#explain")
    expect(explain.locator("table.criteria tr.unmet td").nth(2)).to_have_text("0")
    expect(explain.locator("table.criteria tr.unmet td").nth(3)).to_have_text("1")
    expect(explain.locator(".closest tbody tr")).to_have_count(5)
    expect(explain.locator(".closest tbody tr").first).to_contain_text("is not one of")
    expect(explain.locator(".expiry")).to_contain_text("Expires at")
    expect(page.locator("#verdict")).to_contain_text("waiting for fire criterion #0")
    # A timeline entry opens on its traits.
    first = page.locator("ol.timeline li details").first
    first.locator("summary time").click()
    expect(first.locator("table.traits")).to_contain_text("instance_id")
    page.evaluate("window.scrollTo(0, 0)")
    live.shoot(page, "stream")

    page.locator("#summary dd a", has_text="usage_audit").click()
    expect(page.locator("h1")).to_contain_text("usage_audit")
    expect(page.locator("code", has_text="$last + 2d")).to_be_visible()
    live.shoot(page, "trigger")


def test_browser_event_search_and_an_events_explain(live, page):
    """Search by type, then narrow by a trait; an event's page says what it matched."""
    from playwright.sync_api import expect

    instance, message_ids = next(iter(sorted(live.site.seeded.exists_ids.items())))
    page.goto("/events")
    page.fill('input[name="event_name"]', "compute.instance.exists")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("table.events > tbody > tr")
    expect(rows).to_have_count(50)
    expect(rows.first).to_contain_text("compute.instance.exists")
    expect(page.locator('a[rel="next"]')).to_be_visible()
    live.shoot(page, "events", full_page=False)

    page.fill('input[name="traits"]', f"instance_id:{instance}")
    page.get_by_role("button", name="Search").click()
    assert f"traits=instance_id%3A{instance}" in page.url
    expect(rows).to_have_count(len(message_ids))
    rows.first.locator("a.event-link").click()
    expect(page.locator("h1")).to_contain_text("compute.instance.exists")
    expect(page.locator("article.trigger-verdict h3")).to_contain_text("matched")
    page.locator("article.trigger-verdict a.stream-link").click()
    expect(page.locator("h1")).to_contain_text("Stream #")


def test_browser_sign_in_and_reset_an_error_stream(live, page):
    """Without the cookie no button; sign in with the token; the reset button retries the stream."""
    from playwright.sync_api import expect

    stream_id = live.site.seeded.errors[-1]
    page.goto(f"/streams/{stream_id}")
    expect(page.locator(".recorded-error pre")).to_contain_text("HTTP 503 from billing.example.net")
    expect(page.locator("#reset")).to_have_count(0)
    page.locator("header a.signin-link").click()
    expect(page.locator("h1")).to_have_text("Sign in")
    page.fill('input[name="token"]', "a-wrong-token-of-some-length")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("p.problem")).to_contain_text("not one of this server's API tokens")
    live.shoot(page, "signin")

    page.fill('input[name="token"]', TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{live.base}/streams/{stream_id}?notice=signed-in")
    expect(page.locator("p.notice")).to_have_text("Signed in.")
    [cookie] = page.context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (
        "winchester_token", True, "Strict")
    page.locator("#reset").click()
    expect(page).to_have_url(f"{live.base}/streams/{stream_id}?notice=reset")
    expect(page.locator("h1 .state")).to_have_text("retry_fire")
    expect(page.locator("#reset")).to_have_count(0)
    assert live.site.store.get_stream(stream_id).state == "retry_fire"
    assert live.site.store.stream_history(stream_id)[-1].actor == "dashboard"

    # Delete asks first; dismissing keeps the stream.
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.locator("#delete").click()
    expect(page.locator("h1")).to_contain_text(f"Stream #{stream_id}")
    assert live.site.store.get_stream(stream_id) is not None

    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("p.notice")).to_have_text("Signed out.")
    assert page.context.cookies() == []

