"""Properties of the time-expression language that must hold for any input."""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from winchester.errors import TimexEvaluationError, TimexSyntaxError
from winchester.timex import PinnedTimeRange, TimeRange, Timestamp, parse

UNITS = ("hour", "day", "month", "year")
SYMBOLS = ("y", "mo", "d", "h", "m", "s", "us")
# The duration symbols strictly smaller than each range unit.
SMALLER_SYMBOLS = {
    "year": ("mo", "d", "h", "m", "s", "us"),
    "month": ("d", "h", "m", "s", "us"),
    "day": ("h", "m", "s", "us"),
    "hour": ("m", "s", "us"),
}
OWN_SYMBOL = {"year": "y", "month": "mo", "day": "d", "hour": "h"}
REPLACE_LIMITS = {
    "y": (1, 9999),
    "mo": (1, 12),
    "d": (1, 31),
    "h": (0, 23),
    "m": (0, 59),
    "s": (0, 59),
    "us": (0, 999_999),
}

# Far enough from datetime.min/max that a few years of movement cannot overflow.
moderate_datetimes = st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9000, 12, 31))
any_datetimes = st.datetimes() | st.datetimes(
    timezones=st.builds(
        timezone,
        st.timedeltas(
            min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
        ),
    )
)


def one_unit_after(begin: datetime, unit: str) -> datetime:
    """begin + 1 unit, computed independently of the library under test."""
    if unit == "hour":
        return begin + timedelta(hours=1)
    if unit == "day":
        return begin + timedelta(days=1)
    months = 1 if unit == "month" else 12
    index = begin.year * 12 + begin.month - 1 + months
    year, month = index // 12, index % 12 + 1
    day = min(begin.day, calendar.monthrange(year, month)[1])
    return begin.replace(year=year, month=month, day=day)


def render(components: list[tuple[int, str]]) -> str:
    return " ".join(f"{value}{symbol}" for value, symbol in components)


@st.composite
def small_durations(draw: st.DrawFn, unit: str) -> str:
    """A duration using only components smaller than ``unit``."""
    components = draw(
        st.lists(
            st.tuples(st.integers(0, 400), st.sampled_from(SMALLER_SYMBOLS[unit])),
            min_size=1,
            max_size=4,
        )
    )
    return render(components)


@st.composite
def small_replacements(draw: st.DrawFn, unit: str) -> str:
    """An '@' field list using only fields smaller than ``unit``, each once."""
    symbols = draw(
        st.lists(st.sampled_from(SMALLER_SYMBOLS[unit]), min_size=1, max_size=4, unique=True)
    )
    return render([(draw(st.integers(*REPLACE_LIMITS[symbol])), symbol) for symbol in symbols])


exact_durations = st.lists(
    st.tuples(st.integers(0, 100_000), st.sampled_from(("d", "h", "m", "s", "us"))),
    min_size=1,
    max_size=5,
).map(render)


@given(st.text())
def test_parse_of_any_text_raises_only_syntax_errors(text: str):
    """parse() of arbitrary text either compiles or raises TimexSyntaxError within the text."""
    try:
        parse(text)
    except TimexSyntaxError as error:
        assert 0 <= error.position <= len(text)


@given(st.text(alphabet="$()+-@ tohdaymnrsu0123456789_xab", max_size=40))
def test_parse_of_grammar_like_text_raises_only_syntax_errors(text: str):
    """Text built from the language's own characters also fails only with TimexSyntaxError."""
    try:
        expression = parse(text)
    except TimexSyntaxError as error:
        assert 0 <= error.position <= len(text)
    else:
        assert isinstance(expression.is_range, bool)


@given(moderate_datetimes, st.sampled_from(UNITS), st.data())
def test_pinned_range_always_contains_its_pin_and_spans_one_unit(
    moment: datetime, unit: str, data: st.DataObject
):
    """After shifts and '@' by smaller components a pinned range still holds its pin and is one unit long."""
    operator = data.draw(st.sampled_from(("+", "-", "@")))
    operand = data.draw(small_replacements(unit) if operator == "@" else small_durations(unit))
    result = parse(f"{unit}($t) {operator} {operand}")(t=moment)
    assert isinstance(result, PinnedTimeRange)
    assert result.unit == unit
    assert result.timestamp == moment
    assert moment in result
    assert result.end == one_unit_after(result.begin, unit)


@given(moderate_datetimes, exact_durations)
def test_adding_then_subtracting_an_exact_duration_round_trips(moment: datetime, duration: str):
    """(t + D) - D == t when D has only days and smaller units."""
    assert parse(f"($t + {duration}) - {duration}")(t=moment).timestamp == moment


def months_later(moment: datetime, months: int) -> datetime:
    index = moment.year * 12 + moment.month - 1 + months
    year, month = index // 12, index % 12 + 1
    return moment.replace(
        year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1])
    )


