"""Triggers: loading and validating triggers.yaml, matching, streams' keys, firing and expiry."""

from __future__ import annotations

import math
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from winchester._yaml import parse_yaml
from winchester.errors import ConfigError, Problem, TimexUndefinedVariable
from winchester.timex import PinnedTimeRange, TimeRange
from winchester.triggers import (
    Criterion,
    TriggerDefinition,
    TriggerMatch,
    TriggerSet,
    distinguishing_from_json,
    distinguishing_key,
    distinguishing_to_json,
    load_triggers,
)

ROOT = Path(__file__).resolve().parents[1]
FILE = "triggers.yaml"
AUG1 = datetime(2014, 8, 1)
AUG2 = datetime(2014, 8, 2)


def load(yaml_text: str, pipelines=None) -> TriggerSet:
    data, _ = parse_yaml(textwrap.dedent(yaml_text), FILE)
    return load_triggers(data, FILE, pipelines)


def problems_of(yaml_text: str, pipelines=None) -> list[Problem]:
    data, _ = parse_yaml(textwrap.dedent(yaml_text), FILE)
    with pytest.raises(ConfigError) as info:
        load_triggers(data, FILE, pipelines)
    return list(info.value.problems)


def errors_of(yaml_text: str, pipelines=None) -> list[Problem]:
    return [p for p in problems_of(yaml_text, pipelines) if p.severity == "error"]


def the_error(yaml_text: str, pipelines=None) -> Problem:
    errors = errors_of(yaml_text, pipelines)
    assert len(errors) == 1, errors
    return errors[0]


def trigger_of(yaml_text: str) -> TriggerDefinition:
    (trigger,) = load(yaml_text).triggers
    return trigger


def event(event_type: str, timestamp: datetime = AUG1 + timedelta(hours=10), **traits) -> dict:
    return {"message_id": f"m-{event_type}-{timestamp.isoformat()}", "event_type": event_type,
            "timestamp": timestamp, **traits}


def minimal(criteria: str = "- event_type: '*'", extra: str = "") -> str:
    """A valid single trigger whose match_criteria are ``criteria`` (indented YAML list)."""
    return (
        "- name: t\n"
        "  expiration: $last + 1h\n"
        "  fire_pipeline: fire\n"
        + extra
        + "  match_criteria:\n"
        + textwrap.indent(textwrap.dedent(criteria).strip("\n"), "    ") + "\n"
    )


def matches(criteria: str, ev: dict) -> bool:
    return trigger_of(minimal(criteria)).match(ev) is not None


def usage_audit() -> TriggerDefinition:
    path = ROOT / "etc" / "triggers.yaml"
    data, _ = parse_yaml(path.read_text(), str(path))
    return load_triggers(data, str(path)).by_name["usage_audit"]


def exists(sent: datetime, beginning: datetime, ending: datetime, **traits) -> dict:
    return event("compute.instance.exists", sent, audit_period_beginning=beginning,
                 audit_period_ending=ending, **traits)


# ---------------------------------------------------------------- real files


def test_sandbox_trigger_file_loads(real_data):
    """The StackTach sandbox triggers.yaml loads with every field as written, and no warnings."""
    path = real_data / "stacktach" / "sandbox_winchester" / "triggers.yaml"
    data, _ = parse_yaml(path.read_text(), str(path))
    triggers = load_triggers(data, str(path))
    assert triggers.warnings == ()
    trigger = triggers.by_name["test_trigger"]
    assert trigger.debug_level == 2
    assert trigger.distinguished_by == ("instance_id", "timestamp")
    assert trigger.expiration.text == "$last + 2d"
    assert (trigger.fire_pipeline, trigger.expire_pipeline) == (
        "test_fire_pipeline", "test_expire_pipeline")
    assert trigger.fire_delay == 0.0
    assert len(trigger.match_criteria) == 2 and len(trigger.fire_criteria) == 1
    assert trigger.match_criteria[1].map_distinguished_by == {"timestamp": "audit_period_beginning"}


def test_sandbox_trigger_excludes_exists_variants_from_lifecycle(real_data):
    """In the sandbox file, exists.verified matches no criterion; snapshot_instance does."""
    path = real_data / "stacktach" / "sandbox_winchester" / "triggers.yaml"
    data, _ = parse_yaml(path.read_text(), str(path))
    trigger = load_triggers(data, str(path)).by_name["test_trigger"]
    assert trigger.match(event("compute.instance.exists.verified", instance_id="i-1")) is None
    assert trigger.match(event("snapshot_instance", instance_id="i-1")) is not None


def test_winchester_etc_misspelled_map_key_warns_and_works(real_data):
    """map_distingushed_by (sic) is a located warning and still routes .exists by audit period."""
    path = real_data / "stacktach" / "other_configs" / "winchester_etc_triggers.yaml"
    data, _ = parse_yaml(path.read_text(), str(path))
    triggers = load_triggers(data, str(path))
    (warning,) = triggers.warnings
    assert warning.severity == "warning"
    assert warning.where == "trigger 'test_trigger' > match_criteria #1 > map_distingushed_by"
    assert (warning.file, warning.line) == (str(path), 20)
    trigger = triggers.by_name["test_trigger"]
    audit = trigger.match(exists(AUG2 + timedelta(minutes=5), AUG1, AUG2, instance_id="i-1"))
    assert audit is not None
    assert audit.distinguishing["timestamp"] == TimeRange(AUG1, AUG2)


def test_etc_usage_audit_loads():
    """The project's own etc/triggers.yaml defines usage_audit as documented there."""
    trigger = usage_audit()
    assert trigger.name == "usage_audit"
    assert trigger.debug_level == 1
    assert trigger.distinguished_by == ("instance_id", "timestamp")
    assert str(trigger.expiration) == "$last + 2d"
    assert (trigger.fire_pipeline, trigger.expire_pipeline) == ("usage_audit",
                                                                "usage_missing_exists")
    assert all(isinstance(c, Criterion) for c in trigger.match_criteria + trigger.fire_criteria)


# ---------------------------------------------------------------- load errors


def test_missing_name_is_located():
    """A trigger without a name is an error at its own line, labelled by index."""
    problem = the_error("""
        - expiration: $last + 1h
          fire_pipeline: p
          match_criteria: [{event_type: a}]
    """)
    assert (problem.file, problem.where, problem.line) == (FILE, "trigger #0 > name", 2)
    assert "required" in problem.message


