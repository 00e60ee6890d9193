"""The nova usage auditor: checks each ``compute.instance.exists`` against its stream.

Nova sends a ``compute.instance.exists`` event for every instance once per
audit period (normally a day, midnight to midnight) and also in the middle of
a period when an operation changes what the instance is billed for (rebuild,
resize, rescue). A stream holds one instance's events in timestamp order, so
it splits into *blocks*: the events up to and including each ``.exists``.

Each block is checked against its ``.exists`` and the first failed check
decides the verdict (see :data:`USAGE_CODES`):

1. An ``active`` instance must have ``launched_at`` (U1); if it was launched
   within the audit period, the block must hold the events of that launch (U8).
2. The last operation-completion event of the block (rebuild, finish_resize or
   rescue ``.end``) must agree with the ``.exists`` on the billed fields (U2).
   Without one, a ``.exists`` that is not end-of-day gets a warning: nova
   sends those for operations, so the operation's events are expected.
3. Deletes: ``deleted_at``, ``state`` and the ``compute.instance.delete.end``
   events must tell the same story (U3-U7), and the delete event must agree
   with the ``.exists`` on ``launched_at`` and ``deleted_at`` (U2).

For every ``.exists`` the handler appends a ``compute.instance.exists.verified``
or ``compute.instance.exists.failed`` event, plus a
``compute.instance.exists.warnings`` event when the block produced warnings.
Events after the last ``.exists`` (or a stream without one) give a single
``compute.instance.exists.failed`` with code U0.

Conventions of the checks:

* An audit period is half-open, ``beginning <= t < ending``: a period's ending
  is the next period's beginning, and an instant must belong to one only.
* A trait that is absent, ``None`` or ``""`` is absent (nova sends ``""`` for
  an unset ``deleted_at``). A datetime trait given as an ISO 8601 string is
  parsed; one that does not parse is treated as absent, with a warning.
* Datetimes are compared to the whole second (see :func:`_to_second`).
* A field absent on either side of a comparison is not compared.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any, Final

from winchester.events import Event, to_naive_utc
from winchester.pipelines._handler import Handler, generated_message_id

__all__ = [
    "DATETIME_FIELDS", "DELETE_END", "DELETE_FIELDS", "EXISTS", "FAILED", "OPERATION_COMPLETIONS",
    "OPERATION_FIELDS", "USAGE_CODES", "UsageError", "UsageHandler", "VERDICT_PREFIX", "VERIFIED",
    "WARNINGS",
]

logger = logging.getLogger("winchester.pipelines.usage")

USAGE_CODES: Final[Mapping[str, str]] = {
    "U0": "notifications but no .exists",
    "U1": ".exists of an active instance has no launched_at",
    "U2": ".exists disagrees with the block's operation-completion or delete event",
    "U3": ".exists has deleted_at but its state is not 'deleted'",
    "U4": ".exists deleted_at is before launched_at (and no delete event)",
    "U5": ".exists deleted_at is in the audit period but there is no delete event",
    "U6": "delete events but the .exists has no deleted_at",
    "U7": "several delete events in one block",
    "U8": ".exists launched_at is in the audit period but there are no other events",
}

EXISTS: Final = "compute.instance.exists"
VERIFIED: Final = "compute.instance.exists.verified"
FAILED: Final = "compute.instance.exists.failed"
WARNINGS: Final = "compute.instance.exists.warnings"
# Every event this handler generates starts with this; such an event coming in
# (a re-run, or another auditor upstream) is a verdict, not part of the
# instance's lifecycle, and must not change the blocks.
VERDICT_PREFIX: Final = EXISTS + "."

DELETE_END: Final = "compute.instance.delete.end"
# Operations that change what the instance is billed as, for which nova sends a
# mid-period .exists. create.end is deliberately not one: a new instance's
# first .exists is checked by U8 (launched in the period), not by comparison.
OPERATION_COMPLETIONS: Final = frozenset({
    "compute.instance.rebuild.end",
    "compute.instance.finish_resize.end",
    "compute.instance.rescue.end",
})

OPERATION_FIELDS: Final = (
    "launched_at", "instance_flavor_id", "tenant_id", "os_architecture", "os_version", "os_distro",
)
DELETE_FIELDS: Final = ("launched_at", "deleted_at")
DATETIME_FIELDS: Final = frozenset({
    "launched_at", "deleted_at", "audit_period_beginning", "audit_period_ending",
})

# The .exists's identity: the verdict has its own and points back with original_message_id.
_NOT_COPIED: Final = frozenset({"message_id", "event_type"})
_SCALAR_TYPES: Final = (str, int, float, datetime)


class UsageError(Exception):
    """A failed check: ``code`` is a key of :data:`USAGE_CODES`."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Block:
    """The events up to one ``.exists`` (``exists`` is None for the trailing block)."""

    events: list[Event]
    exists: Event | None
    warnings: list[str] = field(default_factory=list)


