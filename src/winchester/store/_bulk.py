"""Bulk writes for the ingest hot path, one implementation per database.

Ingest writes tens of thousands of rows a second. Going through SQLAlchemy's
per-row parameter processing costs more than the database does, so these
statements are handed to the driver directly: plain ``executemany`` on
SQLite, and one statement per table with array parameters (``unnest``) on
PostgreSQL. Column lists here must stay in step with ``_schema.py``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import orjson

from sqlalchemy.engine import Connection

from winchester.errors import WinchesterError

# (message_id, event_type_id, generated, traits JSON)
EventRow = tuple[str, int, datetime, str]
# received_at, message_id, event_type, publisher_id, generated, status, reason, body
ArchiveRow = tuple[datetime, str | None, str | None, str | None, datetime | None, str, str | None, bytes]
# (event_id, name, type, t_string, t_int, t_float, t_datetime)
TraitRow = tuple[int, str, int, str | None, int | None, float | None, datetime | None]
# (id, trigger_name, dist_key, open_key, distinguishing_traits, first, last, expire, fire_at,
#  fire_counts, event_count, now)
StreamRow = tuple[int, str, str, str | None, str, datetime, datetime, datetime, datetime | None,
                  str, int, datetime]
# (id, first, last, expire, fire_at, fire_counts, event_count, now)
StreamUpdate = tuple[int, datetime, datetime, datetime, datetime | None, str, int, datetime]
# (stream_id, at, state, previous_state, actor, detail)
HistoryRow = tuple[int, datetime, str, str | None, str | None, str | None]

_LOOKUP_CHUNK = 5000

# (id, open_key, distinguishing_traits, first, last, expire, fire_at, fire_counts, event_count,
#  created_at)
OpenStreamRow = tuple[int, str, str, datetime, datetime, datetime, datetime | None, str, int, datetime]

_OPEN_STREAM_COLUMNS = ("id, open_key, distinguishing_traits, first_event, last_event, "
                        "expire_timestamp, fire_timestamp, fire_counts, event_count, created_at")


class BulkWriter:
    def insert_events(self, connection: Connection, rows: Sequence[EventRow]) -> dict[str, int]:
        """Insert the events whose message_id is new; message_id -> id of those inserted."""
        raise NotImplementedError

    def known_message_ids(self, connection: Connection, message_ids: Sequence[str]) -> set[str]:
        """Which of these message ids are stored as events."""
        raise NotImplementedError

    def insert_traits(self, connection: Connection, rows: Sequence[TraitRow]) -> None:
        raise NotImplementedError

    def allocate_stream_ids(self, connection: Connection, count: int) -> list[int]:
        raise NotImplementedError

    def insert_streams(self, connection: Connection, rows: Sequence[StreamRow]) -> None:
        raise NotImplementedError

    def update_streams(self, connection: Connection, rows: Sequence[StreamUpdate]) -> None:
        raise NotImplementedError

    def insert_members(self, connection: Connection, rows: Sequence[tuple[int, int]]) -> None:
        raise NotImplementedError

    def open_streams(self, connection: Connection, keys: Sequence[str]) -> list[OpenStreamRow]:
        """The streams accepting events under these open keys (locked against concurrent ingesters)."""
        raise NotImplementedError

    def insert_archive(self, connection: Connection, rows: Sequence[ArchiveRow]) -> int:
        """Archive raw notifications, skipping a message_id already kept; how many were added."""
        raise NotImplementedError

    def insert_history(self, connection: Connection, rows: Sequence[HistoryRow]) -> None:
        """Streams' state changes, in order (two per stream run: claimed, then finished)."""
        raise NotImplementedError


def _first(row: Sequence[Any]) -> Any:
    return row[0]


def _sqlite_time(value: datetime | None) -> str | None:
    # The text form SQLAlchemy's SQLite DateTime type reads back.
    return None if value is None else value.isoformat(sep=" ", timespec="microseconds")


