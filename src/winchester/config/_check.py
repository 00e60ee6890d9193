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
from winchester.config._components import load_event_definitions, load_trigger_definitions
from winchester.config._settings import Settings, load_settings
from winchester.errors import ConfigError, Problem

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

    for key, loader, noun in (("distiller_config", load_event_definitions, "event definitions"),
                              ("trigger_definitions", load_trigger_definitions, "triggers")):
        file_report = FileReport(key=key, path=None)
        report.files.append(file_report)
        try:
            loaded = loader(settings)
        except ConfigError as exc:
            file_report.problems.extend(exc.problems)
        else:
            file_report.path = Path(loaded.file_name)
            file_report.summary = f"{len(loaded)} {noun}"
            file_report.problems.extend(loaded.warnings)

    pipelines_report = FileReport(key="pipeline_config", path=None)
    report.files.insert(1, pipelines_report)
    try:
        path, data, warnings = settings.read_yaml("pipeline_config")
    except ConfigError as exc:
        pipelines_report.problems.extend(exc.problems)
    else:
        pipelines_report.path = path
        pipelines_report.problems.extend(warnings)
        collect = _Collector(str(path))
        pipelines_report.summary = check_pipelines(data, collect, settings)
        pipelines_report.problems.extend(collect.problems)

    if settings.logging_config:
        file_report = FileReport(key="logging_config", path=None, summary="logging configuration")
        report.files.append(file_report)
        try:
            file_report.path = settings.find_file(settings.logging_config, "logging_config")
        except ConfigError as exc:
            file_report.problems.extend(exc.problems)
    return report
