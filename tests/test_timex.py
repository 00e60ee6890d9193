"""Examples of the time-expression language, one behaviour per test."""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta, timezone

import pytest

from winchester.errors import (
    TimexEvaluationError,
    TimexSyntaxError,
    TimexTypeError,
    TimexUndefinedVariable,
)
from winchester.timex import Duration, Expression, PinnedTimeRange, TimeRange, Timestamp, parse

T = datetime(2014, 8, 1, 1, 0)


def pinned(expression: str, **variables: datetime) -> PinnedTimeRange:
    result = parse(expression)(**variables)
    assert isinstance(result, PinnedTimeRange)
    return result


def span(result: object) -> tuple[datetime, datetime]:
    assert isinstance(result, TimeRange)
    return result.begin, result.end


# ------------------------------------------------------------- timestamps


def test_last_plus_one_hour():
    """'$last + 1h' is an hour after $last, as a Timestamp."""
    result = parse("$last + 1h")(first=datetime(2014, 8, 1), last=T)
    assert result == Timestamp(datetime(2014, 8, 1, 2, 0))
    assert result.timestamp == result.begin == result.end == datetime(2014, 8, 1, 2, 0)


def test_first_plus_two_days():
    """'$first + 2d' adds exactly 48 hours."""
    assert parse("$first + 2d")(first=T).timestamp == datetime(2014, 8, 3, 1, 0)


def test_audit_period_beginning_plus_one_day():
    """Variables may have long names with underscores."""
    result = parse("$audit_period_beginning + 1d")(audit_period_beginning=datetime(2014, 8, 1))
    assert result.timestamp == datetime(2014, 8, 2)


def test_timestamp_minus_fourteen_days():
    """'-' subtracts: the trim age of a stream."""
    assert parse("$timestamp - 14d")(timestamp=T).timestamp == datetime(2014, 7, 18, 1, 0)


def test_next_midnight():
    """'($timestamp + 1d) @ 0h 0m 0s' is the midnight that starts the next day."""
    result = parse("($timestamp + 1d) @ 0h 0m 0s")(timestamp=datetime(2014, 8, 1, 17, 42, 13))
    assert result == Timestamp(datetime(2014, 8, 2, 0, 0, 0))


def test_replace_keeps_fields_not_mentioned():
    """'@ 0h 0m 0s' leaves the microseconds (and the date) alone."""
    result = parse("$t @ 0h 0m 0s")(t=datetime(2014, 8, 1, 17, 42, 13, 500))
    assert result.timestamp == datetime(2014, 8, 1, 0, 0, 0, 500)


def test_replace_every_field_down_to_the_day():
    """'$t @ 12mo 31d 12h 0m 0s' is noon on New Year's Eve of $t's year."""
    result = parse("$t @ 12mo 31d 12h 0m 0s")(t=datetime(2014, 3, 5, 8, 9, 10))
    assert result.timestamp == datetime(2014, 12, 31, 12, 0, 0)


def test_replace_clamps_the_day_to_the_month():
    """Setting the month of the 31st to February lands on its last day."""
    assert parse("$t @ 2mo")(t=datetime(2014, 1, 31, 5)).timestamp == datetime(2014, 2, 28, 5)
    assert parse("$t @ 2mo")(t=datetime(2016, 1, 31, 5)).timestamp == datetime(2016, 2, 29, 5)
    assert parse("$t @ 4mo 31d")(t=datetime(2014, 1, 1)).timestamp == datetime(2014, 4, 30)


def test_replace_year_and_microseconds():
    """'@' can set the year and the microseconds too."""
    result = parse("$t @ 2020y 7us")(t=datetime(2014, 2, 3, 4, 5, 6, 8))
    assert result.timestamp == datetime(2020, 2, 3, 4, 5, 6, 7)


def test_multi_component_duration():
    """Components follow each other: '6h 30m 15s' is one duration."""
    assert parse("$t + 6h 30m 15s")(t=T).timestamp == datetime(2014, 8, 1, 7, 30, 15)


