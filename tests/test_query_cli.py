"""The query CLI (events, streams, explain) on the database and against a remote API."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import orjson
import pytest
import uvicorn

from tests.conftest import free_port
from tests.test_worker_cli import (  # noqa: F401 - isolated is an autouse fixture
    DAY,
    Config,
    isolated,
    lifecycle,
    make_config,
    run,
    upgrade_and_ingest,
)
from winchester.api import create_app
from winchester.config import load_settings, load_trigger_definitions, open_store

TOKEN = "s3cret-token-0123456789"


@dataclass
class Loaded:
    config: Config
    env: dict[str, str]
    by_instance: dict[str, dict]        # instance -> stream (JSON from `streams list --json`)
    events: list[dict]                  # every event, newest first

    def cli(self, *args: str):
        return run(*args, "-c", self.config.c, env=self.env)

    def json(self, *args: str):
        result = self.cli(*args, "--json")
        assert result.exit_code == 0, result.output
        return orjson.loads(result.stdout)


@pytest.fixture
def loaded(tmp_path, database_url) -> Loaded:
    """i-a created and deleted, its fire pipeline failed (error); i-b only created (active)."""
    config = make_config(tmp_path, "on_fire: [logger, boom]\non_expire: [logger]\n", boom=True,
                         url_in_env=True)
    env = {"WINCHESTER_DATABASE_URL": database_url}
    upgrade_and_ingest(config, lifecycle(DAY), env=env)
    result = run("worker", "-c", config.c, "--once", "--now", "2024-01-01T12:00:00", env=env)
    assert "1 failed" in result.output, result.output
    partial = Loaded(config, env, {}, [])
    partial.by_instance = {s["distinguishing_traits"]["instance_id"]: s
                           for s in partial.json("streams", "list")}
    partial.events = partial.json("events", "list")
    return partial


# -- events --------------------------------------------------------------------------------------


def test_events_list_json_is_the_api_shape_newest_first(loaded):
    """Newest stored first (Quincy orders by arrival, i.e. by _mark), traits flat, datetimes typed."""
    events = loaded.events
    assert sorted((e["event_type"], e["instance_id"]) for e in events) == [
        ("compute.instance.create.start", "i-a"), ("compute.instance.create.start", "i-b"),
        ("compute.instance.delete.end", "i-a")]
    marks = [int(e["_mark"], 16) for e in events]
    assert marks == sorted(marks, reverse=True)
    [deleted] = [e for e in events if e["event_type"] == "compute.instance.delete.end"]
    assert deleted["timestamp"] == {"__type__": "datetime", "datetime": "2024-01-01T01:00:00.000000"}
    assert deleted["tenant_id"] == "t-1"


def test_events_list_filters_by_trait_type_and_time(loaded):
    by_trait = loaded.json("events", "list", "-t", "instance_id:i-a")
    assert {e["instance_id"] for e in by_trait} == {"i-a"} and len(by_trait) == 2
    by_name = loaded.json("events", "list", "--name", "compute.instance.delete.end")
    assert [e["instance_id"] for e in by_name] == ["i-a"]
    window = loaded.json("events", "list", "--from", "2024-01-01T00:00:00", "--to", "2024-01-01T00:30:00")
    assert [e["instance_id"] for e in window] == ["i-b"]   # after 00:00 (exclusive), up to 00:30
    both = loaded.json("events", "list", "-t", "instance_id:i-a", "-t", "tenant_id:t-1",
                       "--name", "compute.instance.create.start")
    assert len(both) == 1


def test_events_list_pages_with_the_mark_it_prints(loaded):
    first = loaded.cli("events", "list", "--limit", "2")
    assert first.exit_code == 0, first.output
    mark = first.output.strip().splitlines()[-1]
    assert mark == f"more: --mark {loaded.events[1]['_mark']}"
    rest = loaded.json("events", "list", "--mark", loaded.events[1]["_mark"])
    assert rest == loaded.events[2:]
    oldest_first = loaded.json("events", "list", "--mark", "+")
    assert [e["message_id"] for e in oldest_first] == [e["message_id"] for e in reversed(loaded.events)]


def test_events_count_agrees_with_the_list(loaded):
    assert loaded.json("events", "count") == {"count": 3}
    assert loaded.json("events", "count", "-t", "instance_id:i-b") == {"count": 1}
    result = loaded.cli("events", "count", "--name", "compute.instance.create.start")
    assert result.output.strip() == "2 event(s)"


def test_events_show_lists_every_trait_with_its_type(loaded):
    message_id = loaded.events[0]["message_id"]
    assert loaded.json("events", "show", message_id) == {
        k: v for k, v in loaded.events[0].items() if k != "_mark"}
    result = loaded.cli("events", "show", message_id)
    rows = {cells[1].strip(): cells[2].strip() for cells in
            (line.split("│") for line in result.output.splitlines()) if len(cells) > 3}
    assert rows["timestamp"] == "datetime" and rows["instance_id"] == "text"


def test_an_unknown_event_or_stream_exits_1_saying_so(loaded):
    result = loaded.cli("events", "show", "no-such-message")
    assert result.exit_code == 1 and "no event with message_id 'no-such-message'" in result.output
    result = loaded.cli("streams", "show", "999999")
    assert result.exit_code == 1 and "stream 999999 does not exist" in result.output


@pytest.mark.parametrize("args, message", [
    (["events", "list", "--from", "tuesday"], "--from (from_datetime): 'tuesday' is not an ISO 8601"),
    (["events", "list", "-t", "memory_mb:int:lots"], "--traits (traits): memory_mb: 'lots' is not an int"),
    (["streams", "list", "-t", "nonsense"], "--traits (distinguishing_traits): 'nonsense' is not name:value"),
    (["streams", "list", "--mark", "zz"], "--mark (mark): 'zz' is not a mark"),
], ids=["datetime", "typed-trait", "pair", "mark"])
def test_bad_filters_exit_2_naming_the_option(loaded, args, message):
    result = loaded.cli(*args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


@pytest.mark.parametrize("command", [["streams", "show"], ["streams", "reset"], ["streams", "delete"],
                                     ["explain"]])
def test_a_stream_id_past_64_bits_is_a_usage_error_not_a_traceback(loaded, command):
    result = loaded.cli(*command, str(2**64))
    assert result.exit_code == 2
    assert "is not in the range 1<=x<=9223372036854775807" in " ".join(result.output.split())


# -- streams -------------------------------------------------------------------------------------


def test_streams_list_filters_by_state_trigger_and_distinguishing_traits(loaded):
    failed = loaded.json("streams", "list", "--state", "error")
    assert [s["distinguishing_traits"] for s in failed] == [{"instance_id": "i-a"}]
    assert "RuntimeError: boom goes the handler" in failed[0]["error"]
    assert [s["state"] for s in loaded.json("streams", "list", "-t", "instance_id:i-b")] == ["active"]
    assert len(loaded.json("streams", "list", "--name", "instance_life")) == 2
    assert loaded.json("streams", "list", "--name", "no_such_trigger") == []
    # --to: first event before it; --from: last event after it.
    assert {s["distinguishing_traits"]["instance_id"] for s in loaded.json(
        "streams", "list", "--from", "2024-01-01T00:45:00")} == {"i-a"}
    assert {s["distinguishing_traits"]["instance_id"] for s in loaded.json(
        "streams", "list", "--to", "2024-01-01T00:15:00")} == {"i-a"}


def test_streams_list_details_include_the_events(loaded):
    streams = loaded.json("streams", "list", "--details", "-t", "instance_id:i-a")
    [stream] = streams
    assert [e["event_type"] for e in stream["events"]] == [
        "compute.instance.create.start", "compute.instance.delete.end"]


def test_streams_show_and_count(loaded):
    stream = loaded.by_instance["i-b"]
    shown = loaded.json("streams", "show", str(stream["id"]), "--details")
    assert shown["state"] == "active" and shown["name"] == "instance_life"
    assert [e["instance_id"] for e in shown["events"]] == ["i-b"]
    assert loaded.json("streams", "count") == {"count": 2}
    assert loaded.json("streams", "count", "--state", "active") == {"count": 1}


def test_streams_delete_removes_the_stream_and_keeps_its_events(loaded):
    stream_id = loaded.by_instance["i-b"]["id"]
    result = loaded.cli("streams", "delete", str(stream_id), "--yes")
    assert result.exit_code == 0 and f"stream {stream_id}: deleted" in result.output
    assert loaded.cli("streams", "show", str(stream_id)).exit_code == 1
    assert loaded.json("events", "count") == {"count": 3}
    again = loaded.cli("streams", "delete", str(stream_id), "--yes")
    assert again.exit_code == 1 and "does not exist" in again.output


def test_streams_delete_asks_first(loaded):
    stream_id = loaded.by_instance["i-b"]["id"]
    from click.testing import CliRunner

    from winchester.cli import main

    result = CliRunner().invoke(main, ["streams", "delete", str(stream_id), "-c", loaded.config.c],
                                input="n\n", env=loaded.env)
    assert result.exit_code == 1 and "Aborted" in result.output
    assert loaded.json("streams", "count") == {"count": 2}


# -- explain -------------------------------------------------------------------------------------


def test_explain_an_error_stream_shows_the_error_and_history(loaded):
    stream_id = loaded.by_instance["i-a"]["id"]
    report = loaded.json("explain", str(stream_id))
    assert report["stream"]["state"] == "error"
    assert "RuntimeError: boom goes the handler" in report["error"]
    assert [entry["state"] for entry in report["history"]][:1] == ["active"]
    assert "error" in [entry["state"] for entry in report["history"]]
    text = " ".join(loaded.cli("explain", str(stream_id)).output.split())
    assert "verdict: its fire pipeline failed" in text and f"winchester streams reset {stream_id}" in text


def test_explain_an_active_stream_shows_what_it_waits_for(loaded):
    stream_id = loaded.by_instance["i-b"]["id"]
    report = loaded.json("explain", str(stream_id))
    [criterion] = report["fire"]["criteria"]
    assert (criterion["counted"], criterion["needed"], criterion["met"]) == (0, 1, False)
    [closest] = criterion["closest"]
    assert closest["event_type"] == "compute.instance.create.start" and closest["failed"] == "event_type"
    text = " ".join(loaded.cli("explain", str(stream_id)).output.split())
    assert "waiting for fire criterion #0" in text and "closest events not matching criterion #0" in text


def test_explain_an_event_names_the_triggers_it_matched(loaded):
    [event] = [e for e in loaded.events if e["event_type"] == "compute.instance.delete.end"]
    report = loaded.json("explain", "--event", event["message_id"])
    [verdict] = report["triggers"]
    assert verdict["trigger"] == "instance_life" and verdict["matched"] is True
    assert verdict["stream"] == {"id": loaded.by_instance["i-a"]["id"], "state": "error"}


def test_explain_needs_a_stream_or_an_event(loaded):
    assert loaded.cli("explain").exit_code == 2
    assert loaded.cli("explain", "1", "--event", "m").exit_code == 2


# -- against a remote API ------------------------------------------------------------------------


@contextmanager
def serving(loaded: Loaded, triggers=None) -> Iterator[str]:
    """The API over the loaded database (with ``triggers`` as its definitions, by default the
    configuration's), on a free port: its URL."""
    settings = load_settings(loaded.config.path, environ=loaded.env)
    triggers = load_trigger_definitions(settings) if triggers is None else triggers
    store = open_store(settings, triggers)
    app = create_app(store, tokens=[TOKEN], triggers=triggers)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "the API did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()


@pytest.fixture
def api_url(loaded) -> Iterator[str]:
    with serving(loaded) as url:
        yield url


def test_remote_stream_totals_count_the_streams_of_a_trigger_no_longer_defined(loaded):
    """`streams list --url` heads its table with the totals by state that the database holds,
    streams of a trigger since removed from the API's configuration included, as locally."""
    from winchester.cli._query import LocalQueries, RemoteQueries
    from winchester.triggers import load_triggers

    settings = load_settings(loaded.config.path, environ=loaded.env)
    store = open_store(settings)
    try:
        local = LocalQueries(store, None, datetime.now).counts_by_state()
    finally:
        store.close()
    assert sum(local.values()) == 2
    with serving(loaded, triggers=load_triggers([], "triggers.yaml")) as url:
        remote = RemoteQueries(url, TOKEN)
        try:
            assert remote.counts_by_state() == local
        finally:
            remote.close()


def test_the_remote_api_answers_what_the_database_does(loaded, api_url):
    for args in (["events", "list"], ["events", "list", "-t", "instance_id:i-a"],
                 ["streams", "list"], ["streams", "list", "--state", "error", "--details"],
                 ["events", "count"], ["streams", "count", "--name", "instance_life"]):
        assert loaded.json(*args, "--url", api_url) == loaded.json(*args), args
    stream_id = str(loaded.by_instance["i-b"]["id"])
    remote = loaded.json("explain", stream_id, "--url", api_url)
    local = loaded.json("explain", stream_id)
    assert remote["fire"] == local["fire"] and remote["stream"] == local["stream"]


def test_remote_bad_filters_exit_2_naming_the_option(loaded, api_url):
    result = loaded.cli("events", "list", "--from", "tuesday", "--url", api_url)
    assert result.exit_code == 2
    assert "--from (from_datetime): 'tuesday' is not an ISO 8601" in " ".join(result.output.split())


def test_remote_writes_need_the_token(loaded, api_url):
    stream_id = str(loaded.by_instance["i-a"]["id"])
    refused = loaded.cli("streams", "reset", stream_id, "--url", api_url)
    assert refused.exit_code == 2 and "401" in refused.output and "--token" in refused.output
    assert loaded.json("streams", "show", stream_id)["state"] == "error"
    moved = loaded.cli("streams", "reset", stream_id, "--url", api_url, "--token", TOKEN)
    assert moved.exit_code == 0, moved.output
    assert f"stream {stream_id}: -> retry_fire" in moved.output
    assert loaded.json("streams", "show", stream_id)["state"] == "retry_fire"
    again = loaded.cli("streams", "reset", stream_id, "--url", api_url, "--token", TOKEN)
    assert again.exit_code == 1 and "left alone (state retry_fire" in again.output


def test_remote_reset_all_errors_and_delete(loaded, api_url):
    env_token = {"WINCHESTER_API_TOKEN": TOKEN}
    result = run("streams", "reset", "--all-errors", "--url", api_url, "--json", env=env_token)
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout) == {
        "reset": {str(loaded.by_instance["i-a"]["id"]): "retry_fire"}, "left_alone": {}}
    stream_id = str(loaded.by_instance["i-b"]["id"])
    result = run("streams", "delete", stream_id, "--yes", "--url", api_url, env=env_token)
    assert result.exit_code == 0 and f"stream {stream_id}: deleted" in result.output
    assert loaded.json("streams", "count") == {"count": 1}


def test_an_unreachable_api_exits_2(loaded):
    port = free_port()
    result = loaded.cli("streams", "list", "--url", f"http://127.0.0.1:{port}")
    assert result.exit_code == 2 and "cannot reach the API" in result.output


def test_each_trait_option_is_one_filter_whatever_its_value_holds():
    """`-t display_name:web,01` is one filter on "web,01": the API would read a lone filter's
    commas as separators (klugman's form), so each option is sent ending with ';'."""
    from winchester.api._params import parse_traits
    from winchester.cli._options import trait_filters

    [only] = parse_traits("traits", trait_filters(("display_name:web,01",)))
    assert (only.name, only.value) == ("display_name", "web,01")
    both = parse_traits("traits", trait_filters(("display_name:web,role:db", "memory_mb:int:512")))
    assert [(f.name, f.value) for f in both] == [("display_name", "web,role:db"), ("memory_mb", 512)]
    assert trait_filters(()) is None
