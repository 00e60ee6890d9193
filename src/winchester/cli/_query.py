"""The query CLI's two back ends: the database itself, or a remote API.

Both answer with the API's JSON documents (Quincy v1 shapes), built by the
same code, so ``--json`` output is the same whichever back end answered and
the tables are drawn from one format. Parameters are passed as the API's
query-string names and values and parsed by the API's own parsers.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click
import orjson
from rich.console import Console

from winchester.api._params import BadParameter, parse_flag
from winchester.api._queries import event_query_from, stream_query_from

TOKEN_ENV = "WINCHESTER_API_TOKEN"
# Events shown per stream when a list asks for details.
DETAIL_EVENTS = 1000


class QueryFailed(Exception):
    """A query the back end refused or could not answer; ``exit_code`` for the CLI."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class LocalQueries:
    """Queries run on the database named by winchester.yaml."""

    def __init__(self, store: Any, triggers: Any, now: Callable[[], datetime]):
        self.store, self.triggers, self.now = store, triggers, now

    def close(self) -> None:
        self.store.close()

    def events(self, params: Mapping[str, str | None]) -> list[dict[str, Any]]:
        from winchester.api._v1 import event_body

        query = self._parsed(event_query_from, params)
        return [event_body(found.event, found.id, query.ascending)
                for found in self.store.query_events(query)]

    def count_events(self, params: Mapping[str, str | None]) -> int:
        return self.store.count_events_matching(self._parsed(event_query_from, params, paged=False))

    def event(self, message_id: str) -> dict[str, Any]:
        from winchester.api._v1 import event_body

        found = self.store.event_by_message_id(message_id)
        if found is None:
            raise QueryFailed(f"no event with message_id {message_id!r}")
        return event_body(found.event)

    def streams(self, params: Mapping[str, str | None]) -> list[dict[str, Any]]:
        from winchester.api._v1 import stream_body

        query = self._parsed(stream_query_from, params)
        details = parse_flag("details", params.get("details"))
        found = self.store.query_streams(query)
        events = self.store.load_stream_events([s.id for s in found]) if details else {}
        return [stream_body(s, query.ascending, events.get(s.id, [])[:DETAIL_EVENTS] if details else None)
                for s in found]

    def count_streams(self, params: Mapping[str, str | None]) -> int:
        return self.store.count_streams_matching(self._parsed(stream_query_from, params, paged=False))

    def stream(self, stream_id: int, details: bool) -> dict[str, Any]:
        from winchester.api._v1 import stream_body

        stream = self.store.get_stream(stream_id)
        if stream is None:
            raise QueryFailed(f"stream {stream_id} does not exist")
        events = self.store.stream_events(stream_id) if details else None
        return stream_body(stream, events=events, mark=False)

    def delete_stream(self, stream_id: int) -> None:
        problem = self.store.delete_stream(stream_id)
        if problem == "missing":
            raise QueryFailed(f"stream {stream_id} does not exist")
        if problem == "running":
            raise QueryFailed(f"stream {stream_id} is being fired or expired by a worker; delete it "
                              "once that is done")

    def reset_streams(self, stream_ids: list[int] | None) -> tuple[dict[int, str], dict[int, str | None]]:
        """(moved: id -> new state, skipped: id -> its state or None when unknown)."""
        moved = self.store.reset_streams(stream_ids, self.now(), actor="cli")
        skipped: dict[int, str | None] = {}
        for stream_id in stream_ids or ():
            if stream_id not in moved:
                record = self.store.get_stream(stream_id)
                skipped[stream_id] = record.state if record else None
        return moved, skipped

    def explain_stream(self, stream_id: int) -> dict[str, Any]:
        from winchester.services.explain import NotFound, explain_stream

        try:
            return explain_stream(self.store, self.triggers, stream_id, self.now())
        except NotFound as exc:
            raise QueryFailed(str(exc)) from None

    def explain_event(self, message_id: str) -> dict[str, Any]:
        from winchester.services.explain import NotFound, explain_event

        try:
            return explain_event(self.store, self.triggers, message_id)
        except NotFound as exc:
            raise QueryFailed(str(exc)) from None

    def counts_by_state(self) -> dict[str, int]:
        return self.store.count_streams_by_state()

    @staticmethod
    def _parsed(build: Callable[..., Any], params: Mapping[str, str | None], **options: Any) -> Any:
        try:
            return build(params, **options)
        except BadParameter as exc:
            raise QueryFailed(str(exc), exit_code=2) from None