def _absent(value: Any) -> bool:
    return value is None or value == ""


def _to_second(value: datetime) -> datetime:
    """``value`` without its fraction of a second, for comparisons.

    Nova reports the same ``launched_at`` with microseconds in some
    notifications and without them in others (what the periodic audit reads
    back from the database may have lost them), so comparing the fractions
    would fail instances that are fine.
    """
    return value.replace(microsecond=0)


def _datetime_trait(event: Mapping[str, Any], name: str, warnings: list[str]) -> datetime | None:
    """The trait as a naive UTC datetime, or None when absent or unreadable.

    An unreadable value is reported as a warning rather than a failure of its
    own: no usage code means "malformed", and the check that needed the value
    then sees it as absent and reports that.
    """
    value = event.get(name)
    if _absent(value):
        return None
    if isinstance(value, datetime):
        return to_naive_utc(value)
    if isinstance(value, str):
        try:
            return to_naive_utc(datetime.fromisoformat(value.strip()))
        except ValueError:
            pass
    warnings.append(f"{event.get('event_type')} {name} {value!r} is not a datetime; "
                    f"treated as absent")
    return None


def _comparable(event: Mapping[str, Any], name: str, warnings: list[str]) -> Any:
    if name in DATETIME_FIELDS:
        parsed = _datetime_trait(event, name, warnings)
        return None if parsed is None else _to_second(parsed)
    value = event.get(name)
    return None if _absent(value) else value


def _in_period(moment: datetime, beginning: datetime | None, ending: datetime | None) -> bool:
    return beginning is not None and ending is not None and beginning <= moment < ending


def _is_end_of_day(beginning: datetime | None, ending: datetime | None) -> bool:
    """Whether the period is exactly one midnight to the next: the daily audit's .exists."""
    return (beginning is not None and ending is not None
            and beginning.time() == time(0) and ending == beginning + timedelta(days=1))


def _flat(value: Any) -> bool:
    # bool is an int subclass the event model does not store as such; an
    # event that passed make_event has none, so anything else is dropped.
    return isinstance(value, _SCALAR_TYPES) and not isinstance(value, bool)


def _stream_trait(stream_id: Any) -> str | int:
    return stream_id if type(stream_id) in (str, int) else str(stream_id)


def _split_blocks(events: Iterable[Event]) -> list[_Block]:
    """Cut the stream after each ``.exists``; a trailing block has ``exists=None``.

    Incoming verdict events are left out. An empty trailing block is not returned.
    """
    blocks: list[_Block] = []
    current: list[Event] = []
    for event in events:
        event_type = event.get("event_type", "")
        if event_type.startswith(VERDICT_PREFIX):
            continue
        current.append(event)
        if event_type == EXISTS:
            blocks.append(_Block(events=current, exists=event))
            current = []
    if current:
        blocks.append(_Block(events=current, exists=None))
    return blocks


def _compare(exists: Event, other: Event, fields: Sequence[str], warnings: list[str]) -> None:
    for name in fields:
        ours = _comparable(exists, name, warnings)
        theirs = _comparable(other, name, warnings)
        if ours is None or theirs is None:
            continue
        if ours != theirs:
            raise UsageError("U2", f"conflicting {name}: .exists has {ours!s}, "
                                   f"{other['event_type']} has {theirs!s}")


def _check_block(block: _Block) -> None:
    """Run the checks on a block with a ``.exists``; raise :class:`UsageError` on the first failure.

    Warnings go to ``block.warnings`` (a failure keeps those found before it).
    """
    exists = block.exists
    assert exists is not None
    warnings = block.warnings
    state = exists.get("state")
    launched_at = _datetime_trait(exists, "launched_at", warnings)
    deleted_at = _datetime_trait(exists, "deleted_at", warnings)
    beginning = _datetime_trait(exists, "audit_period_beginning", warnings)
    ending = _datetime_trait(exists, "audit_period_ending", warnings)
    if beginning is None or ending is None:
        warnings.append(".exists has no audit period; the in-period checks (U5, U8) are skipped")
    others = block.events[:-1]  # the .exists always ends its block

    # 1. An active instance's launch.
    if state == "active":
        if launched_at is None:
            raise UsageError("U1", ".exists of an active instance has no launched_at")
        if _in_period(launched_at, beginning, ending) and not others:
            raise UsageError("U8", f".exists launched_at {launched_at} is in the audit period "
                                   f"{beginning} to {ending} but the block has no other events")

    # 2. The operation that caused a mid-period .exists.
    completions = [event for event in others if event["event_type"] in OPERATION_COMPLETIONS]
    if completions:
        _compare(exists, completions[-1], OPERATION_FIELDS, warnings)
    elif not _is_end_of_day(beginning, ending):
        warnings.append(f".exists is not end-of-day (audit period {beginning} to {ending}) "
                        f"but the block has no rebuild, finish_resize or rescue .end event")

    # 3. Deletion.
    deletes = [event for event in others if event["event_type"] == DELETE_END]
    if deletes and deleted_at is None:
        raise UsageError("U6", f"{len(deletes)} {DELETE_END} event(s) but the .exists "
                               f"has no deleted_at")
    if deleted_at is not None and state != "deleted":
        raise UsageError("U3", f".exists has deleted_at {deleted_at} but state {state!r}, "
                               f"not 'deleted'")
    if deleted_at is not None and not deletes:
        if launched_at is not None and _to_second(deleted_at) < _to_second(launched_at):
            raise UsageError("U4", f".exists deleted_at {deleted_at} is before "
                                   f"launched_at {launched_at}")
        if _in_period(deleted_at, beginning, ending):
            raise UsageError("U5", f".exists deleted_at {deleted_at} is in the audit period "
                                   f"{beginning} to {ending} but the block has no {DELETE_END}")
    if len(deletes) > 1:
        raise UsageError("U7", f"{len(deletes)} {DELETE_END} events in one block")
    if deletes:
        _compare(exists, deletes[-1], DELETE_FIELDS, warnings)


