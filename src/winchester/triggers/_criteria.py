"""Criteria: which events a trigger takes in, and which make it fire.

Everything is compiled when the file is loaded. A trait test is a closure
``test(value, event) -> bool`` that checks the value's type itself, so a
missing trait (``None`` from ``event.get``) or a trait of another type is
simply a non-match; nothing here raises while matching.

Time expressions in criteria read their variables straight from the event
dict: a ``$name`` naming a datetime trait gets its value, one naming an
absent or non-datetime trait fails to evaluate, and that failure is a
non-match. This is what "the event's datetime traits as variables" means,
without building a mapping of them for every event.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from winchester.distill import EventTypeMatcher
from winchester.errors import TimexEvaluationError, TimexSyntaxError
from winchester.events import to_naive_utc
from winchester.timex import Expression, parse

TraitTest = Callable[[Any, Mapping[str, Any]], bool]
EventTest = Callable[[Mapping[str, Any]], bool]

CRITERION_TYPES = ("string", "text", "int", "float", "numeric", "datetime")
OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
_OPERATOR_TEXT = re.compile(r"\s*([<>=!~]*)\s*(.*?)\s*\Z", re.DOTALL)
_NUMBER_CLASSES = frozenset({int, float})


class InvalidSpec(Exception):
    """A criterion as written cannot be compiled; the message is for the operator."""


def compile_expression(text: Any) -> Expression:
    """Parse a time expression from configuration, or raise InvalidSpec saying why."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidSpec(f"must be a time expression string, not {text!r}")
    try:
        return parse(text)
    except TimexSyntaxError as exc:
        raise InvalidSpec(f"invalid time expression: {exc.reason} at position {exc.position} "
                          f"in {text!r}") from None


@dataclass(frozen=True, slots=True)
class TraitCriterion:
    """The test one trait must pass: ``type`` is ``constant`` or a criterion type.

    ``operator`` is ``=`` except for numeric comparisons and ``in`` for
    time expressions; ``operand`` is the value compared with (an
    :class:`Expression` for ``in``).
    """

    name: str
    type: str
    operator: str
    operand: Any
    test: TraitTest

    def matches(self, event: Mapping[str, Any]) -> bool:
        return self.test(event.get(self.name), event)

    def describe(self) -> str:
        return f"{self.name} {self.operator} {self.operand!s} ({self.type})"


def compile_trait_criterion(name: str, spec: Any) -> TraitCriterion:
    """Compile a trait criterion as written in YAML, or raise InvalidSpec."""
    if isinstance(spec, Mapping):
        if len(spec) != 1:
            raise InvalidSpec(f"a typed criterion is a one-key mapping of one of "
                              f"{', '.join(CRITERION_TYPES)}, not {dict(spec)!r}")
        (kind, value), = spec.items()
        if kind in ("string", "text"):
            return _string_criterion(name, kind, value)
        if kind == "int":
            return _numeric_criterion(name, kind, value, integer=True)
        if kind in ("float", "numeric"):
            return _numeric_criterion(name, kind, value, integer=False)
        if kind == "datetime":
            return _datetime_criterion(name, value)
        raise InvalidSpec(f"unknown criterion type {kind!r}; expected one of "
                          f"{', '.join(CRITERION_TYPES)}")
    return _constant_criterion(name, spec)


def _constant_criterion(name: str, value: Any) -> TraitCriterion:
    if isinstance(value, str):
        def equals_text(trait: Any, event: Any, value: str = value) -> bool:
            return trait.__class__ is str and trait == value
        return TraitCriterion(name, "constant", "=", value, equals_text)
    if isinstance(value, (int, float)):
        # bool counts as int, as the event model stores it.
        number = _finite_number(value) if isinstance(value, float) else int(value)
        return TraitCriterion(name, "constant", "=", number, _number_test(operator.eq, number))
    if isinstance(value, datetime):
        moment = to_naive_utc(value)

        def equals_moment(trait: Any, event: Any, moment: datetime = moment) -> bool:
            return isinstance(trait, datetime) and to_naive_utc(trait) == moment
        return TraitCriterion(name, "constant", "=", moment, equals_moment)
    if isinstance(value, date):
        raise InvalidSpec(f"a date ({value}) is not a trait value; quote it to compare text, "
                          "or use {datetime: ...}")
    raise InvalidSpec(f"must be a string, a number, a datetime or a one-key mapping of one of "
                      f"{', '.join(CRITERION_TYPES)}, not {value!r}")


def _string_criterion(name: str, kind: str, value: Any) -> TraitCriterion:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidSpec(f"{kind}: needs a string, not {value!r}")
    # An unquoted `text: 1234` is meant as the text "1234".
    text = value if isinstance(value, str) else str(value)

    def equals_text(trait: Any, event: Any, text: str = text) -> bool:
        return trait.__class__ is str and trait == text
    return TraitCriterion(name, kind, "=", text, equals_text)