def test_components_may_be_written_without_spaces_or_with_spaces_before_units():
    """'6h30m15s' and '6 h 30 m' mean the same as '6h 30m 15s' and '6h 30m'."""
    assert parse("$t+6h30m15s")(t=T).timestamp == datetime(2014, 8, 1, 7, 30, 15)
    assert parse("$t + 6 h 30 m")(t=T).timestamp == datetime(2014, 8, 1, 7, 30)


def test_repeated_units_add_up_when_shifting():
    """'+ 1h 1h' is two hours."""
    assert parse("$t + 1h 1h")(t=T).timestamp == datetime(2014, 8, 1, 3, 0)


def test_microseconds_unit():
    """'us' is microseconds."""
    assert parse("$t + 250us")(t=T).timestamp == datetime(2014, 8, 1, 1, 0, 0, 250)
    assert parse("$t - 1us")(t=T).timestamp == datetime(2014, 8, 1, 0, 59, 59, 999_999)


def test_operators_apply_left_to_right():
    """'+', '-' and '@' share one precedence and apply left to right."""
    assert parse("$t @ 0h + 6h")(t=T).timestamp == datetime(2014, 8, 1, 6, 0)
    assert parse("$t + 6h @ 0h")(t=T).timestamp == datetime(2014, 8, 1, 0, 0)


# ------------------------------------------------------------ calendar math


def test_one_month_after_january_31_is_the_end_of_february():
    """Month arithmetic clamps the day: 2014-01-31 + 1mo is 2014-02-28."""
    assert parse("$t + 1mo")(t=datetime(2014, 1, 31, 9)).timestamp == datetime(2014, 2, 28, 9)


def test_one_month_after_january_31_in_a_leap_year():
    """In a leap year the clamp stops at February 29."""
    assert parse("$t + 1mo")(t=datetime(2016, 1, 31)).timestamp == datetime(2016, 2, 29)


def test_one_year_before_february_29():
    """'- 1y' from a leap day lands on February 28."""
    assert parse("$t - 1y")(t=datetime(2016, 2, 29, 12)).timestamp == datetime(2015, 2, 28, 12)


def test_months_are_added_before_days():
    """'+ 1mo 1d' from January 30 clamps first (Feb 28) and then adds a day."""
    assert parse("$t + 1mo 1d")(t=datetime(2014, 1, 30)).timestamp == datetime(2014, 3, 1)


def test_years_and_months_combine():
    """'1y 2mo' is 14 calendar months, crossing the year boundary."""
    assert parse("$t + 1y 2mo")(t=datetime(2014, 11, 15)).timestamp == datetime(2016, 1, 15)


# ------------------------------------------------------------ pinned ranges


def test_bare_day_is_the_day_of_timestamp():
    """'day' alone is the whole day containing $timestamp."""
    result = pinned("day", timestamp=T)
    assert span(result) == (datetime(2014, 8, 1), datetime(2014, 8, 2))
    assert result.unit == "day"
    assert result.timestamp == T


def test_day_of_a_variable():
    """'day($t)' is the day containing $t, pinned to $t."""
    result = pinned("day($t)", t=T)
    assert span(result) == (datetime(2014, 8, 1), datetime(2014, 8, 2))
    assert result.timestamp == T


def test_hour_month_year_boundaries():
    """hour, month and year cover their whole calendar unit."""
    t = datetime(2016, 2, 29, 13, 45, 10, 7)
    assert span(pinned("hour($t)", t=t)) == (datetime(2016, 2, 29, 13), datetime(2016, 2, 29, 14))
    assert span(pinned("month($t)", t=t)) == (datetime(2016, 2, 1), datetime(2016, 3, 1))
    assert span(pinned("year($t)", t=t)) == (datetime(2016, 1, 1), datetime(2017, 1, 1))
    assert span(pinned("month($t)", t=datetime(2014, 12, 31, 23))) == (
        datetime(2014, 12, 1),
        datetime(2015, 1, 1),
    )


