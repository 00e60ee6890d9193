"""``winchester check``: load every configured file and report every problem.

Each file named in ``winchester.yaml`` gets a checker that returns the
problems it found and a one-line summary. Checkers never stop at the first
problem: an operator fixing a file wants the whole list at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from winchester._yaml import position_of
from winchester.config._components import load_event_definitions
from winchester.config._settings import Settings, load_settings
from winchester.errors import ConfigError, Problem, TimexSyntaxError

TRAIT_CRITERION_TYPES = ("string", "text", "int", "float", "numeric", "datetime")
# Handler names every pipeline may use without a pipeline_handlers entry.
# Keep in step with the built-in handler registry of winchester.pipelines.
BUILTIN_HANDLERS = ("logger", "usage", "publish", "notabene", "webhook")


@dataclass
class FileReport:
    key: str
    path: Path | None
    summary: str = ""
    problems: list[Problem] = field(default_factory=list)


@dataclass
class CheckReport:
    """Everything ``winchester check`` found."""

    config_file: str
    settings: Settings | None = None
    files: list[FileReport] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def all_problems(self) -> list[Problem]:
        found = list(self.problems)
        for report in self.files:
            found.extend(report.problems)
        return found

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.all_problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors


class _Collector:
    """Builds located :class:`Problem` objects for one file."""

    def __init__(self, file_name: str):
        self.file_name = file_name
        self.problems: list[Problem] = []

    def error(self, where: str, message: str, container: Any = None, key: Any = None,
              severity: str = "error") -> None:
        line_col = position_of(container, key) if container is not None else None
        line, column = line_col if line_col else (None, None)
        self.problems.append(Problem(file=self.file_name, where=where, message=message,
                                     line=line, column=column, severity=severity))

    def warning(self, where: str, message: str, container: Any = None, key: Any = None) -> None:
        self.error(where, message, container, key, severity="warning")


def _check_time_expression(collect: _Collector, where: str, text: Any, container: Any,
                           key: Any) -> None:
    from winchester import timex

    if not isinstance(text, str) or not text.strip():
        collect.error(where, f"must be a time expression string, not {text!r}", container, key)
        return
    try:
        timex.parse(text)
    except TimexSyntaxError as exc:
        collect.error(where, f"invalid time expression: {exc.reason} at position "
                             f"{exc.position} in {text!r}", container, key)


def _check_event_types(collect: _Collector, where: str, value: Any, container: Any,
                       key: Any) -> None:
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, list) or not patterns or not all(
            isinstance(p, str) and p.strip() for p in patterns):
        collect.error(where, f"must be an event type glob or a list of them, not {value!r}",
                      container, key)


def check_pipelines(data: Any, collect: _Collector, settings: Settings) -> str:
    if not isinstance(data, Mapping):
        collect.error("", "must be a mapping of pipeline name to a list of handlers", data)
        return ""
    known = {*BUILTIN_HANDLERS, *settings.pipeline_handlers}
    for pipeline, entries in data.items():
        label = f"pipeline {pipeline!r}"
        if not isinstance(entries, list):
            collect.error(label, "must be a list of handlers", data, pipeline)
            continue
        for index, entry in enumerate(entries):
            where = f"{label} > entry #{index}"
            if isinstance(entry, Mapping):
                name = entry.get("name")
                params = entry.get("params", {})
                if params is not None and not isinstance(params, Mapping):
                    collect.error(f"{where} > params", "must be a mapping", entry, "params")
            else:
                name = entry
            if not isinstance(name, str) or not name:
                collect.error(where, "must be a handler name or {name: ..., params: {...}}",
                              entries, index)
            elif name not in known:
                choices = ", ".join(sorted(known))
                collect.error(where, f"unknown handler {name!r} (known: {choices}; add "
                              f"others under pipeline_handlers in {settings.file_name})",
                              entries, index)
    return f"{len(data)} pipelines"


def check_triggers(data: Any, collect: _Collector, settings: Settings,
                   pipelines: Mapping[str, Any] | None = None) -> str:
    if not isinstance(data, list):
        collect.error("", "must be a list of trigger definitions", data)
        return ""
    seen: dict[str, int] = {}
    for index, trigger in enumerate(data):
        if not isinstance(trigger, Mapping):
            collect.error(f"trigger #{index}", "must be a mapping", data, index)
            continue
        name = trigger.get("name")
        label = f"trigger {name!r}" if isinstance(name, str) else f"trigger #{index}"
        if not isinstance(name, str) or not name:
            collect.error(f"{label} > name", "is required and must be a string", data, index)
        elif name in seen:
            collect.error(f"{label} > name", f"duplicate trigger name (trigger #{seen[name]} "
                          "has it too)", trigger, "name")
        else:
            seen[name] = index
        if "expiration" not in trigger:
            collect.error(f"{label} > expiration", "is required", data, index)
        else:
            _check_time_expression(collect, f"{label} > expiration", trigger["expiration"],
                                   trigger, "expiration")
        if not trigger.get("fire_pipeline") and not trigger.get("expire_pipeline"):
            collect.error(label, "needs a fire_pipeline or an expire_pipeline (or both)",
                          data, index)
        for key in ("fire_pipeline", "expire_pipeline"):
            pipeline = trigger.get(key)
            if pipeline and pipelines is not None and pipeline not in pipelines:
                collect.error(f"{label} > {key}", f"unknown pipeline {pipeline!r}", trigger, key)
        distinguished_by = trigger.get("distinguished_by", [])
        if not isinstance(distinguished_by, list):
            collect.error(f"{label} > distinguished_by", "must be a list", trigger,
                          "distinguished_by")
            distinguished_by = []
        for position, item in enumerate(distinguished_by):
            where = f"{label} > distinguished_by #{position}"
            if isinstance(item, Mapping) and len(item) == 1:
                (trait, expression), = item.items()
                _check_time_expression(collect, f"{where} ({trait})", expression,
                                       distinguished_by, position)
            elif not isinstance(item, str):
                collect.error(where, "must be a trait name or {trait: time-expression}",
                              distinguished_by, position)
        for key in ("match_criteria", "fire_criteria"):
            criteria = trigger.get(key)
            if key == "match_criteria" and not criteria:
                collect.error(f"{label} > {key}", "is required (a list of criteria)", data, index)
                continue
            if criteria is None:
                continue
            if not isinstance(criteria, list):
                collect.error(f"{label} > {key}", "must be a list of criteria", trigger, key)
                continue
            for position, criterion in enumerate(criteria):
                _check_criterion(collect, f"{label} > {key} #{position}", criteria, position,
                                 criterion)
        if "load_criteria" in trigger:
            collect.warning(f"{label} > load_criteria", "is accepted and ignored", trigger,
                            "load_criteria")
    return f"{len(data)} triggers"


def _check_criterion(collect: _Collector, where: str, criteria: list, position: int,
                     criterion: Any) -> None:
    if not isinstance(criterion, Mapping):
        collect.error(where, "must be a mapping", criteria, position)
        return
    if "event_type" in criterion:
        _check_event_types(collect, f"{where} > event_type", criterion["event_type"], criterion,
                           "event_type")
    if "timestamp" in criterion:
        _check_time_expression(collect, f"{where} > timestamp", criterion["timestamp"],
                               criterion, "timestamp")
    traits = criterion.get("traits", {})
    if not isinstance(traits, Mapping):
        collect.error(f"{where} > traits", "must be a mapping", criterion, "traits")
        return
    for trait, test in traits.items():
        if isinstance(test, Mapping):
            if len(test) != 1 or next(iter(test)) not in TRAIT_CRITERION_TYPES:
                collect.error(f"{where} > traits > {trait}",
                              f"must be a value or a one-key mapping of "
                              f"{', '.join(TRAIT_CRITERION_TYPES)}", traits, trait)
            elif "datetime" in test:
                _check_time_expression(collect, f"{where} > traits > {trait}",
                                       test["datetime"], test, "datetime")


def check_configuration(config_file: str | Path) -> CheckReport:
    """Load ``winchester.yaml`` and every file it names; collect every problem."""
    report = CheckReport(config_file=str(config_file))
    try:
        settings = load_settings(config_file)
    except ConfigError as exc:
        report.problems.extend(exc.problems)
        return report
    report.settings = settings
    report.problems.extend(settings.warnings)

    definitions_report = FileReport(key="distiller_config", path=None)
    report.files.append(definitions_report)
    try:
        definitions = load_event_definitions(settings)
    except ConfigError as exc:
        definitions_report.problems.extend(exc.problems)
    else:
        definitions_report.path = Path(definitions.file_name)
        definitions_report.summary = f"{len(definitions)} event definitions"
        definitions_report.problems.extend(definitions.warnings)

    pipelines: Mapping[str, Any] | None = None
    for key in ("pipeline_config", "trigger_definitions"):
        file_report = FileReport(key=key, path=None)
        report.files.append(file_report)
        try:
            path, data, warnings = settings.read_yaml(key)
        except ConfigError as exc:
            file_report.problems.extend(exc.problems)
            continue
        file_report.path = path
        file_report.problems.extend(warnings)
        collect = _Collector(str(path))
        if key == "pipeline_config":
            file_report.summary = check_pipelines(data, collect, settings)
            pipelines = data if isinstance(data, Mapping) else None
        else:
            file_report.summary = check_triggers(data, collect, settings, pipelines)
        file_report.problems.extend(collect.problems)
    if settings.logging_config:
        file_report = FileReport(key="logging_config", path=None, summary="logging configuration")
        report.files.append(file_report)
        try:
            file_report.path = settings.find_file(settings.logging_config, "logging_config")
        except ConfigError as exc:
            file_report.problems.extend(exc.problems)
    return report
