"""Syntax tree to nested closures.

Each node becomes a function ``evaluate(variables, now)``. Everything that
depends only on the text (timedeltas, month counts, which fields to replace,
which unit rules apply) is worked out here, once, so that evaluating does
little more than the datetime arithmetic itself.

Inside the tree a timestamp-kind node yields a bare ``datetime``; only the
root wraps it into a :class:`Timestamp`. Range kinds yield their result
objects directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from operator import attrgetter
from typing import Any

from winchester.errors import TimexEvaluationError, TimexUndefinedVariable
from winchester.timex._calendar import (
    UNIT_END,
    UNIT_REPIN,
    UNIT_START,
    as_naive_utc,
    replacer,
    shifter,
)
from winchester.timex._parser import (
    RANGE_UNIT_INDEX,
    REPLACE_FIELDS,
    TIMESTAMP,
    Adjusted,
    Function,
    Node,
    Operation,
    Shift,
    Span,
    Variable,
)
from winchester.timex._values import (
    Duration,
    PinnedTimeRange,
    TimeRange,
    new_pinned_range,
    new_time_range,
    new_timestamp,
)

Evaluator = Callable[[Mapping[str, Any], "datetime | None"], Any]
Step = Callable[[Any], Any]


def compile_tree(tree: Node) -> Evaluator:
    """The evaluator of a whole expression: returns Timestamp, TimeRange or PinnedTimeRange."""
    if tree.kind == TIMESTAMP:
        return _compile(tree, finish=new_timestamp)
    return _compile(tree)


def _compile(node: Node, finish: Callable[[datetime], Any] | None = None) -> Evaluator:
    """``finish``, if given, is applied to the value; it lets the root fold the
    Timestamp wrapping into its last closure instead of adding another call."""
    match node:
        case Variable(name):
            evaluate = _variable_reader(name)
        case Function(unit, argument):
            evaluate = _function(unit, argument)
        case Adjusted():
            return _adjusted(node, finish)
        case Span(begin, end):
            evaluate = _span(begin, end)
        case _:
            raise AssertionError(f"unknown node {node!r}")
    if finish is None:
        return evaluate

    def evaluate_and_finish(variables: Mapping[str, Any], now: datetime | None) -> Any:
        return finish(evaluate(variables, now))

    return evaluate_and_finish


def _variable_reader(name: str) -> Evaluator:
    if name == "timestamp":

        def read_timestamp(variables: Mapping[str, Any], now: datetime | None) -> datetime:
            try:
                value = variables["timestamp"]
            except KeyError:
                if now is None:
                    raise TimexUndefinedVariable("timestamp") from None
                value = now
            if value.__class__ is datetime and value.tzinfo is None:
                return value
            return as_naive_utc(value, "timestamp")

        return read_timestamp

    def read_variable(variables: Mapping[str, Any], now: datetime | None) -> datetime:
        try:
            value = variables[name]
        except KeyError:
            raise TimexUndefinedVariable(name) from None
        if value.__class__ is datetime and value.tzinfo is None:
            return value
        return as_naive_utc(value, name)

    return read_variable


def _function(unit: str, argument: Node) -> Evaluator:
    evaluate_argument = _compile(argument)
    unit_start = UNIT_START[unit]
    unit_end = UNIT_END[unit]
    if argument.kind == TIMESTAMP:

        def whole_unit(variables: Mapping[str, Any], now: datetime | None) -> PinnedTimeRange:
            pin = evaluate_argument(variables, now)
            begin = unit_start(pin)
            return new_pinned_range(begin, unit_end(begin), unit, pin)

        return whole_unit

    def whole_unit_of_range(variables: Mapping[str, Any], now: datetime | None) -> PinnedTimeRange:
        pin = evaluate_argument(variables, now).timestamp
        begin = unit_start(pin)
        return new_pinned_range(begin, unit_end(begin), unit, pin)

    return whole_unit_of_range


def _span(begin_node: Node, end_node: Node) -> Evaluator:
    evaluate_begin = _compile(begin_node)
    evaluate_end = _compile(end_node)
    begin_of = None if begin_node.kind == TIMESTAMP else attrgetter("begin")
    end_of = None if end_node.kind == TIMESTAMP else attrgetter("end")

    def span(variables: Mapping[str, Any], now: datetime | None) -> TimeRange:
        begin = evaluate_begin(variables, now)
        end = evaluate_end(variables, now)
        if begin_of is not None:
            begin = begin_of(begin)
        if end_of is not None:
            end = end_of(end)
        return _checked_range(begin, end)

    return span


def _checked_range(begin: datetime, end: datetime) -> TimeRange:
    if end < begin:
        raise TimexEvaluationError(
            f"range would end ({end.isoformat()}) before it begins ({begin.isoformat()})"
        )
    return new_time_range(begin, end)


# ---------------------------------------------------------- +, -, @ chains


def _adjusted(node: Adjusted, finish: Callable[[datetime], Any] | None) -> Evaluator:
    # '($t + 1d) @ 0h' is the same chain as '$t + 1d @ 0h'; flatten it.
    operations: tuple[Operation, ...] = node.operations
    operand = node.operand
    while isinstance(operand, Adjusted):
        operations = operand.operations + operations
        operand = operand.operand
    evaluate_operand = _compile(operand)
    kind = operand.kind
    if kind == TIMESTAMP:
        steps = [step for step in map(_timestamp_step, operations) if step is not None]
    elif kind in RANGE_UNIT_INDEX:
        steps = [_pinned_step(kind, operation) for operation in operations]
    else:
        steps = [step for step in map(_range_step, operations) if step is not None]
    if finish is not None:
        steps.append(finish)
    if not steps:
        return evaluate_operand
    if len(steps) == 1:
        (only_step,) = steps

        def adjust_once(variables: Mapping[str, Any], now: datetime | None) -> Any:
            return only_step(evaluate_operand(variables, now))

        return adjust_once
    if len(steps) == 2:
        first_step, second_step = steps

        def adjust_twice(variables: Mapping[str, Any], now: datetime | None) -> Any:
            return second_step(first_step(evaluate_operand(variables, now)))

        return adjust_twice

    def adjust(variables: Mapping[str, Any], now: datetime | None) -> Any:
        value = evaluate_operand(variables, now)
        for step in steps:
            value = step(value)
        return value

    return adjust


def _calendar_and_fixed(sign: int, components: tuple[int, ...]) -> tuple[int, Any]:
    duration = Duration(*components)
    return sign * duration.calendar_months, duration.fixed_delta * sign


def _timestamp_step(operation: Operation) -> Step | None:
    if isinstance(operation, Shift):
        return shifter(*_calendar_and_fixed(operation.sign, operation.duration.components))
    return replacer(dict(operation.fields))


def _range_step(operation: Operation) -> Step | None:
    move = _timestamp_step(operation)
    if move is None:
        return None

    def move_range(time_range: TimeRange) -> TimeRange:
        return _checked_range(move(time_range.begin), move(time_range.end))

    return move_range


def _pinned_step(unit: str, operation: Operation) -> Step:
    """Components of the range's unit or larger move the range and its pin
    together; smaller ones move only the begin, after which the range is
    re-pinned: moved by whole units until it contains its pin again."""
    unit_index = RANGE_UNIT_INDEX[unit]
    if isinstance(operation, Shift):
        components = operation.duration.components
        zeros = (0,) * len(components)
        large = components[: unit_index + 1] + zeros[unit_index + 1 :]
        small = zeros[: unit_index + 1] + components[unit_index + 1 :]
        move_both = shifter(*_calendar_and_fixed(operation.sign, large))
        move_begin = shifter(*_calendar_and_fixed(operation.sign, small))
    else:
        fields = dict(operation.fields)
        move_both = replacer(
            {f: v for f, v in fields.items() if REPLACE_FIELDS.index(f) <= unit_index}
        )
        move_begin = replacer(
            {f: v for f, v in fields.items() if REPLACE_FIELDS.index(f) > unit_index}
        )
    repin = UNIT_REPIN[unit]
    unit_end = UNIT_END[unit]

    def move_pinned(window: PinnedTimeRange) -> PinnedTimeRange:
        begin = window.begin
        pin = window.timestamp
        if move_both is not None:
            begin = move_both(begin)
            pin = move_both(pin)
        if move_begin is not None:
            begin = move_begin(begin)
        begin = repin(begin, pin)
        return new_pinned_range(begin, unit_end(begin), unit, pin)

    return move_pinned