class UsageHandler(Handler):
    """Audit each ``compute.instance.exists`` of the stream; append the verdicts.

    Takes no parameters. The verdicts are also appended to
    ``env["usage_notifications"]``, where the original's notabene handler
    looked for them.
    """

    def __init__(self, **ignored: Any) -> None:
        super().__init__()
        if ignored:
            # The original accepted (and ignored) any params; keep its pipelines loading.
            logger.warning("usage handler: params %s are not used", ", ".join(sorted(ignored)))

    def handle_events(self, events: list[Event], env: dict[str, Any]) -> list[Event]:
        stream_id = env["stream_id"]
        generated: list[Event] = []
        for block in _split_blocks(events):
            if block.exists is None:
                generated.append(self._no_exists(block, stream_id))
            else:
                generated.extend(self._audit(block, stream_id))
        env.setdefault("usage_notifications", []).extend(generated)
        return [*events, *generated]

    def _audit(self, block: _Block, stream_id: Any) -> list[Event]:
        exists = block.exists
        assert exists is not None
        error: UsageError | None = None
        try:
            _check_block(block)
        except UsageError as exc:
            error = exc
            logger.warning("stream %s: usage check failed for instance %s: (%s) %s",
                           stream_id, exists.get("instance_id"), exc.code, exc.message)
        event_type = VERIFIED if error is None else FAILED
        verdict = self._from_exists(exists, event_type, stream_id)
        verdict["error"] = "" if error is None else error.message
        verdict["error_code"] = "" if error is None else error.code
        result = [verdict]
        if block.warnings:
            # Same shape as the verdict (including its error), so the warnings
            # event can be read on its own.
            warned = self._from_exists(exists, WARNINGS, stream_id)
            warned["error"] = verdict["error"]
            warned["error_code"] = verdict["error_code"]
            # A trait read by two checks would otherwise report its problem twice.
            warnings = list(dict.fromkeys(block.warnings))
            warned["warnings"] = "; ".join(warnings)
            warned["warning_count"] = len(warnings)
            result.append(warned)
        return result

    @staticmethod
    def _from_exists(exists: Event, event_type: str, stream_id: Any) -> Event:
        event: Event = {key: value for key, value in exists.items()
                        if key not in _NOT_COPIED and _flat(value)}
        event["message_id"] = generated_message_id(stream_id, exists["message_id"], event_type)
        event["event_type"] = event_type
        event["timestamp"] = exists["timestamp"]
        event["original_message_id"] = exists["message_id"]
        event["stream_id"] = _stream_trait(stream_id)
        return event

    @staticmethod
    def _no_exists(block: _Block, stream_id: Any) -> Event:
        last = block.events[-1]
        error = UsageError("U0", f"{len(block.events)} notification(s) but no .exists "
                                 f"after them (last: {last['event_type']})")
        logger.warning("stream %s: usage check failed for instance %s: (%s) %s",
                       stream_id, last.get("instance_id"), error.code, error.message)
        event: Event = {
            "message_id": generated_message_id(stream_id, last["message_id"], FAILED),
            "event_type": FAILED,
            "timestamp": last["timestamp"],
        }
        for name in ("instance_id", "tenant_id"):
            if not _absent(last.get(name)) and _flat(last[name]):
                event[name] = last[name]
        event["original_message_id"] = last["message_id"]
        event["stream_id"] = _stream_trait(stream_id)
        event["error"] = error.message
        event["error_code"] = error.code
        return event