def _finite_number(value: float) -> float:
    if not math.isfinite(value):
        raise InvalidSpec(f"{value} is not a finite number")
    return value


def parse_comparison(kind: str, value: Any, integer: bool) -> tuple[str, int | float]:
    """The operator and operand of ``int``/``float``/``numeric`` criteria: ``"> 4096"``, ``3``."""
    if isinstance(value, bool):
        raise InvalidSpec(f"{kind}: needs a number or an operator and a number, not {value!r}")
    if isinstance(value, int):
        return "=", value
    if isinstance(value, float):
        if integer:
            raise InvalidSpec(f"int: needs an integer, not {value!r}; use float: or numeric: "
                              "to compare with a fraction")
        return "=", _finite_number(value)
    if not isinstance(value, str):
        raise InvalidSpec(f"{kind}: needs a number or a string like '> 4096', not {value!r}")
    match = _OPERATOR_TEXT.match(value)
    assert match is not None  # the pattern matches every string
    symbol, operand_text = match.group(1) or "=", match.group(2)
    if symbol not in OPERATORS:
        raise InvalidSpec(f"{kind}: unknown operator {symbol!r} in {value!r}; expected one of "
                          "=, !=, >, >=, <, <=")
    if not operand_text:
        raise InvalidSpec(f"{kind}: {value!r} has no number to compare with")
    try:
        operand: int | float = int(operand_text) if integer else float(operand_text)
    except ValueError:
        expected = "an integer" if integer else "a number"
        raise InvalidSpec(f"{kind}: {operand_text!r} in {value!r} is not {expected}") from None
    if not integer:
        operand = _finite_number(float(operand))
    return symbol, operand


def _number_test(compare: Callable[[Any, Any], bool], operand: int | float) -> TraitTest:
    def compare_number(trait: Any, event: Any) -> bool:
        return trait.__class__ in _NUMBER_CLASSES and compare(trait, operand)
    return compare_number


def _numeric_criterion(name: str, kind: str, value: Any, integer: bool) -> TraitCriterion:
    symbol, operand = parse_comparison(kind, value, integer)
    compare = OPERATORS[symbol]
    shown = "=" if symbol == "==" else symbol
    # int: only constrains the operand: a float trait is compared by value, as the
    # original did (8192.0 is > 4096), since a definitions file may type it float.
    return TraitCriterion(name, kind, shown, operand, _number_test(compare, operand))


def _datetime_criterion(name: str, value: Any) -> TraitCriterion:
    if isinstance(value, datetime):
        return _constant_criterion(name, value)
    expression = compile_expression(value)
    evaluate = expression.evaluate

    def within(trait: Any, event: Any) -> bool:
        if not isinstance(trait, datetime):
            return False
        try:
            return trait in evaluate(event)
        except TimexEvaluationError:
            return False
    return TraitCriterion(name, "datetime", "in", expression, within)


def timestamp_test(expression: Expression) -> EventTest:
    """The criteria ``timestamp:`` test: the event's own timestamp is in the expression's value."""
    evaluate = expression.evaluate

    def timestamp_within(event: Mapping[str, Any]) -> bool:
        moment = event.get("timestamp")
        if not isinstance(moment, datetime):
            return False
        try:
            return moment in evaluate(event)
        except TimexEvaluationError:
            return False
    return timestamp_within


def combine(timestamp: Expression | None, traits: tuple[TraitCriterion, ...]) -> EventTest | None:
    """One test for everything but the event type; None when there is nothing to test."""
    pairs = tuple((t.name, t.test) for t in traits)
    traits_test: EventTest | None
    if not pairs:
        traits_test = None
    elif len(pairs) == 1:
        ((name, test),) = pairs

        def traits_test(event: Mapping[str, Any]) -> bool:
            return test(event.get(name), event)
    else:
        def traits_test(event: Mapping[str, Any]) -> bool:
            get = event.get
            for name, test in pairs:
                if not test(get(name), event):
                    return False
            return True
    if timestamp is None:
        return traits_test
    time_test = timestamp_test(timestamp)
    if traits_test is None:
        return time_test
    # Traits first: comparing values is cheaper than evaluating an expression.
    only_traits = traits_test

    def both(event: Mapping[str, Any]) -> bool:
        return only_traits(event) and time_test(event)
    return both


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """How one event fared against one criterion (explain).

    ``failed`` names the first check that failed: ``event_type``,
    ``missing_trait``, ``value`` (a comparison) or ``time_expression``;
    ``passed`` of ``checks`` checks passed before it (how close it came).
    """

    matches: bool
    passed: int
    checks: int
    failed: str | None
    detail: str


def _shown(value: Any) -> str:
    return value.isoformat(sep=" ") if isinstance(value, datetime) else repr(value)


