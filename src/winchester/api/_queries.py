"""Quincy's query parameters (strings, as they arrive) -> store queries.

Shared by the API routes, the dashboard and the query CLI, so the three take
exactly the same filters and refuse bad ones with the same messages.
"""

from __future__ import annotations

from collections.abc import Mapping

from winchester.api._params import BadParameter, parse_datetime, parse_limit, parse_mark, parse_traits
from winchester.store import STREAM_STATES, EventQuery, StreamQuery

Params = Mapping[str, str | None]

EVENT_PARAMETERS = ("from_datetime", "to_datetime", "event_name", "traits", "mark", "limit")
STREAM_PARAMETERS = ("older_than", "younger_than", "state", "trigger_name", "name",
                     "distinguishing_traits", "mark", "limit")


def _name(parameter: str, value: str | None, what: str) -> str | None:
    if value is not None and (len(value) > 255 or "\x00" in value):
        raise BadParameter(parameter, f"is not {what}")
    return value or None


def event_query_from(params: Params, *, paged: bool = True) -> EventQuery:
    """``paged=False`` (counts) ignores ``limit``."""
    position = parse_mark(params.get("mark"))
    return EventQuery(since=parse_datetime("from_datetime", params.get("from_datetime")),
                      until=parse_datetime("to_datetime", params.get("to_datetime")),
                      event_type=_name("event_name", params.get("event_name"), "an event type"),
                      traits=parse_traits("traits", params.get("traits")),
                      mark=position.id, ascending=position.ascending,
                      limit=parse_limit(params.get("limit")) if paged else None)


def stream_query_from(params: Params, *, paged: bool = True) -> StreamQuery:
    """``name`` is accepted for ``trigger_name`` (klugman sends it)."""
    state = params.get("state")
    if state is not None and state.strip().lower() not in STREAM_STATES:
        raise BadParameter("state", f"{state!r} is not one of {', '.join(STREAM_STATES)}")
    trigger_name = _name("trigger_name", params.get("trigger_name"), "a trigger name") or _name(
        "name", params.get("name"), "a trigger name")
    position = parse_mark(params.get("mark"))
    return StreamQuery(
        older_than=parse_datetime("older_than", params.get("older_than")),
        younger_than=parse_datetime("younger_than", params.get("younger_than")),
        state=state.strip().lower() if state else None, trigger_name=trigger_name,
        distinguishing=parse_traits("distinguishing_traits", params.get("distinguishing_traits")),
        mark=position.id, ascending=position.ascending,
        limit=parse_limit(params.get("limit")) if paged else None)


__all__ = ["EVENT_PARAMETERS", "STREAM_PARAMETERS", "event_query_from", "stream_query_from"]