def test_day_plus_six_hours_is_the_six_to_six_window():
    """'day($t) + 6h' shifts the window but keeps it around $t: [Jul 31 06:00, Aug 1 06:00)."""
    result = pinned("day($t) + 6h", t=T)
    assert span(result) == (datetime(2014, 7, 31, 6), datetime(2014, 8, 1, 6))
    assert result.timestamp == T


def test_day_plus_six_hours_after_six():
    """After 06:00 the six-to-six window starts on the same day."""
    t = datetime(2014, 8, 1, 7, 0)
    assert span(pinned("day($t) + 6h", t=t)) == (datetime(2014, 8, 1, 6), datetime(2014, 8, 2, 6))


def test_day_minus_small_units_also_repins():
    """'day($t) - 6h' is the 18:00-to-18:00 window containing $t."""
    assert span(pinned("day($t) - 6h", t=T)) == (
        datetime(2014, 7, 31, 18),
        datetime(2014, 8, 1, 18),
    )


def test_day_at_noon():
    """'day($t) @ 12h' is the noon-to-noon window containing $t."""
    assert span(pinned("day($t) @ 12h", t=T)) == (
        datetime(2014, 7, 31, 12),
        datetime(2014, 8, 1, 12),
    )
    afternoon = datetime(2014, 8, 1, 15)
    assert span(pinned("day($t) @ 12h", t=afternoon)) == (
        datetime(2014, 8, 1, 12),
        datetime(2014, 8, 2, 12),
    )


def test_bare_number_on_a_pinned_range_uses_the_next_smaller_unit():
    """'day @ 12' means 'day @ 12h'; hour takes minutes, month days, year months."""
    assert pinned("day @ 12", timestamp=T) == pinned("day @ 12h", timestamp=T)
    assert span(pinned("hour($t) + 30", t=T)) == (
        datetime(2014, 8, 1, 0, 30),
        datetime(2014, 8, 1, 1, 30),
    )
    assert span(pinned("month($t) + 14", t=datetime(2014, 8, 20))) == (
        datetime(2014, 8, 15),
        datetime(2014, 9, 15),
    )
    assert span(pinned("year($t) @ 7", t=datetime(2014, 8, 20))) == (
        datetime(2014, 7, 1),
        datetime(2015, 7, 1),
    )


def test_day_plus_one_day_is_tomorrow():
    """Components of the range's own unit move it plainly, and the pin with it."""
    result = pinned("day($t) + 1d", t=T)
    assert span(result) == (datetime(2014, 8, 2), datetime(2014, 8, 3))
    assert result.timestamp == datetime(2014, 8, 2, 1, 0)
    yesterday = pinned("day($t) - 1d", t=T)
    assert span(yesterday) == (datetime(2014, 7, 31), datetime(2014, 8, 1))


def test_day_with_a_mixed_duration():
    """'day + 1d 6h' moves a day plainly, then re-pins by the 6 hours."""
    result = pinned("day($t) + 1d 6h", t=T)
    assert span(result) == (datetime(2014, 8, 1, 6), datetime(2014, 8, 2, 6))
    assert result.timestamp == datetime(2014, 8, 2, 1, 0)


def test_next_month_keeps_its_pin_inside():
    """'month($t) + 1mo' from January 31 is February, pinned to February 28."""
    result = pinned("month($t) + 1mo", t=datetime(2014, 1, 31, 10))
    assert span(result) == (datetime(2014, 2, 1), datetime(2014, 3, 1))
    assert result.timestamp == datetime(2014, 2, 28, 10)


def test_month_shifted_by_days_has_calendar_length():
    """A month-wide window starting mid-month ends on the same day next month."""
    result = pinned("month($t) + 14d", t=datetime(2014, 1, 10))
    assert span(result) == (datetime(2013, 12, 15), datetime(2014, 1, 15))


def test_range_function_of_a_range_uses_its_timestamp():
    """'day(month($t))' is the day of $t: a range argument contributes its pin."""
    assert span(pinned("day(month($t))", t=T)) == (datetime(2014, 8, 1), datetime(2014, 8, 2))
    assert span(pinned("day($a to $b)", a=T, b=datetime(2014, 9, 9))) == (
        datetime(2014, 8, 1),
        datetime(2014, 8, 2),
    )


