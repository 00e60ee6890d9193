"""Loading ``triggers.yaml``: validate everything, report every problem, compile."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from winchester._yaml import kind_of, position_of
from winchester.errors import ConfigError, Problem
from winchester.events import IDENTIFIER_MAX_LENGTH
from winchester.timex import Expression
from winchester.triggers._criteria import (
    Criterion,
    InvalidSpec,
    TraitCriterion,
    compile_expression,
    compile_trait_criterion,
)
from winchester.triggers._definition import TriggerDefinition, TriggerSet

TRIGGER_KEYS = ("name", "debug_level", "distinguished_by", "expiration", "fire_pipeline",
                "expire_pipeline", "fire_criteria", "match_criteria", "fire_delay",
                "load_criteria")
CRITERIA_KEYS = ("event_type", "number", "timestamp", "traits", "map_distinguished_by")
# The winchester etc/triggers.yaml shipped with this misspelling, and
# deployments copied it; the original silently ignored it.
MISSPELLED_MAP_KEY = "map_distingushed_by"
EXPIRATION_VARIABLES = frozenset({"first", "last", "timestamp"})
DEBUG_LEVELS = (0, 1, 2)


class _Problems:
    """Located problems of one file, errors and warnings in the order found."""

    def __init__(self, file_name: str):
        self.file_name = file_name
        self.items: list[Problem] = []

    def error(self, where: str, message: str, container: Any = None, key: Any = None,
              severity: str = "error") -> None:
        line_col = position_of(container, key) if container is not None else None
        line, column = line_col if line_col else (None, None)
        self.items.append(Problem(self.file_name, where, message, line, column, severity))

    def warning(self, where: str, message: str, container: Any = None, key: Any = None) -> None:
        self.error(where, message, container, key, severity="warning")

    @property
    def has_errors(self) -> bool:
        return any(p.severity == "error" for p in self.items)


class _Invalid:
    """Marks a field that was reported as wrong, so compilation is skipped."""


INVALID: Any = _Invalid()


def load_triggers(data: Any, file_name: str,
                  pipelines: Mapping[str, Any] | None = None) -> TriggerSet:
    """Compile the parsed contents of a trigger definitions file.

    ``data`` is what :func:`winchester._yaml.parse_yaml` returned (plain
    lists and dicts work too, without line numbers). When ``pipelines`` is
    given, a fire or expire pipeline it does not name is an error. Raises
    :class:`ConfigError` listing every problem (warnings included) when
    there is any error; otherwise the warnings are in ``TriggerSet.warnings``.
    """
    problems = _Problems(file_name)
    if data is None:
        data = []
    if not isinstance(data, list):
        problems.error("", f"must be a list of trigger definitions, not a {kind_of(data)}",
                       data)
        raise ConfigError(problems.items)
    if not data:
        problems.warning("", "defines no triggers: no event will ever join a stream", data)
    triggers: list[TriggerDefinition] = []
    first_index: dict[str, int] = {}
    for index, raw in enumerate(data):
        trigger = _load_trigger(index, raw, data, problems, pipelines, first_index)
        if trigger is not None:
            triggers.append(trigger)
    if problems.has_errors:
        raise ConfigError(problems.items)
    return TriggerSet(file_name, tuple(triggers), tuple(problems.items))


def _load_trigger(index: int, raw: Any, data: list, problems: _Problems,
                  pipelines: Mapping[str, Any] | None,
                  first_index: dict[str, int]) -> TriggerDefinition | None:
    if not isinstance(raw, Mapping):
        problems.error(f"trigger #{index}", f"must be a mapping, not {raw!r}", data, index)
        return None
    name = raw.get("name")
    has_name = isinstance(name, str) and bool(name.strip())
    label = (f"trigger {name!r}" if has_name and len(name) <= IDENTIFIER_MAX_LENGTH
             else f"trigger #{index}")
    errors_before = sum(p.severity == "error" for p in problems.items)

    if "name" not in raw:
        problems.error(f"{label} > name", "is required", data, index)
    elif not has_name:
        problems.error(f"{label} > name", f"must be a non-empty string, not {name!r}", raw, "name")
    elif len(name) > IDENTIFIER_MAX_LENGTH:
        problems.error(f"{label} > name", f"is {len(name)} characters long; a trigger name "
                       f"has at most {IDENTIFIER_MAX_LENGTH}", raw, "name")
    elif name in first_index:
        problems.error(f"{label} > name", f"duplicate trigger name: trigger #{first_index[name]} "
                       f"and trigger #{index} are both named {name!r}", raw, "name")
    else:
        first_index[name] = index

    debug_level = raw.get("debug_level", 0)
    if debug_level is None:
        debug_level = 0
    if type(debug_level) is str and re.fullmatch(r"\s*[0-9]{1,3}\s*", debug_level):
        debug_level = int(debug_level)  # the original read it with int()
    if type(debug_level) is int and debug_level > max(DEBUG_LEVELS):
        # The original treated every level above 1 as full debugging.
        problems.warning(f"{label} > debug_level", f"{debug_level} is taken as "
                         f"{max(DEBUG_LEVELS)} (the most detail there is)", raw, "debug_level")
        debug_level = max(DEBUG_LEVELS)
    if type(debug_level) is not int or debug_level not in DEBUG_LEVELS:
        problems.error(f"{label} > debug_level", f"must be 0, 1 or 2, not {debug_level!r}",
                       raw, "debug_level")

    expiration: Expression | None = None
    if raw.get("expiration") is None:
        problems.error(f"{label} > expiration", "is required: a time expression such as "
                       "'$last + 1h'", data if "expiration" not in raw else raw,
                       index if "expiration" not in raw else "expiration")
    else:
        expiration = _expression(problems, f"{label} > expiration", raw["expiration"], raw,
                                 "expiration")
        if expiration is not None:
            unknown = sorted(expiration.variables - EXPIRATION_VARIABLES)
            if unknown:
                problems.error(f"{label} > expiration",
                               f"uses ${', $'.join(unknown)}; an expiration can only use $first, "
                               "$last (and $timestamp, the current time)", raw, "expiration")

    fire_pipeline = _pipeline(problems, label, raw, "fire_pipeline", pipelines)
    expire_pipeline = _pipeline(problems, label, raw, "expire_pipeline", pipelines)
    if fire_pipeline is None and expire_pipeline is None:
        problems.error(f"{label} > fire_pipeline", "a fire_pipeline or an expire_pipeline "
                       "(or both) is required", data, index)

    fire_delay = raw.get("fire_delay", 0)
    if fire_delay is None:
        fire_delay = 0
    if (isinstance(fire_delay, bool) or not isinstance(fire_delay, (int, float))
            or not math.isfinite(fire_delay) or fire_delay < 0):
        problems.error(f"{label} > fire_delay", f"must be a number of seconds >= 0, "
                       f"not {fire_delay!r}", raw, "fire_delay")

    distinguished_by = _distinguished_by(problems, label, raw)
    distinguishing_names = (None if distinguished_by is INVALID else
                            {item[0] if isinstance(item, tuple) else item
                             for item in distinguished_by})

    match_criteria = _criteria_list(problems, label, raw, "match_criteria", data, index,
                                    distinguishing_names)
    fire_criteria = _criteria_list(problems, label, raw, "fire_criteria", data, index,
                                   distinguishing_names)

    if "load_criteria" in raw:
        problems.warning(f"{label} > load_criteria", "is accepted and ignored", raw,
                         "load_criteria")
    for key in raw:
        if key not in TRIGGER_KEYS:
            problems.warning(f"{label} > {key}", "unknown key, ignored", raw, key)

    if sum(p.severity == "error" for p in problems.items) > errors_before:
        return None
    assert expiration is not None
    return TriggerDefinition(
        name=name, expiration=expiration, match_criteria=match_criteria,
        fire_criteria=fire_criteria, distinguished_by=distinguished_by,
        fire_pipeline=fire_pipeline, expire_pipeline=expire_pipeline,
        debug_level=debug_level, fire_delay=fire_delay, index=index)


def _expression(problems: _Problems, where: str, text: Any, container: Any,
                key: Any) -> Expression | None:
    try:
        return compile_expression(text)
    except InvalidSpec as exc:
        problems.error(where, str(exc), container, key)
        return None


def _pipeline(problems: _Problems, label: str, raw: Mapping, key: str,
              pipelines: Mapping[str, Any] | None) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        problems.error(f"{label} > {key}", f"must be a pipeline name, not {value!r}", raw, key)
        return INVALID  # type: ignore[no-any-return]
    if pipelines is not None and value not in pipelines:
        known = ", ".join(sorted(map(str, pipelines))) or "none"
        problems.error(f"{label} > {key}", f"unknown pipeline {value!r} (defined: {known})",
                       raw, key)
    return value


def _distinguished_by(problems: _Problems, label: str, raw: Mapping) -> Any:
    items = raw.get("distinguished_by")
    if items is None:
        return []
    where = f"{label} > distinguished_by"
    if not isinstance(items, list):
        problems.error(where, "must be a list of trait names or {trait: time-expression}",
                       raw, "distinguished_by")
        return INVALID
    compiled: list[str | tuple[str, Expression]] = []
    seen: set[str] = set()
    ok = True
    for position, item in enumerate(items):
        item_where = f"{where} #{position}"
        if isinstance(item, str) and item.strip():
            trait = item
            compiled.append(item)
        elif (isinstance(item, Mapping) and len(item) == 1
              and isinstance(next(iter(item)), str) and next(iter(item)).strip()):
            (trait, text), = item.items()
            expression = _expression(problems, f"{item_where} > {trait}", text, item, trait)
            if expression is None:
                ok = False
            else:
                compiled.append((trait, expression))
        else:
            problems.error(item_where, f"must be a trait name or {{trait: time-expression}}, "
                           f"not {item!r}", items, position)
            ok = False
            continue
        if len(trait) > IDENTIFIER_MAX_LENGTH:
            # Distinguishing traits are indexed, and an indexed trait's name is a column of at
            # most that many characters on every store.
            problems.error(item_where, f"the trait name is {len(trait)} characters long; at most "
                           f"{IDENTIFIER_MAX_LENGTH}", items, position)
            ok = False
        if trait in seen:
            problems.error(item_where, f"trait {trait!r} is listed more than once", items,
                           position)
            ok = False
        seen.add(trait)
    return compiled if ok else INVALID


def _criteria_list(problems: _Problems, label: str, raw: Mapping, key: str, data: list,
                   index: int, distinguishing_names: set[str] | None) -> Any:
    where = f"{label} > {key}"
    entries = raw.get(key)
    if key == "match_criteria":
        if entries is None:
            problems.error(where, "is required: a list of criteria", data, index)
            return INVALID
        if isinstance(entries, list) and not entries:
            problems.error(where, "must not be empty: an event must match one of its criteria "
                           "to join a stream", raw, key)
            return INVALID
    elif entries is None:
        return []
    if not isinstance(entries, list):
        problems.error(where, f"must be a list of criteria, not {entries!r}", raw, key)
        return INVALID
    compiled = []
    ok = True
    for position, entry in enumerate(entries):
        criterion = _criterion(problems, f"{where} #{position}", entries, position, entry,
                               is_fire=key == "fire_criteria",
                               distinguishing_names=distinguishing_names)
        if criterion is None:
            ok = False
        else:
            compiled.append(criterion)
    return compiled if ok else INVALID


def _criterion(problems: _Problems, where: str, entries: list, position: int, raw: Any,
               is_fire: bool, distinguishing_names: set[str] | None) -> Criterion | None:
    if not isinstance(raw, Mapping):
        problems.error(where, f"must be a mapping of event_type, traits, ..., not {raw!r}",
                       entries, position)
        return None
    ok = True

    event_types: list[str] = []
    if raw.get("event_type") is not None:
        value = raw["event_type"]
        patterns = [value] if isinstance(value, str) else value
        if (not isinstance(patterns, list) or not patterns
                or not all(isinstance(p, str) and p.strip() and p.strip() != "!"
                           for p in patterns)):
            problems.error(f"{where} > event_type", f"must be an event type glob or a list of "
                           f"them, not {value!r}", raw, "event_type")
            ok = False
        else:
            event_types = patterns

    number = 1
    if "number" in raw:
        value = raw["number"]
        if not is_fire:
            problems.warning(f"{where} > number", "only fire criteria count events; ignored "
                             "in match criteria", raw, "number")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.error(f"{where} > number", f"must be an integer >= 1, not {value!r}",
                           raw, "number")
            ok = False
        else:
            number = value

    timestamp: Expression | None = None
    if "timestamp" in raw:
        timestamp = _expression(problems, f"{where} > timestamp", raw["timestamp"], raw,
                                "timestamp")
        ok = ok and timestamp is not None

    traits: list[TraitCriterion] = []
    spec = raw.get("traits")
    if spec is not None:
        if not isinstance(spec, Mapping):
            problems.error(f"{where} > traits", f"must be a mapping of trait name to "
                           f"criterion, not {spec!r}", raw, "traits")
            ok = False
        else:
            for trait, test in spec.items():
                try:
                    if not isinstance(trait, str) or not trait:
                        raise InvalidSpec(f"trait names must be strings, not {trait!r}")
                    traits.append(compile_trait_criterion(trait, test))
                except InvalidSpec as exc:
                    problems.error(f"{where} > traits > {trait}", str(exc), spec, trait)
                    ok = False

    mapping = _map_distinguished_by(problems, where, raw, is_fire, distinguishing_names)
    if mapping is INVALID:
        ok = False

    for key in raw:
        if key not in CRITERIA_KEYS and key != MISSPELLED_MAP_KEY:
            problems.warning(f"{where} > {key}", "unknown key, ignored", raw, key)
    if not ok:
        return None
    return Criterion(tuple(event_types), number, timestamp, tuple(traits), mapping)


def _map_distinguished_by(problems: _Problems, where: str, raw: Mapping, is_fire: bool,
                          distinguishing_names: set[str] | None) -> Any:
    key = "map_distinguished_by"
    if MISSPELLED_MAP_KEY in raw:
        if key in raw:
            problems.error(f"{where} > {MISSPELLED_MAP_KEY}", f"both {key} and its misspelling "
                           f"{MISSPELLED_MAP_KEY} are given; keep only {key}",
                           raw, MISSPELLED_MAP_KEY)
            return INVALID
        problems.warning(f"{where} > {MISSPELLED_MAP_KEY}", f"misspelling of {key}; accepted "
                         "as it, but please correct the spelling", raw, MISSPELLED_MAP_KEY)
        key = MISSPELLED_MAP_KEY
    mapping = raw.get(key)
    if mapping is None:
        return {}
    label = f"{where} > {key}"
    if not isinstance(mapping, Mapping) or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in mapping.items()):
        problems.error(label, f"must be a mapping of distinguishing trait to the trait of "
                       f"this event that supplies its value, not {mapping!r}", raw, key)
        return INVALID
    if is_fire:
        problems.warning(label, "only match criteria decide the stream; ignored in fire "
                         "criteria", raw, key)
        return {}
    if distinguishing_names is not None:
        for name in mapping:
            if name not in distinguishing_names:
                problems.warning(f"{label} > {name}", f"{name!r} is not in distinguished_by; "
                                 "ignored", mapping, name)
    return dict(mapping)
