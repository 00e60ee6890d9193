"""Build the configured parts from :class:`Settings` (the edge where files are read)."""

from __future__ import annotations

from dataclasses import replace

from winchester.config._settings import Settings
from winchester.distill import DefinitionSet, Distiller, available_plugins, load_definitions
from winchester.errors import ConfigError, Problem


def load_event_definitions(settings: Settings) -> DefinitionSet:
    """Read ``distiller_config`` with the configured trait plugins.

    Raises :class:`ConfigError` listing every problem in the file (and any
    trait plugin that cannot be imported).
    """
    plugins, plugin_problems = available_plugins(settings.distiller_trait_plugins)
    problems = [Problem(file=settings.file_name, where="distiller_trait_plugins", message=message)
                for message in plugin_problems]
    path, data, yaml_warnings = settings.read_yaml("distiller_config")
    try:
        definitions = load_definitions(data, str(path), plugins)
    except ConfigError as exc:
        raise ConfigError([*problems, *yaml_warnings, *exc.problems]) from None
    if problems:
        raise ConfigError([*problems, *yaml_warnings, *definitions.warnings])
    return replace(definitions, warnings=(*yaml_warnings, *definitions.warnings))


def build_distiller(settings: Settings) -> Distiller:
    return Distiller(load_event_definitions(settings), catch_all=settings.catch_all_notifications)
