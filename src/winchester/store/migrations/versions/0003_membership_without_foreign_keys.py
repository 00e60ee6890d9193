"""Traits and stream membership without foreign keys.

The ingest path writes a membership row and a trait row or two for every
event. Checking their foreign keys cost PostgreSQL about a quarter of its
time per event (two index probes and a row lock per membership row); the
store, the only writer, deletes memberships and traits itself when it
deletes streams and events, so the constraints only repeated that work.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# (table, constraint, column, referred table)
FOREIGN_KEYS = (
    ("event_traits", "fk_event_traits_event_id_events", "event_id", "events"),
    ("stream_events", "fk_stream_events_stream_id_streams", "stream_id", "streams"),
    ("stream_events", "fk_stream_events_event_id_events", "event_id", "events"),
)


# The tables as revision 0002 left them: SQLite's batch mode rebuilds a table
# from this (instead of reflecting it, which --sql cannot do).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _tables_before() -> dict[str, sa.Table]:
    metadata = sa.MetaData()
    sa.Table("events", metadata, sa.Column("id", BigId, primary_key=True))
    sa.Table("streams", metadata, sa.Column("id", BigId, primary_key=True))
    event_traits = sa.Table(
        "event_traits", metadata,
        sa.Column("event_id", BigId, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("type", sa.SmallInteger, nullable=False),
        sa.Column("t_string", sa.String(255)),
        sa.Column("t_int", sa.BigInteger),
        sa.Column("t_float", sa.Float),
        sa.Column("t_datetime", sa.DateTime),
        sa.PrimaryKeyConstraint("event_id", "name", name="pk_event_traits"),
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], ondelete="CASCADE",
                                name="fk_event_traits_event_id_events"),
        *(sa.Index(f"ix_event_traits_name_{column}", "name", column,
                   sqlite_where=sa.text(f"{column} IS NOT NULL"))
          for column in ("t_string", "t_int", "t_float", "t_datetime")),
        sqlite_with_rowid=False,
    )
    stream_events = sa.Table(
        "stream_events", metadata,
        sa.Column("stream_id", BigId, nullable=False),
        sa.Column("event_id", BigId, nullable=False),
        sa.PrimaryKeyConstraint("stream_id", "event_id", name="pk_stream_events"),
        sa.ForeignKeyConstraint(["stream_id"], ["streams.id"], ondelete="CASCADE",
                                name="fk_stream_events_stream_id_streams"),
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], ondelete="CASCADE",
                                name="fk_stream_events_event_id_events"),
        sa.Index("ix_stream_events_event_id", "event_id"),
    )
    return {"event_traits": event_traits, "stream_events": stream_events}


def _batch(table: str):
    if op.get_context().dialect.name == "sqlite":
        # SQLite cannot drop or add a constraint: batch mode rebuilds the table.
        return op.batch_alter_table(table, copy_from=_tables_before()[table], recreate="always")
    return op.batch_alter_table(table)


def upgrade() -> None:
    for table in ("event_traits", "stream_events"):
        with _batch(table) as batch:
            for owner, name, _column, _referred in FOREIGN_KEYS:
                if owner == table:
                    batch.drop_constraint(name, type_="foreignkey")


def downgrade() -> None:
    # Memberships and traits whose event or stream is gone would refuse the
    # constraints: they mean nothing, so they go first.
    op.execute("DELETE FROM event_traits WHERE event_id NOT IN (SELECT id FROM events)")
    op.execute("DELETE FROM stream_events WHERE stream_id NOT IN (SELECT id FROM streams) "
               "OR event_id NOT IN (SELECT id FROM events)")
    for table in ("event_traits", "stream_events"):
        with _batch(table) as batch:
            for owner, name, column, referred in FOREIGN_KEYS:
                if owner == table:
                    batch.create_foreign_key(name, referred, [column], ["id"], ondelete="CASCADE")