def test_non_string_name_is_an_error():
    """A name must be a non-empty string."""
    problem = the_error(minimal().replace("name: t", "name: [t]"))
    assert problem.where == "trigger #0 > name" and problem.line == 1


def test_names_longer_than_the_store_keeps_are_errors():
    """A trigger name or a distinguishing trait name past 255 characters (a column's size on
    every store) is refused at load, not by PostgreSQL on the first matching batch."""
    long_name = "t" * 256
    problem = the_error(minimal().replace("name: t", f"name: {long_name}"))
    assert problem.where == "trigger #0 > name" and "256 characters" in problem.message
    problem = the_error(minimal().replace("name: t", "name: t\n  distinguished_by: [" + "x" * 300 + "]"))
    assert problem.where == "trigger 't' > distinguished_by #0" and "300 characters" in problem.message
    assert trigger_of(minimal().replace("name: t", "name: " + "t" * 255)).name == "t" * 255


def test_duplicate_name_names_both_indexes():
    """Two triggers of one name: the second is an error naming trigger #0 and trigger #1."""
    problem = the_error(minimal() + minimal())
    assert problem.where == "trigger 't' > name"
    assert "trigger #0" in problem.message and "trigger #1" in problem.message
    assert problem.line == 6


def test_missing_expiration_is_located():
    """A trigger without expiration is an error at the trigger's line."""
    problem = the_error("""
        - name: usage
          fire_pipeline: p
          match_criteria: [{event_type: a}]
    """)
    assert (problem.where, problem.line) == ("trigger 'usage' > expiration", 2)


def test_bad_expiration_expression_names_position():
    """An expiration that does not parse is an error with the parser's reason and the key's line."""
    problem = the_error(minimal().replace("$last + 1h", "$last + + 1h"))
    assert (problem.where, problem.line, problem.column) == ("trigger 't' > expiration", 2, 3)
    assert "invalid time expression" in problem.message and "position" in problem.message


def test_expiration_with_unknown_variable_is_an_error():
    """An expiration reads only $first, $last and $timestamp; others could never evaluate."""
    problem = the_error(minimal().replace("$last + 1h", "$launched_at + 1h"))
    assert problem.where == "trigger 't' > expiration" and "$launched_at" in problem.message


def test_non_string_expiration_is_an_error():
    """An expiration written as a number is not a time expression."""
    problem = the_error(minimal().replace("$last + 1h", "3600"))
    assert problem.where == "trigger 't' > expiration" and "3600" in problem.message


def test_bad_timestamp_criterion_expression_is_located():
    """A criteria entry's timestamp expression that does not parse names the criterion and line."""
    problem = the_error(minimal("""
        - event_type: a
        - event_type: b
          timestamp: day(
    """))
    assert problem.where == "trigger 't' > match_criteria #1 > timestamp"
    assert problem.line == 7


def test_bad_datetime_criterion_expression_is_located():
    """A {datetime: ...} criterion that does not parse names the trait and its line."""
    problem = the_error(minimal("""
        - event_type: a
          traits:
            audit_period_ending:
              datetime: $audit_period_beginning + 1 day
    """))
    assert problem.where == "trigger 't' > match_criteria #0 > traits > audit_period_ending"
    assert problem.line == 7 and "invalid time expression" in problem.message


def test_bad_distinguished_by_expression_is_located():
    """A distinguished_by {trait: expression} that does not parse names the item and trait."""
    problem = the_error(minimal(extra="  distinguished_by:\n    - instance_id\n"
                                      "    - timestamp: dya\n"))
    assert problem.where == "trigger 't' > distinguished_by #1 > timestamp"
    assert problem.line == 6


@pytest.mark.parametrize("items, fragment", [
    ("[[a, b]]", "trait name"),
    ("[{a: day, b: day}]", "trait name"),
    ("[instance_id, instance_id]", "more than once"),
    ("[timestamp, {timestamp: day}]", "more than once"),
    ("instance_id", "must be a list"),
])
def test_malformed_distinguished_by_is_an_error(items, fragment):
    """distinguished_by must list distinct trait names or one-key {trait: expression} mappings."""
    problem = the_error(minimal(extra=f"  distinguished_by: {items}\n"))
    assert problem.where.startswith("trigger 't' > distinguished_by")
    assert fragment in problem.message and problem.line == 4


def test_neither_pipeline_is_an_error():
    """A trigger with neither fire_pipeline nor expire_pipeline could never do anything."""
    problem = the_error("""
        - name: t
          expiration: $last + 1h
          match_criteria: [{event_type: a}]
    """)
    assert problem.where == "trigger 't' > fire_pipeline"
    assert "expire_pipeline" in problem.message and problem.line == 2


def test_expire_pipeline_alone_is_enough():
    """A trigger with only an expire_pipeline is valid; its fire_pipeline is None."""
    trigger = trigger_of(minimal().replace("fire_pipeline: fire", "expire_pipeline: gone"))
    assert (trigger.fire_pipeline, trigger.expire_pipeline) == (None, "gone")


def test_unknown_pipelines_are_errors_when_pipelines_are_given():
    """With the pipeline names known, an unknown fire or expire pipeline is an error at its line."""
    text = minimal().replace("fire_pipeline: fire", "fire_pipeline: fire\n  expire_pipeline: gone")
    errors = errors_of(text, pipelines={"other": []})
    assert [(p.where, p.line) for p in errors] == [
        ("trigger 't' > fire_pipeline", 3), ("trigger 't' > expire_pipeline", 4)]
    assert "'fire'" in errors[0].message and "other" in errors[0].message
    assert load(text, pipelines={"fire": [], "gone": []}).by_name["t"].expire_pipeline == "gone"
    assert len(load(text)) == 1  # without pipelines nothing is checked


def test_pipeline_must_be_a_name():
    """A pipeline given as a list is an error, not a lookup."""
    problem = the_error(minimal().replace("fire_pipeline: fire", "fire_pipeline: [a]"))
    assert problem.where == "trigger 't' > fire_pipeline"


