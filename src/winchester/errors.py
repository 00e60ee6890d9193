"""Every error Winchester raises on purpose derives from :class:`WinchesterError`.

::

    WinchesterError
    ├── ConfigError              a configuration file is missing, unreadable or wrong
    ├── EventError               a mapping is not a valid event
    └── TimexError               the time-expression language
        ├── TimexSyntaxError     the text does not parse (carries the position)
        └── TimexEvaluationError a compiled expression cannot be evaluated
            ├── TimexUndefinedVariable   a ``$name`` was not supplied
            └── TimexTypeError           a value has the wrong type

Callers that treat "cannot evaluate" as "does not match" (trigger criteria)
catch :class:`TimexEvaluationError`; a syntax error is always a configuration
problem and is reported when the configuration is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class WinchesterError(Exception):
    """Base class of every error Winchester raises deliberately."""


class InputError(WinchesterError):
    """An input (a capture file, stdin) cannot be read past some point: truncated or damaged.
    What was read before it is good and is kept."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration file, located as precisely as known.

    ``where`` names the definition and field inside the file
    (``trigger 'usage' > expiration``); ``line`` and ``column`` are 1-based.
    """

    file: str
    where: str
    message: str
    line: int | None = None
    column: int | None = None
    severity: str = "error"

    def location(self) -> str:
        place = self.file
        if self.line is not None:
            place += f":{self.line}"
            if self.column is not None:
                place += f":{self.column}"
        return place

    def __str__(self) -> str:
        where = f" {self.where}:" if self.where else ""
        return f"{self.location()}:{where} {self.message}"


class ConfigError(WinchesterError):
    """The configuration is invalid; every problem found is listed."""

    def __init__(self, problems: Sequence[Problem] | Problem | str):
        if isinstance(problems, str):
            problems = [Problem(file="", where="", message=problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class EventError(WinchesterError, ValueError):
    """The mapping is not a valid event; ``key`` names the offending key."""

    def __init__(self, key: str | None, reason: str):
        self.key = key
        self.reason = reason
        subject = f"event key {key!r}" if key is not None else "event"
        super().__init__(f"{subject}: {reason}")


class TimexError(WinchesterError):
    """Base class of time-expression errors."""


class TimexSyntaxError(TimexError, ValueError):
    """The expression text does not parse; ``position`` is the 0-based offset."""

    def __init__(self, text: str, position: int, reason: str):
        self.text = text
        self.position = position
        self.reason = reason
        pointer = " " * position + "^"
        super().__init__(
            f"{reason} at position {position} in time expression {text!r}\n"
            f"    {text}\n    {pointer}"
        )


class TimexEvaluationError(TimexError):
    """A compiled expression could not be evaluated with the variables given."""


class TimexUndefinedVariable(TimexEvaluationError, KeyError):
    """A ``$variable`` used by the expression was not supplied."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"time expression variable ${name} is not defined")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class TimexTypeError(TimexEvaluationError, TypeError):
    """A variable or intermediate value has a type the operation cannot use."""
