"""YAML parsing that remembers where every value came from.

Configuration errors must name the file *and the line*, so mappings and lists
are built as :class:`LocatedDict` / :class:`LocatedList`, ordinary ``dict`` and
``list`` subclasses that also carry the 1-based line and column of the node and
of each key or item. Code that does not care sees plain containers.

Anchors, aliases and merge keys (``<<: *defaults``, ``<<: [*a, *b]``) behave
exactly as in :func:`yaml.safe_load`: this only changes which container
classes are built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from winchester.errors import ConfigError, Problem

Position = tuple[int, int]


class LocatedDict(dict):
    """A dict that knows the position of itself and of each of its keys."""

    position: Position | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.key_positions: dict[Any, Position] = {}


class LocatedList(list):
    """A list that knows the position of itself and of each of its items."""

    position: Position | None = None

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.item_positions: list[Position] = []


# bool before int: True is an int to Python, not to someone reading YAML.
_KINDS = ((bool, "boolean"), (dict, "mapping"), (list, "list"), (str, "string"),
          (int, "integer"), (float, "number"))


def kind_of(value: Any) -> str:
    """What a YAML value is, in YAML's words (messages never show our located types)."""
    for kind, name in _KINDS:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _position(node: yaml.Node) -> Position:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _LocatingLoader(yaml.SafeLoader):
    """SafeLoader that builds located containers and notes duplicate keys."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicate_keys: list[tuple[Any, Position]] = []

    def construct_located_mapping(self, node: yaml.MappingNode):
        mapping = LocatedDict()
        mapping.position = _position(node)
        yield mapping
        # flatten_mapping resolves merge keys; keys merged in come first, so an
        # explicit key later in the node overrides them, as YAML requires.
        explicit_count = sum(
            1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
        self.flatten_mapping(node)
        first_explicit = len(node.value) - explicit_count
        explicit_keys: set[Any] = set()
        for index, (key_node, value_node) in enumerate(node.value):
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    "found an unhashable key", key_node.start_mark) from None
            if index >= first_explicit:
                if key in explicit_keys:
                    self.duplicate_keys.append((key, _position(key_node)))
                explicit_keys.add(key)
            mapping[key] = self.construct_object(value_node, deep=True)
            mapping.key_positions[key] = _position(key_node)

    def construct_located_sequence(self, node: yaml.SequenceNode):
        sequence = LocatedList()
        sequence.position = _position(node)
        yield sequence
        for item_node in node.value:
            sequence.append(self.construct_object(item_node, deep=True))
            sequence.item_positions.append(_position(item_node))


_LocatingLoader.add_constructor("tag:yaml.org,2002:map", _LocatingLoader.construct_located_mapping)
_LocatingLoader.add_constructor("tag:yaml.org,2002:seq", _LocatingLoader.construct_located_sequence)


def parse_yaml(text: str, file_name: str) -> tuple[Any, list[Problem]]:
    """Parse one YAML document, returning the data and any warnings.

    A syntax error raises :class:`ConfigError` with the file, line and column
    where the parser gave up.
    """
    loader = _LocatingLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = " ".join(part for part in (exc.context, exc.problem) if part)
        tag = _refused_tag(exc)
        if tag is not None:
            # The loader is yaml.SafeLoader's: it builds no Python object, whatever the tag says.
            raise ConfigError(Problem(
                file=file_name, where="", line=mark.line + 1 if mark else None,
                column=mark.column + 1 if mark else None,
                message=f"YAML tag {tag!r} is not allowed: configuration files hold plain data "
                        "(mappings, lists, strings, numbers, booleans, dates), never Python objects",
            )) from None
        raise ConfigError(Problem(
            file=file_name, where="", message=f"YAML syntax error: {reason}",
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        )) from None
    except yaml.YAMLError as exc:
        raise ConfigError(Problem(file=file_name, where="", message=f"YAML error: {exc}")) from None
    finally:
        loader.dispose()
    warnings = [
        Problem(file=file_name, where=f"key {key!r}",
                message="appears more than once in the same mapping; the last value wins",
                line=line, column=column, severity="warning")
        for key, (line, column) in loader.duplicate_keys
    ]
    return data, warnings


_UNKNOWN_TAG = "could not determine a constructor for the tag "
_STANDARD_PREFIX = "tag:yaml.org,2002:"


def _refused_tag(exc: yaml.MarkedYAMLError) -> str | None:
    """The tag (as written, ``!!python/...``) when the safe loader refused one, else None."""
    problem = exc.problem or ""
    if not isinstance(exc, yaml.constructor.ConstructorError) or not problem.startswith(_UNKNOWN_TAG):
        return None
    tag = problem[len(_UNKNOWN_TAG):].strip().strip("'\"")
    return "!!" + tag[len(_STANDARD_PREFIX):] if tag.startswith(_STANDARD_PREFIX) else tag


def position_of(container: Mapping | Sequence | None, key: Any = None) -> Position | None:
    """Where ``container[key]`` (or the container itself) was written, if known."""
    if key is None:
        return getattr(container, "position", None)
    if isinstance(container, LocatedDict):
        return container.key_positions.get(key, container.position)
    if isinstance(container, LocatedList) and isinstance(key, int):
        if 0 <= key < len(container.item_positions):
            return container.item_positions[key]
        return container.position
    return None
