"""Notifications to events (pure: no I/O).

Compatible with the ``event_definitions.yaml`` format StackDistiller
introduced and Ceilometer still ships::

    definitions = load_definitions(parsed_yaml, "event_definitions.yaml", plugins)
    distiller = Distiller(definitions, catch_all=False)
    event = distiller.distill_raw(amqp_body)   # an event, or None if no definition matched

Definitions are searched from the last to the first; the first whose
event types match wins. Every event gets the default traits ``service``
(``publisher_id``), ``request_id`` (``_context_request_id``) and ``tenant_id``
(``payload.tenant_id`` or ``_context_tenant``) unless its definition sets them;
a file in Ceilometer's dialect gets Ceilometer's instead
(:data:`CEILOMETER_DEFAULT_TRAITS`: also ``project_id`` and ``user_id``).
"""

from winchester.distill._convert import ConversionError, parse_datetime
from winchester.distill._definitions import (
    CEILOMETER_DEFAULT_TRAITS,
    DEFAULT_TRAIT_CHOICES,
    DEFAULT_TRAITS,
    DefinitionSet,
    EventDefinition,
    EventTypeMatcher,
    TraitDefinition,
    load_definitions,
)
from winchester.distill._distiller import (
    DistillStats,
    Distiller,
    NotificationRejected,
    decode_notification,
    read_envelope,
)
from winchester.distill._fields import FieldPathError, compile_path
from winchester.distill._plugins import (
    BUILTIN_PLUGINS,
    ENTRY_POINT_GROUP,
    BitfieldPlugin,
    MapPlugin,
    SplitPlugin,
    TimedeltaPlugin,
    TraitPlugin,
    available_plugins,
    import_object,
)

__all__ = [
    "BUILTIN_PLUGINS",
    "CEILOMETER_DEFAULT_TRAITS",
    "DEFAULT_TRAIT_CHOICES",
    "DEFAULT_TRAITS",
    "ENTRY_POINT_GROUP",
    "BitfieldPlugin",
    "ConversionError",
    "DefinitionSet",
    "DistillStats",
    "Distiller",
    "EventDefinition",
    "EventTypeMatcher",
    "FieldPathError",
    "MapPlugin",
    "NotificationRejected",
    "SplitPlugin",
    "TimedeltaPlugin",
    "TraitDefinition",
    "TraitPlugin",
    "available_plugins",
    "compile_path",
    "decode_notification",
    "import_object",
    "load_definitions",
    "parse_datetime",
    "read_envelope",
]
