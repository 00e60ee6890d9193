"""Tables on the bus: a publisher's snapshot and versioned deltas, and followers keeping step.

A table is a mapping of string keys to JSON rows. Its publisher keeps the
last snapshot with an *epoch* (a UUID of this publisher instance) and a
*version* (how many changes it has published). Each change goes out on the
table's topic as::

    {"epoch": "...", "version": 7,
     "delta": {"added": {key: row}, "changed": {key: row}, "removed": [key, ...]}}

and the publisher serves ``{"epoch", "version", "rows"}`` at the table's
address (:func:`table_address`). A follower applies a delta only when it is
the next version of the epoch it holds; anything else (a gap, a restarted
publisher, a delta it cannot place) makes it fetch a new snapshot, which
replaces its table. Deltas older than its snapshot are dropped.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from kombu.utils import json

from winchester.bus._errors import BusRemoteError, BusTimeout

logger = logging.getLogger(__name__)

Rows = dict[str, Any]
Delta = dict[str, Any]
TableCallback = Callable[[str, Any], None]


def table_address(topic: str) -> str:
    """Where the publisher of the table on ``topic`` serves its snapshot."""
    return f"table.{topic}"


def normalize_rows(rows: Mapping[str, Any]) -> Rows:
    """A private copy of ``rows`` as JSON will carry it (tuples become lists, and so on).

    Diffing the JSON form means a follower's rebuilt table equals the
    publisher's exactly, and a caller mutating its dict later changes nothing.
    """
    if not isinstance(rows, Mapping):
        raise TypeError(f"table rows must be a mapping of key to row, not {type(rows).__name__}")
    for key in rows:
        if not isinstance(key, str):
            raise TypeError(f"table keys must be strings (JSON object keys), not {key!r}")
    try:
        return json.loads(json.dumps(dict(rows)))
    except TypeError as exc:
        raise TypeError(f"table rows must be JSON-serialisable: {exc}") from exc


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> Delta:
    """The delta turning ``old`` into ``new``."""
    return {
        "added": {key: row for key, row in new.items() if key not in old},
        "changed": {key: row for key, row in new.items() if key in old and old[key] != row},
        "removed": sorted(key for key in old if key not in new),
    }


def is_empty(delta: Mapping[str, Any]) -> bool:
    return not (delta["added"] or delta["changed"] or delta["removed"])


def apply_delta(rows: dict[str, Any], delta: Mapping[str, Any]) -> None:
    """Apply a table delta to ``rows`` in place: ``added`` and ``changed`` set, ``removed`` drop."""
    rows.update(delta.get("added") or {})
    rows.update(delta.get("changed") or {})
    for key in delta.get("removed") or ():
        rows.pop(key, None)


class TablePublication:
    """The publisher's side of one table: its snapshot, epoch and version."""

    def __init__(self, topic: str):
        self.topic = topic
        self.epoch = uuid.uuid4().hex
        self.version = 0
        # Replaced, never mutated, so a snapshot handed out stays consistent.
        self.rows: Rows = {}
        # Held while a change is computed *and* published, so deltas leave in
        # version order.
        self.lock = threading.Lock()

    def update(self, rows: Mapping[str, Any]) -> dict[str, Any] | None:
        """Take a new snapshot; the delta message to publish, or None if nothing changed.

        Call with :attr:`lock` held.
        """
        new = normalize_rows(rows)
        delta = diff(self.rows, new)
        if is_empty(delta):
            return None
        self.version += 1
        self.rows = new
        return {"epoch": self.epoch, "version": self.version, "delta": delta}

    def snapshot(self, _request: Any = None) -> dict[str, Any]:
        with self.lock:
            return {"epoch": self.epoch, "version": self.version, "rows": self.rows}


class TableFollower:
    """The subscriber's side: turns delta messages into ``("snapshot", rows)`` / ``("delta", d)``.

    ``fetch`` asks the publisher for its snapshot (raising :class:`BusTimeout`
    when none answers). Everything here runs on the bus's subscriptions thread.
    The callback runs *before* the follower records a change, so a callback
    that raises gets the same message again; if it keeps raising, the message
    is dead-lettered and the next delta, finding a gap, brings a fresh snapshot.
    """

    def __init__(self, topic: str, callback: TableCallback, fetch: Callable[[], dict[str, Any]]):
        self.topic = topic
        self._callback = callback
        self._fetch = fetch
        self._synced = False
        self._epoch: str | None = None
        self._version = 0

    def start(self) -> None:
        """The first sync: the current snapshot, or an empty table if no publisher answers."""
        if not self._synced:
            self._resync(initial=True)

    def on_message(self, _topic: str, message: Any) -> None:
        epoch, version, delta = _parse_delta(message)
        if self._synced:
            if epoch == self._epoch and version <= self._version:
                return  # already part of our snapshot
            first_of_a_new_publisher = self._epoch is None and version == 1
            if first_of_a_new_publisher or (epoch == self._epoch and version == self._version + 1):
                self._callback("delta", delta)
                self._epoch, self._version = epoch, version
                return
        self._resync(initial=False)

    def _resync(self, *, initial: bool) -> None:
        try:
            snapshot = self._fetch()
        except BusTimeout:
            if initial:
                # Nobody publishes this table yet: start from empty, and take
                # the first publisher's version 1 as the next change.
                self._callback("snapshot", {})
                self._synced, self._epoch, self._version = True, None, 0
            else:
                logger.warning("table %r: no snapshot from its publisher; will retry on the "
                               "next change", self.topic)
                self._synced = False
            return
        except BusRemoteError as exc:
            logger.warning("table %r: %s; will retry on the next change", self.topic, exc)
            self._synced = False
            return
        self._callback("snapshot", snapshot["rows"])
        self._synced, self._epoch, self._version = True, snapshot["epoch"], snapshot["version"]


def _parse_delta(message: Any) -> tuple[str, int, Delta]:
    try:
        epoch, version, delta = message["epoch"], message["version"], message["delta"]
        if not isinstance(version, int) or not all(
                key in delta for key in ("added", "changed", "removed")):
            raise TypeError
    except (KeyError, TypeError):
        raise ValueError(f"not a table delta message: {message!r:.200}") from None
    return epoch, version, delta