@pytest.mark.parametrize("spec", ["'=> 5'", "'~ 5'", "'>> 5'", "'! 5'", "'<> 5'"])
def test_bad_operator_is_an_error(spec):
    """An operator other than =, !=, >, >=, <, <= is named in the error."""
    problem = the_error(minimal(f"""
        - traits:
            memory_mb: {{numeric: {spec}}}
    """))
    assert problem.where == "trigger 't' > match_criteria #0 > traits > memory_mb"
    assert "unknown operator" in problem.message and problem.line == 6


@pytest.mark.parametrize("spec, fragment", [
    ("{int: '> big'}", "not an integer"),
    ("{int: '>= 2.5'}", "not an integer"),
    ("{int: 2.5}", "integer"),
    ("{float: '<'}", "no number"),
    ("{numeric: 'nan'}", "finite"),
    ("{float: .inf}", "finite"),
    ("{int: true}", "number"),
    ("{int: [1]}", "number"),
    ("{string: [a]}", "string"),
    ("{datetime: 5}", "time expression"),
    ("[1, 2]", "must be"),
    ("null", "must be"),
    ("2014-08-01", "date"),
])
def test_bad_criterion_values_are_errors(spec, fragment):
    """Operands that are not numbers, non-finite floats and non-scalar constants are load errors."""
    problem = the_error(minimal(f"""
        - traits:
            x: {spec}
    """))
    assert problem.where == "trigger 't' > match_criteria #0 > traits > x"
    assert fragment in problem.message


def test_unknown_criterion_type_is_an_error():
    """{boolean: ...} is not a criterion type; the error lists the known ones."""
    problem = the_error(minimal("""
        - traits:
            deleted: {boolean: true}
    """))
    assert "unknown criterion type 'boolean'" in problem.message
    assert "numeric" in problem.message and problem.line == 6


def test_two_key_criterion_mapping_is_an_error():
    """A typed criterion must have exactly one key."""
    problem = the_error(minimal("""
        - traits:
            x: {int: 1, float: 2}
    """))
    assert "one-key" in problem.message


@pytest.mark.parametrize("number", ["0", "-1", "'2'", "1.5", "true"])
def test_fire_number_below_one_or_not_integer_is_an_error(number):
    """A fire criterion's number must be an integer of at least 1."""
    problem = the_error(minimal(extra=f"  fire_criteria:\n    - event_type: a\n"
                                      f"      number: {number}\n"))
    assert problem.where == "trigger 't' > fire_criteria #0 > number" and problem.line == 6


def test_number_in_match_criteria_is_a_warning():
    """number means nothing in match criteria: a warning, and the trigger loads."""
    triggers = load(minimal("""
        - event_type: a
          number: 3
    """))
    (warning,) = triggers.warnings
    assert warning.where == "trigger 't' > match_criteria #0 > number"
    assert warning.severity == "warning" and warning.line == 6


def test_empty_match_criteria_is_an_error():
    """match_criteria: [] would match nothing ever: an error at the key."""
    problem = the_error(minimal().replace("  match_criteria:\n    - event_type: '*'\n",
                                          "  match_criteria: []\n"))
    assert (problem.where, problem.line) == ("trigger 't' > match_criteria", 4)


def test_missing_match_criteria_is_an_error():
    """match_criteria is required."""
    problem = the_error("- name: t\n  expiration: $last + 1h\n  fire_pipeline: p\n")
    assert (problem.where, problem.line) == ("trigger 't' > match_criteria", 1)


@pytest.mark.parametrize("extra, where", [
    ("  debug_level: -1\n", "debug_level"),
    ("  debug_level: high\n", "debug_level"),
    ("  debug_level: 1.5\n", "debug_level"),
    ("  fire_delay: -1\n", "fire_delay"),
    ("  fire_delay: soon\n", "fire_delay"),
    ("  fire_criteria: {event_type: a}\n", "fire_criteria"),
])
def test_bad_scalar_fields_are_errors(extra, where):
    """debug_level negative or not a whole number, a negative or non-numeric fire_delay, a
    non-list fire_criteria."""
    problem = the_error(minimal(extra=extra))
    assert (problem.where, problem.line) == (f"trigger 't' > {where}", 4)


@pytest.mark.parametrize("given, level, warned", [
    ("'2'", 2, False), ("' 1 '", 1, False), ("3", 2, True), ("'9'", 2, True), ("0", 0, False)])
def test_debug_level_is_read_as_the_original_read_it(given, level, warned):
    """The original took int(debug_level) and treated anything above 1 as full debugging: a
    quoted level loads, and a level above 2 is 2, with a warning naming the field."""
    triggers = load(minimal(extra=f"  debug_level: {given}\n"))
    assert triggers.triggers[0].debug_level == level
    assert [(p.where, p.line) for p in triggers.warnings] == (
        [("trigger 't' > debug_level", 4)] if warned else [])


@pytest.mark.parametrize("criteria, where", [
    ("- event_type: []", "match_criteria #0 > event_type"),
    ("- event_type: [a, '']", "match_criteria #0 > event_type"),
    ("- event_type: '!'", "match_criteria #0 > event_type"),
    ("- traits: [a]", "match_criteria #0 > traits"),
    ("- compute.instance.*", "match_criteria #0"),
    ("- map_distinguished_by: [a]", "match_criteria #0 > map_distinguished_by"),
])
def test_malformed_criteria_entries_are_errors(criteria, where):
    """Criteria entries and their event_type, traits and map_distinguished_by are checked."""
    problem = the_error(minimal(criteria))
    assert problem.where == f"trigger 't' > {where}"
    assert problem.line == 5


def test_both_spellings_of_map_key_is_an_error():
    """Giving map_distinguished_by and its misspelling together is ambiguous: an error."""
    problem = the_error(minimal("""
        - event_type: a
          map_distinguished_by: {timestamp: x}
          map_distingushed_by: {timestamp: y}
    """, extra="  distinguished_by: [{timestamp: day}]\n"))
    assert problem.where == "trigger 't' > match_criteria #0 > map_distingushed_by"


def test_map_of_a_non_distinguishing_trait_is_a_warning():
    """Mapping a trait that is not in distinguished_by has no effect: a warning naming it."""
    (warning,) = load(minimal("""
        - event_type: a
          map_distinguished_by: {tenant: project}
    """, extra="  distinguished_by: [instance_id]\n")).warnings
    assert warning.where == "trigger 't' > match_criteria #0 > map_distinguished_by > tenant"


