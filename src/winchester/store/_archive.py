"""The archive: every raw notification as received, for history and replay."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from winchester.store._schema import KEY_LENGTH, archive

logger = logging.getLogger(__name__)

ARCHIVED, REJECTED = "archived", "rejected"


@dataclass(frozen=True)
class ArchivedNotification:
    id: int
    received_at: datetime
    message_id: str | None
    event_type: str | None
    publisher_id: str | None
    generated: datetime | None
    status: str
    reason: str | None
    body: bytes


@dataclass(frozen=True)
class ArchiveResult:
    archived: int
    duplicates: int


class ArchiveStore:
    """The archive side of :class:`winchester.store.Store` (mixed into it)."""

    engine: Any
    _dialect: str
    _bulk: Any

    def archive_notifications(self, rows: Sequence[Mapping[str, Any]]) -> ArchiveResult:
        """Keep raw notifications; one transaction. A ``message_id`` already archived is skipped.

        Each row: ``received_at``, ``body`` (bytes, as received), ``status``
        (``archived`` or ``rejected``), and when known ``message_id``,
        ``event_type``, ``publisher_id``, ``generated`` and ``reason``.
        Notifications without a ``message_id`` are always kept, and so are
        those whose id is longer than the column: cut to fit, two different
        ids could look the same, and the second notification would be lost.
        """
        if not rows:
            return ArchiveResult(0, 0)
        values = [(row["received_at"], _fitting(row.get("message_id")), _clip(row.get("event_type")),
                   _clip(row.get("publisher_id")), row.get("generated"), row.get("status", ARCHIVED),
                   row.get("reason"), row["body"]) for row in rows]

        def write(connection: Connection) -> int:
            return self._bulk.insert_archive(connection, values)

        archived = self._retrying(write)
        return ArchiveResult(archived, len(values) - archived)

    def count_archive(self, since: datetime | None = None, until: datetime | None = None,
                      event_type: str | None = None, *,
                      received: tuple[datetime | None, datetime | None] = (None, None)) -> int:
        query = sa.select(sa.func.count()).select_from(archive).where(
            *_filters(since, until, event_type, received))
        with self.engine.connect() as connection:
            return connection.execute(query).scalar_one()

    def iter_archive(self, since: datetime | None = None, until: datetime | None = None,
                     event_type: str | None = None, batch: int = 1000,
                     after_id: int = 0, settle_seconds: float = 30.0, *,
                     received: tuple[datetime | None, datetime | None] = (None, None)
                     ) -> Iterator[ArchivedNotification]:
        """Archived notifications in arrival order, read a page at a time (memory stays flat).

        ``since``/``until`` bound the notification's own timestamp
        (``generated``); rows without one are included only when neither is given.
        ``received`` (since, until) bounds when it was archived: every row has that.
        What is read is the archive as it stood when the iteration began, and
        all of it: see :meth:`_settled_archive_id` (waits at most ``settle_seconds``).
        """
        last = after_id
        through = self._settled_archive_id(settle_seconds)
        while True:
            query = (sa.select(archive)
                     .where(archive.c.id > last, archive.c.id <= through,
                            *_filters(since, until, event_type, received))
                     .order_by(archive.c.id).limit(batch))
            with self.engine.connect() as connection:
                rows = connection.execute(query).all()
            for row in rows:
                yield ArchivedNotification(
                    id=row.id, received_at=row.received_at, message_id=row.message_id,
                    event_type=row.event_type, publisher_id=row.publisher_id, generated=row.generated,
                    status=row.status, reason=row.reason, body=bytes(row.body))
            if len(rows) < batch:
                return
            last = rows[-1].id

    def archive_page(self, since: datetime | None, until: datetime | None, event_type: str | None,
                     after_id: int, limit: int) -> list[ArchivedNotification]:
        """One page of :meth:`iter_archive` (the API's paging)."""
        page = []
        # A request waits a little for archive writes in flight, not as long as a replay would.
        for row in self.iter_archive(since, until, event_type, batch=limit, after_id=after_id,
                                     settle_seconds=2.0):
            page.append(row)
            if len(page) >= limit:
                break
        return page

    def _settled_archive_id(self, settle_seconds: float) -> int:
        """The archive's largest id, once no row with a smaller one can still appear.

        PostgreSQL hands out ids when rows are inserted, not when they are
        committed: a persistor's batch holding ids 100-199 can commit after
        another's 200-299. Paging by id past 299 would then skip 100-199 for
        good. Every archive write holds a shared advisory lock until it
        commits (taken before its ids), so after reading the newest id, taking
        that lock exclusively waits for exactly the batches that may hold
        smaller ones (up to ``settle_seconds``, then a warning: their rows may
        be missed). SQLite has one writer at a time: ids are committed in order.
        """
        with self.engine.connect() as connection:
            newest = connection.execute(sa.select(sa.func.coalesce(sa.func.max(archive.c.id), 0))
                                        ).scalar_one()
        if self._dialect != "postgresql":
            return newest
        from winchester.store._bulk import ARCHIVE_WRITERS_LOCK

        try:
            with self.engine.connect() as connection, connection.begin():
                connection.exec_driver_sql(
                    f"SET LOCAL lock_timeout = {max(1, int(settle_seconds * 1000))}")
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ARCHIVE_WRITERS_LOCK})")
        except sa.exc.DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
                raise
            logger.warning("archive: a batch of archived notifications has been committing for "
                           "more than %.0fs; its notifications are not in this read", settle_seconds)
        return newest

    def trim_archive(self, received_before: datetime, limit: int = 10_000) -> int:
        """Delete up to ``limit`` archived notifications received before ``received_before``."""
        def trim(connection: Connection) -> int:
            ids = list(connection.execute(
                sa.select(archive.c.id).where(archive.c.received_at < received_before)
                .order_by(archive.c.id).limit(limit)).scalars())
            if ids:
                connection.execute(archive.delete().where(archive.c.id.in_(ids)))
            return len(ids)

        return self._retrying(trim)


def _filters(since: datetime | None, until: datetime | None, event_type: str | None,
             received: tuple[datetime | None, datetime | None] = (None, None)) -> list:
    conditions = []
    received_since, received_until = received
    if received_since is not None:
        conditions.append(archive.c.received_at >= received_since)
    if received_until is not None:
        conditions.append(archive.c.received_at < received_until)
    if since is not None:
        conditions.append(archive.c.generated >= since)
    if until is not None:
        conditions.append(archive.c.generated < until)
    if event_type is not None:
        conditions.append(archive.c.event_type == event_type)
    return conditions


def _fitting(value: Any) -> str | None:
    """``value`` as text if it fits its column whole, else None (no event can have such an id:
    the distiller rejects it as ``bad_identifier``)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= KEY_LENGTH else None


def _clip(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text[:KEY_LENGTH]