def test_pinned_range_replacing_its_own_unit_moves_the_pin():
    """'day($t) @ 15d' is the 15th of $t's month, pinned at $t's time on the 15th."""
    result = pinned("day($t) @ 15d", t=T)
    assert span(result) == (datetime(2014, 8, 15), datetime(2014, 8, 16))
    assert result.timestamp == datetime(2014, 8, 15, 1, 0)


# ----------------------------------------------------------------- ranges


def test_a_to_b():
    """'$a to $b' is the range [a, b)."""
    result = parse("$a to $b")(a=T, b=datetime(2014, 8, 3))
    assert type(result) is TimeRange
    assert span(result) == (T, datetime(2014, 8, 3))
    assert result.timestamp == T


def test_to_takes_the_begin_of_the_left_and_the_end_of_the_right():
    """'day($a) to day($b)' runs from the start of a's day to the end of b's."""
    result = parse("day($a) to day($b)")(a=T, b=datetime(2014, 8, 3, 5))
    assert span(result) == (datetime(2014, 8, 1), datetime(2014, 8, 4))


def test_to_binds_looser_than_plus():
    """'$first + 2d to $last' is ($first + 2d) to $last."""
    result = parse("$first + 2d to $last")(first=T, last=datetime(2014, 8, 9))
    assert span(result) == (datetime(2014, 8, 3, 1), datetime(2014, 8, 9))


def test_to_ending_before_it_begins_is_an_evaluation_error():
    """A range whose end precedes its begin cannot be evaluated."""
    with pytest.raises(TimexEvaluationError, match="before it begins"):
        parse("$a to $b")(a=T, b=T - timedelta(seconds=1))


def test_shifting_a_plain_range_moves_both_ends():
    """'($a to $b) + 1d' and '@' apply to both ends."""
    b = datetime(2014, 8, 3, 7)
    assert span(parse("($a to $b) + 1d")(a=T, b=b)) == (
        datetime(2014, 8, 2, 1),
        datetime(2014, 8, 4, 7),
    )
    assert span(parse("($a to $b) @ 0h")(a=T, b=b)) == (datetime(2014, 8, 1), datetime(2014, 8, 3))


def test_a_to_a_is_an_empty_range():
    """A range may be empty: begin == end contains nothing."""
    result = parse("$a to $a")(a=T)
    assert span(result) == (T, T)
    assert T not in result


# --------------------------------------------------------------- 'in'


def test_range_includes_its_begin_and_excludes_its_end():
    """dt in range means begin <= dt < end."""
    day = pinned("day($t)", t=T)
    assert datetime(2014, 8, 1) in day
    assert datetime(2014, 8, 1, 23, 59, 59, 999_999) in day
    assert datetime(2014, 8, 2) not in day
    assert datetime(2014, 7, 31, 23, 59) not in day


def test_timestamp_contains_only_itself():
    """A Timestamp contains exactly its own instant."""
    result = parse("$t")(t=T)
    assert T in result
    assert T + timedelta(microseconds=1) not in result


def test_in_converts_aware_datetimes_and_accepts_timestamps():
    """'in' converts an aware datetime to UTC and unwraps a Timestamp."""
    day = pinned("day($t)", t=T)
    assert datetime(2014, 8, 2, 1, 0, tzinfo=timezone(timedelta(hours=2))) in day
    assert Timestamp(T) in day
    with pytest.raises(TimexTypeError):
        _ = "2014-08-01" in day


# ------------------------------------------------------ variables and now


def test_now_stands_in_for_timestamp():
    """Without a 'timestamp' variable, $timestamp is the caller's now."""
    assert parse("$timestamp + 1h")(now=T).timestamp == datetime(2014, 8, 1, 2, 0)
    assert parse("day").evaluate({}, now=T) == TimeRange(datetime(2014, 8, 1), datetime(2014, 8, 2))


def test_timestamp_variable_overrides_now():
    """A 'timestamp' variable wins over now."""
    result = parse("$timestamp")(now=datetime(2020, 1, 1), timestamp=T)
    assert result.timestamp == T


