"""Initial schema: events, traits, streams, archive, dead letters, clocks.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Types as they were when this revision was written (never import the live schema here).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
Blob = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
LongText = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
STATES = ("active", "firing", "expiring", "error", "expire_error", "completed",
          "retry_fire", "retry_expire")


def upgrade() -> None:
    op.create_table(
        "event_types",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_event_types"),
        sa.UniqueConstraint("name", name="uq_event_types_name"),
    )
    op.create_table(
        "events",
        sa.Column("id", BigId, nullable=False),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("event_type_id", sa.Integer, nullable=False),
        sa.Column("generated", Timestamp, nullable=False),
        sa.Column("traits", LongText, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.UniqueConstraint("message_id", name="uq_events_message_id"),
        sa.ForeignKeyConstraint(["event_type_id"], ["event_types.id"],
                                name="fk_events_event_type_id_event_types"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_generated", "events", ["generated"])
    op.create_index("ix_events_event_type_id_generated", "events", ["event_type_id", "generated"])
    op.create_table(
        "event_traits",
        sa.Column("event_id", BigId, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("type", sa.SmallInteger, nullable=False),
        sa.Column("t_string", sa.String(255)),
        sa.Column("t_int", sa.BigInteger),
        sa.Column("t_float", sa.Float),
        sa.Column("t_datetime", Timestamp),
        sa.PrimaryKeyConstraint("event_id", "name", name="pk_event_traits"),
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], ondelete="CASCADE",
                                name="fk_event_traits_event_id_events"),
        sqlite_with_rowid=False,
    )
    for column in ("t_string", "t_int", "t_float", "t_datetime"):
        op.create_index(f"ix_event_traits_name_{column}", "event_traits", ["name", column],
                        sqlite_where=sa.text(f"{column} IS NOT NULL"),
                        postgresql_where=sa.text(f"{column} IS NOT NULL"))
    op.create_table(
        "streams",
        sa.Column("id", BigId, nullable=False),
        sa.Column("trigger_name", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_serial", sa.Integer, nullable=False, server_default="0"),
        sa.Column("dist_key", sa.String(255), nullable=False),
        sa.Column("open_key", sa.String(255)),
        sa.Column("distinguishing_traits", sa.Text, nullable=False),
        sa.Column("first_event", Timestamp, nullable=False),
        sa.Column("last_event", Timestamp, nullable=False),
        sa.Column("expire_timestamp", Timestamp, nullable=False),
        sa.Column("fire_timestamp", Timestamp),
        sa.Column("fire_counts", sa.Text, nullable=False),
        sa.Column("event_count", sa.Integer, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.Column("claimed_by", sa.String(255)),
        sa.Column("claim_expires", Timestamp),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_streams"),
        sa.UniqueConstraint("open_key", name="uq_streams_open_key"),
        sa.CheckConstraint("state IN ('" + "', '".join(STATES) + "')", name="ck_streams_state"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_streams_trigger_name_dist_key", "streams", ["trigger_name", "dist_key"])
    op.create_index("ix_streams_state_fire_timestamp", "streams", ["state", "fire_timestamp"])
    op.create_index("ix_streams_state_expire_timestamp", "streams", ["state", "expire_timestamp"])
    op.create_table(
        "stream_events",
        sa.Column("stream_id", BigId, nullable=False),
        sa.Column("event_id", BigId, nullable=False),
        sa.PrimaryKeyConstraint("stream_id", "event_id", name="pk_stream_events"),
        sa.ForeignKeyConstraint(["stream_id"], ["streams.id"], ondelete="CASCADE",
                                name="fk_stream_events_stream_id_streams"),
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], ondelete="CASCADE",
                                name="fk_stream_events_event_id_events"),
    )
    op.create_index("ix_stream_events_event_id", "stream_events", ["event_id"])
    op.create_table(
        "archive",
        sa.Column("id", BigId, nullable=False),
        sa.Column("received_at", Timestamp, nullable=False),
        sa.Column("message_id", sa.String(255)),
        sa.Column("event_type", sa.String(255)),
        sa.Column("generated", Timestamp),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("body", Blob, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_archive"),
        sa.UniqueConstraint("message_id", name="uq_archive_message_id"),
    )
    op.create_index("ix_archive_generated", "archive", ["generated"])
    op.create_index("ix_archive_event_type_generated", "archive", ["event_type", "generated"])
    op.create_table(
        "dead_letters",
        sa.Column("id", BigId, nullable=False),
        sa.Column("received_at", Timestamp, nullable=False),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("reason", sa.String(255), nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
        sa.Column("body", Blob, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dead_letters"),
    )
    op.create_index("ix_dead_letters_received_at", "dead_letters", ["received_at"])
    op.create_table(
        "clocks",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_clocks"),
    )


def downgrade() -> None:
    for table in ("clocks", "dead_letters", "archive", "stream_events", "streams",
                  "event_traits", "events", "event_types"):
        op.drop_table(table)
