"""Trait plugins: post-process the values a trait's fields matched.

A plugin is constructed once per trait definition with the definition's
``parameters`` as keyword arguments, and called for every notification with
``trait_value(matches)``, where ``matches`` is the list of ``(path, value)``
pairs its fields found (``path`` as written in the definition, nulls left
out). It returns the trait's value, or ``None`` to leave the trait out; the
result is then converted to the trait's type.

Plugins written for Ceilometer, which implement ``trait_values(matches)``
returning a list, work too: the first value is used.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from winchester.distill._convert import ConversionError, to_datetime

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "winchester.trait_plugins"
Match = tuple[str, Any]


class TraitPlugin:
    """Base class for trait plugins; subclasses override :meth:`trait_value`."""

    def __init__(self, **parameters: Any):
        if parameters:
            names = ", ".join(sorted(parameters))
            raise TypeError(f"{type(self).__name__} takes no parameters (got {names})")

    def trait_value(self, matches: list[Match]) -> Any:
        raise NotImplementedError


class SplitPlugin(TraitPlugin):
    """One segment of a value split on a separator (``compute.host-1`` -> ``host-1``): of the
    first matched value that has that segment, as Ceilometer takes it."""

    def __init__(self, separator: str = ".", segment: int = 0, max_split: int | None = None):
        if not isinstance(separator, str) or not separator:
            raise TypeError("separator must be a non-empty string")
        if isinstance(segment, bool) or not isinstance(segment, int):
            raise TypeError("segment must be an integer")
        if max_split is not None and (isinstance(max_split, bool) or not isinstance(max_split, int)):
            raise TypeError("max_split must be an integer")
        self.separator = separator
        self.segment = segment
        self.max_split = -1 if max_split is None else max_split

    def trait_value(self, matches: list[Match]) -> Any:
        for _, value in matches:
            parts = str(value).split(self.separator, self.max_split)
            try:
                return parts[self.segment]
            except IndexError:
                continue
        return None


class BitfieldPlugin(TraitPlugin):
    """An integer whose bits say which fields matched (optionally with a given value).

    ``flags`` is a list of ``{path, bit, value?}``: bit ``bit`` is set when the
    field ``path`` (as written in ``fields``) was found, and, if ``value`` is
    given, equals it.
    """

    def __init__(self, initial_bitfield: int = 0, flags: list[Mapping[str, Any]] | None = None):
        if isinstance(initial_bitfield, bool) or not isinstance(initial_bitfield, int):
            raise TypeError("initial_bitfield must be an integer")
        self.initial_bitfield = initial_bitfield
        self.flags: list[tuple[str, int, bool, Any]] = []
        for number, flag in enumerate(flags or []):
            if not isinstance(flag, Mapping) or "path" not in flag or "bit" not in flag:
                raise TypeError(f"flag #{number} must be a mapping with 'path' and 'bit'")
            bit = flag["bit"]
            if isinstance(bit, bool) or not isinstance(bit, int) or not 0 <= bit < 63:
                raise TypeError(f"flag #{number}: bit must be an integer from 0 to 62")
            self.flags.append((str(flag["path"]), 1 << bit, "value" in flag, flag.get("value")))

    def trait_value(self, matches: list[Match]) -> Any:
        found: dict[str, list[Any]] = {}
        for path, value in matches:
            found.setdefault(path, []).append(value)
        bitfield = self.initial_bitfield
        for path, bit, compare, expected in self.flags:
            values = found.get(path)
            if values and (not compare or expected in values):
                bitfield |= bit
        return bitfield


class TimedeltaPlugin(TraitPlugin):
    """The absolute difference, in seconds, between the datetimes of exactly two fields."""

    def trait_value(self, matches: list[Match]) -> Any:
        if len(matches) != 2:
            logger.warning("timedelta plugin needs exactly 2 matching fields, got %d", len(matches))
            return None
        try:
            first, second = (to_datetime(value) for _, value in matches)
        except ConversionError as exc:
            logger.warning("timedelta plugin: %s", exc)
            return None
        return abs((second - first).total_seconds())


class MapPlugin(TraitPlugin):
    """Translate the matched values through a lookup table, with a default: the first that
    translates to something is the trait; no matched value means no trait (as Ceilometer's)."""

    def __init__(self, values: Mapping[Any, Any] | None = None, default: Any = None,
                 case_sensitive: bool = True):
        if not isinstance(values, Mapping):
            raise TypeError("values must be a mapping of input value to trait value")
        self.case_sensitive = bool(case_sensitive)
        self.default = default
        self.values = {self._key(key): value for key, value in values.items()}

    def _key(self, value: Any) -> Any:
        if not self.case_sensitive and isinstance(value, str):
            return value.casefold()
        return value

    def trait_value(self, matches: list[Match]) -> Any:
        for _, value in matches:
            try:
                mapped = self.values.get(self._key(value), self.default)
            except TypeError:  # an unhashable value (a list or a mapping) is never in the table
                mapped = self.default
            if mapped is not None:
                return mapped
        return None


BUILTIN_PLUGINS: dict[str, type] = {
    "split": SplitPlugin,
    "bitfield": BitfieldPlugin,
    "timedelta": TimedeltaPlugin,
    "map": MapPlugin,
}


def import_object(target: str) -> Any:
    """Import ``module.path:Name`` (optionally ``directory|module.path:Name``, as simport allowed)."""
    if "|" in target:
        directory, target = target.split("|", 1)
        if directory not in sys.path:
            sys.path.append(directory)
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ImportError(f"{target!r} is not of the form 'module.path:Name'")
    module = importlib.import_module(module_name)
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ImportError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return value


def available_plugins(configured: Mapping[str, str] | None = None) -> tuple[dict[str, type], list[str]]:
    """Built-in plugins, then installed entry points, then ``distiller_trait_plugins``.

    Returns the plugins by name and the problems met loading them (each a
    message naming the plugin).
    """
    plugins = dict(BUILTIN_PLUGINS)
    problems: list[str] = []
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            plugins[entry_point.name] = entry_point.load()
        except Exception as exc:  # noqa: BLE001 - report any broken plugin, keep the rest
            problems.append(f"trait plugin {entry_point.name!r} (entry point {entry_point.value}) "
                            f"cannot be loaded: {type(exc).__name__}: {exc}")
    for name, target in (configured or {}).items():
        try:
            plugins[name] = import_object(target)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"distiller_trait_plugins: {name!r} = {target!r} cannot be imported: "
                            f"{type(exc).__name__}: {exc}")
    return plugins, problems


def plugin_value(plugin: Any, matches: list[Match]) -> Any:
    """Call a plugin through whichever interface it implements."""
    method = getattr(plugin, "trait_value", None)
    if method is not None:
        return method(matches)
    values = plugin.trait_values(matches)
    return values[0] if values else None


__all__ = [
    "BUILTIN_PLUGINS",
    "BitfieldPlugin",
    "MapPlugin",
    "SplitPlugin",
    "TimedeltaPlugin",
    "TraitPlugin",
    "available_plugins",
    "import_object",
    "plugin_value",
]
