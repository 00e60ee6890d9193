"""The distiller: one notification in, one flat event (or nothing) out."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from winchester.distill._codegen import compile_extractor
from winchester.distill._convert import ConversionError, describe_value, is_storable_text, parse_datetime
from winchester.distill._definitions import DefinitionSet, EventDefinition
from winchester.distill._plugins import plugin_value
from winchester.errors import WinchesterError
from winchester.events import IDENTIFIER_MAX_LENGTH, Event, to_naive_utc

logger = logging.getLogger(__name__)

_CONTEXT_PREFIX = "_context_"
# Event types are few; notifications are many. Past this many distinct types
# the lookup cache starts over instead of growing without bound.
_TYPE_CACHE_LIMIT = 10_000


class NotificationRejected(WinchesterError):
    """The notification cannot become an event; ``reason`` is a short, countable code."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"notification rejected ({reason}): {detail}")


def decode_notification(raw: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    """Parse a notification body and unwrap the oslo.messaging v2 envelope if present.

    Accepts the legacy format (the message itself), the 2.0 envelope
    ``{"oslo.version": "2.0", "oslo.message": "<JSON>"}``, and Ceilometer's
    form. Raises :class:`NotificationRejected` when it is not a JSON object.
    """
    if isinstance(raw, (bytes, bytearray, memoryview, str)):
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise NotificationRejected("not_json", f"not valid JSON: {exc}") from None
    else:
        body = raw
    if not isinstance(body, Mapping):
        raise NotificationRejected("not_an_object",
                                   f"a notification must be a JSON object, not {type(body).__name__}")
    if "oslo.message" in body and "oslo.version" in body:
        version = str(body["oslo.version"])
        if version.split(".")[0] != "2":
            raise NotificationRejected("bad_envelope", f"unsupported oslo.version {version!r}")
        inner = body["oslo.message"]
        if not isinstance(inner, (str, bytes)):
            raise NotificationRejected("bad_envelope", "oslo.message must be a JSON string")
        try:
            body = orjson.loads(inner)
        except orjson.JSONDecodeError as exc:
            raise NotificationRejected("bad_envelope", f"oslo.message is not valid JSON: {exc}") from None
        if not isinstance(body, Mapping):
            raise NotificationRejected("bad_envelope", "oslo.message must hold a JSON object")
    return body if isinstance(body, dict) else dict(body)


@dataclass
class DistillStats:
    """What the distiller did, for ``--stats``, logs and metrics."""

    converted: Counter[str] = field(default_factory=Counter)
    unconverted: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    # (definition label, trait name) -> how many values could not be converted
    trait_warnings: Counter[tuple[str, str]] = field(default_factory=Counter)
    last_warning: dict[tuple[str, str], str] = field(default_factory=dict)


class Distiller:
    """Turns notifications into events with a :class:`DefinitionSet`.

    ``distill`` returns the event, or ``None`` when no definition matches and
    ``catch_all`` is off (counted as unconverted); it raises
    :class:`NotificationRejected` for a notification without an event type,
    message id or parsable timestamp.
    """

    def __init__(self, definitions: DefinitionSet, catch_all: bool = False):
        self.definitions = definitions
        self.catch_all = catch_all
        self.stats = DistillStats()
        self._by_type: dict[str, EventDefinition | None] = {}
        # Searched last to first: general definitions come first in a file.
        self._search_order = tuple(reversed(definitions.definitions))
        self._extractors = {id(d): compile_extractor(d.plan, _generic_trait)
                            for d in (*definitions.definitions, definitions.catch_all)}

    def definition_for(self, event_type: str) -> EventDefinition | None:
        try:
            return self._by_type[event_type]
        except KeyError:
            pass
        found = next((d for d in self._search_order if d.matches(event_type)), None)
        if found is None and self.catch_all:
            found = self.definitions.catch_all
        if len(self._by_type) >= _TYPE_CACHE_LIMIT:
            self._by_type.clear()
        self._by_type[event_type] = found
        return found

    def distill_raw(self, raw: bytes | str | Mapping[str, Any]) -> Event | None:
        """Decode (see :func:`decode_notification`) then :meth:`distill`."""
        try:
            notification = decode_notification(raw)
        except NotificationRejected as exc:
            self.stats.rejected[exc.reason] += 1
            raise
        return self.distill(notification)

    def distill(self, notification: Mapping[str, Any]) -> Event | None:
        try:
            event_type, message_id, timestamp = read_envelope(notification)
        except NotificationRejected as exc:
            self.stats.rejected[exc.reason] += 1
            raise
        definition = self.definition_for(event_type)
        if definition is None:
            self.stats.unconverted[event_type] += 1
            return None
        body = _ceilometer_form(notification, message_id, timestamp) \
            if definition.uses_ceilometer_form else notification
        event: Event = {"message_id": message_id, "event_type": event_type, "timestamp": timestamp}
        self._extractors[id(definition)](body, event, self._warn, definition)
        self.stats.converted[event_type] += 1
        return event

    def _warn(self, definition: EventDefinition, trait: str, message: str) -> None:
        key = (definition.label, trait)
        first = key not in self.stats.trait_warnings
        self.stats.trait_warnings[key] += 1
        self.stats.last_warning[key] = message
        # The first occurrence is worth a warning; the rest are counted (a
        # malformed field usually repeats in every notification of its kind).
        logger.log(logging.WARNING if first else logging.DEBUG,
                   "%s > trait %r dropped: %s", definition.label, trait, message)


def _generic_trait(entry: tuple, body: Mapping[str, Any], event: Event, warn,
                   definition: EventDefinition) -> None:
    """One trait the generated extractor does not inline (plugins, full JSONPath)."""
    name, first, convert, is_text, plugin, paths = entry
    if plugin is None:
        value = first(body)
    else:
        matches = [(path.text, value) for path in paths
                   for value in path.all(body) if value is not None]
        try:
            value = plugin_value(plugin, matches)
        except Exception as exc:  # noqa: BLE001 - a plugin bug must not lose the event
            warn(definition, name, f"plugin raised {type(exc).__name__}: {exc}")
            return
    if value is None or (value == "" and not is_text):
        return
    try:
        event[name] = convert(value)
    except ConversionError as exc:
        warn(definition, name, str(exc))


_NO_METADATA: Mapping[str, Any] = {}


def read_envelope(notification: Mapping[str, Any]) -> tuple[str, str, datetime]:
    """``(event_type, message_id, timestamp)`` of a decoded notification; NotificationRejected if unusable."""
    # type() first: isinstance against the Mapping ABC is slow, and decoded
    # notifications are plain dicts.
    if type(notification) is not dict and not isinstance(notification, Mapping):
        raise NotificationRejected("not_an_object", "a notification must be a JSON object, "
                                   f"not {type(notification).__name__}")
    event_type = notification.get("event_type")
    if type(event_type) is not str or not event_type:
        raise NotificationRejected("no_event_type", "event_type is missing or not a string")
    metadata = notification.get("metadata", _NO_METADATA)
    if not isinstance(metadata, Mapping):
        metadata = _NO_METADATA
    message_id = notification.get("message_id")
    if message_id is None:
        message_id = metadata.get("message_id")
    if type(message_id) is not str or not message_id:
        raise NotificationRejected("no_message_id", "message_id is missing or not a string")
    if not (is_storable_text(event_type) and is_storable_text(message_id)):
        raise NotificationRejected("bad_identifier", "event_type or message_id contains NUL or a "
                                   "lone surrogate")
    if len(event_type) > IDENTIFIER_MAX_LENGTH or len(message_id) > IDENTIFIER_MAX_LENGTH:
        raise NotificationRejected("bad_identifier", f"event_type or message_id is longer than "
                                   f"{IDENTIFIER_MAX_LENGTH} characters")
    raw_time = notification.get("timestamp")
    if raw_time is None:
        raw_time = metadata.get("timestamp")
    if isinstance(raw_time, datetime):
        return event_type, message_id, to_naive_utc(raw_time)
    if not isinstance(raw_time, str):
        raise NotificationRejected("no_timestamp",
                                   f"timestamp is missing or not a string: {describe_value(raw_time)}")
    try:
        return event_type, message_id, parse_datetime(raw_time)
    except ConversionError as exc:
        raise NotificationRejected("bad_timestamp", str(exc)) from None


def _ceilometer_form(notification: Mapping[str, Any], message_id: str,
                     timestamp: datetime) -> Mapping[str, Any]:
    """Add Ceilometer's ``ctxt`` and ``metadata`` keys to a legacy notification.

    Ceilometer's definitions address the request context as ``ctxt.user_id``;
    on the wire it is flattened to ``_context_user_id``.
    """
    view = dict(notification)
    if not isinstance(view.get("ctxt"), Mapping):
        view["ctxt"] = {key[len(_CONTEXT_PREFIX):]: value for key, value in notification.items()
                        if isinstance(key, str) and key.startswith(_CONTEXT_PREFIX)}
    if not isinstance(view.get("metadata"), Mapping):
        view["metadata"] = {"message_id": message_id, "timestamp": notification.get("timestamp")}
    return view
