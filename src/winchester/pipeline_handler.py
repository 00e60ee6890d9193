"""The original Winchester's handler module path, kept for existing code.

Handlers written for the original subclass
``winchester.pipeline_handler.PipelineHandlerBase``, and existing
``winchester.yaml`` files name the built-ins by their paths here; both keep
working.
"""

from typing import Any

from winchester.pipelines._handler import Handler as PipelineHandlerBase

__all__ = ["LoggingHandler", "NotabeneHandler", "PipelineHandlerBase", "UsageHandler"]

_BUILTINS = {"LoggingHandler": "logger", "UsageHandler": "usage", "NotabeneHandler": "notabene"}


def __getattr__(name: str) -> Any:
    # Imported on first use: the publish handler pulls in kombu.
    if name in _BUILTINS:
        from winchester.distill import import_object
        from winchester.pipelines._registry import BUILTIN_HANDLERS

        return import_object(BUILTIN_HANDLERS[_BUILTINS[name]])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
