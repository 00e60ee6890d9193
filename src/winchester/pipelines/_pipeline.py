"""Pipelines: loading ``pipelines.yaml`` and running one over a stream's events."""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from winchester._yaml import position_of
from winchester.errors import ConfigError, EventError, Problem
from winchester.events import Event, make_event
from winchester.pipelines._handler import GENERATED_ID_NAMESPACE, Handler
from winchester.pipelines._registry import HandlerRegistry, UnknownHandler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineEntry:
    """One handler of a pipeline: what builds it, and with which params."""

    name: str
    factory: Any
    params: Mapping[str, Any]

    def build(self) -> Any:
        return self.factory(**self.params)


@dataclass
class RunResult:
    """What running a pipeline over one stream came to."""

    pipeline: str
    events: list[Event] = field(default_factory=list)   # the list the last handler returned
    generated: list[Event] = field(default_factory=list)  # returned events the stream did not hold
    error: str | None = None                              # why handle_events failed
    commit_errors: list[str] = field(default_factory=list)
    # A dry run (commit=False): per handler entry, what its commit() would have done.
    dry_run: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Pipeline:
    name: str
    entries: tuple[PipelineEntry, ...]

    def run(self, events: list[Event], env: dict[str, Any], *, commit: bool = True) -> RunResult:
        """Run the handlers over ``events`` (timestamp order); commit or roll back.

        Never raises for a handler's failure: it is reported in the result
        (the stream then goes to an error state), after ``rollback()`` was
        called on every handler built so far.

        ``commit=False`` is a dry run (``winchester simulate``): no side
        effects; instead of ``commit()``, each handler's ``describe_commit()``
        (optional: a line saying what commit would do) goes into
        :attr:`RunResult.dry_run`, then ``rollback()`` drops what it held.
        """
        result = RunResult(self.name)
        handlers: list[Any] = []
        current = "constructing"
        entry_name = ""
        try:
            for entry in self.entries:
                entry_name = entry.name
                handlers.append(entry.build())
            received = {event["message_id"] for event in events}
            working = list(events)
            for entry, handler in zip(self.entries, handlers, strict=True):
                entry_name = entry.name
                current = "handle_events"
                working = handler.handle_events(working, env)
                if not isinstance(working, list):
                    raise TypeError(f"handle_events returned {type(working).__name__}, not a list")
                # Checked after each handler, so a bad event is blamed on the one that added it.
                current = "checking the events returned by"
                working = _with_new_events_checked(received, working, env)
            result.events = working
            result.generated = [event for event in working if event["message_id"] not in received]
        except Exception as exc:  # noqa: BLE001 - any handler failure fails the run, not the worker
            result.error = f"{current} {entry_name!r} in pipeline {self.name!r}: {type(exc).__name__}: {exc}"
            logger.warning("stream %s: %s", env.get("stream_id"), result.error,
                           exc_info=logger.isEnabledFor(logging.DEBUG))
            for handler in handlers:
                _call_quietly(handler, "rollback", self.name, env)
            return result
        if not commit:
            for entry, handler in zip(self.entries, handlers, strict=True):
                described = _describe_commit(handler)
                if described is not None:
                    result.dry_run.append(f"{entry.name}: {described}")
                _call_quietly(handler, "rollback", self.name, env)
            return result
        for entry, handler in zip(self.entries, handlers, strict=True):
            error = _call_quietly(handler, "commit", self.name, env)
            if error is not None:
                result.commit_errors.append(f"{entry.name!r}: {error}")
        return result


def _describe_commit(handler: Any) -> str | None:
    """What ``handler.commit()`` would have done; None when it does nothing (the base class's)."""
    describe = getattr(handler, "describe_commit", None)
    if not callable(describe):
        if getattr(type(handler), "commit", None) is Handler.commit:
            return None
        return "commit() not run (dry run)"
    try:
        return str(describe())
    except Exception as exc:  # noqa: BLE001 - a report must not fail the simulation
        return f"commit() not run; describe_commit() raised {type(exc).__name__}: {exc}"


def _call_quietly(handler: Any, method: str, pipeline: str, env: Mapping[str, Any]) -> str | None:
    try:
        getattr(handler, method)()
    except Exception as exc:  # noqa: BLE001 - commit/rollback errors are logged and counted
        logger.error("stream %s: %s() of %s in pipeline %r failed: %s: %s", env.get("stream_id"),
                     method, type(handler).__name__, pipeline, type(exc).__name__, exc,
                     exc_info=True)
        return f"{type(exc).__name__}: {exc}"
    return None


