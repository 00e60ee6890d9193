"""The handler contract, kept compatible with handlers written for the original.

A pipeline runs over one stream at a time. For each run every handler of the
pipeline is constructed afresh with its entry's ``params`` as keyword
arguments, then:

1. ``handle_events(events, env)`` is called on each handler in order; each gets
   the list the previous one returned. It must have no side effects: it may
   drop events, or append new ones (generated events), and returns the list.
2. If every ``handle_events`` succeeded, ``commit()`` is called on every
   handler: this is where side effects happen (publishing, posting). A
   failing ``commit()`` is logged and counted; it does not undo the run.
3. If any ``handle_events`` raised, ``rollback()`` is called on every handler
   instead, and the stream goes to an error state.

``env`` is one dict shared by the handlers of a run: ``stream_id``,
``stream_name`` (the trigger), ``distinguishing_traits``, ``reason``
(``"fire"`` or ``"expire"``) and ``pipeline``. Handlers may leave values in it
for later handlers (the original's usage handler and notabene did).

Any object with these three methods works as a handler; :class:`Handler` only
supplies the no-op defaults.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol, runtime_checkable

from winchester.events import Event

# Generated events' ids are uuid5 names in this namespace (fixed forever: a
# retried run must produce the ids the first attempt produced).
GENERATED_ID_NAMESPACE = uuid.UUID("6f1c5a52-2f43-5b3e-9d0c-9e1f0d4c7a21")


@runtime_checkable
class HandlerLike(Protocol):
    def handle_events(self, events: list[Event], env: dict[str, Any]) -> list[Event]: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


class Handler:
    """Base class for pipeline handlers: override what you need."""

    def __init__(self, **params: Any):
        self.params = params

    def handle_events(self, events: list[Event], env: dict[str, Any]) -> list[Event]:
        return events

    def commit(self) -> None:
        """Perform the run's side effects (only after every handler succeeded)."""

    def rollback(self) -> None:
        """Forget the run (some handler's ``handle_events`` failed)."""


def generated_message_id(stream_id: Any, source_message_id: str, event_type: str) -> str:
    """The deterministic id of an event a handler generates from a source event.

    Derived from the stream, the source event and the new event's type, so
    running the same stream again gives the same ids and the duplicates are
    recognised on ingest (and downstream).
    """
    name = f"{stream_id}/{source_message_id}/{event_type}"
    return str(uuid.uuid5(GENERATED_ID_NAMESPACE, name))
