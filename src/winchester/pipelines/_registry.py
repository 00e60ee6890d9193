"""Handler names -> handler classes.

A pipeline entry names its handler. The name is looked up, in order, in
``pipeline_handlers`` of ``winchester.yaml`` (``name: module.path:ClassName``),
the built-in handlers, and the ``winchester.handlers`` entry-point group of
installed plugins. Paths the original Winchester used for its handlers
(``winchester.pipeline_handler:UsageHandler`` …) resolve to our built-ins, so
a configuration written for it works unchanged.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from winchester.distill import import_object

ENTRY_POINT_GROUP = "winchester.handlers"

BUILTIN_HANDLERS: dict[str, str] = {
    "logger": "winchester.pipelines._logging:LoggingHandler",
    "usage": "winchester.pipelines._usage:UsageHandler",
    "publish": "winchester.pipelines._publish:PublishHandler",
    "notabene": "winchester.pipelines._publish:NotabeneHandler",
    "webhook": "winchester.pipelines._webhook:WebhookHandler",
}

# The original's handler paths, as existing winchester.yaml files name them.
LEGACY_PATHS: dict[str, str] = {
    "winchester.pipeline_handler:LoggingHandler": "logger",
    "winchester.pipeline_handler:UsageHandler": "usage",
    "winchester.pipeline_handler:NotabeneHandler": "notabene",
}


class UnknownHandler(LookupError):
    pass


class HandlerRegistry:
    """Resolves handler names; ``configured`` is ``pipeline_handlers`` from winchester.yaml."""

    def __init__(self, configured: Mapping[str, str] | None = None):
        self.configured = dict(configured or {})
        self._plugins = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
        self._resolved: dict[str, Any] = {}

    def names(self) -> list[str]:
        return sorted({*self.configured, *BUILTIN_HANDLERS, *self._plugins})

    def resolve(self, name: str) -> Any:
        """The handler class (or factory) called ``name``.

        Raises :class:`UnknownHandler` for a name nobody defines, and
        ImportError when its module or class cannot be imported.
        """
        if name in self._resolved:
            return self._resolved[name]
        if name in self.configured:
            factory = _import_path(self.configured[name])
        elif name in BUILTIN_HANDLERS:
            factory = import_object(BUILTIN_HANDLERS[name])
        elif name in self._plugins:
            factory = self._plugins[name].load()
        else:
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownHandler(f"unknown handler {name!r}{hint} (known: {', '.join(self.names())}; "
                                 "add others under pipeline_handlers in winchester.yaml)")
        if not callable(factory):
            raise ImportError(f"handler {name!r} is {factory!r}, which is not a class")
        self._resolved[name] = factory
        return factory


def _import_path(path: str) -> Any:
    if path in LEGACY_PATHS:
        return import_object(BUILTIN_HANDLERS[LEGACY_PATHS[path]])
    return import_object(path)
