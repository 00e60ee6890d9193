"""Pipelines: handlers, the runner, the handler registry and the built-in handlers.

See :mod:`winchester.pipelines._handler` for the handler contract.
"""

from winchester.pipelines._handler import (
    GENERATED_ID_NAMESPACE,
    Handler,
    HandlerLike,
    generated_message_id,
)
from winchester.pipelines._pipeline import (
    Pipeline,
    PipelineEntry,
    PipelineSet,
    RunResult,
    load_pipelines,
)
from winchester.pipelines._registry import (
    BUILTIN_HANDLERS,
    ENTRY_POINT_GROUP,
    LEGACY_PATHS,
    HandlerRegistry,
    UnknownHandler,
)

__all__ = [
    "BUILTIN_HANDLERS",
    "ENTRY_POINT_GROUP",
    "GENERATED_ID_NAMESPACE",
    "LEGACY_PATHS",
    "Handler",
    "HandlerLike",
    "HandlerRegistry",
    "Pipeline",
    "PipelineEntry",
    "PipelineSet",
    "RunResult",
    "UnknownHandler",
    "generated_message_id",
    "load_pipelines",
]