def test_now_is_not_used_for_other_variables():
    """now only stands in for $timestamp."""
    with pytest.raises(TimexUndefinedVariable) as caught:
        parse("$last")(now=T)
    assert caught.value.name == "last"


def test_missing_variable_is_undefined_and_an_evaluation_error():
    """A missing $name raises TimexUndefinedVariable, a TimexEvaluationError."""
    expression = parse("$first + 1h")
    with pytest.raises(TimexUndefinedVariable) as caught:
        expression(last=T)
    assert caught.value.name == "first"
    assert isinstance(caught.value, TimexEvaluationError)
    assert str(caught.value) == "time expression variable $first is not defined"


def test_missing_timestamp_without_now():
    """'day' with neither $timestamp nor now is undefined 'timestamp'."""
    with pytest.raises(TimexUndefinedVariable) as caught:
        parse("day")()
    assert caught.value.name == "timestamp"


def test_non_datetime_variable_is_a_type_error():
    """A variable that is not a datetime raises TimexTypeError (an evaluation error)."""
    with pytest.raises(TimexTypeError, match=r"\$last must be a datetime, not str"):
        parse("$last + 1h")(last="2014-08-01")
    with pytest.raises(TimexEvaluationError):
        parse("$last")(last=None)
    with pytest.raises(TimexTypeError):
        parse("$timestamp")(now=1407000000)


def test_date_is_not_a_datetime():
    """A date without a time is rejected rather than guessed at."""
    with pytest.raises(TimexTypeError):
        parse("$d")(d=datetime(2014, 8, 1).date())


def test_aware_datetime_is_converted_to_naive_utc():
    """2014-08-01T03:00+02:00 is read as 2014-08-01 01:00 naive UTC."""
    aware = datetime(2014, 8, 1, 3, 0, tzinfo=timezone(timedelta(hours=2)))
    assert parse("$t")(t=aware).timestamp == datetime(2014, 8, 1, 1, 0)
    assert parse("$t")(t=aware).timestamp.tzinfo is None
    assert parse("day")(now=aware).timestamp == datetime(2014, 8, 1, 1, 0)


def test_evaluate_takes_a_mapping_with_any_names():
    """evaluate() reads variables from a mapping, so '$now' is possible there."""
    expression = parse("$now + 1d")
    assert expression.evaluate({"now": T}).timestamp == datetime(2014, 8, 2, 1, 0)


def test_overflow_is_an_evaluation_error():
    """Leaving years 1-9999 raises TimexEvaluationError, not OverflowError."""
    with pytest.raises(TimexEvaluationError):
        parse("$t + 1d")(t=datetime.max)
    with pytest.raises(TimexEvaluationError):
        parse("$t - 1mo")(t=datetime.min)
    with pytest.raises(TimexEvaluationError):
        parse("day($t)")(t=datetime(9999, 12, 31, 12))
    with pytest.raises(TimexEvaluationError):
        parse("$t")(t=datetime.min.replace(tzinfo=timezone(timedelta(hours=2))))


# ------------------------------------------------------------ expression object


def test_variables_lists_every_name_used():
    """.variables names each $variable, and 'timestamp' for an argument-less function."""
    assert parse("$last + 1h").variables == frozenset({"last"})
    assert parse("$first + 2d to $last").variables == frozenset({"first", "last"})
    assert parse("day").variables == frozenset({"timestamp"})
    assert parse("day($t) to $timestamp").variables == frozenset({"t", "timestamp"})
    assert parse("hour($x)").variables == frozenset({"x"})


def test_is_range_is_known_without_evaluating():
    """.is_range tells a range-valued expression from a timestamp-valued one."""
    assert parse("$last + 1h").is_range is False
    assert parse("($t + 1d) @ 0h").is_range is False
    assert parse("day").is_range is True
    assert parse("$a to $b").is_range is True
    assert parse("(day + 6h)").is_range is True


def test_text_repr_and_str():
    """An Expression shows its source text."""
    expression = parse("$last + 1h")
    assert expression.text == "$last + 1h"
    assert str(expression) == "$last + 1h"
    assert repr(expression) == "Expression('$last + 1h')"