def _sqlite_parse_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _sqlite_high_water(connection: Connection, table: str) -> int:
    """The largest id the table ever had (AUTOINCREMENT remembers deleted ones)."""
    return connection.exec_driver_sql(
        f"SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = '{table}'), 0), "
        f"coalesce((SELECT max(id) FROM {table}), 0))").scalar() or 0


class SQLiteWriter(BulkWriter):
    """SQLite: the writer holds the database lock (BEGIN IMMEDIATE) for the whole batch,
    so existing ids can be read first and new ids assigned without a race.

    Rows go in as multi-row ``INSERT ... VALUES (...), (...)`` statements, not
    ``executemany``: Python's sqlite3 module releases the GIL around every
    step, and a thread that has to win the GIL back thousands of times per
    batch while another thread distils the next batch waits up to the switch
    interval each time (measured: 300x slower). One step per statement keeps
    the writer's GIL hand-overs to a handful per batch; reads that return many
    rows come back as one JSON document for the same reason.

    The bulk statements say ``OR FAIL``: under SQLite's default (ABORT) a
    statement that writes many rows first copies every page it touches to a
    statement journal, so that a constraint failure can undo just that
    statement (measured: more bytes than the WAL itself, 5% of ingest time).
    Here a failure fails the whole batch, and its transaction is rolled back.
    """

    def known_message_ids(self, connection: Connection, message_ids: Sequence[str]) -> set[str]:
        known: set[str] = set()
        for chunk in _sqlite_chunks(connection, message_ids, 1):
            marks = ",".join("?" * len(chunk))
            found = connection.exec_driver_sql(
                f"SELECT json_group_array(message_id) FROM events WHERE message_id IN ({marks})",
                tuple(chunk)).scalar()
            if found and found != "[]":
                known.update(orjson.loads(found))
        return known

    def insert_events(self, connection: Connection, rows: Sequence[EventRow]) -> dict[str, int]:
        known = self.known_message_ids(connection, [row[0] for row in rows])
        fresh = [row for row in rows if row[0] not in known] if known else rows
        if not fresh:
            return {}
        largest = _sqlite_high_water(connection, "events")
        inserted = {row[0]: largest + offset for offset, row in enumerate(fresh, 1)}
        # Ids in arrival order; rows in message_id order, which walks the
        # message_id index once from one end instead of jumping about it.
        _sqlite_insert(connection,
                       "INSERT OR FAIL INTO events (id, message_id, event_type_id, generated, traits)",
                       [(inserted[m], m, t, _sqlite_time(g), traits)
                        for m, t, g, traits in sorted(fresh, key=_first)])
        return inserted

    def insert_traits(self, connection: Connection, rows: Sequence[TraitRow]) -> None:
        _sqlite_insert(
            connection,
            "INSERT OR FAIL INTO event_traits (event_id, name, type, t_string, t_int, t_float, t_datetime)",
            [(*row[:6], _sqlite_time(row[6])) for row in rows])

    def allocate_stream_ids(self, connection: Connection, count: int) -> list[int]:
        largest = _sqlite_high_water(connection, "streams")
        return list(range(largest + 1, largest + 1 + count))

    def insert_streams(self, connection: Connection, rows: Sequence[StreamRow]) -> None:
        _sqlite_insert(
            connection,
            "INSERT OR FAIL INTO streams (id, trigger_name, dist_key, open_key, distinguishing_traits, "
            "first_event, last_event, expire_timestamp, fire_timestamp, fire_counts, event_count, "
            "created_at, updated_at, state, state_serial, attempts)",
            [(*row[:5], *(_sqlite_time(t) for t in row[5:9]), row[9], row[10],
              _sqlite_time(row[11]), _sqlite_time(row[11]), "active", 0, 0) for row in rows])

    def update_streams(self, connection: Connection, rows: Sequence[StreamUpdate]) -> None:
        values = [(row[0], *(_sqlite_time(t) for t in row[1:5]), row[5], row[6], _sqlite_time(row[7]))
                  for row in rows]
        for chunk in _sqlite_chunks(connection, values, 8, (None,) * 8):
            connection.exec_driver_sql(
                "WITH u (id, f, l, e, fa, c, n, now) AS (VALUES "
                + ",".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
                + ") UPDATE OR FAIL streams SET first_event = u.f, last_event = u.l, expire_timestamp = u.e, "
                "fire_timestamp = u.fa, fire_counts = u.c, event_count = u.n, updated_at = u.now "
                "FROM u WHERE streams.id = u.id",
                tuple(value for row in chunk for value in row))

    def insert_members(self, connection: Connection, rows: Sequence[tuple[int, int]]) -> None:
        _sqlite_insert(connection, "INSERT OR FAIL INTO stream_events (stream_id, event_id)", rows)

    def open_streams(self, connection: Connection, keys: Sequence[str]) -> list[OpenStreamRow]:
        found: list[OpenStreamRow] = []
        parse = _sqlite_parse_time
        for chunk in _sqlite_chunks(connection, keys, 1):
            document = connection.exec_driver_sql(
                f"SELECT json_group_array(json_array({_OPEN_STREAM_COLUMNS})) FROM streams "
                f"WHERE open_key IN ({','.join('?' * len(chunk))})", tuple(chunk)).scalar()
            for (stream_id, key, distinguishing, first, last, expire, fire_at, counts, event_count,
                 created_at) in orjson.loads(document or "[]"):
                found.append((stream_id, key, distinguishing, parse(first), parse(last),
                              parse(expire), parse(fire_at), counts, event_count, parse(created_at)))
        return found

    def insert_archive(self, connection: Connection, rows: Sequence[ArchiveRow]) -> int:
        cursor = connection.exec_driver_sql(
            "INSERT INTO archive (received_at, message_id, event_type, publisher_id, generated, "
            "status, reason, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
            [(_sqlite_time(row[0]), *row[1:4], _sqlite_time(row[4]), *row[5:]) for row in rows])
        return cursor.rowcount

    def insert_history(self, connection: Connection, rows: Sequence[HistoryRow]) -> None:
        _sqlite_insert(connection, "INSERT OR FAIL INTO stream_history (stream_id, at, state, "
                       "previous_state, actor, detail)",
                       [(row[0], _sqlite_time(row[1]), *row[2:]) for row in rows])


