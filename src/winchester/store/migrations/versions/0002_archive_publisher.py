"""Archive: publisher_id, and an index on received_at for retention and export.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("archive") as batch:
        batch.add_column(sa.Column("publisher_id", sa.String(255)))
    op.create_index("ix_archive_received_at", "archive", ["received_at"])


def downgrade() -> None:
    op.drop_index("ix_archive_received_at", table_name="archive")
    with op.batch_alter_table("archive") as batch:
        batch.drop_column("publisher_id")
