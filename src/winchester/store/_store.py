"""The repository: every SQL statement Winchester runs is issued from here."""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from winchester._json import body_bytes
from winchester.clock import WallClock
from winchester.errors import TimexEvaluationError, WinchesterError
from winchester.events import Event, encode_value
from winchester.store import _migrate
from winchester.store._bulk import TraitRow, writer_for
from winchester.store._engine import WalCheckpointer, create_engine, is_postgresql, sqlite_file
from winchester.store._schema import activity
from winchester.store._schema import clocks as clocks_table
from winchester.store._schema import dead_letters as dead_letters_table
from winchester.store._schema import indexed_traits as indexed_traits_table
from winchester.store._archive import ArchiveStore
from winchester.store._query import QueryStore
from winchester.store._work import WorkQueue, event_from_columns
from winchester.store._schema import (
    KEY_LENGTH,
    TRAIT_DATETIME,
    TRAIT_FLOAT,
    TRAIT_INT,
    TRAIT_TEXT,
    event_traits,
    event_types,
    events,
    stream_events,
    streams,
)
from winchester.triggers import distinguishing_from_json, distinguishing_to_json

logger = logging.getLogger(__name__)

# Bound parameters per statement stay well under SQLite's and PostgreSQL's limits.
_CHUNK = 5000
_RETRIES = 5
# How long per-minute activity counts are kept.
ACTIVITY_RETENTION = timedelta(days=2)
# How long a writer waits for its turn (Store.take_turns) before going ahead without it.
TURN_WAIT = timedelta(seconds=5)


class StoreError(WinchesterError):
    """A database operation failed after its retries."""


class TriggerPolicy(Protocol):
    """What the store needs to know about a trigger to keep a stream up to date."""

    name: str
    fire_delay: float

    def expire_time(self, first: datetime, last: datetime, now: datetime | None = None) -> datetime: ...

    def is_ready(self, counts: Sequence[int]) -> bool: ...


class MatchLike(Protocol):
    trigger: TriggerPolicy
    key: str
    distinguishing: Mapping[str, Any]
    fire_increments: tuple[int, ...]


@dataclass
class IngestItem:
    """One event to store, the triggers it matched, and "now" as of its arrival."""

    event: Event
    matches: Sequence[MatchLike]
    now: datetime


@dataclass
class IngestResult:
    saved: int = 0
    duplicates: list[str] = field(default_factory=list)
    inserted: Mapping[str, int] = field(default_factory=dict)  # message_id -> id, of those saved
    matched: Counter[str] = field(default_factory=Counter)
    new_streams: Counter[str] = field(default_factory=Counter)
    ready: Counter[str] = field(default_factory=Counter)
    closed_expired: int = 0
    closed_due: int = 0
    clock: datetime | None = None  # the shared clock after this batch, when one was advanced


@dataclass(frozen=True)
class StreamRecord:
    """A stream as stored."""

    id: int
    trigger_name: str
    state: str
    state_serial: int
    distinguishing_traits: dict[str, Any]
    first_event: datetime
    last_event: datetime
    expire_timestamp: datetime
    fire_timestamp: datetime | None
    fire_counts: tuple[int, ...]
    event_count: int
    is_open: bool
    created_at: datetime
    updated_at: datetime
    claimed_by: str | None = None
    claim_expires: datetime | None = None
    attempts: int = 0
    last_error: str | None = None


class _PendingStream:
    """A stream as the current ingest batch sees it (loaded, or new in this batch)."""

    __slots__ = ("id", "trigger", "key", "distinguishing", "first", "last", "expire", "fire_at",
                 "counts", "event_count", "is_open", "members", "created_at")

    def __init__(self, trigger: TriggerPolicy, key: str, distinguishing: str, first: datetime,
                 last: datetime, expire: datetime, fire_at: datetime | None, counts: list[int],
                 event_count: int, stream_id: int | None = None, created_at: datetime | None = None):
        self.id = stream_id
        self.trigger = trigger
        self.key = key
        self.distinguishing = distinguishing
        self.first = first
        self.last = last
        self.expire = expire
        self.fire_at = fire_at
        self.counts = counts
        self.event_count = event_count
        self.is_open = True
        self.members: list[int] = []
        self.created_at = created_at


