"""Configuration: ``winchester.yaml`` and the files it names.

Read once, at the edge, into a typed :class:`Settings`; everything else is
handed the pieces it needs.
"""

from winchester.config._components import (
    build_distiller,
    indexed_traits,
    load_event_definitions,
    load_pipeline_definitions,
    load_trigger_definitions,
    open_store,
)
from winchester.config._settings import (
    DATABASE_URL_ENV,
    KEYS,
    Key,
    Settings,
    load_settings,
    read_text,
    settings_from_mapping,
)

__all__ = [
    "DATABASE_URL_ENV",
    "KEYS",
    "Key",
    "Settings",
    "build_distiller",
    "indexed_traits",
    "load_event_definitions",
    "load_pipeline_definitions",
    "load_trigger_definitions",
    "open_store",
    "load_settings",
    "read_text",
    "settings_from_mapping",
]
