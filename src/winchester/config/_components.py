"""Build the configured parts from :class:`Settings` (the edge where files are read)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from winchester.config._settings import Settings
from winchester.distill import DefinitionSet, Distiller, available_plugins, load_definitions
from winchester.errors import ConfigError, Problem
from winchester.pipelines import HandlerRegistry, PipelineSet, load_pipelines
from winchester.store import Store
from winchester.triggers import TriggerSet, load_triggers


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
        definitions = load_definitions(data, str(path), plugins, settings.distiller_default_traits)
    except ConfigError as exc:
        raise ConfigError([*problems, *yaml_warnings, *exc.problems]) from None
    if problems:
        raise ConfigError([*problems, *yaml_warnings, *definitions.warnings])
    return replace(definitions, warnings=(*yaml_warnings, *definitions.warnings))


def build_distiller(settings: Settings) -> Distiller:
    return Distiller(load_event_definitions(settings), catch_all=settings.catch_all_notifications)


def load_pipeline_names(settings: Settings) -> set[str] | None:
    """The pipeline names defined in ``pipeline_config`` (None when it cannot be read)."""
    try:
        _, data, _ = settings.read_yaml("pipeline_config")
    except ConfigError:
        return None
    return set(data) if isinstance(data, dict) else None


def load_trigger_definitions(settings: Settings, check_pipelines: bool = True) -> TriggerSet:
    """Read ``trigger_definitions``; :class:`ConfigError` lists every problem."""
    path, data, yaml_warnings = settings.read_yaml("trigger_definitions")
    pipelines = load_pipeline_names(settings) if check_pipelines else None
    try:
        triggers = load_triggers(data, str(path), pipelines=pipelines)
    except ConfigError as exc:
        raise ConfigError([*yaml_warnings, *exc.problems]) from None
    return replace(triggers, warnings=(*yaml_warnings, *triggers.warnings))


def load_pipeline_definitions(settings: Settings) -> PipelineSet:
    """Read ``pipeline_config`` and build every handler entry once (bad entries are refused).

    Raises :class:`ConfigError` listing every problem, each naming the
    pipeline and the entry.
    """
    path, data, yaml_warnings = settings.read_yaml("pipeline_config")
    try:
        pipelines = load_pipelines(data, str(path), HandlerRegistry(settings.pipeline_handlers))
    except ConfigError as exc:
        raise ConfigError([*yaml_warnings, *exc.problems]) from None
    pipelines.warnings = (*yaml_warnings, *pipelines.warnings)
    return pipelines


def indexed_traits(settings: Settings, triggers: TriggerSet) -> set[str]:
    names = set(settings.indexed_traits)
    for trigger in triggers:
        names.update(trigger.distinguished_by)
    return names


def open_store(settings: Settings, triggers: TriggerSet | None = None, check: bool = True) -> Store:
    """The configured store; refuses (SchemaError) an unmigrated or outdated schema."""
    names = indexed_traits(settings, triggers) if triggers is not None else set(settings.indexed_traits)
    store = Store.from_url(settings.database_url, indexed_traits=names)
    store.late_event_grace = timedelta(seconds=settings.late_event_grace)
    if check:
        try:
            store.check_schema(str(settings.source) if settings.source else "winchester.yaml")
            store.index_coverage()
        except Exception:
            store.close()
            raise
    return store
