"""Time expressions: a small language for instants and ranges relative to event times.

Trigger definitions use it for expirations (``$last + 1h``), criteria
(``$audit_period_beginning + 1d``), trimming (``$timestamp - 14d``) and
grouping (``day``). ::

    >>> from datetime import datetime
    >>> expiry = parse("$last + 1h")
    >>> expiry(last=datetime(2014, 8, 1, 1, 0)).timestamp
    datetime.datetime(2014, 8, 1, 2, 0)
    >>> str(parse("day($t) + 6h")(t=datetime(2014, 8, 1, 1, 0)))
    '[2014-07-31T06:00:00, 2014-08-01T06:00:00)'

Syntax, loosest binding first (whitespace between tokens is ignored):

``A to B``
    the range from ``A.begin`` to ``B.end``; ``to`` does not chain without parentheses.
``X + D``, ``X - D``
    move by a duration ``D``: years and months on the calendar first (the day
    clamped to the month's length, so 31 January + 1mo is the end of
    February), then days and smaller exactly.
``X @ D``
    set fields: ``$t @ 0h 0m 0s`` is midnight of ``$t``'s day.
``$name``
    a variable; ``$timestamp`` falls back to the ``now`` given by the caller.
``hour(X)``, ``day(X)``, ``month(X)``, ``year(X)``
    the whole unit containing ``X``, as a :class:`PinnedTimeRange`; without
    the argument, of ``$timestamp``.

A duration is one or more ``NUMBER UNIT`` components (``6h 30m 15s``) with
units ``y mo d h m s us``. Moving or setting a pinned range by components
smaller than its unit keeps it containing its pin (``day($t) + 6h`` is the
6-to-6 window around ``$t``), and there a number without a unit means the
next smaller unit (``day @ 12`` is ``day @ 12h``). Larger components move the
range and its pin together (``day + 1d`` is tomorrow).

All datetimes are naive UTC: aware inputs are converted, naive ones taken
as UTC. Nothing here reads the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from winchester.errors import TimexEvaluationError
from winchester.timex._compiler import Evaluator, compile_tree
from winchester.timex._parser import TIMESTAMP, parse_tree, variables_of
from winchester.timex._values import Duration, PinnedTimeRange, TimeRange, Timestamp

__all__ = [
    "Duration",
    "Expression",
    "PinnedTimeRange",
    "TimeRange",
    "Timestamp",
    "parse",
]

Result = Timestamp | TimeRange


class Expression:
    """A compiled time expression; call it with the variables to get its value.

    ``text`` is the source, ``variables`` the names it reads (``timestamp``
    included when ``$timestamp`` or an argument-less ``day``-style function
    appears), and ``is_range`` whether it yields a range rather than a
    :class:`Timestamp`.
    """

    __slots__ = ("_evaluate", "is_range", "text", "variables")
    text: str
    variables: frozenset[str]
    is_range: bool
    _evaluate: Evaluator

    def __init__(self, text: str):
        """Compile ``text``; prefer :func:`parse`, which caches."""
        if not isinstance(text, str):
            raise TypeError(f"a time expression must be given as str, not {type(text).__name__}")
        tree = parse_tree(text)
        _initialize = object.__setattr__
        _initialize(self, "text", text)
        _initialize(self, "variables", variables_of(tree))
        _initialize(self, "is_range", tree.kind != TIMESTAMP)
        _initialize(self, "_evaluate", compile_tree(tree))

    def __call__(self, /, now: datetime | None = None, **variables: datetime) -> Result:
        """Evaluate with variables as keyword arguments; ``now`` stands in for an absent ``$timestamp``.

        Raises TimexUndefinedVariable for a missing variable, TimexTypeError
        for a value that is not a datetime, and TimexEvaluationError when the
        result falls outside years 1-9999 or a range would end before it begins.
        """
        try:
            return self._evaluate(variables, now)  # type: ignore[no-any-return]
        except OverflowError as error:
            raise _out_of_range(self.text) from error

    def evaluate(self, variables: Mapping[str, datetime], now: datetime | None = None) -> Result:
        """Evaluate with variables from a mapping (which may hold names like ``now``)."""
        try:
            return self._evaluate(variables, now)  # type: ignore[no-any-return]
        except OverflowError as error:
            raise _out_of_range(self.text) from error

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Expression is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Expression is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (parse, (self.text,))

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"

    def __str__(self) -> str:
        return self.text


def _out_of_range(text: str) -> TimexEvaluationError:
    return TimexEvaluationError(f"time expression {text!r} leaves the supported years 1-9999")


@lru_cache(maxsize=2048)
def parse(text: str) -> Expression:
    """Compile ``text`` into an :class:`Expression`, cached per text.

    Raises TimexSyntaxError, carrying the 0-based position of the offending
    token (``len(text)`` for an unexpected end), for any text that is not a
    valid expression.
    """
    return Expression(text)