def _sqlite_variable_limit(connection: Connection) -> int:
    driver = connection.connection.driver_connection
    try:
        return driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    except AttributeError:  # Python < 3.11 has no getlimit: SQLite's historical minimum
        return 999


def _sqlite_chunks(connection: Connection, values: Sequence[Any], width: int,
                   pad: Any = None) -> Iterator[list[Any]]:
    """``values`` in as few statements as SQLite's parameter limit allows, each chunk padded
    with ``pad`` to a power-of-two length.

    The driver caches compiled statements by their text, and one for a
    thousand rows is large: with a length per batch the cache filled up
    (measured: +50 MB of RSS); with powers of two a table needs a dozen at most.
    Callers make the padding match nothing (NULL keys).
    """
    fits = max(1, min(_sqlite_variable_limit(connection), 32766) // width)
    most = 1 << (fits.bit_length() - 1)
    for start in range(0, len(values), most):
        chunk = list(values[start:start + most])
        size = 1 << max(0, (len(chunk) - 1).bit_length())
        chunk.extend([pad] * (size - len(chunk)))
        yield chunk


def _sqlite_insert(connection: Connection, head: str, rows: Sequence[Sequence[Any]]) -> None:
    """``head`` (INSERT INTO t (columns)) for every row; the first column must never be NULL,
    which is how the padding rows are left out."""
    if not rows:
        return
    width = len(rows[0])
    placeholder = "(" + ", ".join("?" * width) + ")"
    empty = (None,) * width
    for chunk in _sqlite_chunks(connection, rows, width, empty):
        connection.exec_driver_sql(
            f"{head} SELECT * FROM (VALUES " + ",".join([placeholder] * len(chunk))
            + ") WHERE column1 IS NOT NULL", tuple(value for row in chunk for value in row))


# An advisory lock key per schema (several Winchester schemas can share a database).
ARCHIVE_WRITERS_LOCK = "hashtext(current_schema() || '.winchester.archive')"


class PostgreSQLWriter(BulkWriter):
    """PostgreSQL: rows travel by COPY, the fastest way in; new rows are copied straight
    into their table, rows that may conflict or update go through a temporary table."""

    @staticmethod
    def _copy(connection: Connection, target: str, rows: Sequence[tuple],
              binary_types: Sequence[str] | None = None) -> None:
        driver = connection.connection.driver_connection
        options = " (FORMAT BINARY)" if binary_types else ""
        with driver.cursor() as cursor, cursor.copy(f"COPY {target} FROM STDIN{options}") as copy:
            if binary_types:
                copy.set_types(binary_types)
            for row in rows:
                copy.write_row(row)

    @staticmethod
    def _staging(connection: Connection, name: str, columns: str) -> None:
        connection.exec_driver_sql(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {name} ({columns}) ON COMMIT DELETE ROWS")

    def insert_events(self, connection: Connection, rows: Sequence[EventRow]) -> dict[str, int]:
        self._staging(connection, "incoming_events", "message_id varchar(255), "
                      "event_type_id integer, generated timestamp, traits text, "
                      "lock_rank integer, ord serial")
        # Ids are taken in arrival order (ord, the innermost ORDER BY: a
        # volatile nextval keeps the subquery from being flattened); the rows
        # go in in message_id order (lock_rank, ranked here: a collated sort of
        # a thousand ids in SQL cost more than the rest of the insert), so
        # concurrent ingesters take index locks in the same order (no deadlock).
        # A duplicate's id is left unused.
        ranks = [0] * len(rows)
        for rank, position in enumerate(sorted(range(len(rows)), key=lambda i: rows[i][0])):
            ranks[position] = rank
        self._copy(connection, "incoming_events (message_id, event_type_id, generated, traits, "
                   "lock_rank)", [(*row, rank) for row, rank in zip(rows, ranks, strict=True)],
                   ("varchar", "int4", "timestamp", "text", "int4"))
        driver = connection.connection.driver_connection
        with driver.cursor() as cursor:
            # Straight from the driver: a thousand rows through SQLAlchemy's
            # result machinery cost more than the statement.
            cursor.execute(
                "INSERT INTO events (id, message_id, event_type_id, generated, traits) "
                "SELECT id, message_id, event_type_id, generated, traits FROM ("
                "  SELECT nextval(pg_get_serial_sequence('events', 'id')) AS id, arrived.* FROM ("
                "    SELECT message_id, event_type_id, generated, traits, lock_rank "
                "    FROM incoming_events ORDER BY ord) AS arrived) AS numbered "
                "ORDER BY lock_rank ON CONFLICT (message_id) DO NOTHING RETURNING message_id, id")
            return dict(cursor.fetchall())

    def known_message_ids(self, connection: Connection, message_ids: Sequence[str]) -> set[str]:
        known: set[str] = set()
        for start in range(0, len(message_ids), _LOOKUP_CHUNK):
            known.update(message_id for (message_id,) in connection.exec_driver_sql(
                "SELECT message_id FROM events WHERE message_id = ANY(%b::varchar[])",
                (list(message_ids[start:start + _LOOKUP_CHUNK]),)))
        return known

    def insert_traits(self, connection: Connection, rows: Sequence[TraitRow]) -> None:
        self._copy(connection, "event_traits (event_id, name, type, t_string, t_int, t_float, "
                   "t_datetime)", rows, ("int8", "varchar", "int2", "varchar", "int8", "float8", "timestamp"))

    def allocate_stream_ids(self, connection: Connection, count: int) -> list[int]:
        return list(connection.exec_driver_sql(
            "SELECT nextval(pg_get_serial_sequence('streams', 'id')) FROM generate_series(1, %s)",
            (count,)).scalars())

    def insert_streams(self, connection: Connection, rows: Sequence[StreamRow]) -> None:
        self._copy(connection, "streams (id, trigger_name, dist_key, open_key, "
                   "distinguishing_traits, first_event, last_event, expire_timestamp, "
                   "fire_timestamp, fire_counts, event_count, created_at, updated_at, state, "
                   "state_serial, attempts)",
                   [(*row, row[11], "active", 0, 0) for row in rows],
                   ("int8", "varchar", "varchar", "varchar", "text", "timestamp", "timestamp", "timestamp",
                    "timestamp", "text", "int4", "timestamp", "timestamp", "varchar", "int4", "int4"))

    def update_streams(self, connection: Connection, rows: Sequence[StreamUpdate]) -> None:
        self._staging(connection, "incoming_stream_updates", "id bigint, f timestamp, "
                      "l timestamp, e timestamp, fa timestamp, c text, n integer, now timestamp")
        self._copy(connection, "incoming_stream_updates", rows,
                   ("int8", "timestamp", "timestamp", "timestamp", "timestamp", "text", "int4", "timestamp"))
        connection.exec_driver_sql(
            "UPDATE streams AS s SET first_event = u.f, last_event = u.l, expire_timestamp = u.e, "
            "fire_timestamp = u.fa, fire_counts = u.c, event_count = u.n, updated_at = u.now "
            "FROM incoming_stream_updates AS u WHERE s.id = u.id")

    def insert_members(self, connection: Connection, rows: Sequence[tuple[int, int]]) -> None:
        self._copy(connection, "stream_events (stream_id, event_id)", rows, ("int8", "int8"))

    def open_streams(self, connection: Connection, keys: Sequence[str]) -> list[OpenStreamRow]:
        # open_key is set only while a stream accepts events (claiming or
        # closing a stream clears it), so the unique index alone answers; one
        # array parameter keeps the statement text fixed, so a prepared
        # generic plan cannot stray from that index. Concurrent ingesters
        # serialise on the streams they share (FOR UPDATE), in id order.
        # The array travels in binary (%b): the text form must quote and
        # escape every key, which cost more than the query (keys are JSON).
        found: list[OpenStreamRow] = []
        for start in range(0, len(keys), _LOOKUP_CHUNK):
            found.extend(connection.exec_driver_sql(
                f"SELECT {_OPEN_STREAM_COLUMNS} FROM streams WHERE open_key = ANY(%b::varchar[]) "
                "ORDER BY id FOR UPDATE", (list(keys[start:start + _LOOKUP_CHUNK]),)).all())
        return found

    def insert_archive(self, connection: Connection, rows: Sequence[ArchiveRow]) -> int:
        # Held until commit: a reader of the archive waits for every batch that may hold
        # ids below the newest it saw (see ArchiveStore._settled_archive_id).
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock_shared({ARCHIVE_WRITERS_LOCK})")
        self._staging(connection, "incoming_archive", "received_at timestamp, message_id varchar(255), "
                      "event_type varchar(255), publisher_id varchar(255), generated timestamp, "
                      "status varchar(16), reason text, body bytea, ord serial")
        # Binary: in text form every body would travel, and be parsed, as hex
        # twice its size (measured: a third of the server's time per row).
        self._copy(connection, "incoming_archive (received_at, message_id, event_type, publisher_id, "
                   "generated, status, reason, body)", rows,
                   ("timestamp", "varchar", "varchar", "varchar", "timestamp", "varchar", "text", "bytea"))
        return connection.exec_driver_sql(
            "INSERT INTO archive (received_at, message_id, event_type, publisher_id, generated, "
            "status, reason, body) SELECT received_at, message_id, event_type, publisher_id, "
            "generated, status, reason, body FROM incoming_archive ORDER BY ord "
            "ON CONFLICT (message_id) DO NOTHING").rowcount

    def insert_history(self, connection: Connection, rows: Sequence[HistoryRow]) -> None:
        self._copy(connection, "stream_history (stream_id, at, state, previous_state, actor, detail)",
                   rows, ("int8", "timestamp", "varchar", "varchar", "varchar", "text"))


def writer_for(dialect: str) -> BulkWriter:
    if dialect == "sqlite":
        return SQLiteWriter()
    if dialect == "postgresql":
        return PostgreSQLWriter()
    raise WinchesterError(f"the {dialect} database is not supported: use SQLite or PostgreSQL")