class Store(WorkQueue, ArchiveStore, QueryStore):
    """Events and streams in SQL (SQLite or PostgreSQL).

    ``indexed_traits`` names the traits copied into the typed, indexed
    ``event_traits`` table so queries can filter on them; every trait is kept
    in the event's JSON document regardless.
    """

    def __init__(self, engine: Engine, indexed_traits: Iterable[str] = ()):
        self.engine = engine
        self.indexed_traits = frozenset(indexed_traits)
        self._postgresql = is_postgresql(engine)
        self._dialect = engine.dialect.name
        self._event_type_ids: dict[str, int] = {}
        self._bulk = writer_for(self._dialect)
        self._indexed_names = tuple(sorted(
            self.indexed_traits - {"message_id", "event_type", "timestamp"}))
        self._unindexed_through: dict[str, int] = {}
        self._coverage_read_at: float | None = None
        self._coverage_claimed = False
        # The configured late_event_grace (open_store sets it), for what reads report.
        self.late_event_grace = timedelta(0)
        # Activity counts are bucketed in real time, whatever clock the caller uses.
        self.wall_clock = WallClock()
        self.activity_source = f"{socket.gethostname()}-{os.getpid()}"[:KEY_LENGTH]
        self._next_activity_trim = datetime.min
        path = sqlite_file(engine)
        self._checkpointer = WalCheckpointer(path) if path else None
        self._turn: Any = None

    @classmethod
    def from_url(cls, url: str, indexed_traits: Iterable[str] = (), **engine_options) -> Store:
        return cls(create_engine(url, **engine_options), indexed_traits)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        self.engine.dispose()

    # -- schema ------------------------------------------------------------------------

    def check_schema(self, config_hint: str = "winchester.yaml") -> None:
        _migrate.check_schema(self.engine, config_hint)

    def upgrade(self, revision: str = "head") -> None:
        _migrate.upgrade(self.engine, revision)

    # -- transactions ------------------------------------------------------------------

    def take_turns(self, turn: Any) -> None:
        """Take turns with another process at writing an SQLite database: ``turn`` is a
        multiprocessing lock they share, held for each write transaction.

        SQLite has one write lock, and a writer that finds it taken polls
        for it with sleeps of up to 100 ms: a worker process beside a replay
        whose writer starts its next batch the moment it commits waited for
        half its time (measured: 5.5 s of 12.6 s in bench/replay.py). A
        waiter on ``turn`` is woken when it is released. The lock only
        orders the two: a holder that died is waited for ``TURN_WAIT`` at
        most, then SQLite's own locking decides, as without it. Other
        databases lock rows, not the database: ignored there.
        """
        if self._dialect == "sqlite":
            self._turn = turn

    @contextmanager
    def _writing(self) -> Iterator[Connection]:
        turn = self._turn
        taken = turn is not None and turn.acquire(timeout=TURN_WAIT.total_seconds())
        try:
            with self.engine.connect() as connection:
                connection = connection.execution_options(writes=True)
                with connection.begin():
                    yield connection
        finally:
            if taken:
                turn.release()
        if self._checkpointer is not None:
            self._checkpointer.nudge()

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A connection for reads whose failure (a lost database) is a StoreError, like writes'."""
        driver_error = self.engine.dialect.loaded_dbapi.Error
        try:
            with self.engine.connect() as connection:
                yield connection
        except (DBAPIError, driver_error) as exc:
            raise StoreError(f"database read failed: {getattr(exc, 'orig', None) or exc}") from exc

    def _retrying(self, operation, *args):
        """Run a write transaction, retrying the failures a retry can cure.

        Deadlocks and serialisation failures (two ingesters racing for the same
        streams), a stream opened concurrently by another process, and lost
        connections are retried with jittered backoff; the batch is idempotent
        (duplicates are recognised by message_id), so a retry is safe.
        """
        driver_error = self.engine.dialect.loaded_dbapi.Error
        for attempt in range(1, _RETRIES + 1):
            try:
                with self._writing() as connection:
                    return operation(connection, *args)
            except (DBAPIError, driver_error) as exc:
                # Bulk COPY talks to the driver directly, so its errors arrive unwrapped.
                cause = getattr(exc, "orig", None) or exc
                if attempt == _RETRIES or not _retryable(exc, cause):
                    raise StoreError(f"database write failed: {cause}") from exc
                delay = min(2.0, 0.05 * 2 ** attempt) * random.uniform(0.5, 1.5)
                logger.info("retrying a write after %s (attempt %d): %s", type(cause).__name__,
                            attempt, cause)
                time.sleep(delay)
        raise AssertionError("unreachable")

    # -- events ------------------------------------------------------------------------

    def _event_type_ids_for(self, names: set[str]) -> dict[str, int]:
        """Ids of these event types, creating the new ones.

        New types are committed in their own short transaction, before the
        batch's: ids cached from a batch transaction that then rolled back
        would point at rows that do not exist.
        """
        missing = names - self._event_type_ids.keys()
        if missing:
            def create(connection: Connection) -> dict[str, int]:
                connection.execute(self._insert_ignore(event_types, ["name"]),
                                   [{"name": name} for name in sorted(missing)])
                found = {}
                for chunk in _chunks(sorted(missing)):
                    for type_id, name in connection.execute(
                            sa.select(event_types.c.id, event_types.c.name)
                            .where(event_types.c.name.in_(chunk))):
                        found[name] = type_id
                return found

            self._event_type_ids.update(self._retrying(create))
        return self._event_type_ids

    def _insert_ignore(self, table: sa.Table, conflict_columns: list[str]):
        if self._dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing(index_elements=conflict_columns)
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=conflict_columns)

    def _save_events(self, connection: Connection, batch: list[Event],
                     type_ids: Mapping[str, int]) -> dict[str, int]:
        """Insert events not stored yet, their ids in ``batch`` order; returns message_id -> id
        for those inserted."""
        rows = [(event["message_id"], type_ids[event["event_type"]], event["timestamp"],
                 _traits_json(event)) for event in batch]
        inserted = self._bulk.insert_events(connection, rows)
        if self.indexed_traits and inserted:
            trait_rows = [row for event in batch if event["message_id"] in inserted
                          for row in self._trait_rows(inserted[event["message_id"]], event)]
            if trait_rows:
                self._bulk.insert_traits(connection, trait_rows)
        return inserted

    def _trait_rows(self, event_id: int, event: Event,
                    names: Sequence[str] | None = None) -> Iterator[TraitRow]:
        for name in self._indexed_names if names is None else names:
            value = event.get(name)
            if value is None:
                continue
            value_type = type(value)
            if value_type is str:
                if len(value) <= KEY_LENGTH:  # longer text stays in the event's JSON only
                    yield (event_id, name, TRAIT_TEXT, value, None, None, None)
            elif value_type is int:
                yield (event_id, name, TRAIT_INT, None, value, None, None)
            elif value_type is float:
                yield (event_id, name, TRAIT_FLOAT, None, None, value, None)
            else:
                yield (event_id, name, TRAIT_DATETIME, None, None, None, value)

    # -- indexed traits ----------------------------------------------------------------

    def index_coverage(self) -> dict[str, int]:
        """The indexed traits whose typed rows some stored events may lack, each with the newest
        event id that may lack it; records the names this store indexes that are not recorded yet.

        A name seen for the first time is recorded with the newest event id
        now stored: the events up to it were stored without its typed rows.
        Until :meth:`index_traits` fills them in, filters on such a name
        also read the JSON of those events (correct, and slow). A name that
        cannot be recorded (a read-only database user) is taken as missing
        from every event. Read again every ``COVERAGE_REFRESH`` seconds, so a
        long-running process sees what others recorded or filled in.
        """
        names = self._indexed_names
        read = sa.select(indexed_traits_table.c.name, indexed_traits_table.c.since_event_id)
        with self._reading() as connection:
            known = dict(connection.execute(read).all())

        def record(connection: Connection) -> dict[str, int]:
            newest = connection.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.id), 0))
                                        ).scalar_one()
            connection.execute(self._insert_ignore(indexed_traits_table, ["name"]),
                               [{"name": name, "since_event_id": newest} for name in missing])
            return dict(connection.execute(read).all())

        missing = [name for name in names if name not in known]
        if missing:
            try:
                known = self._retrying(record)
            except StoreError as exc:
                # A read-only database user (an API beside the writers): filters on these
                # names read every event's JSON until a writer has recorded them.
                logger.warning("could not record the indexed traits %s (%s); filters on them read "
                               "the events' JSON", ", ".join(missing), exc)
        first_look = self._coverage_read_at is None
        self._unindexed_through = {name: known.get(name, _EVERY_EVENT) for name in names
                                   if known.get(name, _EVERY_EVENT)}
        self._coverage_read_at = time.monotonic()
        for name, through in sorted(self._unindexed_through.items()) if first_look else ():
            logger.warning("trait %r was indexed after events were stored: filters on it read the "
                           "JSON of the events up to id %d (slowly) until `winchester db "
                           "index-traits` fills in their index rows", name, through)
        return dict(self._unindexed_through)

    def _coverage_for_queries(self) -> None:
        if (self._coverage_read_at is None
                or time.monotonic() - self._coverage_read_at >= COVERAGE_REFRESH):
            self.index_coverage()

    def _coverage_for_writes(self) -> None:
        """Before this process stores its first events: a recorded name it does not index is no
        longer indexed for every event from now on, so its record goes (the next process that
        indexes it records it afresh, from then)."""
        if self._coverage_claimed:
            return

        def forget(connection: Connection) -> list[str]:
            recorded = connection.execute(sa.select(indexed_traits_table.c.name)).scalars().all()
            dropped = sorted(set(recorded) - set(self._indexed_names))
            if dropped:
                connection.execute(indexed_traits_table.delete()
                                   .where(indexed_traits_table.c.name.in_(dropped)))
            return dropped

        for name in self._retrying(forget):
            logger.warning("trait %r is no longer indexed by this process's configuration: the "
                           "events it stores have no index rows for it", name)
        self._coverage_claimed = True
        self.index_coverage()

    def index_traits(self, names: Iterable[str] | None = None, batch: int = 5000,
                     progress: Callable[[str, int, int], Any] | None = None) -> dict[str, int]:
        """Fill in the typed rows of events stored without them (see :meth:`index_coverage`);
        returns the rows added per name.

        Every stored event is read, not only those up to the recorded id: a
        process still on an older configuration may have stored some since.
        Batch after batch of ``batch`` events, each its own transaction, so
        ingest goes on meanwhile; ``progress(name, event_id_reached,
        last_event_id)`` after each. Running it again, or after it was
        interrupted, adds only what is still missing.
        """
        pending = self.index_coverage()
        wanted = sorted(pending if names is None else set(names) & set(pending))
        added: dict[str, int] = {}
        for name in wanted:
            with self._reading() as connection:
                through = connection.execute(
                    sa.select(sa.func.coalesce(sa.func.max(events.c.id), 0))).scalar_one()
            reached = 0
            added[name] = 0
            while reached < through:
                def fill(connection: Connection, start: int = reached) -> tuple[int, int]:
                    statement = (sa.select(events.c.id, events.c.message_id, event_types.c.name,
                                           events.c.generated, events.c.traits)
                                 .join(event_types, events.c.event_type_id == event_types.c.id)
                                 .where(events.c.id > start, events.c.id <= through,
                                        ~sa.exists().where(event_traits.c.event_id == events.c.id,
                                                           event_traits.c.name == name))
                                 .order_by(events.c.id).limit(batch))
                    if self._postgresql:
                        # Trimming must not delete an event between this read and its rows' insert.
                        statement = statement.with_for_update(read=True, of=events)
                    rows = connection.execute(statement).all()
                    trait_rows = [trait for row in rows for trait in self._trait_rows(
                        row[0], event_from_columns(*row[1:]), (name,))]
                    if trait_rows:
                        # Ignoring a row an ingester with this name wrote meanwhile.
                        connection.execute(self._insert_ignore(event_traits, ["event_id", "name"]), [
                            dict(zip(_TRAIT_COLUMNS, trait, strict=True)) for trait in trait_rows])
                    return (rows[-1][0] if rows else through), len(trait_rows)

                reached, count = self._retrying(fill)
                added[name] += count
                if progress is not None:
                    progress(name, reached, through)

            def done(connection: Connection) -> None:
                # Recorded again if it was forgotten meanwhile (a process not indexing it).
                connection.execute(indexed_traits_table.delete()
                                   .where(indexed_traits_table.c.name == name))
                connection.execute(indexed_traits_table.insert().values(name=name, since_event_id=0))

            self._retrying(done)
            self._unindexed_through.pop(name, None)
            logger.info("trait %r: %d index row(s) added for the events stored without them",
                        name, added[name])
        return added

    def save_events(self, batch: Sequence[Event]) -> IngestResult:
        """Store events that belong to no trigger (duplicates change nothing)."""
        return self.ingest([IngestItem(event, (), event["timestamp"]) for event in batch])

    def ingest(self, items: Sequence[IngestItem],
               dead_letters: Sequence[Mapping[str, Any]] = (),
               now: datetime | None = None, *,
               clock: tuple[str, datetime] | None = None,
               grace: timedelta = timedelta(0)) -> IngestResult:
        """Store a batch of events and add each to the streams of the triggers it matched.

        One transaction, and a constant number of statements for the whole
        batch: insert the events, load the open streams they belong to, close
        the ones that are due, open new ones, update the rest, record membership.
        ``clock`` (name, time) moves that shared clock forward in the same
        transaction (never backwards); the clock's value after it is returned
        in :attr:`IngestResult.clock`. ``grace`` is ``late_event_grace``.
        """
        if not items and not dead_letters and clock is None:
            return IngestResult()
        if items:
            self._coverage_for_writes()
        type_ids = self._event_type_ids_for({item.event["event_type"] for item in items})
        letters = _dead_letter_rows(dead_letters, now or max(
            (item.now for item in items), default=datetime(1970, 1, 1)))

        def write(connection: Connection) -> IngestResult:
            result = self._ingest(connection, items, type_ids, grace) if items else IngestResult()
            if letters:
                connection.execute(dead_letters_table.insert(), letters)
            self._note_activity(connection, {
                ("stored", ""): result.saved, ("duplicates", ""): len(result.duplicates),
                ("rejected", ""): len(letters),
                **{("streams_created", name): count for name, count in result.new_streams.items()}})
            if clock is not None:
                # Last, so the clock's row lock (shared by every ingester) is
                # held only for the commit.
                result.clock = self._advance_clock(connection, *clock)
            return result

        return self._retrying(write)

    def _ingest(self, connection: Connection, items: Sequence[IngestItem],
                type_ids: Mapping[str, int], grace: timedelta = timedelta(0)) -> IngestResult:
        result = IngestResult()
        # Within a batch the first copy of a message wins. Events keep their
        # arrival order: their ids follow it, and a stream's events with equal
        # timestamps reach its pipeline in id order, however the input was batched.
        unique: dict[str, IngestItem] = {}
        for item in items:
            message_id = item.event["message_id"]
            if message_id in unique:
                result.duplicates.append(message_id)
            else:
                unique[message_id] = item
        inserted = self._save_events(connection, [item.event for item in unique.values()], type_ids)
        result.saved = len(inserted)
        result.inserted = inserted
        result.duplicates.extend(m for m in unique if m not in inserted)

        fresh = [item for item in unique.values() if item.event["message_id"] in inserted]
        keys = {match.key for item in fresh for match in item.matches}
        if not keys:
            return result
        open_streams = self._load_open_streams(connection, keys, fresh)
        pending: list[_PendingStream] = list(open_streams.values())
        closed_ids: list[int] = []
        for item in fresh:
            event_id = inserted[item.event["message_id"]]
            timestamp = item.event["timestamp"]
            for match in item.matches:
                trigger = match.trigger
                result.matched[trigger.name] += 1
                stream = open_streams.get(match.key)
                if stream is not None and _closed_to(stream, timestamp, item.now, grace, result):
                    # It waits for a worker to fire or expire it, and the event
                    # starts a new stream (as the original did).
                    stream.is_open = False
                    if stream.id is not None:
                        closed_ids.append(stream.id)
                    stream = None
                if stream is None:
                    stream = _PendingStream(
                        trigger, match.key, orjson.dumps(distinguishing_to_json(match.distinguishing)).decode(),
                        timestamp, timestamp, timestamp, None, [0] * len(match.fire_increments), 0)
                    open_streams[match.key] = stream
                    pending.append(stream)
                    result.new_streams[trigger.name] += 1
                self._add_to_stream(stream, match, event_id, timestamp, item.now, result)
        self._write_streams(connection, pending, closed_ids, max(item.now for item in fresh))
        return result

    @staticmethod
    def _add_to_stream(stream: _PendingStream, match: MatchLike, event_id: int,
                       timestamp: datetime, now: datetime, result: IngestResult) -> None:
        stream.members.append(event_id)
        stream.event_count += 1
        if timestamp < stream.first:
            stream.first = timestamp
        if timestamp > stream.last:
            stream.last = timestamp
        if len(stream.counts) != len(match.fire_increments):
            # The trigger's fire criteria changed since the stream was opened:
            # its old progress means nothing for the new criteria.
            logger.warning("trigger %r changed its fire criteria; stream %s counts progress afresh",
                           stream.trigger.name, stream.id)
            stream.counts = [0] * len(match.fire_increments)
        for index, increment in enumerate(match.fire_increments):
            stream.counts[index] += increment
        trigger = stream.trigger
        try:
            stream.expire = trigger.expire_time(stream.first, stream.last, now)
        except TimexEvaluationError as exc:
            logger.error("trigger %r: expiration cannot be computed (%s); the stream expires now",
                         trigger.name, exc)
            stream.expire = now
        if stream.fire_at is None and trigger.is_ready(stream.counts):
            stream.fire_at = now + timedelta(seconds=trigger.fire_delay)
            result.ready[trigger.name] += 1

    def _load_open_streams(self, connection: Connection, keys: set[str],
                           items: Sequence[IngestItem]) -> dict[str, _PendingStream]:
        triggers = {match.key: match.trigger for item in items for match in item.matches}
        found: dict[str, _PendingStream] = {}
        for (stream_id, key, distinguishing, first, last, expire, fire_at, counts, event_count,
             created_at) in self._bulk.open_streams(connection, sorted(keys)):
            found[key] = _PendingStream(triggers[key], key, distinguishing, first, last, expire,
                                        fire_at, list(orjson.loads(counts)), event_count,
                                        stream_id, created_at)
        return found

    def _write_streams(self, connection: Connection, pending: list[_PendingStream],
                       closed_ids: list[int], now: datetime) -> None:
        for chunk in _chunks(closed_ids):
            connection.execute(streams.update().where(streams.c.id.in_(chunk))
                               .values(open_key=None, updated_at=now))
        # Sorted, so concurrent ingesters meet the open_key index in the same order.
        new = sorted((stream for stream in pending if stream.id is None), key=lambda s: s.key)
        changed = [stream for stream in pending if stream.id is not None and stream.members]
        if new:
            for stream, stream_id in zip(new, self._bulk.allocate_stream_ids(connection, len(new)),
                                         strict=True):
                stream.id = stream_id
            self._bulk.insert_streams(connection, [
                (s.id, s.trigger.name, s.key, s.key if s.is_open else None, s.distinguishing,
                 s.first, s.last, s.expire, s.fire_at, orjson.dumps(s.counts).decode(),
                 s.event_count, now) for s in new])
        if changed:
            self._bulk.update_streams(connection, [
                (s.id, s.first, s.last, s.expire, s.fire_at, orjson.dumps(s.counts).decode(),
                 s.event_count, now) for s in changed])
        members = [(s.id, event_id) for s in pending for event_id in s.members]
        if members:
            self._bulk.insert_members(connection, members)

    # -- activity --------------------------------------------------------------------------

    def _note_activity(self, connection: Connection, counts: Mapping[tuple[str, str], int]) -> None:
        """Add to this process's per-minute counts (in the caller's transaction)."""
        counts = {key: count for key, count in counts.items() if count}
        if not counts:
            return
        now = self.wall_clock.now()
        bucket = now.replace(second=0, microsecond=0)
        rows = [{"bucket": bucket, "kind": kind, "trigger_name": trigger[:KEY_LENGTH],
                 "source": self.activity_source, "count": count}
                for (kind, trigger), count in sorted(counts.items())]
        insert = (postgresql.insert(activity) if self._postgresql else sqlite.insert(activity))
        connection.execute(insert.on_conflict_do_update(
            index_elements=["bucket", "kind", "trigger_name", "source"],
            set_={"count": activity.c.count + insert.excluded.count}), rows)
        if now >= self._next_activity_trim:
            self._next_activity_trim = now + timedelta(minutes=10)
            connection.execute(activity.delete().where(
                activity.c.source == self.activity_source,
                activity.c.bucket < bucket - ACTIVITY_RETENTION))

    def activity_since(self, since: datetime) -> list[tuple[datetime, str, str, int]]:
        """(minute, kind, trigger, count) from every process since ``since`` (real time)."""
        with self._reading() as connection:
            return [tuple(row) for row in connection.execute(
                sa.select(activity.c.bucket, activity.c.kind, activity.c.trigger_name,
                          sa.func.sum(activity.c.count))
                .where(activity.c.bucket >= since)
                .group_by(activity.c.bucket, activity.c.kind, activity.c.trigger_name)
                .order_by(activity.c.bucket))]

    # -- the shared clock ----------------------------------------------------------------

    def _advance_clock(self, connection: Connection, name: str, value: datetime) -> datetime:
        if self._postgresql:
            statement = postgresql.insert(clocks_table).values(name=name, value=value)
            newest = sa.func.greatest(clocks_table.c.value, statement.excluded.value)
        else:
            statement = sqlite.insert(clocks_table).values(name=name, value=value)
            # Stored as fixed-width ISO text, so the larger text is the later time.
            newest = sa.func.max(clocks_table.c.value, statement.excluded.value)
        statement = statement.on_conflict_do_update(index_elements=["name"], set_={"value": newest})
        return connection.execute(statement.returning(clocks_table.c.value)).scalar_one()

    def advance_clock(self, name: str, value: datetime) -> datetime:
        """Move the named clock forward to ``value`` (never back); returns its value after."""
        return self._retrying(self._advance_clock, name, value)

    def read_clock(self, name: str) -> datetime | None:
        """The named clock's value; for a clock never written, the newest event's timestamp
        (a database from before the event clock existed), or None on an empty database."""
        with self._reading() as connection:
            value = connection.execute(sa.select(clocks_table.c.value)
                                       .where(clocks_table.c.name == name)).scalar()
            if value is None:
                value = connection.execute(sa.select(sa.func.max(events.c.generated))).scalar()
        return value

    def save_dead_letters(self, letters: Sequence[Mapping[str, Any]], now: datetime) -> None:
        """Keep messages that could not be processed: each has source, reason, detail, body."""
        if letters:
            self.ingest((), letters, now)

    def count_dead_letters(self) -> int:
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(sa.func.count()).select_from(dead_letters_table)).scalar_one()

    # -- reading -----------------------------------------------------------------------

    def get_event(self, message_id: str) -> Event | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(events.c.message_id, event_types.c.name, events.c.generated, events.c.traits)
                .join(event_types, events.c.event_type_id == event_types.c.id)
                .where(events.c.message_id == message_id)).first()
        return None if row is None else _event_from_row(row)

    def stored_message_ids(self, message_ids: Sequence[str]) -> set[str]:
        """Which of these message ids are already stored as events (one query per few thousand)."""
        if not message_ids:
            return set()
        with self._reading() as connection:
            return self._bulk.known_message_ids(connection, list(message_ids))

    def count_events(self) -> int:
        with self.engine.connect() as connection:
            return connection.execute(sa.select(sa.func.count()).select_from(events)).scalar_one()

    def stream_events(self, stream_id: int) -> list[Event]:
        """A stream's events in timestamp order (ties in arrival order)."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(events.c.message_id, event_types.c.name, events.c.generated, events.c.traits)
                .join(stream_events, stream_events.c.event_id == events.c.id)
                .join(event_types, events.c.event_type_id == event_types.c.id)
                .where(stream_events.c.stream_id == stream_id)
                .order_by(events.c.generated, events.c.id))
            return [_event_from_row(row) for row in rows]

    def get_stream(self, stream_id: int) -> StreamRecord | None:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(streams).where(streams.c.id == stream_id)).first()
        return None if row is None else _stream_from_row(row)

    def list_streams(self, trigger_name: str | None = None, state: str | None = None,
                     limit: int | None = None) -> list[StreamRecord]:
        query = sa.select(streams).order_by(streams.c.id)
        if trigger_name is not None:
            query = query.where(streams.c.trigger_name == trigger_name)
        if state is not None:
            query = query.where(streams.c.state == state)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as connection:
            return [_stream_from_row(row) for row in connection.execute(query)]

    def count_streams(self, state: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(streams)
        if state is not None:
            query = query.where(streams.c.state == state)
        with self.engine.connect() as connection:
            return connection.execute(query).scalar_one()

    def count_events_by_type(self) -> dict[str, int]:
        with self.engine.connect() as connection:
            return dict(connection.execute(
                sa.select(event_types.c.name, sa.func.count(events.c.id))
                .join(events, events.c.event_type_id == event_types.c.id)
                .group_by(event_types.c.name)).all())

    def find_events(self, event_type: str | None = None, limit: int | None = None) -> list[Event]:
        """Events (of one type), oldest first."""
        query = (sa.select(events.c.message_id, event_types.c.name, events.c.generated, events.c.traits)
                 .join(event_types, events.c.event_type_id == event_types.c.id)
                 .order_by(events.c.generated, events.c.id).limit(limit))
        if event_type is not None:
            query = query.where(event_types.c.name == event_type)
        with self.engine.connect() as connection:
            return [_event_from_row(row) for row in connection.execute(query)]

    def find_events_by_trait(self, name: str, value: Any) -> list[str]:
        """Message ids of events whose indexed trait ``name`` equals ``value``."""
        column = {str: event_traits.c.t_string, int: event_traits.c.t_int,
                  float: event_traits.c.t_float, datetime: event_traits.c.t_datetime}[type(value)]
        with self.engine.connect() as connection:
            return list(connection.execute(
                sa.select(events.c.message_id)
                .join(event_traits, event_traits.c.event_id == events.c.id)
                .where(event_traits.c.name == name, column == value)
                .order_by(events.c.id)).scalars())


def _closed_to(stream: _PendingStream, timestamp: datetime, now: datetime, grace: timedelta,
               result: IngestResult) -> bool:
    """Whether an event stamped ``timestamp`` arriving at ``now`` must start a new stream.

    A stream stops accepting events once it is due: ready to fire and its fire
    time come, or expired. So which events a stream holds never depends on how
    soon a worker gets to it, and a replay builds the streams a live run built.
    Within ``grace`` of its expiry, an expired stream still takes events
    stamped before its expiry (late ones); one stamped after closes it.
    """
    if stream.fire_at is not None and stream.fire_at <= now:
        result.closed_due += 1
        return True
    if stream.expire <= now and (stream.expire + grace <= now or timestamp >= stream.expire):
        result.closed_expired += 1
        return True
    return False


def _event_from_row(row) -> Event:
    return event_from_columns(*row)


def _stream_from_row(row) -> StreamRecord:
    return StreamRecord(
        id=row.id, trigger_name=row.trigger_name, state=row.state, state_serial=row.state_serial,
        distinguishing_traits=distinguishing_from_json(orjson.loads(row.distinguishing_traits)),
        first_event=row.first_event, last_event=row.last_event,
        expire_timestamp=row.expire_timestamp, fire_timestamp=row.fire_timestamp,
        fire_counts=tuple(orjson.loads(row.fire_counts)), event_count=row.event_count,
        is_open=row.open_key is not None, created_at=row.created_at, updated_at=row.updated_at,
        claimed_by=row.claimed_by, claim_expires=row.claim_expires, attempts=row.attempts,
        last_error=row.last_error)


def _encode_datetime(value: Any) -> Any:
    if isinstance(value, datetime):
        return encode_value(value)
    raise TypeError(f"{type(value).__name__} is not a trait type")


def _traits_json(event: Event) -> str:
    """The event's traits as typed JSON (datetimes marked), without the envelope keys."""
    # A C-level copy then three deletions: a third of a filtering comprehension's cost.
    traits = dict(event)
    del traits["message_id"], traits["event_type"], traits["timestamp"]
    return orjson.dumps(traits, default=_encode_datetime,
                        option=orjson.OPT_PASSTHROUGH_DATETIME).decode()


_TRAIT_COLUMNS = ("event_id", "name", "type", "t_string", "t_int", "t_float", "t_datetime")
# How often a process reads again which traits are indexed for which events.
COVERAGE_REFRESH = 60.0
# "Every event may lack this trait's index rows" (a name no writer has recorded).
_EVERY_EVENT = 2**63 - 1


def _dead_letter_rows(letters: Sequence[Mapping[str, Any]], now: datetime) -> list[dict[str, Any]]:
    return [{"received_at": now, "source": letter["source"][:KEY_LENGTH],
             "reason": letter["reason"][:KEY_LENGTH], "detail": letter.get("detail"),
             "body": body_bytes(letter["body"])} for letter in letters]


def _chunks(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start:start + _CHUNK]


def _retryable(exc: Exception, cause: Exception) -> bool:
    if getattr(exc, "connection_invalidated", False):
        return True
    code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if isinstance(exc, IntegrityError) or code == "23505":
        # Only a stream opened concurrently by another ingester; other
        # integrity errors are bugs and must surface.
        return "open_key" in str(cause)
    if code in ("40001", "40P01"):  # serialization failure, deadlock
        return True
    return isinstance(exc, OperationalError) and "database is locked" in str(cause)
