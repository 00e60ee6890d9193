"""Field paths: where in a notification a trait's value is found.

Nearly every path in real definition files is a plain chain of keys
(``payload.instance_id``, ``payload.image_meta.'org.openstack__1__os_distro'``,
``payload[host]``, ``payload.volume_attachment[0].server_id``). Those compile to
a tuple of keys and indexes walked with direct dictionary and list lookups,
which is many times faster than a JSONPath interpreter. Everything else
(filters, wildcards, ``|``, the backtick functions such as
`` `split(., 1, 1)` ``) goes to jsonpath-ng's extended parser, the dialect
Ceilometer's files are written in.

Each compiled path offers two getters: ``first`` (the first non-null value, or
``None``), used for nearly every trait, and ``all`` (every value found, in
document order), which plugins receive.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

Getter = Callable[[Any], list[Any]]
FirstGetter = Callable[[Any], Any]

_IDENTIFIER = r"[A-Za-z_@][A-Za-z0-9_@]*"
# One step of a simple path: .key  .'quoted key'  ."quoted"  [key]  ['key']  [3]
_STEP = re.compile(
    rf"""\.(?P<dotted>{_IDENTIFIER})
       |\.'(?P<dot_single>[^'\\]*)'
       |\."(?P<dot_double>[^"\\]*)"
       |\[(?P<bracket>{_IDENTIFIER})\]
       |\['(?P<bracket_single>[^'\\]*)'\]
       |\["(?P<bracket_double>[^"\\]*)"\]
       |\[(?P<index>\d+)\]""",
    re.VERBOSE,
)
_FIRST = re.compile(rf"(?P<dotted>{_IDENTIFIER})|'(?P<single>[^'\\]*)'|\"(?P<double>[^\"\\]*)\"")
_BARE_FILTER_WORD = re.compile(
    r"(\[\?\s*[\w.@]+\s*(?:==|!=|<=|>=|=|<|>)\s*)([A-Za-z_][\w-]*)(\s*\])")
# `` base.`split(., 1, 1)` `` with a one-character unquoted separator: Ceilometer's
# host/service traits. Other forms of the function go to jsonpath-ng.
_SPLIT_FUNCTION = re.compile(
    r"^(?P<base>.+)\.`split\((?P<char>[^\s,'\"`\\]),\s*(?P<segment>-?\d+),\s*(?P<max_split>-?\d+)\)`$")
# Words jsonpath-ng treats as keywords; a path using them must go to the real parser.
_KEYWORDS = frozenset({"where", "wherenot", "this", "parent", "sorted", "len", "sub", "split", "str"})


class FieldPathError(ValueError):
    """The path cannot be parsed; the message is the parser's."""


def simple_steps(path: str) -> tuple[str | int, ...] | None:
    """The keys/indexes of a plain path, or ``None`` when it needs full JSONPath."""
    text = path.strip()
    match = _FIRST.match(text)
    if not match:
        return None
    first = match.group("dotted")
    if first is not None and first in _KEYWORDS:
        return None
    steps: list[str | int] = [next(g for g in match.groups() if g is not None)]
    position = match.end()
    while position < len(text):
        match = _STEP.match(text, position)
        if not match:
            return None
        kind = match.lastgroup
        value = match.group(kind)
        if kind == "index":
            steps.append(int(value))
        else:
            if kind in ("dotted", "bracket") and value in _KEYWORDS:
                return None
            steps.append(value)
        position = match.end()
    return tuple(steps)


def _simple_getter(steps: tuple[str | int, ...]) -> FirstGetter:
    # Specialised closures for the common shapes: this runs for every trait of
    # every notification, so it avoids loops and list allocations.
    if all(isinstance(step, str) for step in steps):
        if len(steps) == 1:
            (key,) = steps

            def get_one(document: Any) -> Any:
                return document.get(key) if isinstance(document, dict) else None

            return get_one
        if len(steps) == 2:
            first, second = steps

            def get_two(document: Any) -> Any:
                inner = document.get(first) if isinstance(document, dict) else None
                return inner.get(second) if isinstance(inner, dict) else None

            return get_two

    def get_many(document: Any) -> Any:
        current = document
        for step in steps:
            if type(step) is int:
                if type(current) is list and step < len(current):
                    current = current[step]
                else:
                    return None
            elif isinstance(current, dict):
                current = current.get(step)
            else:
                return None
        return current

    return get_many


def _quote_filter_words(path: str) -> str:
    """``[?key=image_id]`` -> ``[?key='image_id']``.

    Ceilometer's files compare against bare words, which jsonpath-ng
    deprecates (and will stop accepting); the quoted form means the same.
    """
    return _BARE_FILTER_WORD.sub(lambda m: f"{m.group(1)}'{m.group(2)}'{m.group(3)}", path)