def _why_expression_failed(trait: TraitCriterion, event: Mapping[str, Any]) -> str:
    if not isinstance(trait.operand, Expression):
        return ""
    try:
        return f" (the expression gives {trait.operand.evaluate(event)})"
    except TimexEvaluationError as exc:
        return f" (the expression cannot be evaluated: {exc})"


def _why_timestamp_failed(expression: Expression, event: Mapping[str, Any]) -> str:
    try:
        return f" (it gives {expression.evaluate(event)})"
    except TimexEvaluationError as exc:
        return f" (the expression cannot be evaluated: {exc})"


class Criterion:
    """One entry of ``match_criteria`` or ``fire_criteria``, compiled.

    ``event_types`` are the patterns as written (empty: any type),
    ``number`` how many events a fire criterion needs (1 for match
    criteria), ``timestamp`` the expression the event's timestamp must be
    in, ``traits`` the trait tests, all of which must pass, and
    ``map_distinguished_by`` the distinguishing trait -> source trait renames.
    """

    __slots__ = ("event_types", "map_distinguished_by", "number", "rest_test", "timestamp",
                 "traits", "type_matcher")

    def __init__(self, event_types: tuple[str, ...] = (), number: int = 1,
                 timestamp: Expression | None = None, traits: tuple[TraitCriterion, ...] = (),
                 map_distinguished_by: Mapping[str, str] | None = None):
        self.event_types = tuple(event_types)
        self.number = number
        self.timestamp = timestamp
        self.traits = tuple(traits)
        self.map_distinguished_by = dict(map_distinguished_by or {})
        self.type_matcher = EventTypeMatcher(list(self.event_types)) if self.event_types else None
        self.rest_test = combine(timestamp, self.traits)

    def matches_type(self, event_type: str) -> bool:
        return self.type_matcher is None or self.type_matcher(event_type)

    def matches(self, event: Mapping[str, Any]) -> bool:
        """Whether ``event`` passes every part of this criterion."""
        event_type = event.get("event_type")
        if not isinstance(event_type, str) or not self.matches_type(event_type):
            return False
        return self.rest_test is None or self.rest_test(event)

    def diagnose(self, event: Mapping[str, Any]) -> Diagnosis:
        """Every check of this criterion against ``event``: which passed, the first that failed."""
        checks = 1 + len(self.traits) + (self.timestamp is not None)
        event_type = event.get("event_type")
        if not isinstance(event_type, str) or not self.matches_type(event_type):
            return Diagnosis(False, 0, checks, "event_type",
                             f"event type {event_type!r} is not one of {list(self.event_types)}")
        passed = 1
        for trait in self.traits:
            if not trait.matches(event):
                value = event.get(trait.name)
                if value is None:
                    return Diagnosis(False, passed, checks, "missing_trait",
                                     f"trait {trait.name!r} is missing (needs {trait.describe()})")
                kind = "time_expression" if trait.operator == "in" else "value"
                return Diagnosis(False, passed, checks, kind,
                                 f"trait {trait.name} = {_shown(value)} fails {trait.describe()}"
                                 + _why_expression_failed(trait, event))
            passed += 1
        if self.timestamp is not None and not timestamp_test(self.timestamp)(event):
            return Diagnosis(False, passed, checks, "time_expression",
                             f"timestamp {event.get('timestamp')} is not in {self.timestamp.text!r}"
                             + _why_timestamp_failed(self.timestamp, event))
        return Diagnosis(True, checks, checks, None, "matches")

    def explain(self, event: Mapping[str, Any]) -> str:
        """Why ``event`` does or does not pass, for debug logging (slow)."""
        return self.diagnose(event).detail

    def describe(self) -> str:
        """The criterion in words, for explain and the dashboard."""
        included = [p for p in self.event_types if not p.startswith("!")]
        excluded = [p[1:] for p in self.event_types if p.startswith("!")]
        kinds = " or ".join(included) if included else "any"
        if excluded:
            kinds += " but not " + " or ".join(excluded)
        parts = [f"event type {kinds}"]
        parts += [trait.describe() for trait in self.traits]
        if self.timestamp is not None:
            parts.append(f"timestamp in {self.timestamp.text}")
        return ", ".join(parts)

    def __repr__(self) -> str:
        parts = [f"event_types={list(self.event_types)!r}"]
        if self.number != 1:
            parts.append(f"number={self.number}")
        if self.timestamp is not None:
            parts.append(f"timestamp={self.timestamp.text!r}")
        if self.traits:
            parts.append("traits=[" + ", ".join(t.describe() for t in self.traits) + "]")
        if self.map_distinguished_by:
            parts.append(f"map_distinguished_by={self.map_distinguished_by!r}")
        return f"Criterion({', '.join(parts)})"
