"""Text to syntax tree for time expressions.

Grammar (whitespace between tokens is ignored)::

    expr      := sum ['to' sum]
    sum       := term (('+' | '-' | '@') duration)*
    term      := '$' NAME | FUNC ['(' expr ')'] | '(' expr ')'
    FUNC      := 'hour' | 'day' | 'month' | 'year'
    duration  := component+
    component := NUMBER [UNIT]          UNIT: y mo d h m s us

Every node knows its *kind* statically: ``"timestamp"``, ``"range"``, or the
unit of a pinned range (``"hour"`` ... ``"year"``). The parser needs it to
decide what a number without a unit means, and the compiler to choose the
arithmetic, so both are settled before anything is evaluated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from winchester.errors import TimexSyntaxError
from winchester.timex._calendar import MAX_YEAR, MIN_YEAR, RANGE_UNITS
from winchester.timex._values import COMPONENT_SYMBOLS, Duration

TIMESTAMP = "timestamp"
RANGE = "range"

# The original timex's longer spellings, still found in deployed triggers.yaml files.
UNIT_ALIASES = {"yr": "y", "hr": "h", "min": "m", "sec": "s"}
# Index into Duration.components / REPLACE_FIELDS, largest first.
COMPONENT_INDEX = {symbol: index for index, symbol in enumerate(COMPONENT_SYMBOLS)}
COMPONENT_INDEX.update({alias: COMPONENT_INDEX[symbol] for alias, symbol in UNIT_ALIASES.items()})
# A pinned range's own unit, as a component index; smaller components re-pin it.
RANGE_UNIT_INDEX = {"year": 0, "month": 1, "day": 2, "hour": 3}
REPLACE_FIELDS = ("year", "month", "day", "hour", "minute", "second", "microsecond")
_REPLACE_LIMITS = (
    (MIN_YEAR, MAX_YEAR),
    (1, 12),
    (1, 31),
    (0, 23),
    (0, 59),
    (0, 59),
    (0, 999_999),
)

# Caps that keep every later step (int(), timedelta, recursion) in bounds.
_MAX_DIGITS = 18
MAX_NESTING = 32
_MAX_CALENDAR_MONTHS = (MAX_YEAR - MIN_YEAR) * 12 + 11
_MAX_FIXED_SPAN = datetime.max - datetime.min

_UNITS_HELP = "y (or yr), mo, d, h (or hr), m (or min), s (or sec) or us"


# ---------------------------------------------------------------- syntax tree


@dataclass(frozen=True, slots=True)
class Variable:
    name: str

    @property
    def kind(self) -> str:
        return TIMESTAMP


@dataclass(frozen=True, slots=True)
class Function:
    unit: str
    argument: Node

    @property
    def kind(self) -> str:
        return self.unit


@dataclass(frozen=True, slots=True)
class Shift:
    sign: int
    duration: Duration


@dataclass(frozen=True, slots=True)
class Replace:
    fields: tuple[tuple[str, int], ...]


Operation = Shift | Replace


@dataclass(frozen=True, slots=True)
class Adjusted:
    """A term followed by its ``+``/``-``/``@`` operations, kept flat so long
    chains cost a loop rather than recursion."""

    operand: Node
    operations: tuple[Operation, ...]

    @property
    def kind(self) -> str:
        return self.operand.kind


@dataclass(frozen=True, slots=True)
class Span:
    begin: Node
    end: Node

    @property
    def kind(self) -> str:
        return RANGE


Node = Variable | Function | Adjusted | Span


def variables_of(node: Node) -> frozenset[str]:
    match node:
        case Variable(name):
            return frozenset((name,))
        case Function(_, argument) | Adjusted(argument, _):
            return variables_of(argument)
        case Span(begin, end):
            return variables_of(begin) | variables_of(end)
    raise AssertionError(f"unknown node {node!r}")


# ------------------------------------------------------------------- tokens

_NUMBER, _UNIT, _VARIABLE, _DOLLAR, _WORD, _SYMBOL, _INVALID, _END = (
    "number",
    "unit",
    "variable",
    "dollar",
    "word",
    "symbol",
    "invalid",
    "end",
)

_TOKEN_PATTERN = re.compile(
    r"""
      (?P<space>\s+)
    | \$(?P<variable>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<dollar>\$)
    | (?P<number>[0-9]+)(?P<unit>[A-Za-z_]+)?
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<symbol>[-+@()])
    """,
    re.VERBOSE,
)


class Token(NamedTuple):
    kind: str
    text: str
    position: int


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens ending with an end token.

    An unexpected character becomes an invalid token (and ends the list)
    instead of an immediate error, so that an earlier mistake is reported
    first.
    """
    tokens: list[Token] = []
    position = 0
    length = len(text)
    while position < length:
        match = _TOKEN_PATTERN.match(text, position)
        if match is None:
            tokens.append(Token(_INVALID, text[position], position))
            return tokens
        kind = match.lastgroup
        if kind == "variable":
            tokens.append(Token(_VARIABLE, match.group("variable"), position))
        elif kind == "unit":  # lastgroup names the unit when a number carries one
            tokens.append(Token(_NUMBER, match.group("number"), position))
            tokens.append(Token(_UNIT, match.group("unit"), match.start("unit")))
        elif kind != "space":
            tokens.append(Token(kind, match.group(), position))  # type: ignore[arg-type]
        position = match.end()
    tokens.append(Token(_END, "", length))
    return tokens


