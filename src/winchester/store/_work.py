"""The workers' queue: claiming due streams, finishing them, trimming old events.

A stream moves ``active``/``retry_*`` -> ``firing``/``expiring`` when a worker
claims it, and from there to ``completed`` (or is deleted) or to
``error``/``expire_error``. Every move bumps ``state_serial``; claims and
finishes are conditional on it, so two workers can never both own a stream,
and a worker whose lease lapsed (another worker took the stream over) finds
its finish refused instead of overwriting the newer owner's work.

Claims are leases: ``claim_expires`` is the wall-clock time after which
another worker may take the stream over. On PostgreSQL candidates are locked
``FOR UPDATE SKIP LOCKED``, so concurrent workers claim disjoint batches
instead of queueing behind each other; on SQLite the write transaction is
exclusive anyway.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from winchester.events import Event, decode_value
from winchester.store._schema import (
    event_traits,
    event_types,
    events,
    stream_events,
    stream_history,
    streams,
)
from winchester.store._bulk import BulkWriter, HistoryRow
from winchester.store._schema import KEY_LENGTH
from winchester.triggers import distinguishing_from_json

FIRE, EXPIRE = "fire", "expire"

# action -> (states due by time, the claimed state, the error state, the retry state)
_ACTIONS = {
    FIRE: (("active", "retry_fire"), "firing", "error", "retry_fire"),
    EXPIRE: (("active", "retry_expire"), "expiring", "expire_error", "retry_expire"),
}
# Where reset sends an error stream.
RESET_STATES = {"error": "retry_fire", "expire_error": "retry_expire"}
# Streams whose events trimming must keep (they may still run a pipeline).
_FINISHED_STATES = ("completed",)


@dataclass(frozen=True)
class ClaimedStream:
    """A stream a worker holds: what it needs to run the stream's pipeline."""

    id: int
    action: str              # "fire" or "expire"
    trigger_name: str
    serial: int              # state_serial as claimed: the finish is conditional on it
    previous_state: str
    distinguishing_traits: dict[str, Any]
    first_event: datetime
    last_event: datetime
    event_count: int
    attempts: int
    expire_timestamp: datetime | None = None
    fire_timestamp: datetime | None = None


@dataclass(frozen=True)
class StreamOutcome:
    """How a claimed stream's run ended: ``error`` None means success.

    ``generated`` holds the events its pipeline generated, ready to ingest
    (:class:`winchester.store.IngestItem`), stored in the transaction that
    records the outcome.
    """

    stream: ClaimedStream
    error: str | None = None
    generated: Sequence[Any] = ()


@dataclass
class FinishedStreams:
    """What :meth:`WorkQueue.finish_streams` did.

    ``lost``: the ids whose claim the worker no longer held (not touched).
    ``generated``: how storing the pipelines' generated events went (an
    :class:`winchester.store.IngestResult`): the streams they opened count
    as created, like those ingest opens.
    """

    lost: list[int]
    generated: Any


