"""``winchester check``: load every configured file and report every problem.

Each file named in ``winchester.yaml`` gets a checker that returns the
problems it found and a one-line summary. Checkers never stop at the first
problem: an operator fixing a file wants the whole list at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from winchester.config._components import (
    load_event_definitions,
    load_pipeline_definitions,
    load_trigger_definitions,
)
from winchester._yaml import parse_yaml
from winchester.config._settings import Settings, load_settings, read_text, settings_from_mapping
from winchester.errors import ConfigError, Problem
from winchester.pipelines import HandlerRegistry


# The keys that say where the other files are: with one of them broken, those
# files cannot be found to be checked.
FILE_KEYS = frozenset({"config_path", "distiller_config", "trigger_definitions", "pipeline_config",
                       "distiller_trait_plugins", "pipeline_handlers", "distiller_default_traits",
                       "logging_config"})


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
    def broken_keys(self) -> set[str]:
        """The winchester.yaml keys with errors (they were left at their defaults to check
        the files the rest names)."""
        return _broken_keys(self.problems)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.all_problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors


def _broken_keys(problems: list[Problem]) -> set[str]:
    return {problem.where.split(".", 1)[0] for problem in problems if problem.severity == "error"}


def _without_broken_keys(config_file: str | Path, problems: list[Problem]) -> Settings | None:
    """The settings with the keys that have errors left at their defaults, so the files
    the rest names are checked too; None when that cannot be done (a file key is broken,
    or the file cannot be read as a mapping)."""
    broken = _broken_keys(problems)
    if "" in broken or broken & FILE_KEYS:
        return None
    try:
        source = Path(config_file).expanduser().absolute()
        data, _ = parse_yaml(read_text(source), str(source))
        if not isinstance(data, dict):
            return None
        kept = {key: value for key, value in data.items() if key not in broken}
        return settings_from_mapping(kept, source=source, environ=os.environ, cwd=Path.cwd())
    except ConfigError:
        return None


def check_configuration(config_file: str | Path) -> CheckReport:
    """Load ``winchester.yaml`` and every file it names; collect every problem."""
    report = CheckReport(config_file=str(config_file))
    try:
        settings = load_settings(config_file)
    except ConfigError as exc:
        report.problems.extend(exc.problems)
        settings = _without_broken_keys(config_file, exc.problems)
        if settings is None:
            return report
    else:
        report.problems.extend(settings.warnings)
    report.settings = settings

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
            if key == "distiller_config":
                file_report.summary += f" ({loaded.default_traits}'s default traits)"
            file_report.problems.extend(loaded.warnings)

    pipelines_report = FileReport(key="pipeline_config", path=None)
    report.files.insert(1, pipelines_report)
    try:
        pipelines = load_pipeline_definitions(settings)
    except ConfigError as exc:
        pipelines_report.problems.extend(exc.problems)
    else:
        pipelines_report.path = Path(pipelines.file_name)
        pipelines_report.summary = f"{len(pipelines)} pipelines"
        pipelines_report.problems.extend(pipelines.warnings)
        used = {entry.name for pipeline in pipelines.values() for entry in pipeline.entries}
        report.problems.extend(_unusable_handlers(settings, used))

    if settings.logging_config:
        file_report = FileReport(key="logging_config", path=None, summary="logging configuration")
        report.files.append(file_report)
        try:
            file_report.path = settings.find_file(settings.logging_config, "logging_config")
            # What a service would refuse at start (see configure_logging), without applying it.
            from winchester.logs import check_logging_file

            check_logging_file(file_report.path)
        except ConfigError as exc:
            file_report.problems.extend(exc.problems)
    return report


def _unusable_handlers(settings: Settings, used: set[str]) -> list[Problem]:
    """``pipeline_handlers`` entries no pipeline uses that cannot be imported.

    Entries a pipeline uses are refused when the pipelines load; an unused
    one would only fail on the day a pipeline names it, so say so now (as a
    warning: nothing running needs it).
    """
    registry = HandlerRegistry(settings.pipeline_handlers)
    found = []
    for name, path in sorted(settings.pipeline_handlers.items()):
        if name in used:
            continue
        try:
            registry.resolve(name)
        except Exception as exc:  # noqa: BLE001 - an import runs arbitrary module code
            found.append(Problem(
                file=str(settings.source or "winchester.yaml"), where=f"pipeline_handlers > {name}",
                message=f"cannot import {path!r}: {type(exc).__name__}: {exc}", severity="warning"))
    return found
