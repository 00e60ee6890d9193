"""Event definitions: loading ``event_definitions.yaml`` into compiled rules."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import translate
from typing import Any

from winchester._yaml import position_of
from winchester.distill._convert import CONVERTERS, TRAIT_TYPES
from winchester.distill._fields import (
    FieldPath,
    FieldPathError,
    FirstGetter,
    compile_path,
    first_of,
    root_key,
)
from winchester.errors import ConfigError, Problem
from winchester.events import REQUIRED_KEYS

# The traits StackDistiller added to every event unless a definition sets them.
DEFAULT_TRAITS: dict[str, dict[str, Any]] = {
    "service": {"type": "text", "fields": "publisher_id"},
    "request_id": {"type": "text", "fields": "_context_request_id"},
    "tenant_id": {"type": "text", "fields": ["payload.tenant_id", "_context_tenant"]},
}
# Ceilometer's (ceilometer/event/converter.py): the project and user too, from
# the context's project_id, which current oslo.context sends instead of tenant.
# Addressed on the wire (ctxt.x is _context_x there) so that using them does not
# make every definition build Ceilometer's view of the notification.
CEILOMETER_DEFAULT_TRAITS: dict[str, dict[str, Any]] = {
    **DEFAULT_TRAITS,
    "project_id": {"type": "text", "fields": ["payload.tenant_id", "_context_project_id"]},
    "user_id": {"type": "text", "fields": ["payload.user_id", "_context_user_id"]},
    # Ceilometer stops at the project; an older context has only the tenant, and
    # StackDistiller's default gave it: losing it would be a step back.
    "tenant_id": {"type": "text",
                  "fields": ["payload.tenant_id", "_context_project_id", "_context_tenant"]},
}
DEFAULT_TRAIT_SETS = {"stackdistiller": DEFAULT_TRAITS, "ceilometer": CEILOMETER_DEFAULT_TRAITS}
# `default_traits: auto` picks by the file; see default_traits_for.
DEFAULT_TRAIT_CHOICES = ("auto", *DEFAULT_TRAIT_SETS)
# Paths rooted here address Ceilometer's form of a notification
# ({ctxt, publisher_id, event_type, payload, metadata}); see Distiller.
CEILOMETER_ROOTS = frozenset({"ctxt", "metadata"})


class EventTypeMatcher:
    """Shell-glob matching of event types; ``!glob`` excludes, only exclusions means "all but"."""

    __slots__ = ("_exact", "_globs", "_excluded", "patterns", "_match_all")

    def __init__(self, patterns: list[str]):
        self.patterns = tuple(patterns)
        includes = [p for p in patterns if not p.startswith("!")]
        excludes = [p[1:] for p in patterns if p.startswith("!")]
        self._match_all = not includes
        self._exact = frozenset(p for p in includes if not _is_glob(p))
        self._globs = _combined_glob([p for p in includes if _is_glob(p)])
        self._excluded = _combined_glob(excludes)

    def __call__(self, event_type: str) -> bool:
        if self._excluded is not None and self._excluded(event_type):
            return False
        if self._match_all or event_type in self._exact:
            return True
        return self._globs is not None and self._globs(event_type) is not None

    def __repr__(self) -> str:
        return f"EventTypeMatcher({list(self.patterns)!r})"


def _is_glob(pattern: str) -> bool:
    return any(char in pattern for char in "*?[")


def _combined_glob(patterns: list[str]) -> Callable[[str], Any] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{translate(p)})" for p in patterns)).match


@dataclass(frozen=True, slots=True)
class TraitDefinition:
    name: str
    type: str
    paths: tuple[FieldPath, ...]
    first: FirstGetter
    convert: Callable[[Any], Any]
    plugin: Any = None


@dataclass(frozen=True)
class EventDefinition:
    """One entry of the file: which event types it handles and the traits it extracts."""

    index: int
    matches: EventTypeMatcher
    traits: tuple[TraitDefinition, ...]
    uses_ceilometer_form: bool = False
    # The traits as plain tuples for the distiller's inner loop, where
    # attribute lookups on every trait of every notification add up.
    plan: tuple[tuple[str, FirstGetter, Callable[[Any], Any], bool, Any, tuple[FieldPath, ...]], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "plan", tuple(
            (t.name, t.first, t.convert, t.type == "text", t.plugin, t.paths) for t in self.traits))

    @property
    def label(self) -> str:
        return definition_label(self.index, list(self.matches.patterns))


@dataclass(frozen=True)
class DefinitionSet:
    """All definitions of one file, in file order, plus the warnings loading gave."""

    file_name: str
    definitions: tuple[EventDefinition, ...]
    catch_all: EventDefinition
    warnings: tuple[Problem, ...] = field(default=())
    default_traits: str = "stackdistiller"  # whose default traits the definitions got

    def __len__(self) -> int:
        return len(self.definitions)


def definition_label(index: int, event_types: Any) -> str:
    if isinstance(event_types, list):
        shown = ", ".join(str(t) for t in event_types[:3]) + (", ..." if len(event_types) > 3 else "")
    else:
        shown = str(event_types)
    return f"definition #{index} ({shown})"


class _Problems:
    def __init__(self, file_name: str):
        self.file_name = file_name
        self.items: list[Problem] = []

    def add(self, where: str, message: str, container: Any, key: Any = None,
            severity: str = "error") -> None:
        line_col = position_of(container, key)
        line, column = line_col if line_col else (None, None)
        self.items.append(Problem(self.file_name, where, message, line, column, severity))


def load_definitions(data: Any, file_name: str, plugins: Mapping[str, type],
                     default_traits: str = "auto") -> DefinitionSet:
    """Compile the parsed contents of an event definitions file.

    ``default_traits`` (``stackdistiller``, ``ceilometer`` or ``auto``): the
    traits every definition gets unless it sets them (see DEFAULT_TRAIT_SETS).

    Raises :class:`ConfigError` listing every problem: each names the file,
    the definition (index and event types), the trait and the field.
    """
    problems = _Problems(file_name)
    if data is None:
        data = []
    if not isinstance(data, list):
        problems.add("", "must be a list of event definitions", data)
        raise ConfigError(problems.items)
    dialect = default_traits_for(data) if default_traits == "auto" else default_traits
    defaults = DEFAULT_TRAIT_SETS[dialect]
    definitions = []
    for index, raw in enumerate(data):
        definition = _load_definition(index, raw, data, problems, plugins, defaults)
        if definition is not None:
            definitions.append(definition)
    errors = [p for p in problems.items if p.severity == "error"]
    if errors:
        raise ConfigError(problems.items)
    catch_all = _build_definition(-1, ["*"], {}, problems, plugins, None, defaults)
    return DefinitionSet(file_name, tuple(definitions), catch_all,
                         tuple(p for p in problems.items if p.severity != "error"), dialect)


def default_traits_for(data: list) -> str:
    """Whose default traits a file's definitions get: Ceilometer's when the file
    addresses Ceilometer's form of a notification (``ctxt.``, ``metadata.``), as
    Ceilometer's own files do; otherwise StackDistiller's."""
    for raw in data:
        traits = raw.get("traits") if isinstance(raw, Mapping) else None
        for spec in (traits.values() if isinstance(traits, Mapping) else ()):
            fields = spec.get("fields") if isinstance(spec, Mapping) else spec  # short form: a path
            for text in ([fields] if isinstance(fields, str) else
                         fields if isinstance(fields, list) else ()):
                if isinstance(text, str) and root_key(text) in CEILOMETER_ROOTS:
                    return "ceilometer"
    return "stackdistiller"


def _load_definition(index: int, raw: Any, container: list, problems: _Problems,
                     plugins: Mapping[str, type],
                     defaults: Mapping[str, Any]) -> EventDefinition | None:
    if not isinstance(raw, Mapping):
        problems.add(f"definition #{index}", "must be a mapping with 'event_type' and 'traits'",
                     container, index)
        return None
    event_types = raw.get("event_type")
    label = definition_label(index, event_types) if event_types else f"definition #{index}"
    if isinstance(event_types, str):
        event_types = [event_types]
    if not isinstance(event_types, list) or not event_types or not all(
            isinstance(t, str) and t.strip() for t in event_types):
        problems.add(f"{label} > event_type", "is required: an event type glob or a list of them",
                     raw, "event_type" if "event_type" in raw else None)
        return None
    traits = raw.get("traits")
    if traits is None:
        traits = {}
    if not isinstance(traits, Mapping):
        problems.add(f"{label} > traits", "must be a mapping of trait name to trait definition",
                     raw, "traits")
        return None
    for key in raw:
        if key not in ("event_type", "traits"):
            problems.add(f"{label} > {key}", "unknown key, ignored", raw, key, "warning")
    return _build_definition(index, event_types, traits, problems, plugins, label, defaults)


def _build_definition(index: int, event_types: list[str], traits: Mapping[str, Any],
                      problems: _Problems, plugins: Mapping[str, type],
                      label: str | None, defaults: Mapping[str, Any]) -> EventDefinition:
    compiled: dict[str, TraitDefinition] = {}
    for name, spec in {**defaults, **traits}.items():
        where = f"{label} > trait {name!r}"
        if name in REQUIRED_KEYS and not _may_override(name, spec):
            problems.add(where, f"a trait cannot be named {name!r}: the event's own {name} "
                         "takes that key; the trait is ignored", traits, name, "warning")
            continue
        trait = _build_trait(str(name), spec, where, traits, problems, plugins)
        if trait is not None:
            compiled[name] = trait
    uses_ceilometer = any(root_key(path.text) in CEILOMETER_ROOTS
                          for trait in compiled.values() for path in trait.paths)
    return EventDefinition(index, EventTypeMatcher(event_types), tuple(compiled.values()),
                           uses_ceilometer)


def _may_override(name: str, spec: Any) -> bool:
    """A datetime trait named ``timestamp`` sets the event's time (Ceilometer's profiler
    definitions use that); ``message_id`` and ``event_type`` always come from the notification."""
    return name == "timestamp" and isinstance(spec, Mapping) and spec.get("type") == "datetime"


def _build_trait(name: str, spec: Any, where: str, traits: Mapping[str, Any],
                 problems: _Problems, plugins: Mapping[str, type]) -> TraitDefinition | None:
    if isinstance(spec, str):
        spec = {"fields": spec}  # Ceilometer's short form, `name: jsonpath`: a text trait
    if not isinstance(spec, Mapping):
        problems.add(where, "must be a JSONPath, or a mapping with 'fields' (and optionally "
                     "'type', 'plugin')", traits, name)
        return None
    ok = True
    trait_type = spec.get("type", "text")
    if trait_type not in TRAIT_TYPES:
        problems.add(f"{where} > type", f"unknown type {trait_type!r}; expected one of "
                     f"{', '.join(TRAIT_TYPES)}", spec, "type")
        ok = False
    fields = spec.get("fields")
    paths = [fields] if isinstance(fields, str) else fields
    compiled_paths: list[FieldPath] = []
    if fields is None:
        problems.add(f"{where} > fields", "is required: a JSONPath or a list of them", traits, name)
        ok = False
    elif not isinstance(paths, list) or not paths:
        problems.add(f"{where} > fields", f"must be a JSONPath or a list of them, not {fields!r}",
                     spec, "fields")
        ok = False
    else:
        for path in paths:
            try:
                compiled_paths.append(compile_path(path))
            except FieldPathError as exc:
                problems.add(f"{where} > fields", f"cannot parse JSONPath {path!r}: {exc}",
                             spec, "fields")
                ok = False
    plugin = None
    if "plugin" in spec and spec["plugin"] is not None:
        plugin = _build_plugin(spec["plugin"], f"{where} > plugin", spec, problems, plugins)
        ok = ok and plugin is not None
    for key in spec:
        if key not in ("type", "fields", "plugin"):
            problems.add(f"{where} > {key}", "unknown key, ignored", spec, key, "warning")
    if not ok:
        return None
    return TraitDefinition(name, trait_type, tuple(compiled_paths), first_of(tuple(compiled_paths)),
                           CONVERTERS[trait_type], plugin)


def _build_plugin(spec: Any, where: str, container: Mapping, problems: _Problems,
                  plugins: Mapping[str, type]) -> Any:
    if isinstance(spec, str):
        name, parameters = spec, {}
    elif isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        name, parameters = spec["name"], spec.get("parameters") or {}
    else:
        problems.add(where, "must be a plugin name or {name: ..., parameters: {...}}",
                     container, "plugin")
        return None
    if name not in plugins:
        problems.add(where, f"unknown plugin {name!r}; available: {', '.join(sorted(plugins))}",
                     container, "plugin")
        return None
    if not isinstance(parameters, Mapping):
        problems.add(f"{where} > parameters", "must be a mapping of keyword arguments",
                     container, "plugin")
        return None
    try:
        return plugins[name](**dict(parameters))
    except Exception as exc:  # noqa: BLE001 - a plugin may raise anything on bad parameters
        problems.add(f"{where} > parameters", f"plugin {name!r} rejected its parameters: "
                     f"{type(exc).__name__}: {exc}", container, "plugin")
        return None
