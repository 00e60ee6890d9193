"""Storage: the SQLAlchemy schema, the repository and the migrations.

The only package that writes SQL. Everything else talks to :class:`Store`.
"""

from winchester.store._engine import create_engine, normalize_url
from winchester.store._migrate import (
    SchemaError,
    check_schema,
    current_revision,
    downgrade,
    head_revision,
    history,
    migration_sql,
    stamp,
    upgrade,
)
from winchester.store._schema import STREAM_STATES, metadata
from winchester.store._archive import ARCHIVED, REJECTED, ArchivedNotification, ArchiveResult
from winchester.store._work import FIRE, EXPIRE, RESET_STATES, ClaimedStream, FinishedStreams, StreamOutcome
from winchester.store._query import (
    EventQuery,
    FoundEvent,
    HistoryEntry,
    StreamQuery,
    TraitFilter,
)
from winchester.store._store import (
    IngestItem,
    IngestResult,
    Store,
    StoreError,
    StreamRecord,
)

__all__ = [
    "ARCHIVED",
    "REJECTED",
    "ArchiveResult",
    "ArchivedNotification",
    "EXPIRE",
    "FIRE",
    "RESET_STATES",
    "STREAM_STATES",
    "ClaimedStream",
    "EventQuery",
    "FoundEvent",
    "HistoryEntry",
    "StreamQuery",
    "TraitFilter",
    "StreamOutcome",
    "FinishedStreams",
    "IngestItem",
    "IngestResult",
    "SchemaError",
    "Store",
    "StoreError",
    "StreamRecord",
    "check_schema",
    "create_engine",
    "current_revision",
    "downgrade",
    "head_revision",
    "history",
    "metadata",
    "migration_sql",
    "normalize_url",
    "stamp",
    "upgrade",
]
