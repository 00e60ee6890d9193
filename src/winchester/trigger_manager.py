"""The original Winchester's way in: ``TriggerManager(config)``, then notifications.

Code written for StackTach's Winchester (a yagi handler, scripts, tests)
builds a trigger manager from the configuration and feeds it::

    from winchester.trigger_manager import TriggerManager

    manager = TriggerManager("winchester.yaml")
    manager.add_notification(body)       # one notification (a dict, or its JSON)
    manager.add_notifications(bodies)    # many, in one transaction: much faster
    manager.close()

It is :class:`winchester.services.ingest.Ingester` opened from the settings,
as ``winchester ingest-file`` opens it: the configured database (migrated,
or refused with the command to run), event definitions, triggers and clock.
Rejected notifications are dead-lettered, as the services do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from winchester.clock import clock_from_settings
from winchester.config import (
    build_distiller,
    load_settings,
    load_trigger_definitions,
    open_store,
    settings_from_mapping,
)
from winchester.services.ingest import BatchOutcome, Ingester

logger = logging.getLogger(__name__)


class TriggerManager:
    """Ingest into the configured store (see the module docstring).

    ``config``: the path of ``winchester.yaml``, or its settings as a
    mapping (relative file names then resolve from the working directory).
    ``stackdistiller`` and ``trigger_defs`` replace the configured event
    definitions and triggers (a :class:`winchester.distill.Distiller` and a
    :class:`winchester.triggers.TriggerSet`). ``db`` and ``time_sync``, the
    original's database interface and time-sync client, have no equivalent:
    the store comes from ``database.url`` and time from the ``clock`` setting.
    """

    def __init__(self, config: str | os.PathLike[str] | Mapping[str, Any], db: Any = None,
                 stackdistiller: Any = None, trigger_defs: Any = None, time_sync: Any = None):
        if db is not None:
            raise TypeError("TriggerManager(db=...): the store is opened from database.url in "
                            "the configuration; pass the configuration only")
        if time_sync is not None:
            logger.warning("TriggerManager(time_sync=...) is ignored: set clock: event in "
                           "winchester.yaml for event time")
        if isinstance(config, Mapping):
            self.settings = settings_from_mapping(config, source=None, environ=os.environ,
                                                  cwd=Path.cwd())
        else:
            self.settings = load_settings(config)
        triggers = trigger_defs if trigger_defs is not None else load_trigger_definitions(self.settings)
        distiller = stackdistiller if stackdistiller is not None else build_distiller(self.settings)
        self.store = open_store(self.settings, triggers)
        self.ingester = Ingester(self.store, triggers, distiller,
                                 clock_from_settings(self.settings, self.store),
                                 timedelta(seconds=self.settings.late_event_grace))

    @property
    def stats(self) -> Any:
        """Running totals (received, saved, duplicates, per trigger...)."""
        return self.ingester.stats

    def add_notification(self, notification: Any) -> BatchOutcome:
        return self.add_notifications([notification])

    def add_notifications(self, notifications: Sequence[Any]) -> BatchOutcome:
        batch = self.ingester.prepare(list(notifications))
        return self.ingester.commit(batch, dead_letter_source=lambda _: "trigger_manager")

    def add_event(self, event: Mapping[str, Any]) -> BatchOutcome:
        return self.ingester.add_event(event)

    def add_events(self, events: Iterable[Mapping[str, Any]]) -> BatchOutcome:
        return self.ingester.add_events(events)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> TriggerManager:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


__all__ = ["TriggerManager"]