class RemoteQueries:
    """Queries sent to a Winchester API (``--url``)."""

    def __init__(self, url: str, token: str | None):
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=60.0)

    def close(self) -> None:
        self.client.close()

    def events(self, params: Mapping[str, str | None]) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/events", params)

    def count_events(self, params: Mapping[str, str | None]) -> int:
        return self._call("GET", "/v1/events/count", params)[0]["count"]

    def event(self, message_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/events/{_segment(message_id)}")

    def streams(self, params: Mapping[str, str | None]) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/streams", params)

    def count_streams(self, params: Mapping[str, str | None]) -> int:
        return self._call("GET", "/v1/streams/count", params)[0]["count"]

    def stream(self, stream_id: int, details: bool) -> dict[str, Any]:
        return self._call("GET", f"/v1/streams/{stream_id}",
                          {"details": "true" if details else None})[0]

    def delete_stream(self, stream_id: int) -> None:
        self._call("DELETE", f"/v1/streams/{stream_id}")

    def reset_streams(self, stream_ids: list[int] | None) -> tuple[dict[int, str], dict[int, str | None]]:
        if stream_ids is None:
            stream_ids = [stream["id"] for state in ("error", "expire_error")
                          for stream in self._all_streams({"state": state})]
            skipped_too = False
        else:
            skipped_too = True
        moved: dict[int, str] = {}
        skipped: dict[int, str | None] = {}
        for stream_id in stream_ids:
            try:
                moved[stream_id] = self._call("PUT", f"/v1/streams/{stream_id}")["state"]
            except QueryFailed as exc:
                if exc.exit_code == 2:  # unauthorised, unreachable: the rest would fail the same way
                    raise
                if skipped_too:
                    skipped[stream_id] = self._state_of(stream_id)
        return moved, skipped

    def explain_stream(self, stream_id: int) -> dict[str, Any]:
        return self._call("GET", f"/v1/streams/{stream_id}/explain")

    def explain_event(self, message_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/events/{_segment(message_id)}/explain")

    def counts_by_state(self) -> dict[str, int]:
        # Per state, not summed from /v1/triggers: that lists only the triggers still
        # defined, and streams of a removed trigger count too (as they do locally).
        from winchester.store import STREAM_STATES

        totals: dict[str, int] = {}
        for state in STREAM_STATES:
            [answer] = self._call("GET", "/v1/streams/count", {"state": state})
            if answer["count"]:
                totals[state] = answer["count"]
        return totals

    def _state_of(self, stream_id: int) -> str | None:
        try:
            return self.stream(stream_id, False)["state"]
        except QueryFailed:
            return None

    def _all_streams(self, params: dict[str, str | None]) -> Iterator[dict[str, Any]]:
        mark: str | None = "+"
        while True:
            page = self.streams({**params, "mark": mark, "limit": "1000"})
            yield from page
            if len(page) < 1000:
                return
            mark = page[-1]["_mark"]

    def _call(self, method: str, path: str, params: Mapping[str, str | None] | None = None) -> Any:
        import httpx

        query = {key: value for key, value in (params or {}).items() if value is not None}
        try:
            response = self.client.request(method, path, params=query)
        except httpx.HTTPError as exc:
            raise QueryFailed(f"cannot reach the API at {self.url}: {exc}", exit_code=2) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            if not isinstance(detail, str):
                detail = orjson.dumps(detail).decode()
            if response.status_code == 401:
                raise QueryFailed(f"{self.url} refused the request (401): {detail}; pass --token or set "
                                  f"{TOKEN_ENV}", exit_code=2)
            raise QueryFailed(f"{response.status_code}: {detail}",
                              exit_code=2 if response.status_code in (400, 422) else 1)
        return response.json()


def _segment(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def remote_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--token", envvar=TOKEN_ENV, show_envvar=True,
                           help="API token for --url (a Bearer token from api.tokens).")(command)
    command = click.option("--url", metavar="URL",
                           help="Ask this Winchester API (e.g. http://host:8000) instead of the "
                                "database in winchester.yaml.")(command)
    return command


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON document (the API's shapes; see the README).")


@contextmanager
def queries(config_file: str, url: str | None, token: str | None,
            options: Mapping[str, str] | None = None) -> Iterator[Any]:
    """The back end to ask; failures print their reason and exit (2: usage or unreachable).

    ``options`` maps API parameter names to the command's options, so a bad
    value is reported under the option the user typed.
    """
    err = Console(stderr=True, highlight=False)
    if url:
        backend: Any = RemoteQueries(url, token)
    else:
        from winchester.cli._setup import open_parts
        from winchester.clock import clock_from_settings

        parts = open_parts(config_file, err)
        clock = clock_from_settings(parts.settings, parts.store)

        def now() -> datetime:
            clock.refresh()
            return clock.now()

        backend = LocalQueries(parts.store, parts.triggers, now)
    try:
        yield backend
    except QueryFailed as exc:
        err.print(f"error: {_renamed(str(exc), options or {})}", markup=False)
        sys.exit(exc.exit_code)
    finally:
        backend.close()


def _renamed(message: str, options: Mapping[str, str]) -> str:
    found = re.match(r"(?:4\d\d: )?([a-z_]+)(:| \()", message)
    if found and found.group(1) in options:
        return f"{options[found.group(1)]} ({found.group(1)}){message[found.end(1):]}"
    return message


def print_json(document: Any) -> None:
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")


def plain(value: Any) -> str:
    """A JSON trait value for a table cell."""
    if isinstance(value, dict):
        if value.get("__type__") == "datetime":
            return value["datetime"].replace("T", " ")
        if value.get("__type__") == "timex.TimeRange" or set(value) == {"begin", "end"}:
            return f"{_compact(value['begin'])} .. {_compact(value['end'])}"
    if value is None:
        return ""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _compact(iso: str) -> str:
    text = iso.replace("T", " ")
    return text[:-7] if text.endswith(".000000") else text


def short_time(value: Any) -> str:
    text = plain(value)
    return text.replace("T", " ")[:19]


# The keys every event has; the rest are its traits.
EVENT_CORE = ("message_id", "event_type", "timestamp", "_mark")

paging_options = [
    click.option("--mark", help="Page on from this _mark (the last one shown); +MARK pages oldest first."),
    click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True),
]


def with_options(options: list[Callable[..., Any]]) -> Callable[..., Any]:
    """Apply click options in the order listed (as --help shows them)."""
    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command
    return apply


def output_console() -> Console:
    # Data is printed as text, never read as rich markup (a trait may hold "[red]").
    return Console(highlight=False, soft_wrap=True, markup=False)


def events_table(title: str, events: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("generated", "event type", "message_id", "traits"):
        table.add_column(column, overflow="fold")
    for event in events:
        table.add_row(short_time(event["timestamp"]), event["event_type"], event["message_id"],
                      ", ".join(f"{key}={plain(value)}" for key, value in event.items()
                                if key not in EVENT_CORE))
    return table


def print_next_page(console: Console, found: list[dict[str, Any]], limit: int, mark: str | None) -> None:
    """A full page ends with how to ask for the next one (the same direction)."""
    if len(found) == limit:
        sign = "+" if (mark or "").startswith("+") else ""
        console.print(f"more: --mark {sign}{found[-1]['_mark'].lstrip('+')}")

