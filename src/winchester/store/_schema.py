"""The tables. Keep in step with migrations/versions (a test compares them).

Design notes:

* An event is one row; its traits are one JSON document in typed form (see
  :mod:`winchester.events`), so saving an event is one insert, not one per
  trait. Traits that queries filter on (``indexed_traits`` plus every
  distinguishing trait) are also copied, typed, into ``event_traits``, which is
  indexed by name and value.
* A stream that still accepts events carries ``open_key`` (its trigger and
  distinguishing traits, canonical). The unique index on it is what stops two
  ingest processes from opening two streams for the same thing; closed streams
  (claimed, expired, completed) have ``open_key`` NULL, which unique indexes
  ignore on every database.
* ``fire_counts`` keeps, per fire criterion, how many of the stream's events
  matched it, so the fire test never re-reads the stream's events.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid (auto-increment).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# Microseconds everywhere (MySQL/MariaDB drop them unless asked).
Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
# Raw notification bodies can be large.
Blob = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")

KEY_LENGTH = 255

event_types = sa.Table(
    "event_types", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(KEY_LENGTH), nullable=False, unique=True),
)

events = sa.Table(
    "events", metadata,
    sa.Column("id", BigId, primary_key=True),
    sa.Column("message_id", sa.String(KEY_LENGTH), nullable=False, unique=True),
    sa.Column("event_type_id", sa.Integer, sa.ForeignKey("event_types.id"), nullable=False),
    sa.Column("generated", Timestamp, nullable=False),
    sa.Column("traits", LongText, nullable=False),
    sa.Index(None, "generated"),
    sa.Index(None, "event_type_id", "generated"),
    # Ids are never reused after a delete (trimming), as on PostgreSQL.
    sqlite_autoincrement=True,
)

# Trait value types in event_traits.type.
TRAIT_TEXT, TRAIT_INT, TRAIT_FLOAT, TRAIT_DATETIME = 1, 2, 3, 4

event_traits = sa.Table(
    "event_traits", metadata,
    # No foreign key (migration 0003): the store deletes an event's traits with it.
    sa.Column("event_id", BigId, primary_key=True),
    sa.Column("name", sa.String(KEY_LENGTH), primary_key=True),
    sa.Column("type", sa.SmallInteger, nullable=False),
    sa.Column("t_string", sa.String(KEY_LENGTH)),
    sa.Column("t_int", sa.BigInteger),
    sa.Column("t_float", sa.Float),
    sa.Column("t_datetime", Timestamp),
    # Each row fills one value column: partial indexes keep the other three
    # indexes free of its NULL (a quarter of the index maintenance).
    *(sa.Index(None, "name", column, sqlite_where=sa.text(f"{column} IS NOT NULL"),
               postgresql_where=sa.text(f"{column} IS NOT NULL"))
      for column in ("t_string", "t_int", "t_float", "t_datetime")),
    # On SQLite the primary key is then the table itself: one b-tree less per row.
    sqlite_with_rowid=False,
)

# Which traits are indexed (migration 0006), and up to which event id the typed rows may be
# missing: the name was indexed after those events were stored (0: none missing).
indexed_traits = sa.Table(
    "indexed_traits", metadata,
    sa.Column("name", sa.String(KEY_LENGTH), primary_key=True),
    sa.Column("since_event_id", sa.BigInteger, nullable=False),
)

STREAM_STATES = ("active", "firing", "expiring", "error", "expire_error", "completed",
                 "retry_fire", "retry_expire")

streams = sa.Table(
    "streams", metadata,
    sa.Column("id", BigId, primary_key=True),
    sa.Column("trigger_name", sa.String(KEY_LENGTH), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    # Bumped on every state change: claims are conditional updates on it.
    sa.Column("state_serial", sa.Integer, nullable=False, server_default="0"),
    sa.Column("dist_key", sa.String(KEY_LENGTH), nullable=False),
    sa.Column("open_key", sa.String(KEY_LENGTH), unique=True),
    sa.Column("distinguishing_traits", sa.Text, nullable=False),
    sa.Column("first_event", Timestamp, nullable=False),
    sa.Column("last_event", Timestamp, nullable=False),
    sa.Column("expire_timestamp", Timestamp, nullable=False),
    sa.Column("fire_timestamp", Timestamp),
    sa.Column("fire_counts", sa.Text, nullable=False),
    sa.Column("event_count", sa.Integer, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    # The worker's lease (the pipelines issue).
    sa.Column("claimed_by", sa.String(KEY_LENGTH)),
    sa.Column("claim_expires", Timestamp),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    sa.CheckConstraint("state IN ('" + "', '".join(STREAM_STATES) + "')", name="ck_streams_state"),
    sa.Index(None, "trigger_name", "dist_key"),
    sa.Index(None, "state", "fire_timestamp"),
    sa.Index(None, "state", "expire_timestamp"),
    # A purged stream's id must never name another stream later.
    sqlite_autoincrement=True,
)

stream_events = sa.Table(
    "stream_events", metadata,
    # No foreign keys (migration 0003): checking them was a quarter of
    # PostgreSQL's ingest time; the store deletes memberships with their
    # stream or event.
    sa.Column("stream_id", BigId, primary_key=True),
    sa.Column("event_id", BigId, primary_key=True),
    sa.Index(None, "event_id"),
)

# What happened to each stream after ingest: claims, outcomes, resets (migration 0004).
# Deleted with its stream.
stream_history = sa.Table(
    "stream_history", metadata,
    sa.Column("id", BigId, primary_key=True),
    sa.Column("stream_id", BigId, nullable=False),
    sa.Column("at", Timestamp, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("previous_state", sa.String(16)),
    sa.Column("actor", sa.String(KEY_LENGTH)),
    sa.Column("detail", sa.Text),
    sa.Index(None, "stream_id", "id"),
    sqlite_autoincrement=True,
)

# Counts per minute of real time (notifications stored, streams fired...), for the
# dashboard's rates; each process writes its own rows, so writers never wait on
# each other (migration 0004). Kept for ACTIVITY_RETENTION.
activity = sa.Table(
    "activity", metadata,
    sa.Column("bucket", Timestamp, primary_key=True),
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("trigger_name", sa.String(KEY_LENGTH), primary_key=True),
    sa.Column("source", sa.String(KEY_LENGTH), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
)

# Every raw notification the persistor received (the bus issue), for history and replay.
archive = sa.Table(
    "archive", metadata,
    sa.Column("id", BigId, primary_key=True),
    sa.Column("received_at", Timestamp, nullable=False),
    sa.Column("message_id", sa.String(KEY_LENGTH), unique=True),
    sa.Column("event_type", sa.String(KEY_LENGTH)),
    sa.Column("generated", Timestamp),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("body", Blob, nullable=False),
    sa.Column("publisher_id", sa.String(KEY_LENGTH)),
    sa.Index(None, "generated"),
    sa.Index(None, "event_type", "generated"),
    sa.Index(None, "received_at"),
)

# Messages that could not be processed, kept with the reason (never dropped silently).
dead_letters = sa.Table(
    "dead_letters", metadata,
    sa.Column("id", BigId, primary_key=True),
    sa.Column("received_at", Timestamp, nullable=False),
    sa.Column("source", sa.String(KEY_LENGTH), nullable=False),
    sa.Column("reason", sa.String(KEY_LENGTH), nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
    sa.Column("body", Blob, nullable=False),
    sa.Index(None, "received_at"),
)

# Shared clocks (the replay issue): name -> the newest event time seen.
clocks = sa.Table(
    "clocks", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", Timestamp, nullable=False),
)
