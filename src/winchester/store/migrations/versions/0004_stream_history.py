"""Stream history (each claim, outcome, release and reset of a stream, for explain) and
activity (counts per minute, for the dashboard's rates).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "stream_history",
        sa.Column("id", BigId, nullable=False),
        sa.Column("stream_id", BigId, nullable=False),
        sa.Column("at", Timestamp, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("previous_state", sa.String(16)),
        sa.Column("actor", sa.String(255)),
        sa.Column("detail", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_stream_history"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_stream_history_stream_id_id", "stream_history", ["stream_id", "id"])
    op.create_table(
        "activity",
        sa.Column("bucket", Timestamp, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("trigger_name", sa.String(255), nullable=False),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("bucket", "kind", "trigger_name", "source", name="pk_activity"),
    )


def downgrade() -> None:
    op.drop_table("activity")
    op.drop_index("ix_stream_history_stream_id_id", table_name="stream_history")
    op.drop_table("stream_history")
