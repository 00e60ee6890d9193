"""Quincy's query parameters (strings, as they arrive) -> store queries.

Shared by the API routes, the dashboard and the query CLI, so the three take
exactly the same filters and refuse bad ones with the same messages.
"""

from __future__ import annotations

from collections.abc import Mapping

from winchester.api._params import (
    DEFAULT_LIMIT,
    BadParameter,
    given,
    parse_bound,
    parse_limit,
    parse_mark,
    parse_traits,
)
from winchester.store import STREAM_STATES, EventQuery, StreamQuery

Params = Mapping[str, str | None]

EVENT_PARAMETERS = ("from_datetime", "to_datetime", "event_name", "traits", "mark", "limit")
STREAM_PARAMETERS = ("older_than", "younger_than", "state", "trigger_name", "name",
                     "distinguishing_traits", "mark", "limit")


def _name(parameter: str, value: str | None, what: str) -> str | None:
    value = given(value)
    if value is not None and (len(value) > 255 or "\x00" in value):
        raise BadParameter(parameter, f"is not {what}")
    return value


def _limit(params: Params, paged: bool, default_limit: int) -> int | None:
    if not paged:
        return None
    text = params.get("limit")
    return parse_limit(text) if text is not None and text.strip() else default_limit


def event_query_from(params: Params, *, paged: bool = True,
                     default_limit: int = DEFAULT_LIMIT) -> EventQuery:
    """``paged=False`` (counts) ignores ``limit``. A blank parameter is no filter."""
    position = parse_mark(params.get("mark"))
    return EventQuery(since=parse_bound("from_datetime", params.get("from_datetime")),
                      until=parse_bound("to_datetime", params.get("to_datetime")),
                      event_type=_name("event_name", params.get("event_name"), "an event type"),
                      traits=parse_traits("traits", params.get("traits")),
                      mark=position.id, ascending=position.ascending,
                      limit=_limit(params, paged, default_limit))


def stream_query_from(params: Params, *, paged: bool = True,
                      default_limit: int = DEFAULT_LIMIT) -> StreamQuery:
    """``name`` is accepted for ``trigger_name`` (klugman sends it)."""
    state = params.get("state")
    state = state.strip().lower() if state and state.strip() else None
    if state is not None and state not in STREAM_STATES:
        raise BadParameter("state", f"{state!r} is not one of {', '.join(STREAM_STATES)}")
    trigger_name = _name("trigger_name", params.get("trigger_name"), "a trigger name") or _name(
        "name", params.get("name"), "a trigger name")
    position = parse_mark(params.get("mark"))
    return StreamQuery(
        older_than=parse_bound("older_than", params.get("older_than")),
        younger_than=parse_bound("younger_than", params.get("younger_than")),
        state=state, trigger_name=trigger_name,
        distinguishing=parse_traits("distinguishing_traits", params.get("distinguishing_traits")),
        mark=position.id, ascending=position.ascending,
        limit=_limit(params, paged, default_limit))


__all__ = ["EVENT_PARAMETERS", "STREAM_PARAMETERS", "event_query_from", "stream_query_from"]