class WorkQueue:
    """The worker side of :class:`winchester.store.Store` (mixed into it)."""

    # Provided by Store, with _retrying (run a write transaction, retrying what a retry cures)
    # and _bulk (its database's bulk writer).
    engine: Any
    _postgresql: bool
    _bulk: BulkWriter

    def claim_streams(self, action: str, worker: str, now: datetime, wall_now: datetime,
                      lease_until: datetime, limit: int, max_attempts: int = 5,
                      grace: timedelta = timedelta(0)) -> list[ClaimedStream]:
        """Claim up to ``limit`` streams due for ``action`` at ``now``; one transaction.

        Due: for ``fire``, fire_timestamp passed in ``active``/``retry_fire``;
        for ``expire``, expire_timestamp passed in ``retry_expire``, or in
        ``active`` when the stream is not ready to fire (a stream whose fire
        criteria are met fires, however late, and never expires). Streams in
        ``firing``/``expiring`` whose lease lapsed before ``wall_now`` are
        taken over, unless they already had ``max_attempts``: those go to the
        error state instead (a stream that kills every worker running it must
        not do so forever).
        """
        due_states, claimed_state, error_state, _ = _ACTIONS[action]

        def claim(connection: Connection) -> list[ClaimedStream]:
            lapsed = self._candidates(connection, (streams.c.state == claimed_state)
                                      & (streams.c.claim_expires < wall_now),
                                      streams.c.claim_expires, limit)
            abandoned = [(i, s) for i, s, _, attempts in lapsed if attempts >= max_attempts]
            if abandoned:
                reason = (f"abandoned after {max_attempts} attempts: every worker that claimed it "
                          "stopped before finishing (lease expired)")
                gone = list(connection.execute(
                    streams.update().where(self._held(abandoned))
                    .values(state=error_state, state_serial=streams.c.state_serial + 1,
                            claimed_by=None, claim_expires=None, updated_at=now, last_error=reason)
                    .returning(streams.c.id)).scalars())
                self._record_history(connection, [
                    _history_row(stream_id, now, error_state, claimed_state, worker, reason)
                    for stream_id in gone])
            candidates = [row for row in lapsed if row[3] < max_attempts]
            suspects = [row for row in candidates if row[3] >= 2]
            if suspects:
                # Taken over more than once: it may be what kills its workers.
                # Run it alone, so it cannot take a batch of others down with it.
                candidates = suspects[:1]
            else:
                # One query per state, each an ordered walk of the (state, time)
                # index that stops at the limit; with the states combined the
                # database would sort every due stream on every claim.
                for state in due_states:
                    if len(candidates) >= limit:
                        break
                    if action == FIRE:
                        due = (streams.c.state == state) & (streams.c.fire_timestamp <= now)
                        order = streams.c.fire_timestamp
                    else:
                        if state == "active":
                            due = ((streams.c.state == state) & streams.c.fire_timestamp.is_(None)
                                   & (streams.c.expire_timestamp <= now - grace))
                        else:
                            due = (streams.c.state == state) & (streams.c.expire_timestamp <= now)
                        order = streams.c.expire_timestamp
                    candidates += self._candidates(connection, due, order, limit - len(candidates))
            if not candidates:
                return []
            previous = {row[0]: row[2] for row in candidates}
            claimed = []
            for chunk in _chunks([(row[0], row[1]) for row in candidates]):
                rows = connection.execute(
                    streams.update()
                    .where(self._held(chunk))
                    .values(state=claimed_state, state_serial=streams.c.state_serial + 1,
                            open_key=None, claimed_by=worker, claim_expires=lease_until,
                            attempts=streams.c.attempts + 1, updated_at=now)
                    .returning(streams.c.id, streams.c.trigger_name, streams.c.state_serial,
                               streams.c.distinguishing_traits, streams.c.first_event,
                               streams.c.last_event, streams.c.event_count, streams.c.attempts,
                               streams.c.expire_timestamp, streams.c.fire_timestamp))
                claimed.extend(ClaimedStream(
                    id=row.id, action=action, trigger_name=row.trigger_name, serial=row.state_serial,
                    previous_state=previous[row.id],
                    distinguishing_traits=distinguishing_from_json(orjson.loads(row.distinguishing_traits)),
                    first_event=row.first_event, last_event=row.last_event,
                    event_count=row.event_count, attempts=row.attempts,
                    expire_timestamp=row.expire_timestamp, fire_timestamp=row.fire_timestamp)
                    for row in rows)
            claimed.sort(key=lambda stream: stream.id)
            self._record_history(connection, [
                _history_row(stream.id, now, claimed_state, stream.previous_state, worker,
                             f"attempt {stream.attempts}" + (
                                 ", taken over from a worker whose lease lapsed"
                                 if stream.previous_state == claimed_state else ""))
                for stream in claimed])
            return claimed

        return self._retrying(claim)

    def _record_history(self, connection: Connection, rows: list[HistoryRow]) -> None:
        # Through the bulk writer (COPY, or one multi-row INSERT): as one executemany
        # the two rows per stream run cost the worker more than running the stream.
        if rows:
            self._bulk.insert_history(connection, rows)

    def _held(self, pairs: Sequence[tuple[int, int]]):
        """The condition "stream (id, state_serial) is still as it was seen", for UPDATE/DELETE.

        On PostgreSQL two array parameters joined by primary key: the
        statement text stays the same whatever the number of streams (parsed
        once, no thousands of placeholders). Elsewhere the id list finds the
        rows by primary key and the row values check the serials.
        """
        if self._postgresql:
            held = sa.select(
                sa.func.unnest(sa.bindparam("held_ids", [p[0] for p in pairs],
                                            type_=postgresql.ARRAY(sa.BigInteger))).label("id"),
                sa.func.unnest(sa.bindparam("held_serials", [p[1] for p in pairs],
                                            type_=postgresql.ARRAY(sa.Integer))).label("serial"),
            ).subquery("held")
            return (streams.c.id == held.c.id) & (streams.c.state_serial == held.c.serial)
        return streams.c.id.in_([stream_id for stream_id, _ in pairs]) & sa.tuple_(
            streams.c.id, streams.c.state_serial).in_(pairs)

    def _candidates(self, connection: Connection, condition, order, limit: int) -> list[tuple]:
        query = (sa.select(streams.c.id, streams.c.state_serial, streams.c.state, streams.c.attempts)
                 .where(condition).order_by(order).limit(limit))
        if self._postgresql:
            # Rows another worker is claiming are skipped, not waited for.
            query = query.with_for_update(skip_locked=True)
        return [tuple(row) for row in connection.execute(query)]

    def load_stream_events(self, stream_ids: Sequence[int]) -> dict[int, list[Event]]:
        """The events of several streams, each list in timestamp order (ties by arrival)."""
        found: dict[int, list[Event]] = {stream_id: [] for stream_id in stream_ids}
        with self._reading() as connection:
            type_names = dict(connection.execute(sa.select(event_types.c.id, event_types.c.name)).all())
            for chunk in _chunks(sorted(stream_ids)):
                if self._postgresql:
                    rows = connection.execute(_pg_stream_events(chunk)).all()
                else:
                    # Thousands of rows: fetched by the driver in one call, and the
                    # text timestamps parsed here (SQLAlchemy's row processing cost
                    # more than the query). The id list is padded with NULLs to a
                    # power of two: few distinct statements for the driver's cache.
                    chunk = [*chunk, *[None] * ((1 << (len(chunk) - 1).bit_length()) - len(chunk))]
                    rows = [(stream_id, message_id, type_id, datetime.fromisoformat(generated), traits)
                            for stream_id, message_id, type_id, generated, traits in
                            connection.exec_driver_sql(
                                "SELECT se.stream_id, e.message_id, e.event_type_id, e.generated, "
                                "e.traits FROM stream_events AS se JOIN events AS e "
                                "ON se.event_id = e.id WHERE se.stream_id IN "
                                f"({','.join('?' * len(chunk))}) "
                                "ORDER BY se.stream_id, e.generated, e.id", tuple(chunk)).fetchall()]
                for stream_id, message_id, type_id, generated, traits in rows:
                    found[stream_id].append(
                        event_from_columns(message_id, type_names[type_id], generated, traits))
        return found

    def finish_streams(self, worker: str, outcomes: Sequence[StreamOutcome], now: datetime,
                       purge_completed: bool, grace: timedelta = timedelta(0)) -> FinishedStreams:
        """Record how claimed streams ended; one transaction.

        Success -> ``completed`` (or the stream is deleted with
        ``purge_completed``), and its generated events are ingested in the
        same transaction; failure -> ``error``/``expire_error`` with the
        reason. The result's ``lost`` names the streams whose claim this worker
        no longer held (its lease lapsed and another worker took the stream):
        their state is not touched (their generated events, deterministic, are
        duplicates of the new owner's). ``grace`` is ``late_event_grace``, for the generated
        events as for ingested ones.
        """
        from winchester.store._store import IngestResult  # _store imports this module

        items = [item for outcome in outcomes if outcome.error is None for item in outcome.generated]
        type_ids = self._event_type_ids_for({item.event["event_type"] for item in items}) if items else {}

        def finish(connection: Connection) -> FinishedStreams:
            generated = self._ingest(connection, items, type_ids, grace) if items else IngestResult()
            done: set[int] = set()
            succeeded = [(o.stream.id, o.stream.serial) for o in outcomes if o.error is None]
            held = (streams.c.claimed_by == worker)
            for chunk in _chunks(succeeded):
                owned = self._held(chunk) & held
                if purge_completed:
                    statement = streams.delete().where(owned)
                else:
                    statement = streams.update().where(owned).values(
                        state="completed", state_serial=streams.c.state_serial + 1, claimed_by=None,
                        claim_expires=None, last_error=None, updated_at=now)
                finished = list(connection.execute(statement.returning(streams.c.id)).scalars())
                if purge_completed and finished:
                    _delete_dependents(connection, finished)
                elif finished:
                    claimed_states = {o.stream.id: _ACTIONS[o.stream.action][1] for o in outcomes}
                    self._record_history(connection, [
                        _history_row(stream_id, now, "completed", claimed_states[stream_id], worker,
                                     None) for stream_id in finished])
                done.update(finished)
            for outcome in outcomes:
                if outcome.error is None:
                    continue
                stream = outcome.stream
                _, claimed_state, error_state, _ = _ACTIONS[stream.action]
                failed = list(connection.execute(
                    streams.update()
                    .where(streams.c.id == stream.id, streams.c.state_serial == stream.serial, held)
                    .values(state=error_state, state_serial=streams.c.state_serial + 1,
                            claimed_by=None, claim_expires=None, last_error=outcome.error[:4000],
                            updated_at=now)
                    .returning(streams.c.id)).scalars())
                self._record_history(connection, [_history_row(stream.id, now, error_state, claimed_state,
                                                          worker, outcome.error[:4000])
                                             for _ in failed])
                done.update(failed)
            counts: Counter[tuple[str, str]] = Counter()
            for outcome in outcomes:
                if outcome.stream.id in done:
                    kind = ("fired" if outcome.stream.action == FIRE else "expired") \
                        if outcome.error is None else "errors"
                    counts[(kind, outcome.stream.trigger_name)] += 1
            # Streams, not events: the activity's "stored" is what intake took in.
            for name, created in generated.new_streams.items():
                counts[("streams_created", name)] += created
            self._note_activity(connection, counts)
            return FinishedStreams([o.stream.id for o in outcomes if o.stream.id not in done], generated)

        return self._retrying(finish)

    def extend_claims(self, worker: str, claimed: Sequence[ClaimedStream], until: datetime) -> int:
        """Renew this worker's lease on streams it still holds; returns how many it holds."""
        def extend(connection: Connection) -> int:
            held = 0
            for chunk in _chunks([(stream.id, stream.serial) for stream in claimed]):
                held += connection.execute(
                    streams.update()
                    .where(self._held(chunk),
                           streams.c.claimed_by == worker)
                    .values(claim_expires=until)).rowcount
            return held

        return self._retrying(extend) if claimed else 0

    def count_due_streams(self, now: datetime, wall_now: datetime,
                          grace: timedelta = timedelta(0)) -> int:
        """Streams a worker would claim now (to fire, to expire, or taken over from a lapsed claim)."""
        due = ((streams.c.state.in_(("active", "retry_fire")) & (streams.c.fire_timestamp <= now))
               | ((streams.c.state == "active") & streams.c.fire_timestamp.is_(None)
                  & (streams.c.expire_timestamp <= now - grace))
               | ((streams.c.state == "retry_expire") & (streams.c.expire_timestamp <= now))
               | (streams.c.state.in_(("firing", "expiring")) & (streams.c.claim_expires < wall_now)))
        with self._reading() as connection:
            return connection.execute(sa.select(sa.func.count()).select_from(streams).where(due)).scalar_one()

    def release_streams(self, worker: str, claimed: Sequence[ClaimedStream], now: datetime) -> None:
        """Give back streams claimed but not run (the worker is stopping).

        They return to the state they were claimed from (a lapsed claim to
        the retry state), so the next worker runs them at once.
        """
        def release(connection: Connection) -> None:
            given_back = []
            for stream in claimed:
                due_states, claimed_state, _, retry_state = _ACTIONS[stream.action]
                state = stream.previous_state if stream.previous_state in due_states else retry_state
                if connection.execute(
                        streams.update()
                        .where(streams.c.id == stream.id, streams.c.state_serial == stream.serial,
                               streams.c.claimed_by == worker)
                        .values(state=state, state_serial=streams.c.state_serial + 1,
                                claimed_by=None, claim_expires=None,
                                attempts=streams.c.attempts - 1, updated_at=now)).rowcount:
                    given_back.append(_history_row(stream.id, now, state, claimed_state, worker,
                                                   "given back unrun"))
            self._record_history(connection, given_back)

        if claimed:
            self._retrying(release)

    def release_claims_of(self, worker: str, now: datetime) -> int:
        """Hand back every stream ``worker`` holds, to be run again at once (retry states).

        For a worker name known to be dead (a killed ``replay`` being
        resumed): its claims would otherwise wait out their lease.
        """
        def release(connection: Connection) -> int:
            released = 0
            for _, (_, claimed_state, _, retry_state) in _ACTIONS.items():
                ids = list(connection.execute(
                    streams.update()
                    .where(streams.c.claimed_by == worker, streams.c.state == claimed_state)
                    .values(state=retry_state, state_serial=streams.c.state_serial + 1,
                            claimed_by=None, claim_expires=None, updated_at=now)
                    .returning(streams.c.id)).scalars())
                self._record_history(connection, [
                    _history_row(stream_id, now, retry_state, claimed_state, worker,
                                 "handed back: the worker holding it was stopped") for stream_id in ids])
                released += len(ids)
            return released

        return self._retrying(release)

    def reset_streams(self, stream_ids: Iterable[int] | None, now: datetime,
                      actor: str = "operator") -> dict[int, str]:
        """Move error streams to ``retry_fire``/``retry_expire``; None means every error stream.

        Returns the id -> new state of the streams moved (streams not in an
        error state are left alone and are absent from the result).
        """
        def reset(connection: Connection) -> dict[int, str]:
            moved: dict[int, str] = {}
            for error_state, retry_state in RESET_STATES.items():
                condition = streams.c.state == error_state
                statement = streams.update().values(
                    state=retry_state, state_serial=streams.c.state_serial + 1, attempts=0,
                    claimed_by=None, claim_expires=None, updated_at=now).returning(streams.c.id)
                if stream_ids is None:
                    moved.update((i, retry_state) for i in connection.execute(statement.where(condition)).scalars())
                else:
                    for chunk in _chunks(sorted(set(stream_ids))):
                        moved.update((i, retry_state) for i in connection.execute(
                            statement.where(condition & streams.c.id.in_(chunk))).scalars())
            errors = {retry: error for error, retry in RESET_STATES.items()}
            self._record_history(connection, [
                _history_row(stream_id, now, state, errors[state], actor, "reset for a retry")
                for stream_id, state in sorted(moved.items())])
            return moved

        return self._retrying(reset)

    def trim_events(self, older_than: datetime, limit: int) -> int:
        """Delete up to ``limit`` events older than ``older_than`` that no live stream holds.

        Events of completed streams go (their membership rows with them);
        events of any stream that may still run a pipeline stay.
        """
        def trim(connection: Connection) -> int:
            live = (sa.select(stream_events.c.event_id)
                    .join(streams, streams.c.id == stream_events.c.stream_id)
                    .where(stream_events.c.event_id == events.c.id,
                           streams.c.state.not_in(_FINISHED_STATES)))
            query = (sa.select(events.c.id).where(events.c.generated < older_than, ~live.exists())
                     .order_by(events.c.generated, events.c.id).limit(limit))
            if self._postgresql:
                query = query.with_for_update(skip_locked=True)
            ids = list(connection.execute(query).scalars())
            if ids:
                # Memberships (of completed streams) and traits go with their events.
                connection.execute(stream_events.delete().where(stream_events.c.event_id.in_(ids)))
                connection.execute(event_traits.delete().where(event_traits.c.event_id.in_(ids)))
                connection.execute(events.delete().where(events.c.id.in_(ids)))
            return len(ids)

        return self._retrying(trim)

    def count_streams_by_state(self) -> dict[str, int]:
        with self._reading() as connection:
            return dict(connection.execute(
                sa.select(streams.c.state, sa.func.count()).group_by(streams.c.state)).all())

    def stream_errors(self, stream_ids: Sequence[int]) -> dict[int, str | None]:
        with self.engine.connect() as connection:
            return dict(connection.execute(
                sa.select(streams.c.id, streams.c.last_error).where(streams.c.id.in_(stream_ids))).all())



