"""Which traits are indexed, and from which event on.

A trait added to ``indexed_traits`` (or a trigger's new distinguishing
trait) gets typed rows in ``event_traits`` only for events stored after
the change. ``indexed_traits`` records, per name, the newest event id when
it was first indexed (``since_event_id``): filters on that name also read
the JSON of the events up to it, until ``winchester db index-traits`` has
filled in their rows (it then sets it to 0).

Every name present in ``event_traits`` when this migration runs was indexed
from the start as far as anyone can tell: recorded with 0.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "indexed_traits",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("since_event_id", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_indexed_traits"),
    )
    op.execute("INSERT INTO indexed_traits (name, since_event_id) "
               "SELECT DISTINCT name, 0 FROM event_traits")


def downgrade() -> None:
    op.drop_table("indexed_traits")