def _with_new_events_checked(received: set[str], returned: list[Any],
                             env: Mapping[str, Any]) -> list[Event]:
    """``returned`` with every event the stream did not hold validated, and named if unnamed."""
    checked: list[Event] = []
    new = 0
    for position, event in enumerate(returned):
        message_id = event.get("message_id") if isinstance(event, Mapping) else None
        if message_id in received:
            checked.append(event)
            continue
        new += 1
        if isinstance(event, Mapping) and message_id is None:
            # A handler that did not name its event: name it after the stream,
            # its place in the list and its type, which a re-run repeats.
            event = dict(event)
            event["message_id"] = str(uuid.uuid5(
                GENERATED_ID_NAMESPACE, f"{env.get('stream_id')}/#{position}/{event.get('event_type')}"))
        try:
            checked.append(make_event(event))
        except EventError as exc:
            raise EventError(exc.key, f"{exc.reason} (generated event #{new}, "
                                      f"{event.get('event_type') if isinstance(event, Mapping) else event!r})"
                             ) from None
    return checked


class PipelineSet(Mapping[str, Pipeline]):
    """Every pipeline of ``pipelines.yaml``, by name."""

    def __init__(self, pipelines: Mapping[str, Pipeline], file_name: str = "",
                 warnings: tuple[Problem, ...] = ()):
        self._pipelines = dict(pipelines)
        self.file_name = file_name
        self.warnings = warnings

    def __getitem__(self, name: str) -> Pipeline:
        return self._pipelines[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._pipelines)

    def __len__(self) -> int:
        return len(self._pipelines)


def load_pipelines(data: Any, file_name: str, registry: HandlerRegistry) -> PipelineSet:
    """Build every pipeline, resolving and trying out every handler entry.

    Each handler is constructed once with its params here, so an unknown
    name, an unimportable class or a bad param is refused at start, naming
    the pipeline and the entry, not discovered when a stream fires.
    Raises :class:`ConfigError` listing every problem.
    """
    problems: list[Problem] = []

    def error(where: str, message: str, container: Any = None, key: Any = None) -> None:
        line_col = position_of(container, key) if container is not None else None
        line, column = line_col if line_col else (None, None)
        problems.append(Problem(file=file_name, where=where, message=message, line=line, column=column))

    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        error("", "must be a mapping of pipeline name to a list of handlers", data)
        raise ConfigError(problems)
    pipelines: dict[str, Pipeline] = {}
    for pipeline_name, entries in data.items():
        label = f"pipeline {pipeline_name!r}"
        if not isinstance(entries, list):
            error(label, "must be a list of handlers", data, pipeline_name)
            continue
        built = []
        for index, entry in enumerate(entries):
            where = f"{label} > entry #{index + 1}"
            params: Any = {}
            name = entry.get("name") if isinstance(entry, Mapping) else entry
            if not isinstance(name, str) or not name:
                error(where, "must be a handler name or {name: ..., params: {...}}", entries, index)
                continue
            where = f"{where} ({name})"
            if isinstance(entry, Mapping):
                params = entry.get("params") or {}
                for extra in sorted(set(entry) - {"name", "params"}):
                    error(f"{where} > {extra}", "unknown field (an entry has name and params)",
                          entry, extra)
                if not isinstance(params, Mapping):
                    error(f"{where} > params", "must be a mapping of parameter name to value",
                          entry, "params")
                    continue
            try:
                factory = registry.resolve(name)
            except UnknownHandler as exc:
                error(where, str(exc), entries, index)
                continue
            except Exception as exc:  # noqa: BLE001 - an unimportable plugin is a config error
                error(where, f"cannot load handler {name!r}: {type(exc).__name__}: {exc}",
                      entries, index)
                continue
            params = dict(params)
            problem = _try_params(factory, params)
            if problem:
                error(f"{where} > params", problem,
                      entry if isinstance(entry, Mapping) else entries,
                      "params" if isinstance(entry, Mapping) else index)
                continue
            built.append(PipelineEntry(name, factory, params))
        pipelines[str(pipeline_name)] = Pipeline(str(pipeline_name), tuple(built))
    if problems:
        raise ConfigError(problems)
    return PipelineSet(pipelines, file_name)


def _try_params(factory: Any, params: dict[str, Any]) -> str | None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(**params)
        except TypeError as exc:
            accepted = [p.name for p in signature.parameters.values()
                        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
            return f"{exc} (accepted: {', '.join(accepted) or 'none'})"
    try:
        handler = factory(**params)
    except Exception as exc:  # noqa: BLE001 - whatever the handler says about its params
        return f"{type(exc).__name__}: {exc}"
    missing = [m for m in ("handle_events", "commit", "rollback") if not callable(getattr(handler, m, None))]
    if missing:
        return f"{type(handler).__name__} is not a handler: it has no {', '.join(missing)}()"
    return None