def _regex_filters(path: str) -> str:
    """``[?key~'^im']`` -> ``[?key=~'^im']``: jsonpath-rw-ext's regex match (Ceilometer's
    JSONPath) is spelt ``=~`` in jsonpath-ng. Quoted text is left alone."""
    if "~" not in path:
        return path
    out = list(path)
    for position, char in reversed(list(_unquoted(path, "'\""))):
        if char == "~" and (position == 0 or path[position - 1] != "="):
            out.insert(position, "=")
    return "".join(out)


def _unquoted(path: str, quotes: str) -> Iterator[tuple[int, str]]:
    """(position, character) of every character of ``path`` outside quotes (the quote
    characters themselves are not given)."""
    quote = ""
    for position, char in enumerate(path):
        if quote:
            if char == quote:
                quote = ""
        elif char in quotes:
            quote = char
        else:
            yield position, char


def _split_getter(base: FirstGetter, separator: str, segment: int, max_split: int) -> FirstGetter:
    """The backtick ``split`` function on a plain path, as jsonpath-ng evaluates it."""

    def get_segment(document: Any) -> Any:
        value = base(document)
        if type(value) is not str:
            return None
        try:
            return value.split(separator, max_split)[segment]
        except IndexError:
            return None

    return get_segment


def _jsonpath_getters(path: str) -> tuple[FirstGetter, Getter]:
    from jsonpath_ng.ext import parse as jsonpath_parse

    try:
        with warnings.catch_warnings():
            # Deprecations are jsonpath-ng's business (the version is pinned below 2).
            warnings.simplefilter("ignore", DeprecationWarning)
            expression = jsonpath_parse(_quote_filter_words(_regex_filters(path)))
    except Exception as exc:  # jsonpath-ng raises bare Exception subclasses from ply
        raise FieldPathError(f"{type(exc).__name__}: {exc}") from None

    def get_all(document: Any) -> list[Any]:
        try:
            return [match.value for match in expression.find(document)]
        except Exception:  # noqa: BLE001 - an odd document must not break distilling
            return []

    def get_first(document: Any) -> Any:
        return next((value for value in get_all(document) if value is not None), None)

    return get_first, get_all


@dataclass(frozen=True, slots=True)
class FieldPath:
    """A compiled path: ``first`` gives the first non-null value (or None), ``all`` every value."""

    text: str
    first: FirstGetter
    all: Getter


def split_alternatives(path: str) -> list[str]:
    """``(a)|(b)`` -> ``["a", "b"]``: the top-level ``|`` alternatives of a path.

    jsonpath-ng deprecates its union operator; alternatives are evaluated
    here instead, in order, which is also what "first non-null wins" needs.
    """
    parts: list[str] = []
    depth = 0
    start = 0
    for position, char in _unquoted(path, "'\"`"):
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "|" and depth == 0:
            parts.append(path[start:position])
            start = position + 1
    parts.append(path[start:])
    return [_strip_parentheses(part.strip()) for part in parts]


def _strip_parentheses(part: str) -> str:
    while part.startswith("(") and part.endswith(")") and _balanced(part[1:-1]):
        part = part[1:-1].strip()
    return part


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += (char == "(") - (char == ")")
        if depth < 0:
            return False
    return depth == 0


def compile_path(path: str) -> FieldPath:
    """Compile one field path; raises :class:`FieldPathError` if it does not parse."""
    if not isinstance(path, str) or not path.strip():
        raise FieldPathError("a field path must be a non-empty string")
    alternatives = split_alternatives(path)
    if len(alternatives) > 1:
        compiled = [compile_path(alternative) for alternative in alternatives]
        getters = tuple(c.all for c in compiled)

        def get_all_alternatives(document: Any) -> list[Any]:
            return [value for getter in getters for value in getter(document)]

        return FieldPath(path, first_of(tuple(compiled)), get_all_alternatives)
    split = _SPLIT_FUNCTION.match(path.strip())
    steps = simple_steps(split.group("base") if split else path)
    if steps is None:
        first, get_all = _jsonpath_getters(path)
        return FieldPath(path, first, get_all)
    first = _simple_getter(steps)
    if split:
        first = _split_getter(first, split.group("char"), int(split.group("segment")),
                              int(split.group("max_split")))

    def get_all_simple(document: Any) -> list[Any]:
        value = first(document)
        return [] if value is None else [value]

    return FieldPath(path, first, get_all_simple)


def first_of(paths: tuple[FieldPath, ...]) -> FirstGetter:
    """One getter for a list of paths: the first path yielding a non-null value wins."""
    if len(paths) == 1:
        return paths[0].first
    getters = tuple(path.first for path in paths)

    def get_first(document: Any) -> Any:
        for getter in getters:
            value = getter(document)
            if value is not None:
                return value
        return None

    return get_first


def root_key(path: str) -> str | None:
    """The first key of a path (``ctxt`` for ``ctxt.user_id``), when it is plain."""
    match = _FIRST.match(path.strip())
    if not match:
        return None
    return next(g for g in match.groups() if g is not None)