def test_parse_caches_per_text():
    """parse() returns the same compiled Expression for the same text."""
    assert parse("$cached + 1h") is parse("$cached + 1h")


def test_expression_is_immutable_and_picklable():
    """Expressions cannot be modified and survive pickling by their text."""
    expression = parse("day($t) + 6h")
    with pytest.raises(AttributeError):
        expression.text = "$x"  # type: ignore[misc]
    restored = pickle.loads(pickle.dumps(expression))
    assert restored.text == expression.text
    assert restored(t=T) == expression(t=T)


def test_expression_constructor_compiles_too():
    """Expression(text) compiles without the cache."""
    assert Expression("$a + 1h")(a=T).timestamp == datetime(2014, 8, 1, 2, 0)


def test_non_string_input_is_a_type_error():
    """parse() of a non-str raises TypeError."""
    with pytest.raises(TypeError):
        parse(12)  # type: ignore[arg-type]


@pytest.mark.parametrize(("original", "short"), [
    ("$last + 30min", "$last + 30m"), ("$last + 2hr", "$last + 2h"),
    ("$last - 10sec", "$last - 10s"), ("$first + 1yr 2hr", "$first + 1y 2h"),
    ("$first @ 0hr 0min 0sec", "$first @ 0h 0m 0s"), ("day($last) + 6 hr", "day($last) + 6h")])
def test_the_original_timexs_long_unit_names_mean_the_same(original: str, short: str):
    """Triggers written for the original timex use yr, hr, min and sec: they still load."""
    first, last = datetime(2024, 1, 31, 10, 20, 30), datetime(2024, 2, 29, 23, 59, 59)
    assert parse(original)(first=first, last=last) == parse(short)(first=first, last=last)


# ------------------------------------------------------------ syntax errors


@pytest.mark.parametrize(
    ("text", "position", "reason"),
    [
        ("$last +", 7, "expected a duration"),
        ("$last + 1x", 9, "unknown unit 'x'"),
        ("$last 1h", 6, "expected '+', '-', '@', 'to' or the end"),
        ("day(", 4, "found end of expression"),
        ("$", 1, "expected a variable name after '$'"),
        ("$1", 1, "expected a variable name after '$'"),
        ("foo", 0, "unknown name 'foo'"),
        ("$last + 12", 8, "a number needs a unit here"),
        ("($a to $b) + 3", 13, "a number needs a unit here"),
        ("", 0, "empty time expression"),
        ("   ", 3, "empty time expression"),
        ("($a + 1h", 8, "missing ')'"),
        ("$a)", 2, "unmatched ')'"),
        ("$a to $b to $c", 9, "'to' cannot follow another 'to'"),
        ("to $a", 0, "found 'to'"),
        ("$a @ 1h 2h", 8, "sets the hour twice"),
        ("$a @ 25h", 5, "hour must be from 0 to 23"),
        ("$a @ 0mo", 5, "month must be from 1 to 12"),
        ("$a @ 13mo", 5, "month must be from 1 to 12"),
        ("day @ 24", 6, "hour must be from 0 to 23"),
        ("$a + 10000y", 5, "longer than the whole calendar"),
        ("$a + 1234567890123456789d", 5, "more than 18 digits"),
        ("$a + -1h", 5, "expected a duration"),
        ("$a # 1h", 3, "unexpected character '#'"),
        ("day()", 4, "found ')'"),
        ("$a + 1 day", 7, "unknown unit 'day'"),
        ("1h", 0, "found '1'"),
    ],
)
def test_syntax_error_position(text: str, position: int, reason: str):
    """Each broken expression raises TimexSyntaxError pointing at the offending token."""
    with pytest.raises(TimexSyntaxError) as caught:
        parse(text)
    assert caught.value.position == position
    assert caught.value.text == text
    assert reason in caught.value.reason


def test_too_deep_nesting_is_a_syntax_error():
    """Absurd nesting is rejected instead of exhausting the stack."""
    text = "(" * 200 + "$a" + ")" * 200
    with pytest.raises(TimexSyntaxError, match="nested more than"):
        parse(text)