def test_map_in_fire_criteria_is_a_warning():
    """map_distinguished_by in fire criteria is ignored with a warning."""
    (warning,) = load(minimal(extra="  distinguished_by: [timestamp]\n  fire_criteria:\n"
                                    "    - map_distinguished_by: {timestamp: x}\n")).warnings
    assert warning.where == "trigger 't' > fire_criteria #0 > map_distinguished_by"


def test_unknown_keys_and_load_criteria_are_warnings():
    """Unknown keys in a trigger or criterion, and load_criteria, are located warnings."""
    triggers = load(minimal("""
        - event_type: a
          colour: red
    """, extra="  load_criteria: [{event_type: a}]\n  priority: 3\n"))
    assert sorted((w.line, w.where) for w in triggers.warnings) == [
        (4, "trigger 't' > load_criteria"),
        (5, "trigger 't' > priority"),
        (8, "trigger 't' > match_criteria #0 > colour"),
    ]
    assert all(w.severity == "warning" for w in triggers.warnings)


def test_all_errors_are_reported_together():
    """Every error of every trigger is in one ConfigError, in file order, warnings included."""
    problems = problems_of("""
        - name: a
          expiration: $last +
          match_criteria: []
          colour: red
        - name: a
          expiration: $last + 1h
          fire_pipeline: p
          distinguished_by: [{timestamp: dy}]
          match_criteria:
            - traits: {memory_mb: {numeric: '>> 1'}, state: {bool: x}}
          fire_criteria:
            - number: 0
        - expiration: $last + 1h
          fire_pipeline: p
          match_criteria: [{timestamp: 'day('}]
    """)
    assert [(p.severity, p.where, p.line) for p in problems] == [
        ("error", "trigger 'a' > expiration", 3),
        ("error", "trigger 'a' > fire_pipeline", 2),
        ("error", "trigger 'a' > match_criteria", 4),
        ("warning", "trigger 'a' > colour", 5),
        ("error", "trigger 'a' > name", 6),
        ("error", "trigger 'a' > distinguished_by #0 > timestamp", 9),
        ("error", "trigger 'a' > match_criteria #0 > traits > memory_mb", 11),
        ("error", "trigger 'a' > match_criteria #0 > traits > state", 11),
        ("error", "trigger 'a' > fire_criteria #0 > number", 13),
        ("error", "trigger #2 > name", 14),
        ("error", "trigger #2 > match_criteria #0 > timestamp", 16),
    ]
    assert all(p.file == FILE for p in problems)


def test_file_that_is_not_a_list_is_an_error():
    """The top level must be a list of triggers."""
    problem = the_error("name: t\n")
    assert problem.where == "" and "list" in problem.message


def test_empty_file_loads_with_a_warning():
    """An empty file is no triggers, which deserves a warning."""
    triggers = load_triggers(None, FILE)
    assert len(triggers) == 0 and triggers.warnings[0].severity == "warning"


def test_plain_containers_load_without_positions():
    """Plain lists and dicts (no YAML positions) load; problems then have no line."""
    data = [{"name": "t", "expiration": "$last + 1h", "fire_pipeline": "p",
             "match_criteria": [{"event_type": "a", "traits": {"x": {"int": "~1"}}}]}]
    with pytest.raises(ConfigError) as info:
        load_triggers(data, FILE)
    (problem,) = info.value.problems
    assert problem.line is None and problem.where.endswith("traits > x")
    data[0]["match_criteria"][0]["traits"]["x"] = {"int": "<= 3"}
    assert load_triggers(data, FILE).by_name["t"].match(event("a", x=3)) is not None


def test_fire_delay_and_defaults():
    """fire_delay is float seconds (default 0); debug_level defaults to 0; lists default empty."""
    trigger = trigger_of(minimal(extra="  fire_delay: 30\n"))
    assert trigger.fire_delay == 30.0 and isinstance(trigger.fire_delay, float)
    assert (trigger.debug_level, trigger.distinguished_by, trigger.fire_criteria) == (0, (), ())


# ---------------------------------------------------------------- event types


@pytest.mark.parametrize("patterns, event_type, expected", [
    ("compute.instance.*", "compute.instance.update", True),
    ("compute.instance.*", "compute.instances", False),
    ("compute.instance.*", "image.upload", False),
    ("[compute.instance.*, '!compute.instance.exists']", "compute.instance.exists", False),
    ("[compute.instance.*, '!compute.instance.exists']", "compute.instance.exists.verified", True),
    ("[compute.instance.*, '!compute.instance.exists*']", "compute.instance.exists.verified",
     False),
    ("['!compute.instance.exists']", "image.upload", True),
    ("['!compute.instance.exists']", "compute.instance.exists", False),
    ("[image.upload, snapshot_instance]", "snapshot_instance", True),
    ("compute.instance.?pdate", "compute.instance.update", True),
    ("'volume.[ac]*'", "volume.attach", True),
])
def test_event_type_globs_and_exclusions(patterns, event_type, expected):
    """Shell globs include; `!glob` excludes; only exclusions mean everything else."""
    assert matches(f"- event_type: {patterns}", event(event_type)) is expected


def test_absent_event_type_matches_any_type():
    """A criterion without event_type considers every event type."""
    assert matches("- traits: {state: active}", event("anything.at.all", state="active"))


# ---------------------------------------------------------------- trait criteria


@pytest.mark.parametrize("spec, value, expected", [
    ("active", "active", True),
    ("active", "deleted", False),
    ("'1'", 1, False),
    ("1", "1", False),
    ("4096", 4096, True),
    ("4096", 4096.0, True),
    ("4096", 4097, False),
    ("1.5", 1.5, True),
    ("2.0", 2, True),
    ("true", 1, True),
    ("2014-08-01 00:00:00", AUG1, True),
    ("2014-08-01 00:00:00", "2014-08-01 00:00:00", False),
    ("{string: active}", "active", True),
    ("{text: active}", "active", True),
    ("{text: 1234}", "1234", True),
    ("{text: 1234}", 1234, False),
])
def test_constant_and_string_criteria(spec, value, expected):
    """Constants test equality; a number matches int or float traits, a string only strings."""
    assert matches(f"- traits: {{x: {spec}}}", event("a", x=value)) is expected


