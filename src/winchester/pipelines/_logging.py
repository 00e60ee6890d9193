"""``logger``: log what a pipeline run received."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from winchester.events import Event
from winchester.pipelines._handler import Handler

logger = logging.getLogger("winchester.pipelines.logger")


class LoggingHandler(Handler):
    """Logs the stream's event count and types at INFO, and every event id at DEBUG.

    ``level`` (param) raises or lowers the summary line's level.
    """

    def __init__(self, level: str = "info"):
        numeric = logging.getLevelName(str(level).upper())
        if not isinstance(numeric, int):
            raise ValueError(f"level {level!r} is not a logging level (debug, info, warning, error)")
        self.level = numeric

    def handle_events(self, events: list[Event], env: dict[str, Any]) -> list[Event]:
        if logger.isEnabledFor(self.level):
            types = Counter(event["event_type"] for event in events)
            logger.log(self.level, "stream %s (%s, %s): %d event(s): %s", env.get("stream_id"),
                       env.get("stream_name"), env.get("reason"), len(events),
                       ", ".join(f"{name} x{count}" for name, count in sorted(types.items())))
        if logger.isEnabledFor(logging.DEBUG):
            for event in events:
                logger.debug("stream %s: %s %s %s", env.get("stream_id"), event["timestamp"],
                             event["event_type"], event["message_id"])
        return events