@given(moderate_datetimes, st.sampled_from(UNITS), st.integers(-50, 50))
def test_adding_whole_units_moves_a_pinned_range_by_exactly_that_many(
    moment: datetime, unit: str, count: int
):
    """unit($t) + N units is the unit N steps away, with its pin moved by N units too."""
    operator = "+" if count >= 0 else "-"
    moved = parse(f"{unit}($t) {operator} {abs(count)}{OWN_SYMBOL[unit]}")(t=moment)
    original = parse(f"{unit}($t)")(t=moment)
    if unit in ("hour", "day"):
        length = timedelta(hours=1) if unit == "hour" else timedelta(days=1)
        expected_begin = original.begin + count * length
        expected_pin = moment + count * length
    else:
        months = count if unit == "month" else 12 * count
        expected_begin = months_later(original.begin, months)
        expected_pin = months_later(moment, months)
    assert moved.begin == expected_begin
    assert moved.end == one_unit_after(expected_begin, unit)
    assert moved.timestamp == expected_pin
    assert moved.timestamp in moved


@given(st.datetimes(), st.datetimes())
def test_range_contains_its_begin_but_not_its_end(a: datetime, b: datetime):
    """For any non-empty range, begin is in it and end is not; pinned ranges included."""
    first, last = sorted((a, b))
    result = parse("$a to $b")(a=first, b=last)
    assert (result.begin, result.end) == (first, last)
    if first < last:
        assert first in result
        assert last not in result
        assert last - timedelta(microseconds=1) in result
    for unit in UNITS:
        try:
            window = parse(f"{unit}($a)")(a=first)
        except TimexEvaluationError:
            continue  # the unit would end after 9999-12-31
        assert window.begin in window
        assert window.end not in window


# ---------------------------------------------------- random well-formed expressions
#
# Each generated fragment is (text, kind, level). kind is "timestamp", "range"
# or a pinned unit, because a number without a unit is only valid on a pinned
# range. level says where the text may stand without parentheses: ATOM as the
# operand of '+', '-', '@'; SUM also beside 'to'; SPAN only inside parentheses
# or at the top.

VARIABLES = ("a", "b", "timestamp")
ATOM, SUM, SPAN = 0, 1, 2
Fragment = tuple[str, str, int]


def duration_text(draw: st.DrawFn, kind: str, operator: str) -> str:
    if operator == "@":
        symbols = draw(st.lists(st.sampled_from(SYMBOLS), min_size=1, max_size=4, unique=True))
        return render([(draw(st.integers(*REPLACE_LIMITS[symbol])), symbol) for symbol in symbols])
    bare_allowed = kind in UNITS
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        value = draw(st.integers(0, 10) | st.integers(0, 3000))
        symbol = draw(st.sampled_from(SYMBOLS + (("",) if bare_allowed else ())))
        parts.append((value, symbol))
    return render(parts)


atoms = st.one_of(
    st.sampled_from(VARIABLES).map(lambda name: (f"${name}", "timestamp", ATOM)),
    st.sampled_from(UNITS).map(lambda unit: (unit, unit, ATOM)),
)


def parenthesized_unless(fragment: Fragment, highest_level: int) -> str:
    text, _, level = fragment
    return text if level <= highest_level else f"({text})"


@st.composite
def functions_of(draw: st.DrawFn, inner: st.SearchStrategy[Fragment]) -> Fragment:
    unit = draw(st.sampled_from(UNITS))
    return (f"{unit}({draw(inner)[0]})", unit, ATOM)


@st.composite
def adjusted(draw: st.DrawFn, inner: st.SearchStrategy[Fragment]) -> Fragment:
    fragment = draw(inner)
    kind = fragment[1]
    text = parenthesized_unless(fragment, ATOM)
    for _ in range(draw(st.integers(1, 3))):
        operator = draw(st.sampled_from(("+", "-", "@")))
        text += f" {operator} {duration_text(draw, kind, operator)}"
    return (text, kind, SUM)


@st.composite
def spans(draw: st.DrawFn, inner: st.SearchStrategy[Fragment]) -> Fragment:
    begin = parenthesized_unless(draw(inner), SUM)
    end = parenthesized_unless(draw(inner), SUM)
    return (f"{begin} to {end}", "range", SPAN)


def extend(inner: st.SearchStrategy[Fragment]) -> st.SearchStrategy[Fragment]:
    return st.one_of(
        functions_of(inner),
        adjusted(inner),
        spans(inner),
        inner.map(lambda fragment: (f"({fragment[0]})", fragment[1], ATOM)),
    )


well_formed_expressions = st.recursive(atoms, extend, max_leaves=8)


@given(
    well_formed_expressions,
    st.fixed_dictionaries({name: any_datetimes for name in VARIABLES}),
)
def test_well_formed_expressions_parse_and_evaluate_or_raise_evaluation_errors(
    fragment: Fragment, variables: dict[str, datetime]
):
    """Any grammatical expression compiles, and evaluating it gives a value or a TimexEvaluationError."""
    text, kind, _ = fragment
    expression = parse(text)
    assert expression.is_range == (kind != "timestamp")
    assert expression.variables <= set(VARIABLES)
    try:
        result = expression.evaluate(variables)
    except TimexEvaluationError:
        return  # overflow near datetime.min/max, or a range whose end fell before its begin
    if kind == "timestamp":
        assert isinstance(result, Timestamp)
        assert result.timestamp.tzinfo is None
    else:
        assert isinstance(result, TimeRange)
        assert result.begin <= result.end
        assert result.begin.tzinfo is None and result.end.tzinfo is None
    if kind in UNITS:
        assert isinstance(result, PinnedTimeRange)
        assert result.unit == kind
        assert result.timestamp in result
        assert result.end == one_unit_after(result.begin, kind)