@pytest.mark.parametrize("spec, value, expected", [
    ("{numeric: '> 4096'}", 8192, True),
    ("{numeric: '> 4096'}", 4096, False),
    ("{numeric: '> 4096'}", 4096.5, True),
    ("{numeric: '>= 4096'}", 4096, True),
    ("{numeric: '<4096'}", 4095.9, True),
    ("{numeric: '<= 1.5'}", 1.5, True),
    ("{numeric: '!= 3'}", 3, False),
    ("{numeric: '!= 3'}", 4, True),
    ("{numeric: '= 3'}", 3.0, True),
    ("{numeric: 3}", 3, True),
    ("{numeric: '  >=  -2.5 '}", -2, True),
    ("{numeric: '> 4096'}", "8192", False),
    ("{float: '> 0.5'}", 0.75, True),
    ("{float: '> 0.5'}", 1, True),
    ("{float: 0.5}", 0.5, True),
    ("{int: '<= 3'}", 3, True),
    ("{int: '<= 3'}", 4, False),
    ("{int: '> 1'}", 2.0, True),   # compared by value, as the original did
    ("{int: 512}", 512.0, True),
    ("{int: 512}", 512.5, False),
    ("{int: 3}", 3, True),
    ("{int: '== 3'}", 3, True),
    ("{int: '+3'}", 3, True),
    ("{int: 3}", "3", False),
    ("{int: 3}", AUG1, False),
])
def test_numeric_criteria_with_operators(spec, value, expected):
    """int/float/numeric compare with an operator; int needs an int trait, the others any number."""
    assert matches(f"- traits: {{x: {spec}}}", event("a", x=value)) is expected


def test_numeric_is_an_alias_of_float():
    """numeric behaves exactly as float, for every operator and value type tried."""
    values = [-1, 0, 1, 1.5, 4096, 4096.0, 5000.25, "4096", AUG1]
    for op in ("=", "!=", ">", ">=", "<", "<="):
        numeric = trigger_of(minimal(f"- traits: {{x: {{numeric: '{op} 4096'}}}}"))
        floating = trigger_of(minimal(f"- traits: {{x: {{float: '{op} 4096'}}}}"))
        for value in values:
            ev = event("a", x=value)
            assert (numeric.match(ev) is None) == (floating.match(ev) is None), (op, value)


AUDIT = "- traits: {audit_period_ending: {datetime: $audit_period_beginning + 1d}}"


def test_datetime_criterion_matches_end_of_day_audit():
    """audit_period_ending: {datetime: $audit_period_beginning + 1d} holds for a one-day period."""
    assert matches(AUDIT, exists(AUG2, AUG1, AUG2))


def test_datetime_criterion_rejects_mid_day_audit():
    """A shorter audit period (a resize mid-day) fails the one-day test."""
    assert not matches(AUDIT, exists(AUG1 + timedelta(hours=15), AUG1,
                                     AUG1 + timedelta(hours=15)))


def test_datetime_criterion_missing_variable_is_a_non_match():
    """An event lacking $audit_period_beginning does not match; nothing raises."""
    assert not matches(AUDIT, event("compute.instance.exists", audit_period_ending=AUG2))


def test_datetime_criterion_variable_of_wrong_type_is_a_non_match():
    """A variable naming a text trait cannot be evaluated: a non-match."""
    assert not matches(AUDIT, event("a", audit_period_beginning="2014-08-01",
                                    audit_period_ending=AUG2))


def test_datetime_criterion_trait_of_wrong_type_is_a_non_match():
    """The tested trait itself being text is a non-match."""
    assert not matches(AUDIT, event("a", audit_period_beginning=AUG1,
                                    audit_period_ending="2014-08-02T00:00:00"))


def test_datetime_criterion_range_is_half_open():
    """Against a range the value must satisfy begin <= v < end."""
    spec = "- traits: {launched_at: {datetime: day($timestamp)}}"
    assert matches(spec, event("a", AUG1 + timedelta(hours=5), launched_at=AUG1))
    assert matches(spec, event("a", AUG1 + timedelta(hours=5),
                               launched_at=AUG2 - timedelta(microseconds=1)))
    assert not matches(spec, event("a", AUG1 + timedelta(hours=5), launched_at=AUG2))


def test_timestamp_criterion():
    """A criterion's timestamp expression must contain the event's own timestamp."""
    spec = "- timestamp: day($launched_at)"
    assert matches(spec, event("a", AUG1 + timedelta(hours=23), launched_at=AUG1))
    assert not matches(spec, event("a", AUG2, launched_at=AUG1))
    assert not matches(spec, event("a", AUG2))  # no $launched_at: a non-match


def test_timestamp_criterion_as_instant():
    """A Timestamp result means the event's timestamp must be exactly that instant."""
    spec = "- timestamp: $launched_at + 1h"
    assert matches(spec, event("a", AUG1 + timedelta(hours=1), launched_at=AUG1))
    assert not matches(spec, event("a", AUG1 + timedelta(hours=2), launched_at=AUG1))


def test_missing_trait_is_a_non_match():
    """A trait criterion on a trait the event lacks never matches, whatever its type."""
    for spec in ("active", "4", "{numeric: '!= 4'}", "{int: '!= 4'}", "{text: x}",
                 "{datetime: day}"):
        assert not matches(f"- traits: {{x: {spec}}}", event("a")), spec


def test_all_traits_must_match():
    """Every trait of a criterion must pass."""
    spec = "- traits: {state: active, memory_mb: {int: '>= 512'}}"
    assert matches(spec, event("a", state="active", memory_mb=512))
    assert not matches(spec, event("a", state="active", memory_mb=256))
    assert not matches(spec, event("a", state="deleted", memory_mb=512))


def test_traits_timestamp_and_type_combine():
    """Type, traits and timestamp of one criterion must all pass."""
    spec = "- event_type: a\n  timestamp: day($launched_at)\n  traits: {state: active}"
    good = event("a", AUG1 + timedelta(hours=1), launched_at=AUG1, state="active")
    assert matches(spec, good)
    assert not matches(spec, {**good, "event_type": "b"})
    assert not matches(spec, {**good, "state": "deleted"})
    assert not matches(spec, {**good, "timestamp": AUG2})


