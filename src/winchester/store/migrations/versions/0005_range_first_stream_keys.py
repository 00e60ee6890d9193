"""Stream keys with their time range first.

A stream's key (its trigger and distinguishing traits, as canonical text)
now names time-range traits (``timestamp: day``) before the others, so the
keys of one day's streams are neighbours in the indexes on ``open_key`` and
``dist_key``; before, the instance id led and every new stream dirtied its
own index page. Ingest finds the stream an event joins by ``open_key``, so
the open streams' keys are rewritten here (both ways). Closed streams keep
their ``dist_key`` text: only the stream query's text search reads it, and
that search does not depend on the order.

The keys are computed by ``winchester.triggers.distinguishing_key`` from
the stored trigger name and distinguishing traits. ``--sql`` (offline) has
no rows to read: it prints a note instead, and a database with open streams
must be upgraded online.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

import orjson
import sqlalchemy as sa
from alembic import context, op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_CHUNK = 1000


def _rewrite_open_keys(ranges_first: bool) -> None:
    from winchester.triggers import distinguishing_from_json, distinguishing_key

    if context.is_offline_mode():
        op.execute("-- 0005: the open streams' keys are rewritten only by an online upgrade "
                   "(`winchester db upgrade`); a new database has none")
        return
    connection = op.get_bind()
    streams = sa.table("streams", sa.column("id", sa.BigInteger), sa.column("trigger_name"),
                       sa.column("open_key"), sa.column("dist_key"),
                       sa.column("distinguishing_traits"))
    last_id = 0
    while True:
        rows = connection.execute(
            sa.select(streams.c.id, streams.c.trigger_name, streams.c.open_key,
                      streams.c.distinguishing_traits)
            .where(streams.c.open_key.is_not(None), streams.c.id > last_id)
            .order_by(streams.c.id).limit(_CHUNK)).all()
        if not rows:
            return
        last_id = rows[-1].id
        changed = []
        for row in rows:
            traits = distinguishing_from_json(orjson.loads(row.distinguishing_traits))
            key = distinguishing_key(row.trigger_name, traits, ranges_first=ranges_first)
            if key != row.open_key:
                changed.append({"stream_id": row.id, "key": key})
        if changed:
            # The old and the new text of different streams cannot be equal (a key is
            # its trigger and traits written out), so no update meets the unique index.
            connection.execute(
                streams.update().where(streams.c.id == sa.bindparam("stream_id"))
                .values(open_key=sa.bindparam("key"), dist_key=sa.bindparam("key")), changed)


def upgrade() -> None:
    _rewrite_open_keys(ranges_first=True)


def downgrade() -> None:
    _rewrite_open_keys(ranges_first=False)
