"""The query API: StackTach Quincy's v1 routes (so klugman and other clients keep working),
and Winchester's own beside them (triggers, explain, archive).

Bodies are what Quincy answered: lists of flat events (every trait a key,
datetimes as ``{"__type__": "datetime", "datetime": "<ISO 8601>"}``,
``_mark`` for paging), lists of streams (``distinguishing_traits`` time
ranges as ``{"__type__": "timex.TimeRange", "begin": ..., "end": ...}``),
and ``[{"count": N}]`` for counts. Unlike Quincy, a bad parameter answers
400 naming it, an unknown id 404, and a stream a worker is running 409.
"""

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import JSONResponse
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import SQLAlchemyError

from winchester.api._queries import event_query_from, stream_query_from
from winchester.api._params import (
    BadParameter,
    given,
    mark_of,
    parse_bound,
    parse_flag,
    parse_limit,
    parse_mark,
)
from winchester.events import Event, encode_value
from winchester.services.explain import NotFound, explain_event, explain_stream, trigger_definition
from winchester.store import STREAM_STATES, EventQuery, Store, StoreError, StreamQuery
from winchester.timex import TimeRange

# Events shown per stream with details on a stream list.
DETAIL_EVENTS = 1000
STREAM_ID = Path(ge=1, le=2**63 - 1, description="A stream's id.")
MESSAGE_ID = Path(max_length=255, description="An event's message_id.")
E_FROM_DATETIME = Query(description="Events generated after this (ISO 8601, UTC).")
E_TO_DATETIME = Query(description="Events generated at or before this.")
E_EVENT_NAME = Query(description="Only this event type.")
E_TRAITS = Query(description=("name:value;name:value (values typed as int:, float:, "
                              "datetime:, string:; text by default)."))
E_MARK = Query(description="The _mark of the last event seen; + before it pages oldest first.")
E_LIMIT = Query(description="Events per page (default 200, at most 10000).")
A_FROM_DATETIME = Query(description="Notifications stamped at or after this (ISO 8601, UTC).")
A_TO_DATETIME = Query(description="Notifications stamped before this.")
A_EVENT_NAME = Query(description="Only notifications of this event type.")
S_OLDER_THAN = Query(description="Streams whose first event is before this.")
S_YOUNGER_THAN = Query(description="Streams whose last event is after this.")
S_STATE = Query(description=f"One of {', '.join(STREAM_STATES)}.")
S_TRIGGER_NAME = Query(description="Only this trigger's streams.")
S_NAME = Query(description="Alias of trigger_name (what klugman sends).")
S_DISTINGUISHING_TRAITS = Query(description=(
    "name:value;name:value, typed as for events' traits; a datetime also finds the time range "
    "that begins then."))
S_DETAILS = Query(description="true: include each stream's events.")
S_MARK = Query(description="The _mark of the last stream seen; + pages oldest first.")
S_LIMIT = Query(description="Streams per page (default 200, at most 10000).")