def test_any_match_criterion_suffices():
    """An event matches the trigger if any one match criterion passes."""
    spec = "- event_type: a\n- traits: {state: active}"
    assert matches(spec, event("a"))
    assert matches(spec, event("b", state="active"))
    assert not matches(spec, event("b", state="deleted"))


def test_criterion_matches_on_its_own():
    """Criterion.matches checks type and traits of one event; explain says why not."""
    trigger = trigger_of(minimal("- event_type: a\n  traits: {x: {int: '> 1'}}"))
    (criterion,) = trigger.match_criteria
    assert criterion.matches(event("a", x=2))
    assert not criterion.matches(event("b", x=2))
    assert "x > 1" in criterion.explain(event("a", x=1))
    assert criterion.explain(event("a", x=2)) == "matches"


# ---------------------------------------------------------------- distinguishing traits


DAILY = """
- name: daily
  expiration: $last + 2d
  fire_pipeline: p
  distinguished_by: [instance_id, {timestamp: day}]
  match_criteria:
    - event_type: [compute.instance.*, '!compute.instance.exists']
    - event_type: compute.instance.exists
      map_distinguished_by: {timestamp: audit_period_beginning}
"""


def test_same_utc_day_same_key():
    """Two events of one instance on one UTC day share a stream key and day range."""
    trigger = trigger_of(DAILY)
    morning = trigger.match(event("compute.instance.update", AUG1 + timedelta(hours=1),
                                  instance_id="i-1"))
    night = trigger.match(event("compute.instance.update", AUG2 - timedelta(microseconds=1),
                                instance_id="i-1"))
    assert morning is not None and night is not None
    assert morning.key == night.key
    assert morning.distinguishing == {"instance_id": "i-1", "timestamp": TimeRange(AUG1, AUG2)}


def test_next_day_different_key():
    """Midnight starts a new stream; another instance is another stream."""
    trigger = trigger_of(DAILY)
    today = trigger.match(event("compute.instance.update", AUG1, instance_id="i-1"))
    tomorrow = trigger.match(event("compute.instance.update", AUG2, instance_id="i-1"))
    other = trigger.match(event("compute.instance.update", AUG1, instance_id="i-2"))
    assert len({today.key, tomorrow.key, other.key}) == 3


def test_distinguishing_range_is_a_plain_time_range():
    """The day range does not keep the event's own instant (a pin), so all events agree on it."""
    match = trigger_of(DAILY).match(event("compute.instance.update", instance_id="i-1"))
    value = match.distinguishing["timestamp"]
    assert type(value) is TimeRange and not isinstance(value, PinnedTimeRange)


def test_map_distinguished_by_routes_exists_to_audited_day():
    """An .exists for Aug 1 sent at Aug 2 00:05 joins the Aug 1 stream of its instance."""
    trigger = trigger_of(DAILY)
    audit = trigger.match(exists(AUG2 + timedelta(minutes=5), AUG1, AUG2, instance_id="i-1"))
    lifecycle = trigger.match(event("compute.instance.update", AUG1 + timedelta(hours=13),
                                    instance_id="i-1"))
    next_day = trigger.match(event("compute.instance.update", AUG2 + timedelta(minutes=5),
                                   instance_id="i-1"))
    assert audit.key == lifecycle.key != next_day.key
    assert audit.distinguishing["timestamp"] == TimeRange(AUG1, AUG2)
    assert audit.criterion is trigger.match_criteria[1]


def test_missing_distinguishing_trait_is_no_match():
    """An event without instance_id joins no stream of a trigger distinguished by it."""
    assert trigger_of(DAILY).match(event("compute.instance.update")) is None


def test_missing_mapped_source_is_no_match():
    """An .exists lacking audit_period_beginning cannot be placed: no match."""
    assert trigger_of(DAILY).match(event("compute.instance.exists", instance_id="i-1")) is None


def test_first_matching_criterion_decides_the_mapping():
    """When two criteria match, the first one's map_distinguished_by (here none) applies."""
    trigger = trigger_of("""
        - name: t
          expiration: $last + 1h
          fire_pipeline: p
          distinguished_by: [{timestamp: day}]
          match_criteria:
            - event_type: a
            - event_type: '*'
              map_distinguished_by: {timestamp: launched_at}
    """)
    first = trigger.match(event("a", AUG2 + timedelta(hours=1), launched_at=AUG1))
    second = trigger.match(event("b", AUG2 + timedelta(hours=1), launched_at=AUG1))
    assert first.distinguishing["timestamp"] == TimeRange(AUG2, AUG2 + timedelta(days=1))
    assert second.distinguishing["timestamp"] == TimeRange(AUG1, AUG2)


def test_distinguishing_values_keep_their_types():
    """Plain distinguishing traits keep the event's value and type."""
    trigger = trigger_of(minimal(extra="  distinguished_by: [memory_mb, ratio, launched_at]\n"))
    match = trigger.match(event("a", memory_mb=512, ratio=0.5, launched_at=AUG1))
    assert match.distinguishing == {"memory_mb": 512, "ratio": 0.5, "launched_at": AUG1}
    assert list(match.distinguishing) == ["memory_mb", "ratio", "launched_at"]


def test_distinguishing_expression_may_read_other_traits():
    """A distinguishing expression sees the event's datetime traits besides $timestamp."""
    trigger = trigger_of(minimal(extra="  distinguished_by: [{timestamp: $launched_at to day}]\n"))
    match = trigger.match(event("a", AUG2 + timedelta(hours=3),
                                launched_at=AUG1 + timedelta(hours=6)))
    assert match.distinguishing["timestamp"] == TimeRange(AUG1 + timedelta(hours=6),
                                                          AUG2 + timedelta(days=1))
    assert trigger.match(event("a", AUG2)) is None  # no $launched_at


def test_distinguishing_expression_yielding_an_instant_gives_a_datetime():
    """A distinguishing expression that yields a Timestamp contributes its datetime."""
    trigger = trigger_of(minimal(extra="  distinguished_by: [{timestamp: $timestamp @ 0h}]\n"))
    match = trigger.match(event("a", AUG1 + timedelta(hours=7)))
    assert match.distinguishing == {"timestamp": AUG1}


def test_distinguishing_expression_on_text_trait_is_no_match():
    """A time expression over a trait that is not a datetime cannot group the event: no match."""
    trigger = trigger_of(minimal(extra="  distinguished_by: [{instance_id: day}]\n"))
    assert trigger.match(event("a", instance_id="i-1")) is None