def _describe(token: Token) -> str:
    if token.kind == _END:
        return "end of expression"
    if token.kind == _VARIABLE:
        return f"'${token.text}'"
    return repr(token.text)


# ------------------------------------------------------------------- parser


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0

    def peek(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        if token.kind != _END:
            self.index += 1
        return token

    def error(self, token: Token, reason: str) -> TimexSyntaxError:
        return TimexSyntaxError(self.text, token.position, reason)

    def unexpected(self, token: Token, expected: str) -> TimexSyntaxError:
        if token.kind == _INVALID:
            return self.error(token, f"unexpected character {token.text!r}")
        if token.kind == _DOLLAR:
            # Point just past the '$', where the name should have started.
            return TimexSyntaxError(
                self.text, token.position + 1, "expected a variable name after '$'"
            )
        return self.error(token, f"expected {expected}, found {_describe(token)}")

    def at_word(self, word: str) -> bool:
        token = self.tokens[self.index]
        return token.kind == _WORD and token.text == word

    def at_symbol(self, symbol: str) -> bool:
        token = self.tokens[self.index]
        return token.kind == _SYMBOL and token.text == symbol

    # expr := sum ['to' sum]
    def expression(self, depth: int) -> Node:
        begin = self.sum(depth)
        if not self.at_word("to"):
            return begin
        self.advance()
        end = self.sum(depth)
        if self.at_word("to"):
            raise self.error(self.peek(), "'to' cannot follow another 'to' (add parentheses)")
        return Span(begin, end)

    # sum := term (('+' | '-' | '@') duration)*
    def sum(self, depth: int) -> Node:
        operand = self.term(depth)
        operations: list[Operation] = []
        while (token := self.peek()).kind == _SYMBOL and token.text in ("+", "-", "@"):
            self.advance()
            components = self.duration(
                f"a duration such as '1h' after {token.text!r}", operand.kind
            )
            if token.text == "@":
                operations.append(self.replacement(components))
            else:
                operations.append(self.shift(1 if token.text == "+" else -1, components))
        return Adjusted(operand, tuple(operations)) if operations else operand

    # term := '$' NAME | FUNC ['(' expr ')'] | '(' expr ')'
    def term(self, depth: int) -> Node:
        token = self.peek()
        expected = "a $variable, hour, day, month, year or '('"
        if token.kind == _VARIABLE:
            self.advance()
            return Variable(token.text)
        if token.kind == _WORD and token.text in RANGE_UNITS:
            self.advance()
            if self.at_symbol("("):
                return Function(token.text, self.parenthesized(depth))
            return Function(token.text, Variable("timestamp"))
        if self.at_symbol("("):
            return self.parenthesized(depth)
        if token.kind == _WORD and token.text != "to":
            raise self.error(token, f"unknown name {token.text!r}; expected {expected}")
        raise self.unexpected(token, expected)

    def parenthesized(self, depth: int) -> Node:
        opening = self.advance()
        if depth >= MAX_NESTING:
            raise self.error(opening, f"expression nested more than {MAX_NESTING} levels deep")
        inner = self.expression(depth + 1)
        closing = self.peek()
        if not self.at_symbol(")"):
            if closing.kind == _END:
                raise self.error(
                    closing, f"missing ')' to close the '(' at position {opening.position}"
                )
            raise self.unexpected(closing, "')'")
        self.advance()
        return inner

    # duration := (NUMBER [UNIT])+ ; returns (component index, value, token) triples
    def duration(self, expected: str, left_kind: str) -> list[tuple[int, int, Token]]:
        components: list[tuple[int, int, Token]] = []
        while (number := self.peek()).kind == _NUMBER:
            self.advance()
            if len(number.text) > _MAX_DIGITS:
                raise self.error(number, f"number has more than {_MAX_DIGITS} digits")
            value = int(number.text)
            unit = self.peek()
            # A word after a number is taken as its unit ('1 h'), except 'to',
            # which ends the duration ('day @ 12 to ...').
            if unit.kind == _UNIT or (unit.kind == _WORD and unit.text != "to"):
                self.advance()
                index = COMPONENT_INDEX.get(unit.text)
                if index is None:
                    raise self.error(unit, f"unknown unit {unit.text!r}; expected {_UNITS_HELP}")
            elif left_kind in RANGE_UNIT_INDEX:
                # On a pinned range the next smaller unit is implied: day @ 12 is day @ 12h.
                index = RANGE_UNIT_INDEX[left_kind] + 1
            else:
                raise self.error(number, f"a number needs a unit here ({_UNITS_HELP})")
            components.append((index, value, number))
        if not components:
            raise self.unexpected(self.peek(), expected)
        return components

    def shift(self, sign: int, components: list[tuple[int, int, Token]]) -> Shift:
        totals = [0] * len(COMPONENT_SYMBOLS)
        for index, value, _ in components:
            totals[index] += value
        duration = Duration(*totals)
        first = components[0][2]
        try:
            too_long = (
                duration.calendar_months > _MAX_CALENDAR_MONTHS
                or duration.fixed_delta > _MAX_FIXED_SPAN
            )
        except OverflowError:
            too_long = True
        if too_long:
            raise self.error(first, "duration is longer than the whole calendar (years 1-9999)")
        return Shift(sign, duration)

    def replacement(self, components: list[tuple[int, int, Token]]) -> Replace:
        fields: dict[str, int] = {}
        for index, value, number in components:
            field = REPLACE_FIELDS[index]
            if field in fields:
                raise self.error(number, f"'@' sets the {field} twice")
            low, high = _REPLACE_LIMITS[index]
            if not low <= value <= high:
                raise self.error(
                    number, f"{field} must be from {low} to {high} after '@', not {value}"
                )
            fields[field] = value
        ordered = sorted(fields.items(), key=lambda item: REPLACE_FIELDS.index(item[0]))
        return Replace(tuple(ordered))


def parse_tree(text: str) -> Node:
    """Parse ``text`` into a syntax tree; raises TimexSyntaxError on any mistake."""
    parser = _Parser(text)
    if parser.peek().kind == _END:
        raise parser.error(parser.peek(), "empty time expression")
    tree = parser.expression(0)
    trailing = parser.peek()
    if trailing.kind != _END:
        if trailing.kind == _SYMBOL and trailing.text == ")":
            raise parser.error(trailing, "unmatched ')'")
        raise parser.unexpected(trailing, "'+', '-', '@', 'to' or the end")
    return tree


def parse_duration(text: str) -> Duration:
    """Parse a lone duration such as ``6h 30m``."""
    if not isinstance(text, str):
        raise TypeError(f"a duration must be given as str, not {type(text).__name__}")
    parser = _Parser(text)
    shift = parser.shift(1, parser.duration("a duration such as '1h'", TIMESTAMP))
    trailing = parser.peek()
    if trailing.kind != _END:
        raise parser.unexpected(trailing, "another duration component or the end")
    return shift.duration
