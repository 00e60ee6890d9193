"""Trigger properties: matching never raises, keys are canonical and typed, readiness monotone."""

from __future__ import annotations

import operator
from datetime import datetime, timedelta

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from winchester.errors import ConfigError
from winchester.timex import TimeRange
from winchester.triggers import (
    TriggerDefinition,
    distinguishing_from_json,
    distinguishing_key,
    distinguishing_to_json,
    load_triggers,
)

DATETIMES = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1))
TRAIT_VALUES = st.one_of(
    st.text(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    DATETIMES,
)
RANGES = st.builds(lambda begin, length: TimeRange(begin, begin + length), DATETIMES,
                   st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=400)))
DISTINGUISHING_VALUES = st.one_of(TRAIT_VALUES, RANGES)
OPERATOR_TEXT = st.one_of(
    st.text(),
    st.builds("{}{}{}".format, st.sampled_from(["", "=", "==", "!=", ">", ">=", "<", "<=", "=>",
                                                "!", "<>", "~"]),
              st.sampled_from(["", " ", "  "]),
              st.one_of(st.integers().map(str), st.floats().map(repr), st.text(max_size=5))),
)
PYTHON_OPERATORS = {"=": operator.eq, "==": operator.eq, "!=": operator.ne, ">": operator.gt,
                    ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def trigger_with(traits: dict) -> TriggerDefinition | None:
    """The trigger whose only match criterion has these trait criteria, or None if invalid."""
    data = [{"name": "t", "expiration": "$last + 1h", "fire_pipeline": "p",
             "distinguished_by": ["x"],
             "match_criteria": [{"traits": traits}],
             "fire_criteria": [{"traits": traits}]}]
    try:
        return load_triggers(data, "triggers.yaml").by_name["t"]
    except ConfigError as error:
        assert all(p.where.startswith("trigger 't' > ") for p in error.problems)
        return None


def typed(value: object) -> tuple[str, object]:
    """What a key must distinguish: the value's type and (normalised) value."""
    if isinstance(value, TimeRange):
        return ("range", (value.begin, value.end))
    if isinstance(value, float):
        return ("float", value + 0.0)
    return (type(value).__name__, value)


@given(kind=st.sampled_from(["int", "float", "numeric"]), spec=OPERATOR_TEXT,
       values=st.lists(TRAIT_VALUES, max_size=5))
def test_operator_strings_fail_only_at_load(kind, spec, values):
    """Any operator string is either a load error or a criterion that never raises when matching."""
    trigger = trigger_with({"x": {kind: spec}})
    if trigger is None:
        return
    for value in values:
        event = {"message_id": "m", "event_type": "e", "timestamp": datetime(2014, 8, 1),
                 "x": value}
        trigger.match(event)
        assert trigger.fire_increments(event) in ((0,), (1,))


@given(spec=st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(), DATETIMES,
                      st.lists(st.integers(), max_size=2),
                      st.dictionaries(st.text(max_size=8), st.one_of(st.text(), st.integers()),
                                      max_size=2)),
       value=TRAIT_VALUES)
def test_any_criterion_value_fails_only_at_load(spec, value):
    """Whatever YAML value a trait criterion holds, it fails at load or matches without raising."""
    trigger = trigger_with({"x": spec})
    if trigger is None:
        return
    trigger.match({"message_id": "m", "event_type": "e", "timestamp": datetime(2014, 8, 1),
                   "x": value, "y": datetime(2014, 8, 2)})


@given(symbol=st.sampled_from(sorted(PYTHON_OPERATORS)),
       operand=st.integers(min_value=-10, max_value=10),
       value=st.one_of(st.integers(min_value=-12, max_value=12),
                       st.floats(min_value=-12, max_value=12)))
def test_numeric_operators_agree_with_python(symbol, operand, value):
    """`numeric: "<op> n"` and `int: "<op> n"` match exactly when Python's comparison does
    (an int criterion compares a float trait by value, as the original did)."""
    event = {"message_id": "m", "event_type": "e", "timestamp": datetime(2014, 8, 1), "x": value}
    expected = PYTHON_OPERATORS[symbol](value, operand)
    numeric = trigger_with({"x": {"numeric": f"{symbol} {operand}"}})
    integer = trigger_with({"x": {"int": f"{symbol}{operand}"}})
    assert (numeric.match(event) is not None) == expected
    assert (integer.match(event) is not None) == expected


@given(name=st.text(max_size=20),
       first=st.dictionaries(st.text(max_size=10), DISTINGUISHING_VALUES, max_size=4),
       second=st.dictionaries(st.text(max_size=10), DISTINGUISHING_VALUES, max_size=4))
def test_key_is_injective_across_types(name, first, second):
    """Two trait sets share a key exactly when they have the same names, types and values."""
    same = {k: typed(v) for k, v in first.items()} == {k: typed(v) for k, v in second.items()}
    assert (distinguishing_key(name, first) == distinguishing_key(name, second)) == same


@given(name=st.text(max_size=20),
       traits=st.dictionaries(st.text(max_size=10), DISTINGUISHING_VALUES, max_size=4),
       value=DISTINGUISHING_VALUES)
def test_key_is_deterministic_and_bounded(name, traits, value):
    """Keys do not depend on insertion order, are ASCII, and at most 255 characters."""
    key = distinguishing_key(name, traits)
    assert key == distinguishing_key(name, dict(reversed(list(traits.items()))))
    assert key.isascii() and len(key) <= 255
    if traits:
        renamed = dict(traits)
        renamed[next(iter(traits))] = value
        assume(typed(value) != typed(next(iter(traits.values()))))
        assert distinguishing_key(name, renamed) != key


@given(st.dictionaries(st.text(max_size=10), DISTINGUISHING_VALUES, max_size=5))
def test_json_round_trip(traits):
    """distinguishing_from_json(distinguishing_to_json(d)) gives back d, types included."""
    back = distinguishing_from_json(distinguishing_to_json(traits))
    assert {k: typed(v) for k, v in back.items()} == {k: typed(v) for k, v in traits.items()}


@given(numbers=st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=4),
       data=st.data())
def test_is_ready_is_monotone(numbers, data):
    """Once ready, more events never make a stream unready; a count below its number never is."""
    trigger = load_triggers([{
        "name": "t", "expiration": "$last + 1h", "fire_pipeline": "p",
        "match_criteria": [{"event_type": "*"}],
        "fire_criteria": [{"event_type": f"e{i}", "number": n} for i, n in enumerate(numbers)],
    }], "triggers.yaml").by_name["t"]
    counts = data.draw(st.lists(st.integers(min_value=0, max_value=8), min_size=len(numbers),
                                max_size=len(numbers)))
    more = data.draw(st.lists(st.integers(min_value=0, max_value=8), min_size=len(numbers),
                              max_size=len(numbers)))
    bigger = [c + m for c, m in zip(counts, more)]
    if trigger.is_ready(counts):
        assert trigger.is_ready(bigger)
    assert trigger.is_ready(counts) == all(c >= n for c, n in zip(counts, numbers))


@pytest.mark.parametrize("value", [0, 1, 2])
def test_is_ready_boundary(value):
    """With number: 2, exactly two events make the criterion ready."""
    trigger = load_triggers([{
        "name": "t", "expiration": "$last + 1h", "fire_pipeline": "p",
        "match_criteria": [{"event_type": "*"}], "fire_criteria": [{"number": 2}],
    }], "triggers.yaml").by_name["t"]
    assert trigger.is_ready((value,)) == (value >= 2)