def test_explain_says_why():
    """explain names the failing criterion, or a missing distinguishing trait."""
    trigger = trigger_of(DAILY)
    assert "event type" in trigger.explain(event("image.upload", instance_id="i-1"))
    assert "instance_id" in trigger.explain(event("compute.instance.update"))
    assert trigger.explain(event("compute.instance.update", instance_id="i")).startswith("matches")


# ---------------------------------------------------------------- firing


TWO_CRITERIA = minimal(extra="""\
  fire_criteria:
    - event_type: compute.instance.update
      number: 2
    - event_type: compute.instance.exists
      traits: {audit_period_ending: {datetime: $audit_period_beginning + 1d}}
    - event_type: compute.instance.*
""")


def test_fire_increments_per_criterion():
    """fire_increments has a 1 for each fire criterion the event passes, by position."""
    trigger = trigger_of(TWO_CRITERIA)
    assert trigger.fire_increments(event("compute.instance.update")) == (1, 0, 1)
    assert trigger.fire_increments(exists(AUG2, AUG1, AUG2)) == (0, 1, 1)
    assert trigger.fire_increments(exists(AUG2, AUG1, AUG1 + timedelta(hours=3))) == (0, 0, 1)
    assert trigger.fire_increments(event("image.upload")) == (0, 0, 0)


def test_is_ready_needs_every_criterion_its_number():
    """A stream is ready only once each fire criterion has at least its number of events."""
    trigger = trigger_of(TWO_CRITERIA)
    counts = [0, 0, 0]
    stream = [event("compute.instance.update"), exists(AUG2, AUG1, AUG2),
              event("compute.instance.update")]
    ready = []
    for ev in stream:
        counts = [c + i for c, i in zip(counts, trigger.fire_increments(ev))]
        ready.append(trigger.is_ready(counts))
    assert ready == [False, False, True]
    assert counts == [2, 1, 3]
    assert trigger.is_ready((5, 1, 1)) and not trigger.is_ready((5, 0, 9))


def test_match_carries_fire_increments():
    """TriggerMatch.fire_increments equals the trigger's increments for that event."""
    trigger = trigger_of(TWO_CRITERIA)
    ev = event("compute.instance.update")
    match = trigger.match(ev)
    assert isinstance(match, TriggerMatch)
    assert match.trigger is trigger
    assert match.fire_increments == trigger.fire_increments(ev) == (1, 0, 1)


def test_no_fire_criteria_never_ready():
    """A trigger without fire criteria counts nothing and never fires: it can only expire."""
    trigger = trigger_of(minimal())
    assert trigger.fire_increments(event("a")) == ()
    assert trigger.is_ready(()) is False


def test_is_ready_rejects_counts_of_another_shape():
    """Counts that do not line up with the fire criteria are refused rather than misread."""
    with pytest.raises(ValueError, match="3 fire criteria"):
        trigger_of(TWO_CRITERIA).is_ready((1, 1))


def test_fire_increments_for_event_of_unseen_and_odd_types():
    """Increments are computed for new event types as they come, and zeros for a non-str type."""
    trigger = trigger_of(TWO_CRITERIA)
    for number in range(5):
        assert trigger.fire_increments(event(f"compute.instance.new{number}")) == (0, 0, 1)
    assert trigger.fire_increments({"event_type": None}) == (0, 0, 0)
    assert trigger.match({"event_type": None}) is None


# ---------------------------------------------------------------- expiry


def test_expire_time_last_plus_one_hour():
    """'$last + 1h' expires an hour after the stream's last event."""
    trigger = trigger_of(minimal())
    assert trigger.expire_time(AUG1, AUG1 + timedelta(hours=5)) == AUG1 + timedelta(hours=6)


def test_expire_time_first_plus_two_days():
    """'$first + 2d' expires two days after the first event, whatever the last."""
    trigger = trigger_of(minimal().replace("$last + 1h", "$first + 2d"))
    assert trigger.expire_time(AUG1, AUG2 + timedelta(hours=5)) == AUG1 + timedelta(days=2)


def test_expire_time_of_a_range_is_its_end():
    """A range expiration expires when the range ends."""
    trigger = trigger_of(minimal().replace("$last + 1h", "day($last)"))
    assert trigger.expire_time(AUG1, AUG1 + timedelta(hours=5)) == AUG2


def test_expire_time_timestamp_comes_from_now_only():
    """$timestamp in an expiration is the caller's now; without now it is undefined."""
    trigger = trigger_of(minimal().replace("$last + 1h", "$timestamp + 10m"))
    assert trigger.expire_time(AUG1, AUG1, now=AUG2) == AUG2 + timedelta(minutes=10)
    with pytest.raises(TimexUndefinedVariable):
        trigger.expire_time(AUG1, AUG1)


# ---------------------------------------------------------------- keys and JSON


def test_key_is_the_documented_canonical_text():
    """The key format is fixed: stored keys must stay valid across releases."""
    key = distinguishing_key("usage_audit", {"timestamp": TimeRange(AUG1, AUG2),
                                             "instance_id": "i-1", "memory_mb": 512,
                                             "ratio": 0.5, "launched_at": AUG1})
    # Time ranges first (one day's streams sort together), then by name.
    assert key == (
        '["usage_audit","timestamp","r:2014-08-01T00:00:00.000000/2014-08-02T00:00:00.000000",'
        '"instance_id","s:i-1","launched_at","d:2014-08-01T00:00:00.000000",'
        '"memory_mb","i:512","ratio","f:0.5"]'
    )
    # The form before migration 0005, which that migration rewrites.
    assert distinguishing_key("usage_audit", {"timestamp": TimeRange(AUG1, AUG2), "instance_id": "i-1"},
                              ranges_first=False) == (
        '["usage_audit","instance_id","s:i-1",'
        '"timestamp","r:2014-08-01T00:00:00.000000/2014-08-02T00:00:00.000000"]')


def test_key_ignores_dict_order_and_includes_trigger_name():
    """Keys do not depend on dict order; the same traits under another trigger differ."""
    a = distinguishing_key("t", {"x": "1", "y": 2})
    assert a == distinguishing_key("t", {"y": 2, "x": "1"})
    assert a != distinguishing_key("u", {"x": "1", "y": 2})