def event_from_columns(message_id: str, event_type: str, generated: datetime, traits: str) -> Event:
    event: Event = {"message_id": message_id, "event_type": event_type, "timestamp": generated}
    decoded = orjson.loads(traits)
    event.update(decoded)
    # Only datetimes are stored as objects; every other value is already final.
    for name, value in decoded.items():
        if value.__class__ is dict:
            event[name] = decode_value(name, value)
    return event


def _history_row(stream_id: int, at: datetime, state: str, previous: str | None, actor: str | None,
                 detail: str | None) -> HistoryRow:
    return (stream_id, at, state, previous, actor[:KEY_LENGTH] if actor else actor, detail)


def _delete_dependents(connection: Connection, stream_ids: Sequence[int]) -> None:
    """Memberships and history of deleted streams (no foreign keys: the store keeps them tidy)."""
    for chunk in _chunks(list(stream_ids)):
        connection.execute(stream_events.delete().where(stream_events.c.stream_id.in_(chunk)))
        connection.execute(stream_history.delete().where(stream_history.c.stream_id.in_(chunk)))


def _pg_stream_events(stream_ids: Sequence[int]) -> Any:
    # Stream by stream, each membership and each event found by primary key.
    # A batch's streams hold a sliver of all events, but with a plain join
    # (or an ANY() filter) PostgreSQL hash-joins whole tables as soon as its
    # estimates are off, as they are before the first ANALYZE: with no
    # statistics, "stream_id = ANY(500 ids)" is costed as every row. OFFSET 0
    # keeps each LATERAL subquery from being flattened into such a join.
    ids = sa.bindparam("stream_ids", list(stream_ids), type_=postgresql.ARRAY(sa.BigInteger))
    wanted = sa.func.unnest(ids).table_valued("id").render_derived(name="wanted")
    first = sa.literal_column("0")
    members = sa.lateral(sa.select(stream_events.c.stream_id, stream_events.c.event_id)
                         .where(stream_events.c.stream_id == wanted.c.id)
                         .offset(first)).alias("member")
    source = sa.lateral(sa.select(events.c.id, events.c.message_id, events.c.event_type_id,
                                  events.c.generated, events.c.traits)
                        .where(events.c.id == members.c.event_id).offset(first)).alias("event")
    return (sa.select(members.c.stream_id, source.c.message_id, source.c.event_type_id,
                      source.c.generated, source.c.traits)
            .select_from(wanted.join(members, sa.true()).join(source, sa.true()))
            .order_by(members.c.stream_id, source.c.generated, source.c.id))


def _chunks(values: Sequence[Any], size: int = 500) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]
