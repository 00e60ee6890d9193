"""Queries for the API, the query CLI and explain: events and streams by filters, paged.

Paging follows StackTach's Quincy: results are ordered by database id,
newest first; a *mark* is the id of the last row seen, and ``ascending``
turns the order around (oldest first, after the mark). Every value reaches
the database as a bound parameter.

Trait filters on events use the typed, indexed ``event_traits`` table for
the traits it holds (``indexed_traits`` and every distinguishing trait); any
other trait is compared inside the event's JSON document, which works on
every database but reads every event the other filters leave. A trait
indexed after events were stored is looked up both ways: typed rows for the
events since, the JSON of the events before (see ``Store.index_coverage``).
Distinguishing-trait filters on streams compare the stream's canonical key
(a text search narrowed by the other filters), then check the decoded
traits exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from json.encoder import encode_basestring_ascii as _quote

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from winchester.events import Event
from winchester.store._schema import (
    STREAM_STATES,
    event_traits,
    event_types,
    events,
    stream_events,
    stream_history,
    streams,
)
from winchester.store._work import _delete_dependents, event_from_columns
from winchester.timex import TimeRange
from winchester.triggers._keys import typed_text

# Rows read per round when a filter is checked after the query (distinguishing traits).
_PAGE = 500


@dataclass(frozen=True)
class TraitFilter:
    """``name`` equals ``value`` (str, int, float or datetime; the type must match too)."""

    name: str
    value: Any


@dataclass(frozen=True)
class EventQuery:
    since: datetime | None = None        # generated > since
    until: datetime | None = None        # generated <= until
    event_type: str | None = None
    traits: tuple[TraitFilter, ...] = ()
    mark: int | None = None              # the id of the last event seen
    ascending: bool = False
    limit: int | None = 200


@dataclass(frozen=True)
class StreamQuery:
    older_than: datetime | None = None    # first_event < older_than
    younger_than: datetime | None = None  # last_event > younger_than
    state: str | None = None
    trigger_name: str | None = None
    distinguishing: tuple[TraitFilter, ...] = ()
    mark: int | None = None
    ascending: bool = False
    limit: int | None = 200


@dataclass(frozen=True)
class FoundEvent:
    id: int
    event: Event


@dataclass(frozen=True)
class HistoryEntry:
    at: datetime
    state: str
    previous_state: str | None
    actor: str | None
    detail: str | None


class QueryStore:
    """The query side of :class:`winchester.store.Store` (mixed into it)."""

    engine: Any
    indexed_traits: frozenset[str]
    _postgresql: bool
    # Indexed trait name -> the newest event id that may lack its typed row (the
    # name was indexed later); names indexed from the start are not in it.
    _unindexed_through: dict[str, int]
    _coverage_for_queries: Callable[[], None]

    # -- events ----------------------------------------------------------------------------

    def query_events(self, query: EventQuery) -> list[FoundEvent]:
        statement = (sa.select(events.c.id, events.c.message_id, event_types.c.name,
                               events.c.generated, events.c.traits)
                     .join(event_types, events.c.event_type_id == event_types.c.id)
                     .where(*self._event_conditions(query)))
        statement = _paged(statement, events.c.id, query.mark, query.ascending, query.limit)
        with self._reading() as connection:
            return [FoundEvent(row[0], event_from_columns(*row[1:]))
                    for row in connection.execute(statement)]

    def count_events_matching(self, query: EventQuery) -> int:
        statement = (sa.select(sa.func.count()).select_from(
            events.join(event_types, events.c.event_type_id == event_types.c.id))
            .where(*self._event_conditions(query)))
        if query.mark is not None:
            statement = statement.where(_after_mark(events.c.id, query.mark, query.ascending))
        with self._reading() as connection:
            return connection.execute(statement).scalar_one()

    def _event_conditions(self, query: EventQuery) -> list[Any]:
        if query.traits:
            self._coverage_for_queries()
        conditions: list[Any] = []
        if query.since is not None:
            conditions.append(events.c.generated > query.since)
        if query.until is not None:
            conditions.append(events.c.generated <= query.until)
        if query.event_type is not None:
            conditions.append(event_types.c.name == query.event_type)
        for trait in query.traits:
            conditions.append(self._trait_condition(trait))
        return conditions

    def _trait_condition(self, trait: TraitFilter) -> Any:
        value = trait.value
        if trait.name in ("message_id", "event_type"):
            column = events.c.message_id if trait.name == "message_id" else event_types.c.name
            return column == value if isinstance(value, str) else sa.false()
        if trait.name == "timestamp":
            return events.c.generated == value if isinstance(value, datetime) else sa.false()
        if trait.name in self.indexed_traits and not (isinstance(value, str) and len(value) > 255):
            column = {str: event_traits.c.t_string, int: event_traits.c.t_int,
                      float: event_traits.c.t_float, datetime: event_traits.c.t_datetime}[type(value)]
            typed = events.c.id.in_(sa.select(event_traits.c.event_id)
                                    .where(event_traits.c.name == trait.name, column == value))
            older = self._unindexed_through.get(trait.name)
            if older:
                return sa.or_(typed, sa.and_(events.c.id <= older,
                                             self._json_trait_condition(trait.name, value)))
            return typed
        return self._json_trait_condition(trait.name, value)

    def _json_trait_condition(self, name: str, value: Any) -> Any:
        # The type must match as in the typed table: 5, 5.0 and "5" are three values.
        if self._postgresql:
            return _postgresql_json_trait(name, value)
        return _sqlite_json_trait(name, value)

    def streams_holding(self, event_id: int) -> list[int]:
        """Ids of the streams an event belongs to."""
        with self._reading() as connection:
            return list(connection.execute(
                sa.select(stream_events.c.stream_id).where(stream_events.c.event_id == event_id)
                .order_by(stream_events.c.stream_id)).scalars())

    def event_by_message_id(self, message_id: str) -> FoundEvent | None:
        with self._reading() as connection:
            row = connection.execute(
                sa.select(events.c.id, events.c.message_id, event_types.c.name, events.c.generated,
                          events.c.traits)
                .join(event_types, events.c.event_type_id == event_types.c.id)
                .where(events.c.message_id == message_id)).first()
        return None if row is None else FoundEvent(row[0], event_from_columns(*row[1:]))

    # -- streams ---------------------------------------------------------------------------

    def query_streams(self, query: StreamQuery) -> list[Any]:
        from winchester.store._store import _stream_from_row

        conditions = self._stream_conditions(query)
        check = _distinguishing_check(query.distinguishing)
        found: list[Any] = []
        mark = query.mark
        with self._reading() as connection:
            while True:
                want = None if query.limit is None else query.limit - len(found)
                page = _PAGE if check is not None else want
                statement = _paged(sa.select(streams).where(*conditions), streams.c.id, mark,
                                   query.ascending, page)
                rows = connection.execute(statement).all()
                for row in rows:
                    record = _stream_from_row(row)
                    if check is None or check(record.distinguishing_traits):
                        found.append(record)
                        if query.limit is not None and len(found) >= query.limit:
                            return found
                if check is None or page is None or len(rows) < page:
                    return found
                mark = rows[-1].id

    def recently_failed_streams(self, limit: int) -> list[Any]:
        """The streams in an error state, the latest to fail first (by ``updated_at``, not id:
        an old stream reset and failed again belongs at the top)."""
        from winchester.store._store import _stream_from_row

        statement = (sa.select(streams).where(streams.c.state.in_(("error", "expire_error")))
                     .order_by(streams.c.updated_at.desc(), streams.c.id.desc()).limit(limit))
        with self._reading() as connection:
            return [_stream_from_row(row) for row in connection.execute(statement)]

    def count_streams_matching(self, query: StreamQuery) -> int:
        conditions = self._stream_conditions(query)
        if query.mark is not None:
            conditions.append(_after_mark(streams.c.id, query.mark, query.ascending))
        check = _distinguishing_check(query.distinguishing)
        with self._reading() as connection:
            if check is None:
                return connection.execute(
                    sa.select(sa.func.count()).select_from(streams).where(*conditions)).scalar_one()
            from winchester.triggers import distinguishing_from_json

            return sum(1 for (text,) in connection.execute(
                sa.select(streams.c.distinguishing_traits).where(*conditions))
                if check(distinguishing_from_json(orjson.loads(text))))

    def _stream_conditions(self, query: StreamQuery) -> list[Any]:
        conditions: list[Any] = []
        if query.older_than is not None:
            conditions.append(streams.c.first_event < query.older_than)
        if query.younger_than is not None:
            conditions.append(streams.c.last_event > query.younger_than)
        if query.state is not None:
            if query.state not in STREAM_STATES:
                raise ValueError(f"unknown stream state {query.state!r}")
            conditions.append(streams.c.state == query.state)
        if query.trigger_name is not None:
            conditions.append(streams.c.trigger_name == query.trigger_name)
        for trait in query.distinguishing:
            # The canonical key holds each trait as ,"name","typed value": a text
            # search narrows the rows; the exact check follows on the decoded traits.
            patterns = [_like_pattern(trait.name, typed) for typed in _typed_forms(trait.value)]
            conditions.append(sa.or_(
                *(streams.c.dist_key.like(pattern, escape="\\") for pattern in patterns),
                streams.c.dist_key.like("sha256:%")))
        return conditions

    def count_streams_by_trigger_and_state(self) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        with self._reading() as connection:
            for trigger, state, count in connection.execute(
                    sa.select(streams.c.trigger_name, streams.c.state, sa.func.count())
                    .group_by(streams.c.trigger_name, streams.c.state)):
                found.setdefault(trigger, {})[state] = count
        return found

    def stream_history(self, stream_id: int) -> list[HistoryEntry]:
        with self._reading() as connection:
            return [HistoryEntry(*row) for row in connection.execute(
                sa.select(stream_history.c.at, stream_history.c.state,
                          stream_history.c.previous_state, stream_history.c.actor,
                          stream_history.c.detail)
                .where(stream_history.c.stream_id == stream_id).order_by(stream_history.c.id))]

    def delete_stream(self, stream_id: int) -> str | None:
        """Delete a stream that no worker is running (its memberships and history too).

        Returns None when deleted; otherwise why not: ``missing`` or
        ``running`` (a worker holds it: wait for it to finish).
        """
        def delete(connection) -> str | None:
            state = connection.execute(sa.select(streams.c.state)
                                       .where(streams.c.id == stream_id)).scalar()
            if state is None:
                return "missing"
            if state in ("firing", "expiring"):
                return "running"
            deleted = connection.execute(streams.delete().where(
                streams.c.id == stream_id, streams.c.state.not_in(("firing", "expiring")))).rowcount
            if not deleted:
                # A worker claimed it (or another request deleted it) since the state was read:
                # its memberships must stay with it.
                return "running" if connection.execute(
                    sa.select(streams.c.id).where(streams.c.id == stream_id)).first() else "missing"
            _delete_dependents(connection, [stream_id])
            return None

        return self._retrying(delete)


def _stored_datetime(value: datetime) -> str:
    # As events keep it in their JSON document (winchester.events.encode_value).
    return value.isoformat(timespec="microseconds")


def _postgresql_json_trait(name: str, value: Any) -> Any:
    # The json type (not jsonb) keeps each number as written: orjson writes an
    # int as digits and a float always with "." or "e", so 5 and 5.0 differ
    # here as they do in the typed table (jsonb would compare them equal).
    document = sa.cast(events.c.traits, postgresql.JSON)
    text = sa.func.json_extract_path_text(document, name)
    if isinstance(value, datetime):
        return sa.and_(sa.func.json_extract_path_text(document, name, "__type__") == "datetime",
                       sa.func.json_extract_path_text(document, name, "datetime")
                       == _stored_datetime(value))
    kind = sa.func.json_typeof(sa.func.json_extract_path(document, name))
    if isinstance(value, str):
        return sa.and_(kind == "string", text == value)
    if isinstance(value, int):
        return sa.and_(kind == "number", text == str(value))
    spellings = {orjson.dumps(value + 0.0).decode()}
    if value == 0:
        spellings.update(("0.0", "-0.0"))
    return sa.and_(kind == "number", text.in_(sorted(spellings)))


def _sqlite_json_trait(name: str, value: Any) -> Any:
    # json_each rather than a JSON path: a path cannot spell every trait name
    # (a quote, a non-ASCII letter), a key column compares any name exactly.
    trait = sa.func.json_each(events.c.traits).table_valued(
        "key", "value", "type", "atom").alias("json_trait")
    if isinstance(value, datetime):
        conditions = [trait.c.type == "object",
                      sa.func.json_extract(trait.c.value, "$.__type__") == "datetime",
                      sa.func.json_extract(trait.c.value, "$.datetime") == _stored_datetime(value)]
    else:
        # The JSON type keeps 5 and "5" (and 5 and 5.0) apart, as the typed table does.
        kind = {str: "text", int: "integer", float: "real"}[type(value)]
        conditions = [trait.c.type == kind, trait.c.atom == value]
    return sa.exists(sa.select(sa.literal(1)).select_from(trait)
                     .where(trait.c.key == name, *conditions))


def _paged(statement: Any, id_column: Any, mark: int | None, ascending: bool,
           limit: int | None) -> Any:
    if mark is not None:
        statement = statement.where(_after_mark(id_column, mark, ascending))
    statement = statement.order_by(id_column.asc() if ascending else id_column.desc())
    return statement if limit is None else statement.limit(limit)


def _after_mark(id_column: Any, mark: int, ascending: bool) -> Any:
    return id_column > mark if ascending else id_column < mark


def _typed_forms(value: Any) -> list[str]:
    if isinstance(value, datetime):
        # A datetime matches the trait with that value, or the range that begins then
        # (a `timestamp: day` stream is found by its day's midnight).
        return [typed_text(value), typed_text(TimeRange(value, value))[:2 + 26]]
    return [typed_text(value)]


def _like_pattern(name: str, typed: str) -> str:
    def escaped(text: str) -> str:
        return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

    quoted_value = _quote(typed)
    if typed.startswith("r:"):
        quoted_value = quoted_value[:-1]  # a range: matched on its beginning
    return "%," + escaped(_quote(name)) + "," + escaped(quoted_value) + "%"


def _distinguishing_check(filters: Sequence[TraitFilter]) -> Callable[[dict[str, Any]], bool] | None:
    if not filters:
        return None

    def check(traits: dict[str, Any]) -> bool:
        for wanted in filters:
            value = traits.get(wanted.name)
            if isinstance(value, TimeRange):
                if not (isinstance(wanted.value, datetime) and value.begin == wanted.value):
                    return False
            elif value is None or type(value) is not type(wanted.value) or value != wanted.value:
                return False
        return True

    return check


def iter_pages(fetch: Callable[[int | None], list[Any]], key: Callable[[Any], int]) -> Iterator[Any]:
    """Every row of a paged query, page after page (CLI exports)."""
    mark = None
    while True:
        page = fetch(mark)
        yield from page
        if not page:
            return
        mark = key(page[-1])