def test_long_operation_chains_evaluate_without_recursion():
    """Thousands of chained operations are evaluated iteratively."""
    expression = parse("$t" + " + 1s" * 5000)
    assert expression(t=T).timestamp == T + timedelta(seconds=5000)


# ------------------------------------------------------------ result values


def test_result_values_compare_and_hash_by_value():
    """Equal results are equal and hash alike; a pinned range equals the plain range it covers."""
    a = parse("day($t)")(t=T)
    b = parse("day($t)")(t=datetime(2014, 8, 1, 23))
    plain = TimeRange(datetime(2014, 8, 1), datetime(2014, 8, 2))
    assert a == b == plain
    assert len({a, b, plain}) == 1
    assert Timestamp(T) == Timestamp(T)
    assert hash(Timestamp(T)) == hash(Timestamp(T))
    assert Timestamp(T) != TimeRange(T, T)


def test_results_are_frozen():
    """Result objects reject attribute assignment."""
    result = parse("day($t)")(t=T)
    with pytest.raises(AttributeError):
        result.begin = T  # type: ignore[misc]
    with pytest.raises(AttributeError):
        Timestamp(T).timestamp = T  # type: ignore[misc]


def test_result_repr_and_str():
    """Results print readably: ISO instants and half-open intervals."""
    assert str(Timestamp(T)) == "2014-08-01T01:00:00"
    assert repr(Timestamp(T)) == "Timestamp(datetime.datetime(2014, 8, 1, 1, 0))"
    day = parse("day($t)")(t=T)
    assert str(day) == "[2014-08-01T00:00:00, 2014-08-02T00:00:00)"
    assert "unit='day'" in repr(day)


def test_results_pickle():
    """Results survive pickling with all their fields."""
    day = parse("day($t) + 6h")(t=T)
    restored = pickle.loads(pickle.dumps(day))
    assert isinstance(restored, PinnedTimeRange)
    assert (restored.begin, restored.end, restored.unit, restored.timestamp) == (
        day.begin,
        day.end,
        day.unit,
        day.timestamp,
    )


def test_public_constructors_validate():
    """TimeRange and PinnedTimeRange refuse inverted bounds or a pin outside."""
    with pytest.raises(ValueError):
        TimeRange(datetime(2014, 8, 2), datetime(2014, 8, 1))
    with pytest.raises(ValueError):
        PinnedTimeRange(datetime(2014, 8, 1), datetime(2014, 8, 2), "day", datetime(2014, 8, 2))
    with pytest.raises(ValueError):
        PinnedTimeRange(datetime(2014, 8, 1), datetime(2014, 8, 2), "week", datetime(2014, 8, 1))
    with pytest.raises(TypeError):
        Timestamp("2014-08-01")  # type: ignore[arg-type]


# ---------------------------------------------------------------- Duration


def test_duration_parse_and_str():
    """Duration.parse reads a lone duration; str() writes it back compactly."""
    duration = Duration.parse("1y 2mo 3d 4h 5m 6s 7us")
    assert duration == Duration(1, 2, 3, 4, 5, 6, 7)
    assert duration.calendar_months == 14
    assert duration.fixed_delta == timedelta(days=3, hours=4, minutes=5, seconds=6, microseconds=7)
    assert str(duration) == "1y 2mo 3d 4h 5m 6s 7us"
    assert str(Duration()) == "0s"


def test_duration_parse_rejects_bare_numbers_and_junk():
    """A lone duration needs units and nothing after it."""
    with pytest.raises(TimexSyntaxError) as caught:
        Duration.parse("6h 30")
    assert caught.value.position == 3
    with pytest.raises(TimexSyntaxError):
        Duration.parse("6h $a")
    with pytest.raises(TimexSyntaxError):
        Duration.parse("")


def test_duration_rejects_negative_components():
    """Durations are non-negative; direction comes from '+' or '-'."""
    with pytest.raises(ValueError):
        Duration(hours=-1)