# The answers other than 200 (and FastAPI's 422 for a path that is not an id), as documented.
_MEANINGS = {
    400: "A parameter is bad; the detail names it.",
    401: "A token is needed (writes, when tokens are configured; reads too with protect_reads).",
    404: "No such stream or event.",
    409: "The stream is not in a state that allows this.",
    503: "The database cannot be reached.",
}
_ERROR_BODY = {"application/json": {"schema": {
    "type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}}}
# What a 200 holds (tests/test_openapi_fuzz.py checks real answers against these).
_DATETIME = {"type": "object", "required": ["__type__", "datetime"],
             "properties": {"__type__": {"const": "datetime"}, "datetime": {"type": "string"}}}
_EVENT = {"type": "object", "required": ["message_id", "event_type", "timestamp"],
          "properties": {"message_id": {"type": "string"}, "event_type": {"type": "string"},
                         "timestamp": _DATETIME, "_mark": {"type": "string"}}}
_STREAM = {"type": "object", "required": [
    "id", "name", "state", "first_event", "last_event", "expire_timestamp",
    "distinguishing_traits", "event_count", "fire_counts", "accepting_events"],
    "properties": {
        "id": {"type": "integer"}, "name": {"type": "string"},
        "state": {"enum": list(STREAM_STATES)}, "first_event": _DATETIME,
        "last_event": _DATETIME, "expire_timestamp": _DATETIME,
        "fire_timestamp": {"anyOf": [_DATETIME, {"type": "null"}]},
        "distinguishing_traits": {"type": "object"}, "event_count": {"type": "integer"},
        "fire_counts": {"type": "array", "items": {"type": "integer"}},
        "accepting_events": {"type": "boolean"}, "error": {"type": ["string", "null"]},
        "_mark": {"type": "string"}, "events": {"type": "array", "items": _EVENT}}}
_ONE_STREAM = {"type": "array", "minItems": 1, "maxItems": 1, "items": _STREAM}
_COUNT = {"type": "array", "minItems": 1, "maxItems": 1, "items": {
    "type": "object", "required": ["count"],
    "properties": {"count": {"type": "integer", "minimum": 0}}}}
_OBJECT = {"type": "object"}


def _list_of(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": item}


def _responses(*codes: int, ok: dict[str, Any] | None = None) -> dict[int | str, dict[str, Any]]:
    answers: dict[int | str, dict[str, Any]] = {
        code: {"description": _MEANINGS[code], "content": _ERROR_BODY}
        for code in sorted({401, 503, *codes})}
    if ok is not None:
        answers[200] = {"content": {"application/json": {"schema": ok}}}
    return answers


class JSON(JSONResponse):
    """orjson-rendered JSON (a JSONResponse, so the OpenAPI document says JSON)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def event_body(event: Event, row_id: int | None = None, ascending: bool = False) -> dict[str, Any]:
    body = {key: encode_value(value) for key, value in event.items()}
    if row_id is not None:
        body["_mark"] = mark_of(row_id, ascending)
    return body


def _distinguishing_body(value: Any) -> Any:
    if isinstance(value, TimeRange):
        return {"__type__": "timex.TimeRange", "begin": _iso(value.begin), "end": _iso(value.end)}
    return encode_value(value)


def stream_body(stream: Any, ascending: bool = False, events: list[Event] | None = None,
                mark: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": stream.id, "name": stream.trigger_name, "state": stream.state,
        "first_event": encode_value(stream.first_event), "last_event": encode_value(stream.last_event),
        "fire_timestamp": encode_value(stream.fire_timestamp) if stream.fire_timestamp else None,
        "expire_timestamp": encode_value(stream.expire_timestamp),
        "distinguishing_traits": {name: _distinguishing_body(value)
                                  for name, value in stream.distinguishing_traits.items()},
        "event_count": stream.event_count, "fire_counts": list(stream.fire_counts),
        "accepting_events": stream.is_open,
    }
    if stream.state.endswith("error"):
        body["error"] = stream.last_error
    if mark:
        body["_mark"] = mark_of(stream.id, ascending)
    if events is not None:
        body["events"] = [event_body(event) for event in events]
    return body


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="microseconds")


def _bad(exc: BadParameter) -> HTTPException:
    return HTTPException(400, str(exc))


def _unavailable(exc: Exception) -> HTTPException:
    return HTTPException(503, f"the database is unavailable: {exc}")


def build_router(store: Store, triggers: Any, *, read_guard: Callable[..., None],
                 write_guard: Callable[..., None], now: Callable[[], datetime],
                 counters: Callable[[], Mapping[str, Mapping[str, int]]] | None = None) -> APIRouter:
    router = APIRouter()
    reads = [Depends(read_guard)]
    writes = [Depends(write_guard)]

    async def call(function: Callable[..., Any], *args: Any) -> Any:
        try:
            return await run_in_threadpool(function, *args)
        except BadParameter as exc:
            raise _bad(exc) from None
        except (StoreError, SQLAlchemyError) as exc:
            raise _unavailable(exc) from None

    # -- events ------------------------------------------------------------------------------

    def event_query(from_datetime: str | None, to_datetime: str | None, event_name: str | None,
                    traits: str | None, mark: str | None, limit: str | None) -> EventQuery:
        return event_query_from({"from_datetime": from_datetime, "to_datetime": to_datetime,
                                 "event_name": event_name, "traits": traits, "mark": mark,
                                 "limit": limit})

    @router.get("/v1/events", tags=["events"], dependencies=reads, response_class=JSON,
                responses=_responses(400, ok=_list_of(_EVENT)))
    async def list_events(from_datetime: Annotated[str | None, E_FROM_DATETIME] = None,
                          to_datetime: Annotated[str | None, E_TO_DATETIME] = None,
                          event_name: Annotated[str | None, E_EVENT_NAME] = None,
                          traits: Annotated[str | None, E_TRAITS] = None,
                          mark: Annotated[str | None, E_MARK] = None,
                          limit: Annotated[str | None, E_LIMIT] = None) -> JSON:
        """Events, newest first (Quincy v1): flat objects with `_mark` for paging."""
        def run() -> list[dict[str, Any]]:
            query = event_query(from_datetime, to_datetime, event_name, traits, mark, limit)
            return [event_body(found.event, found.id, query.ascending)
                    for found in store.query_events(query)]
        return JSON(await call(run))

    @router.get("/v1/events/count", tags=["events"], dependencies=reads, response_class=JSON,
                responses=_responses(400, ok=_COUNT))
    async def count_events(from_datetime: Annotated[str | None, E_FROM_DATETIME] = None,
                           to_datetime: Annotated[str | None, E_TO_DATETIME] = None,
                           event_name: Annotated[str | None, E_EVENT_NAME] = None,
                           traits: Annotated[str | None, E_TRAITS] = None,
                           mark: Annotated[str | None, E_MARK] = None) -> JSON:
        """How many events match (the same filters as the list): `[{"count": N}]`."""
        def run() -> list[dict[str, int]]:
            query = event_query(from_datetime, to_datetime, event_name, traits, mark, None)
            return [{"count": store.count_events_matching(query)}]
        return JSON(await call(run))

    # ':path': message ids may hold '/'. Explain is routed first, or the event route
    # would take '<id>/explain' for an id.
    @router.get("/v1/events/{message_id:path}/explain", tags=["explain"], dependencies=reads,
                response_class=JSON, responses=_responses(404, ok=_OBJECT))
    async def explain_an_event(message_id: Annotated[str, MESSAGE_ID]) -> JSON:
        """Which triggers the event matched (and which stream it joined), and why not the others."""
        if "\x00" in message_id:
            raise HTTPException(404, f"no event with message_id {message_id!r} is stored")
        try:
            return JSON(await call(explain_event, store, triggers, message_id))
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None

    @router.get("/v1/events/{message_id:path}", tags=["events"], dependencies=reads, response_class=JSON,
                responses=_responses(404, ok=_EVENT))
    async def get_event(message_id: Annotated[str, MESSAGE_ID]) -> JSON:
        """One event, by message_id."""
        found = None if "\x00" in message_id else await call(store.event_by_message_id, message_id)
        if found is None:
            raise HTTPException(404, f"no event with message_id {message_id!r}")
        return JSON(event_body(found.event))

    # -- streams -----------------------------------------------------------------------------

    def stream_query(older_than: str | None, younger_than: str | None, state: str | None,
                     trigger_name: str | None, distinguishing_traits: str | None, mark: str | None,
                     limit: str | None) -> StreamQuery:
        return stream_query_from({"older_than": older_than, "younger_than": younger_than,
                                  "state": state, "trigger_name": trigger_name,
                                  "distinguishing_traits": distinguishing_traits, "mark": mark,
                                  "limit": limit})

    @router.get("/v1/streams", tags=["streams"], dependencies=reads, response_class=JSON,
                responses=_responses(400, ok=_list_of(_STREAM)))
    async def list_streams(older_than: Annotated[str | None, S_OLDER_THAN] = None,
                           younger_than: Annotated[str | None, S_YOUNGER_THAN] = None,
                           state: Annotated[str | None, S_STATE] = None,
                           trigger_name: Annotated[str | None, S_TRIGGER_NAME] = None,
                           name: Annotated[str | None, S_NAME] = None,
                           distinguishing_traits: Annotated[
                               str | None, S_DISTINGUISHING_TRAITS] = None,
                           details: Annotated[str | None, S_DETAILS] = None,
                           mark: Annotated[str | None, S_MARK] = None,
                           limit: Annotated[str | None, S_LIMIT] = None) -> JSON:
        """Streams, newest first (Quincy v1), with `_mark` for paging."""
        def run() -> list[dict[str, Any]]:
            query = stream_query(older_than, younger_than, state, given(trigger_name) or name,
                                 distinguishing_traits, mark, limit)
            with_events = parse_flag("details", details)
            found = store.query_streams(query)
            events = store.load_stream_events([s.id for s in found]) if with_events else {}
            return [stream_body(s, query.ascending,
                                events.get(s.id, [])[:DETAIL_EVENTS] if with_events else None)
                    for s in found]
        return JSON(await call(run))

    @router.get("/v1/streams/count", tags=["streams"], dependencies=reads, response_class=JSON,
                responses=_responses(400, ok=_COUNT))
    async def count_streams(older_than: Annotated[str | None, S_OLDER_THAN] = None,
                            younger_than: Annotated[str | None, S_YOUNGER_THAN] = None,
                            state: Annotated[str | None, S_STATE] = None,
                            trigger_name: Annotated[str | None, S_TRIGGER_NAME] = None,
                            name: Annotated[str | None, S_NAME] = None,
                            distinguishing_traits: Annotated[
                                str | None, S_DISTINGUISHING_TRAITS] = None,
                            mark: Annotated[str | None, S_MARK] = None) -> JSON:
        """How many streams match: `[{"count": N}]`."""
        def run() -> list[dict[str, int]]:
            query = stream_query(older_than, younger_than, state, given(trigger_name) or name,
                                 distinguishing_traits, mark, None)
            return [{"count": store.count_streams_matching(query)}]
        return JSON(await call(run))

    @router.get("/v1/streams/{stream_id}", tags=["streams"], dependencies=reads,
                response_class=JSON,
                responses=_responses(400, 404, ok=_ONE_STREAM))
    async def get_stream(stream_id: Annotated[int, STREAM_ID],
                         details: Annotated[str | None, S_DETAILS] = None) -> JSON:
        """One stream, as a one-element list (as Quincy answered); with details, its events."""
        def run() -> list[dict[str, Any]] | None:
            stream = store.get_stream(stream_id)
            if stream is None:
                return None
            events = store.stream_events(stream_id) if parse_flag("details", details) else None
            return [stream_body(stream, events=events, mark=False)]
        found = await call(run)
        if found is None:
            raise HTTPException(404, f"stream {stream_id} does not exist")
        return JSON(found)

    @router.delete("/v1/streams/{stream_id}", tags=["streams"], dependencies=writes,
                   response_class=JSON, responses=_responses(404, 409, ok=_OBJECT))
    async def delete_stream(stream_id: Annotated[int, STREAM_ID]) -> JSON:
        """Delete a stream (its events stay). Refused (409) while a worker runs its pipeline."""
        problem = await call(store.delete_stream, stream_id)
        if problem == "missing":
            raise HTTPException(404, f"stream {stream_id} does not exist")
        if problem == "running":
            raise HTTPException(409, f"stream {stream_id} is being fired or expired by a worker; "
                                     "delete it once that is done")
        return JSON({"id": stream_id, "deleted": True})

    @router.put("/v1/streams/{stream_id}", tags=["streams"], dependencies=writes,
                response_class=JSON, responses=_responses(404, 409, ok=_OBJECT))
    async def reset_stream(stream_id: Annotated[int, STREAM_ID]) -> JSON:
        """Reset a failed stream for a retry: error -> retry_fire, expire_error -> retry_expire."""
        def run() -> tuple[Any, dict[int, str]]:
            stream = store.get_stream(stream_id)
            if stream is None:
                return None, {}
            return stream, store.reset_streams([stream_id], now(), actor="api")
        stream, moved = await call(run)
        if stream is None:
            raise HTTPException(404, f"stream {stream_id} does not exist")
        if stream_id not in moved:
            raise HTTPException(409, f"stream {stream_id} is {stream.state}, not in error: there "
                                     "is nothing to retry")
        return JSON({"id": stream_id, "state": moved[stream_id]})

    @router.get("/v1/streams/{stream_id}/explain", tags=["explain"], dependencies=reads,
                response_class=JSON, responses=_responses(404, ok=_OBJECT))
    async def explain_a_stream(stream_id: Annotated[int, STREAM_ID]) -> JSON:
        """Why the stream is where it is: history, expiry, each fire criterion's progress and the
        closest events that did not count, with the condition each failed."""
        try:
            return JSON(await call(explain_stream, store, triggers, stream_id, now()))
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None

    # -- triggers and the archive -------------------------------------------------------------

    @router.get("/v1/triggers", tags=["triggers"], dependencies=reads, response_class=JSON,
                responses=_responses(ok=_list_of(_OBJECT)))
    async def list_triggers() -> JSON:
        """Every trigger's definition, with its streams by state, what every process recorded
        for it in the last hour (`last_hour`: streams_created, fired, expired, errors) and this
        server's own ingest counters since it started (`counters`)."""
        def run() -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
            recent: dict[str, dict[str, int]] = {}
            since = store.wall_clock.now() - timedelta(hours=1)
            for _minute, kind, trigger_name, count in store.activity_since(since):
                if trigger_name:
                    entry = recent.setdefault(trigger_name, {})
                    entry[kind] = entry.get(kind, 0) + int(count)
            return store.count_streams_by_trigger_and_state(), recent
        by_state, recent = await call(run)
        live = counters() if counters is not None else {}
        return JSON([{**trigger_definition(trigger),
                      "streams": by_state.get(trigger.name, {}),
                      "last_hour": {kind: recent.get(trigger.name, {}).get(kind, 0)
                                    for kind in ("streams_created", "fired", "expired", "errors")},
                      "counters": dict(live.get(trigger.name, {}))}
                     for trigger in triggers])

    @router.get("/v1/archive", tags=["archive"], dependencies=reads, response_class=JSON,
                responses=_responses(400, ok=_list_of(_OBJECT)))
    async def list_archive(from_datetime: Annotated[str | None, A_FROM_DATETIME] = None,
                           to_datetime: Annotated[str | None, A_TO_DATETIME] = None,
                           event_name: Annotated[str | None, A_EVENT_NAME] = None,
                           mark: Annotated[str | None, Query(
                               description="The _mark of the last notification seen (arrival order).")] = None,
                           limit: Annotated[str | None, E_LIMIT] = None) -> JSON:
        """The persistor's raw notifications in arrival order, oldest first, paged by `_mark`.

        Its time bounds are those of `winchester archive` and replay: from_datetime included,
        to_datetime excluded (the events' are the other way round, as in Quincy).
        """
        def run() -> list[dict[str, Any]]:
            position = parse_mark(mark.lstrip("+") if mark else None)
            name = given(event_name)
            if name is not None and (len(name) > 255 or "\x00" in name):
                raise BadParameter("event_name", "is not an event type")
            rows = store.archive_page(parse_bound("from_datetime", from_datetime),
                                      parse_bound("to_datetime", to_datetime), name,
                                      position.id or 0, parse_limit(limit))
            return [_archive_body(row) for row in rows]
        return JSON(await call(run))

    return router


def _archive_body(row: Any) -> dict[str, Any]:
    try:
        notification: Any = orjson.loads(row.body)
    except orjson.JSONDecodeError:
        notification = row.body.decode("utf-8", "replace")
    return {"id": row.id, "_mark": mark_of(row.id, True), "received_at": _iso(row.received_at),
            "message_id": row.message_id, "event_type": row.event_type,
            "publisher_id": row.publisher_id,
            "generated": _iso(row.generated) if row.generated else None, "status": row.status,
            "reason": row.reason, "notification": notification}
