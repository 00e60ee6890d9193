"""Triggers: which events join which streams, and when a stream fires or expires.

Compatible with the ``triggers.yaml`` of StackTach Winchester (pure: no I/O,
no clock reads)::

    triggers = load_triggers(parsed_yaml, "triggers.yaml", pipelines)
    for match in triggers.matches(event):
        match.key               # the stream: trigger name + distinguishing traits
        match.fire_increments   # what the event adds to each fire criterion's count

An event joins a trigger's stream when it passes ANY of the trigger's
``match_criteria``; the first one it passes supplies ``map_distinguished_by``,
which names another trait of the event as the source of a distinguishing
trait (an audit record joins the stream of the day it audits, not the day it
was sent). Each ``distinguished_by`` item is a trait name, or
``{trait: time-expression}`` whose value is the expression evaluated with
``$timestamp`` bound to that trait's value (``timestamp: day`` groups by UTC
day). An event lacking a distinguishing trait joins no stream of that trigger.

A criteria entry: ``event_type`` (glob or list of globs, ``!glob`` excludes,
absent means any), ``traits`` (every one must pass), ``timestamp`` (a time
expression the event's timestamp must be in), ``number`` (fire criteria:
events needed, default 1) and ``map_distinguished_by``. A trait criterion is
a constant (equality; a number matches an int or float trait of equal value)
or one of ``{string: s}``, ``{text: s}``, ``{int: "> 3"}``,
``{float: "<= 1.5"}``, ``{numeric: ...}`` (float), and
``{datetime: time-expression}`` (the trait's value must be in the result).
Time expressions in criteria read the event's datetime traits (and
``$timestamp``) as variables. A missing trait, a trait of another type, or
an expression that cannot be evaluated for this event is a non-match, never
an error; anything wrong in the file is a :class:`ConfigError` at load.

A stream is ready to fire when every fire criterion has at least its
``number`` of events (counted incrementally with
:meth:`TriggerDefinition.fire_increments` and checked with
:meth:`TriggerDefinition.is_ready`); a trigger without fire criteria only
expires, at :meth:`TriggerDefinition.expire_time`.
"""

from winchester.triggers._criteria import (
    CRITERION_TYPES,
    OPERATORS,
    Criterion,
    Diagnosis,
    TraitCriterion,
)
from winchester.triggers._definition import TriggerDefinition, TriggerMatch, TriggerSet
from winchester.triggers._keys import (
    distinguishing_from_json,
    distinguishing_key,
    distinguishing_to_json,
)
from winchester.triggers._load import load_triggers

__all__ = [
    "CRITERION_TYPES",
    "OPERATORS",
    "Criterion",
    "Diagnosis",
    "TraitCriterion",
    "TriggerDefinition",
    "TriggerMatch",
    "TriggerSet",
    "distinguishing_from_json",
    "distinguishing_key",
    "distinguishing_to_json",
    "load_triggers",
]