def test_key_is_typed():
    """'1', 1, 1.0, a datetime and its ISO text all give different keys."""
    values = ["1", 1, 1.0, AUG1, AUG1.isoformat(), "i:1", TimeRange(AUG1, AUG1)]
    keys = {distinguishing_key("t", {"x": v}) for v in values}
    assert len(keys) == len(values)


def test_key_treats_equal_values_alike():
    """Equal values give one key: -0.0 and 0.0, a pinned and a plain range, aware and naive UTC."""
    assert distinguishing_key("t", {"x": -0.0}) == distinguishing_key("t", {"x": 0.0})
    pinned = PinnedTimeRange(AUG1, AUG2, "day", AUG1 + timedelta(hours=3))
    assert distinguishing_key("t", {"x": pinned}) == distinguishing_key(
        "t", {"x": TimeRange(AUG1, AUG2)})
    aware = datetime(2014, 8, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    assert distinguishing_key("t", {"x": aware}) == distinguishing_key("t", {"x": AUG1})


def test_key_escapes_separators():
    """Names and values with quotes, commas or non-ASCII cannot forge another key."""
    assert distinguishing_key("t", {"a": 's","b","s:x'}) != distinguishing_key(
        "t", {"a": "s", "b": "x"})
    key = distinguishing_key("t", {"x": "é\x00"})
    assert key.isascii() and "\x00" not in key


def test_long_key_is_hashed_within_255_characters():
    """A key longer than 255 characters becomes a sha256 form, still deterministic and distinct."""
    long_a = distinguishing_key("t", {"x": "a" * 300})
    long_b = distinguishing_key("t", {"x": "a" * 299 + "b"})
    assert long_a.startswith("sha256:") and long_a.endswith(":t")
    assert len(long_a) <= 255 and long_a != long_b
    assert long_a == distinguishing_key("t", {"x": "a" * 300})
    assert len(distinguishing_key("n" * 400, {})) <= 255


def test_key_rejects_unsupported_values():
    """A value no trait can have (a list) is a TypeError, not a silent key."""
    with pytest.raises(TypeError):
        distinguishing_key("t", {"x": [1]})


def test_match_key_is_distinguishing_key():
    """TriggerMatch.key is distinguishing_key of its trigger name and traits."""
    match = trigger_of(DAILY).match(event("compute.instance.update", instance_id="i-1"))
    assert match.key == distinguishing_key("daily", match.distinguishing)


def test_distinguishing_json_round_trip():
    """Every distinguishing value type survives to_json, real JSON bytes and from_json."""
    original = {"instance_id": "i-1", "memory_mb": 512, "ratio": 1.0,
                "launched_at": datetime(2014, 8, 1, 1, 2, 3, 456789),
                "timestamp": TimeRange(AUG1, AUG2)}
    encoded = distinguishing_to_json(original)
    assert encoded["timestamp"] == {"__type__": "range", "begin": "2014-08-01T00:00:00.000000",
                                    "end": "2014-08-02T00:00:00.000000"}
    assert encoded["launched_at"] == {"__type__": "datetime",
                                      "datetime": "2014-08-01T01:02:03.456789"}
    decoded = distinguishing_from_json(orjson.loads(orjson.dumps(encoded)))
    assert decoded == original
    assert {k: type(v) for k, v in decoded.items()} == {k: type(v) for k, v in original.items()}
    assert distinguishing_key("t", decoded) == distinguishing_key("t", original)


@pytest.mark.parametrize("bad", [
    [1], {"x": [1]}, {"x": None}, {"x": {"__type__": "datetime", "datetime": "nope"}},
    {"x": {"__type__": "range", "begin": "2014-08-02", "end": "2014-08-01"}},
    {"x": {"__type__": "other"}}, {1: "x"},
])
def test_distinguishing_from_json_rejects_garbage(bad):
    """Anything but the typed JSON form is a ValueError."""
    with pytest.raises(ValueError):
        distinguishing_from_json(bad)


# ---------------------------------------------------------------- trigger sets


def test_trigger_set_iterates_and_matches_in_file_order():
    """A TriggerSet iterates in file order, indexes by name, and matches() returns file order."""
    triggers = load(minimal().replace("name: t", "name: b")
                    + minimal().replace("name: t", "name: a"))
    assert [t.name for t in triggers] == ["b", "a"] and len(triggers) == 2
    assert triggers.by_name["a"] is triggers.triggers[1]
    assert [m.trigger.name for m in triggers.matches(event("x"))] == ["b", "a"]


# ---------------------------------------------------------------- end to end


def test_usage_audit_end_to_end():
    """etc/triggers.yaml usage_audit: one instance's day groups, fires on .exists, expires."""
    trigger = usage_audit()
    day_events = [
        event("compute.instance.create.start", AUG1 + timedelta(hours=9), instance_id="i-1"),
        event("compute.instance.create.end", AUG1 + timedelta(hours=9, minutes=1),
              instance_id="i-1"),
        event("compute.instance.update", AUG1 + timedelta(hours=12), instance_id="i-1"),
        exists(AUG1 + timedelta(hours=15), AUG1, AUG1 + timedelta(hours=15), instance_id="i-1"),
        exists(AUG2 + timedelta(minutes=5), AUG1, AUG2, instance_id="i-1"),
    ]
    found = [trigger.match(ev) for ev in day_events]
    assert all(found) and len({m.key for m in found}) == 1
    counts = [0]
    ready = []
    for match in found:
        counts = [c + i for c, i in zip(counts, match.fire_increments)]
        ready.append(trigger.is_ready(counts))
    assert ready == [False, False, False, False, True]
    first, last = day_events[0]["timestamp"], day_events[-1]["timestamp"]
    assert trigger.expire_time(first, last) == last + timedelta(days=2)

    next_day = trigger.match(event("compute.instance.update", AUG2 + timedelta(hours=1),
                                   instance_id="i-1"))
    assert next_day.key != found[0].key
    assert trigger.match(event("compute.instance.exists.verified", AUG2, instance_id="i-1")) is None
    assert trigger.match(event("image.upload", AUG2, instance_id="i-1")) is None
    other = trigger.match(event("compute.instance.update", AUG1, instance_id="i-2"))
    assert other.key != found[0].key
    assert not math.isnan(trigger.fire_delay)
