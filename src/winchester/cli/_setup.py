"""Building the configured parts for a subcommand, with one way of reporting failure."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError

from winchester.config import (
    Settings,
    build_distiller,
    load_pipeline_definitions,
    load_settings,
    load_trigger_definitions,
    open_store,
)
from winchester.errors import ConfigError, WinchesterError
from winchester.logs import configure_logging
from winchester.services import tune_garbage_collection
from winchester.store import SchemaError, Store


@dataclass
class Parts:
    settings: Settings
    triggers: Any
    store: Store
    distiller: Any = None
    pipelines: Any = None


def open_parts(config_file: str, console: Console, *, distiller: bool = False,
               pipelines: bool = False, streaming: bool = False) -> Parts:
    """Load the configuration and open the store; on failure print why and exit 2.

    Every configuration problem is printed (file, definition, field), not
    just the first. ``streaming``: the command is about to read a file of
    notifications (see :func:`tune_garbage_collection`).
    """
    try:
        settings = load_settings(config_file)
        configure_logging(settings)
        built_distiller = build_distiller(settings) if distiller else None
        triggers = load_trigger_definitions(settings)
        built_pipelines = load_pipeline_definitions(settings) if pipelines else None
        store = open_store(settings, triggers)
    except ConfigError as exc:
        for problem in exc.problems:
            console.print(f"{problem.severity}: {problem}", markup=False)
        sys.exit(2)
    except (SchemaError, SQLAlchemyError, WinchesterError) as exc:
        console.print(f"error: {exc}", markup=False)
        sys.exit(2)
    if streaming:
        tune_garbage_collection()
    return Parts(settings, triggers, store, built_distiller, built_pipelines)
