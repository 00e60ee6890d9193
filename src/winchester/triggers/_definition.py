"""Compiled triggers: matching events, distinguishing traits, firing and expiry."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from winchester.errors import Problem, TimexEvaluationError
from winchester.timex import Expression, TimeRange, Timestamp
from winchester.triggers._criteria import Criterion, EventTest
from winchester.triggers._keys import distinguishing_key

# Event types seen per trigger are cached; real deployments have a few
# hundred. The bound only guards against a flood of made-up types.
TYPE_CACHE_LIMIT = 4096

# (name, source trait, expression or None, expression reads more than $timestamp)
DistinguishStep = tuple[str, str, Expression | None, bool]
# (criterion, its non-type test or None, its distinguishing plan)
MatchCandidate = tuple[Criterion, EventTest | None, tuple[DistinguishStep, ...]]


class TriggerMatch:
    """An event matched a trigger: which stream it belongs to and what it counts towards.

    ``distinguishing`` maps each distinguishing trait to the event's value
    (str, int, float or datetime) or, for a time-expression item, to the
    :class:`TimeRange` computed from it. ``key`` and ``fire_increments`` are
    computed on first use.
    """

    __slots__ = ("_event", "_fire_increments", "_key", "criterion", "distinguishing", "trigger")

    def __init__(self, trigger: TriggerDefinition, distinguishing: dict[str, Any],
                 criterion: Criterion, event: Mapping[str, Any]):
        self.trigger = trigger
        self.distinguishing = distinguishing
        self.criterion = criterion
        self._event = event
        self._key: str | None = None
        self._fire_increments: tuple[int, ...] | None = None

    @property
    def key(self) -> str:
        """``distinguishing_key(trigger.name, distinguishing)``."""
        if self._key is None:
            self._key = distinguishing_key(self.trigger.name, self.distinguishing)
        return self._key

    @property
    def fire_increments(self) -> tuple[int, ...]:
        """``trigger.fire_increments(event)`` for the matched event."""
        if self._fire_increments is None:
            self._fire_increments = self.trigger.fire_increments(self._event)
        return self._fire_increments

    def __repr__(self) -> str:
        return (f"TriggerMatch(trigger={self.trigger.name!r}, "
                f"distinguishing={self.distinguishing!r})")


class TriggerDefinition:
    """One trigger, compiled: see the package documentation for the semantics.

    ``distinguished_by`` holds the trait names in order;
    ``distinguished_by_expressions`` maps those written as
    ``{trait: time-expression}`` to their compiled expression.
    """

    __slots__ = ("_fire_numbers", "_ones", "_type_cache", "_zeros", "debug_level",
                 "distinguished_by", "distinguished_by_expressions", "expiration",
                 "expire_pipeline", "fire_criteria", "fire_delay", "fire_pipeline", "index",
                 "match_criteria", "name")

    def __init__(self, name: str, expiration: Expression, match_criteria: Sequence[Criterion],
                 fire_criteria: Sequence[Criterion] = (),
                 distinguished_by: Sequence[str | tuple[str, Expression]] = (),
                 fire_pipeline: str | None = None, expire_pipeline: str | None = None,
                 debug_level: int = 0, fire_delay: float = 0.0, index: int = 0):
        self.name = name
        self.index = index
        self.debug_level = debug_level
        self.fire_pipeline = fire_pipeline
        self.expire_pipeline = expire_pipeline
        self.fire_delay = float(fire_delay)
        self.expiration = expiration
        self.match_criteria = tuple(match_criteria)
        self.fire_criteria = tuple(fire_criteria)
        names: list[str] = []
        expressions: dict[str, Expression] = {}
        for item in distinguished_by:
            if isinstance(item, tuple):
                names.append(item[0])
                expressions[item[0]] = item[1]
            else:
                names.append(item)
        self.distinguished_by = tuple(names)
        self.distinguished_by_expressions = expressions
        self._fire_numbers = tuple(c.number for c in self.fire_criteria)
        self._zeros = (0,) * len(self.fire_criteria)
        self._ones = (1,) * len(self.fire_criteria)
        self._type_cache: dict[str, tuple[tuple[MatchCandidate, ...], Any]] = {}

    # ----------------------------------------------------------- matching

    def _plan(self, criterion: Criterion) -> tuple[DistinguishStep, ...]:
        steps = []
        for name in self.distinguished_by:
            expression = self.distinguished_by_expressions.get(name)
            reads_event = expression is not None and not expression.variables <= {"timestamp"}
            steps.append((name, criterion.map_distinguished_by.get(name, name), expression,
                          reads_event))
        return tuple(steps)

    def _for_type(self, event_type: Any) -> tuple[tuple[MatchCandidate, ...], Any]:
        """The match criteria and fire criteria that can apply to ``event_type``.

        The fire part is a ready-made increments tuple when no fire criterion
        of this type tests anything beyond the type, else (index, test) pairs.
        """
        if not isinstance(event_type, str):
            return (), self._zeros
        candidates = tuple((c, c.rest_test, self._plan(c)) for c in self.match_criteria
                           if c.matches_type(event_type))
        fire_tests = [(i, c.rest_test) for i, c in enumerate(self.fire_criteria)
                      if c.matches_type(event_type)]
        fire: Any
        if all(test is None for _, test in fire_tests):
            counts = [0] * len(self.fire_criteria)
            for i, _ in fire_tests:
                counts[i] = 1
            fire = tuple(counts)
        else:
            fire = tuple(fire_tests)
        entry = (candidates, fire)
        if len(self._type_cache) >= TYPE_CACHE_LIMIT:
            self._type_cache.clear()
        self._type_cache[event_type] = entry
        return entry

    def match(self, event: Mapping[str, Any]) -> TriggerMatch | None:
        """The stream ``event`` joins, or None if this trigger does not take it.

        The first match criterion the event passes decides which
        ``map_distinguished_by`` applies; an event then lacking a
        distinguishing trait (or whose time-expression item cannot be
        evaluated) is not taken.
        """
        event_type = event.get("event_type")
        entry = self._type_cache.get(event_type)  # type: ignore[arg-type]
        if entry is None:
            entry = self._for_type(event_type)
        for criterion, test, plan in entry[0]:
            if test is None or test(event):
                distinguishing = _distinguish(event, plan)
                if distinguishing is None:
                    return None
                return TriggerMatch(self, distinguishing, criterion, event)
        return None

    def distinguishing_traits(self, event: Mapping[str, Any],
                              criterion: Criterion | None = None) -> dict[str, Any] | None:
        """The distinguishing traits of ``event`` as ``criterion`` maps them (None: no mapping)."""
        return _distinguish(event, self._plan(criterion or Criterion()))

    def fire_increments(self, event: Mapping[str, Any]) -> tuple[int, ...]:
        """1 for each fire criterion ``event`` passes, else 0 (by position)."""
        event_type = event.get("event_type")
        entry = self._type_cache.get(event_type)  # type: ignore[arg-type]
        if entry is None:
            entry = self._for_type(event_type)
        fire = entry[1]
        if not fire or fire[0].__class__ is int:
            return fire  # type: ignore[no-any-return]
        counts = list(self._zeros)
        for index, test in fire:
            if test is None or test(event):
                counts[index] = 1
        return tuple(counts)

    def is_ready(self, counts: Sequence[int]) -> bool:
        """Whether a stream with ``counts`` matches per fire criterion should fire.

        Every fire criterion needs at least its ``number`` of events; a
        trigger without fire criteria is never ready (its streams can only
        expire). Raises ValueError if ``counts`` does not have one entry per
        fire criterion: counts kept for another version of the trigger must
        not fire it by accident.
        """
        numbers = self._fire_numbers
        if len(counts) != len(numbers):
            raise ValueError(f"trigger {self.name!r} has {len(numbers)} fire criteria, "
                             f"but {len(counts)} counts were given")
        if not numbers:
            return False
        for count, number in zip(counts, numbers):
            if count < number:
                return False
        return True

    def expire_time(self, first: datetime, last: datetime, now: datetime | None = None) -> datetime:
        """When a stream whose events span ``first``..``last`` expires.

        ``now`` stands in for ``$timestamp``; a range result expires at its
        end. Raises only TimexEvaluationError (an expression using a
        variable other than $first, $last and $timestamp, a value out of range).
        """
        result = self.expiration.evaluate({"first": first, "last": last}, now)
        if result.__class__ is Timestamp:
            return result.timestamp  # type: ignore[union-attr]
        return result.end

    def explain(self, event: Mapping[str, Any]) -> str:
        """Why ``event`` does or does not match, for debug_level 2 logging (slow)."""
        reasons = []
        for index, criterion in enumerate(self.match_criteria):
            verdict = criterion.explain(event)
            if verdict == "matches":
                plan = self._plan(criterion)
                if _distinguish(event, plan) is None:
                    missing = [source for _, source, _, _ in plan if event.get(source) is None]
                    detail = (f"lacks distinguishing trait(s) {', '.join(missing)}" if missing
                              else "a distinguishing time expression cannot be evaluated")
                    return f"match_criteria #{index} matches, but the event {detail}"
                return f"matches match_criteria #{index}"
            reasons.append(f"match_criteria #{index}: {verdict}")
        return "; ".join(reasons)

    def __repr__(self) -> str:
        return f"TriggerDefinition(name={self.name!r})"


def _distinguish(event: Mapping[str, Any],
                 plan: tuple[DistinguishStep, ...]) -> dict[str, Any] | None:
    distinguishing: dict[str, Any] = {}
    get = event.get
    for name, source, expression, reads_event in plan:
        value = get(source)
        if value is None:
            return None
        if expression is not None:
            if reads_event:
                variables = dict(event)
                variables["timestamp"] = value
            else:
                variables = {"timestamp": value}
            try:
                result = expression.evaluate(variables)
            except TimexEvaluationError:
                return None
            if result.__class__ is Timestamp:
                value = result.timestamp  # type: ignore[union-attr]
            elif result.__class__ is TimeRange:
                value = result
            else:
                # Drop the pin (the event's own instant): every event of the
                # stream must produce an identical value.
                value = TimeRange(result.begin, result.end)
        distinguishing[name] = value
    return distinguishing


@dataclass(frozen=True)
class TriggerSet:
    """All triggers of one file, in file order, and the warnings loading gave."""

    file_name: str
    triggers: tuple[TriggerDefinition, ...]
    warnings: tuple[Problem, ...] = ()
    by_name: dict[str, TriggerDefinition] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.by_name:
            object.__setattr__(self, "by_name", {t.name: t for t in self.triggers})

    def __iter__(self) -> Iterator[TriggerDefinition]:
        return iter(self.triggers)

    def __len__(self) -> int:
        return len(self.triggers)

    def matches(self, event: Mapping[str, Any]) -> list[TriggerMatch]:
        """Every trigger ``event`` matches, in file order."""
        found = []
        for trigger in self.triggers:
            matched = trigger.match(event)
            if matched is not None:
                found.append(matched)
        return found
