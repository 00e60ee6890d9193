"""The distiller: definitions, field paths, types, plugins, envelopes and errors."""

from __future__ import annotations

import gzip
import json
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from jsonpath_ng.ext import parse as jsonpath_parse

from winchester._yaml import parse_yaml
from winchester.cli import main
from winchester.config import load_event_definitions, load_settings
from winchester.distill import (
    Distiller,
    NotificationRejected,
    TraitPlugin,
    available_plugins,
    compile_path,
    decode_notification,
    load_definitions,
    parse_datetime,
)
from winchester.distill._fields import simple_steps
from winchester.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PLUGINS, _ = available_plugins()

NOTIFICATION = {
    "event_type": "compute.instance.create.end",
    "message_id": "m-1",
    "timestamp": "2014-08-01 01:00:00.123456",
    "publisher_id": "compute.host-1.example.com",
    "priority": "INFO",
    "_context_request_id": "req-1",
    "_context_tenant": "ctx-tenant",
    "payload": {
        "tenant_id": "t-1",
        "instance_id": "i-1",
        "memory_mb": 512,
        "launched_at": "2014-07-31T23:00:00Z",
        "deleted_at": "",
        "image_meta": {"org.openstack__1__architecture": "x64"},
        "volumes": [{"id": "v-0"}, {"id": "v-1"}],
        "metadata": [{"key": "image_id", "value": "img-9"}, {"key": "other", "value": "x"}],
    },
}


def distiller_for(yaml_text: str, catch_all: bool = False, plugins=None) -> Distiller:
    data, _ = parse_yaml(yaml_text, "defs.yaml")
    return Distiller(load_definitions(data, "defs.yaml", plugins or PLUGINS), catch_all=catch_all)


def definition_errors(yaml_text: str, plugins=None) -> list:
    data, _ = parse_yaml(yaml_text, "defs.yaml")
    with pytest.raises(ConfigError) as info:
        load_definitions(data, "defs.yaml", plugins or PLUGINS)
    return list(info.value.problems)


# --- definitions and matching -------------------------------------------------------


def test_event_has_envelope_and_requested_traits():
    """A matching definition yields message_id, event_type, naive-UTC timestamp and the traits."""
    event = distiller_for("""
- event_type: compute.instance.*
  traits:
    instance_id: {fields: payload.instance_id}
    memory_mb: {type: int, fields: payload.memory_mb}
    launched_at: {type: datetime, fields: payload.launched_at}
""").distill(NOTIFICATION)
    assert event == {
        "message_id": "m-1", "event_type": "compute.instance.create.end",
        "timestamp": datetime(2014, 8, 1, 1, 0, 0, 123456),
        "instance_id": "i-1", "memory_mb": 512, "launched_at": datetime(2014, 7, 31, 23, 0),
        "service": "compute.host-1.example.com", "request_id": "req-1", "tenant_id": "t-1",
    }


def test_default_traits_and_their_fallbacks():
    """service, request_id and tenant_id are added by default; tenant_id falls back to _context_tenant."""
    notification = {**NOTIFICATION, "payload": {}}
    event = distiller_for("- event_type: '*'\n  traits: {}\n").distill(notification)
    assert event["service"] == "compute.host-1.example.com"
    assert event["request_id"] == "req-1"
    assert event["tenant_id"] == "ctx-tenant"


def test_definition_overrides_a_default_trait():
    """A definition's own trait of a default name replaces the default."""
    event = distiller_for("""
- event_type: '*'
  traits:
    service: {fields: publisher_id, plugin: split}
""").distill(NOTIFICATION)
    assert event["service"] == "compute"


def test_last_matching_definition_wins():
    """Definitions are searched from the last to the first: the specific one after the general wins."""
    distiller = distiller_for("""
- event_type: compute.instance.*
  traits: {kind: {fields: priority}}
- event_type: compute.instance.create.end
  traits: {specific: {fields: payload.instance_id}}
- event_type: compute.instance.delete.*
  traits: {deleted: {fields: payload.instance_id}}
""")
    event = distiller.distill(NOTIFICATION)
    assert "specific" in event and "kind" not in event and "deleted" not in event
    other = distiller.distill({**NOTIFICATION, "event_type": "compute.instance.update"})
    assert other["kind"] == "INFO" and "specific" not in other


def test_merge_keys_share_traits_between_definitions():
    """YAML anchors and `<<` merge keys copy traits into a later definition, which can add more."""
    distiller = distiller_for("""
- event_type: compute.instance.*
  traits: &base
    instance_id: {fields: payload.instance_id}
- event_type: compute.instance.create.end
  traits:
    <<: *base
    memory_mb: {type: int, fields: payload.memory_mb}
""")
    event = distiller.distill(NOTIFICATION)
    assert event["instance_id"] == "i-1" and event["memory_mb"] == 512


@pytest.mark.parametrize("patterns, event_type, expected", [
    (["compute.instance.*"], "compute.instance.create.end", True),
    (["compute.instance.*", "!compute.instance.exists"], "compute.instance.exists", False),
    (["compute.instance.*", "!compute.instance.exists"], "compute.instance.update", True),
    (["!compute.instance.exists"], "image.upload", True),
    (["!compute.instance.exists"], "compute.instance.exists", False),
    (["*http.*"], "objectstore.http.request", True),
    (["image.upload", "image.delete"], "image.update", False),
    (["volume.create.?nd"], "volume.create.end", True),
])
def test_event_type_globs_and_exclusions(patterns, event_type, expected):
    """Shell globs match event types; `!glob` excludes; only exclusions means everything else."""
    distiller = distiller_for(f"- event_type: {json.dumps(patterns)}\n  traits: {{}}\n")
    assert (distiller.distill({**NOTIFICATION, "event_type": event_type}) is not None) is expected


def test_unmatched_notification_is_counted_and_dropped_without_catch_all():
    """With catch_all off a notification no definition matches gives None and is counted."""
    distiller = distiller_for("- event_type: image.*\n  traits: {}\n")
    assert distiller.distill(NOTIFICATION) is None
    assert distiller.stats.unconverted["compute.instance.create.end"] == 1


def test_catch_all_keeps_unmatched_notifications_with_default_traits():
    """With catch_all on an unmatched notification becomes an event with only the default traits."""
    distiller = distiller_for("- event_type: image.*\n  traits: {x: {fields: payload.x}}\n",
                              catch_all=True)
    event = distiller.distill(NOTIFICATION)
    assert set(event) == {"message_id", "event_type", "timestamp", "service", "request_id",
                          "tenant_id"}
    assert distiller.stats.converted["compute.instance.create.end"] == 1


# --- field paths ----------------------------------------------------------------------


@pytest.mark.parametrize("path, expected", [
    ("payload.instance_id", "i-1"),
    ("payload[instance_id]", "i-1"),
    ("payload.image_meta.'org.openstack__1__architecture'", "x64"),
    ('payload.image_meta."org.openstack__1__architecture"', "x64"),
    ("payload.volumes[1].id", "v-1"),
    ("payload.metadata[?key=image_id].value", "img-9"),
    ("payload.metadata[?key~'^im'].value", "img-9"),  # jsonpath-rw-ext's regex, Ceilometer's
    ("payload.metadata[?key=~'^oth'].value", "x"),    # jsonpath-ng's spelling of it
    ("payload.metadata[?key='im~'].value", None),     # a ~ in quotes is only text
    ("publisher_id.`split(., 1, 1)`", "host-1.example.com"),
    ("publisher_id.`split(., 0, -1)`", "compute"),
    ("(payload.nothing)|(payload.instance_id)", "i-1"),
    ("payload.volumes[5].id", None),
    ("payload.instance_id.deeper", None),
])
def test_field_path_syntax(path, expected):
    """Every JSONPath form the real definition files use finds the right value."""
    assert compile_path(path).first(NOTIFICATION) == expected


@pytest.mark.parametrize("path, fast", [
    ("payload.instance_id", True), ("payload[host]", True), ("a.'b.c'.d", True),
    ("a.b[0].c", True), ("payload.glance_metadata[?key=image_id].value", False),
    ("publisher_id.`split(., 1, 1)`", False), ("a.*", False), ("a..b", False), ("(a)|(b)", False),
])
def test_plain_paths_take_the_fast_path(path, fast):
    """Plain key chains compile to direct lookups; anything else goes to jsonpath-ng."""
    assert (simple_steps(path) is not None) is fast


json_leaves = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
json_documents = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["a", "b", "c", "d.e"]), children, max_size=3),
    max_leaves=12)
plain_steps = st.lists(st.sampled_from([".a", ".b", "[c]", ".'d.e'", "[0]", "[1]"]),
                       min_size=0, max_size=3)


@given(document=st.dictionaries(st.sampled_from(["a", "b", "c"]), json_documents, max_size=3),
       first=st.sampled_from(["a", "b", "c"]), rest=plain_steps)
def test_fast_path_agrees_with_jsonpath_ng(document, first, rest):
    """For plain paths the direct lookup finds exactly what jsonpath-ng finds."""
    path = first + "".join(rest)
    expected = [m.value for m in jsonpath_parse(path).find(document)]
    assert compile_path(path).all(document) == [v for v in expected if v is not None]


@given(value=st.one_of(st.text(alphabet="ab.-:", max_size=12), st.integers(), st.none()),
       separator=st.sampled_from([".", "-", ":"]), segment=st.integers(-3, 3),
       max_split=st.integers(-1, 3))
def test_split_function_fast_path_agrees_with_jsonpath_ng(value, separator, segment, max_split):
    """The built-in evaluation of `` `split(c, n, m)` `` equals jsonpath-ng's."""
    path = f"publisher_id.`split({separator}, {segment}, {max_split})`"
    document = {"publisher_id": value}
    expected = [m.value for m in jsonpath_parse(path).find(document)]
    assert compile_path(path).all(document) == [v for v in expected if v is not None]


def test_first_non_null_field_wins():
    """With a list of fields the first path yielding a non-null value is used."""
    distiller = distiller_for("""
- event_type: '*'
  traits:
    who: {fields: [payload.missing, payload.none_value, payload.instance_id, payload.tenant_id]}
""")
    notification = {**NOTIFICATION, "payload": {**NOTIFICATION["payload"], "none_value": None}}
    assert distiller.distill(notification)["who"] == "i-1"


def test_ceilometer_ctxt_paths_read_the_request_context():
    """Ceilometer's `ctxt.*` paths read the `_context_*` keys of a legacy notification."""
    event = distiller_for("""
- event_type: '*'
  traits:
    user: {fields: ['ctxt.trustor_user_id', 'ctxt.request_id']}
    sent_id: {fields: metadata.message_id}
""").distill(NOTIFICATION)
    assert event["user"] == "req-1" and event["sent_id"] == "m-1"


# --- types ------------------------------------------------------------------------------


@pytest.mark.parametrize("trait_type, raw, expected", [
    ("int", "42", 42), ("int", 42.9, 42), ("int", True, 1), ("float", "2.5", 2.5),
    ("float", 3, 3.0), ("text", 12, "12"), ("text", "", ""),
    ("text", {"b": 1, "a": [1]}, '{"a":[1],"b":1}'),
    ("datetime", "2014-08-01 01:00:00.123456", datetime(2014, 8, 1, 1, 0, 0, 123456)),
    ("datetime", "2014-08-01T03:00:00+02:00", datetime(2014, 8, 1, 1, 0)),
    ("datetime", "2014-08-01T01:00:00Z", datetime(2014, 8, 1, 1, 0)),
    ("datetime", "2015-02-01 00:00:00", datetime(2015, 2, 1)),
])
def test_trait_type_conversion(trait_type, raw, expected):
    """Values are converted to the trait's type (containers become compact JSON text)."""
    distiller = distiller_for(f"- event_type: '*'\n  traits: {{v: {{type: {trait_type}, fields: payload.v}}}}\n")
    event = distiller.distill({**NOTIFICATION, "payload": {"v": raw}})
    assert event["v"] == expected and type(event["v"]) is type(expected)


@pytest.mark.parametrize("trait_type", ["int", "float", "datetime"])
def test_empty_string_means_absent_for_non_text(trait_type):
    """nova sends "" for unset dates: for a non-text trait that means the trait is absent."""
    distiller = distiller_for(f"- event_type: '*'\n  traits: {{v: {{type: {trait_type}, fields: payload.v}}}}\n")
    assert "v" not in distiller.distill({**NOTIFICATION, "payload": {"v": ""}})
    assert not distiller.stats.trait_warnings


@pytest.mark.parametrize("trait_type, raw", [
    ("int", "forty"), ("int", "1.5"), ("int", 2**70), ("float", "nan"), ("float", [1]),
    ("datetime", "2014-05-1510: 24: 56.335612"), ("datetime", 1406854800), ("text", "a\x00b"),
])
def test_unconvertible_value_drops_trait_not_event(trait_type, raw):
    """A value that cannot be converted drops that trait, keeps the event, and is counted."""
    distiller = distiller_for(f"""
- event_type: '*'
  traits:
    v: {{type: {trait_type}, fields: payload.v}}
    instance_id: {{fields: payload.instance_id}}
""")
    event = distiller.distill({**NOTIFICATION, "payload": {"v": raw, "instance_id": "i-1"}})
    assert "v" not in event and event["instance_id"] == "i-1"
    [(key, count)] = distiller.stats.trait_warnings.items()
    assert key == ("definition #0 (*)", "v") and count == 1


@given(st.text(max_size=40))
def test_datetime_parser_raises_only_its_error(text):
    """Arbitrary text either parses to a naive datetime or raises ConversionError."""
    from winchester.distill import ConversionError

    try:
        result = parse_datetime(text)
    except ConversionError:
        return
    assert result.tzinfo is None


# --- plugins ------------------------------------------------------------------------------


def test_split_plugin_both_syntaxes():
    """`plugin: split` and `{name: split, parameters: ...}` split publisher_id; a missing segment drops the trait."""
    event = distiller_for("""
- event_type: '*'
  traits:
    service: {fields: publisher_id, plugin: split}
    host:
      fields: publisher_id
      plugin: {name: split, parameters: {segment: 1, max_split: 1}}
    nothing:
      fields: publisher_id
      plugin: {name: split, parameters: {separator: '/', segment: 3}}
""").distill(NOTIFICATION)
    assert event["service"] == "compute" and event["host"] == "host-1.example.com"
    assert "nothing" not in event


def test_bitfield_plugin_sets_bits_by_path_and_value():
    """bitfield sets a bit per flag whose path matched (and whose value, when given, is equal)."""
    event = distiller_for("""
- event_type: '*'
  traits:
    flags:
      type: int
      fields: [payload.memory_mb, payload.instance_id, payload.missing]
      plugin:
        name: bitfield
        parameters:
          initial_bitfield: 256
          flags:
            - {path: payload.memory_mb, bit: 0, value: 512}
            - {path: payload.instance_id, bit: 1, value: other}
            - {path: payload.instance_id, bit: 2}
            - {path: payload.missing, bit: 3}
""").distill(NOTIFICATION)
    assert event["flags"] == 256 | 1 | 4


def test_timedelta_plugin_gives_seconds_between_two_fields():
    """timedelta returns the absolute difference in seconds of exactly two datetime fields."""
    distiller = distiller_for("""
- event_type: '*'
  traits:
    took: {type: float, fields: [payload.launched_at, timestamp], plugin: timedelta}
    one_field: {type: float, fields: [payload.launched_at], plugin: timedelta}
""")
    event = distiller.distill(NOTIFICATION)
    assert event["took"] == 7200.123456
    assert "one_field" not in event


def test_map_plugin_translates_with_default_and_case_folding():
    """map looks the value up (optionally case-insensitively) and falls back to its default."""
    distiller = distiller_for("""
- event_type: '*'
  traits:
    level:
      fields: priority
      plugin: {name: map, parameters: {values: {info: low, error: high}, case_sensitive: false}}
    strict:
      fields: priority
      plugin: {name: map, parameters: {values: {info: low}, default: unknown}}
    dropped:
      fields: priority
      plugin: {name: map, parameters: {values: {}}}
""")
    event = distiller.distill(NOTIFICATION)
    assert event["level"] == "low" and event["strict"] == "unknown" and "dropped" not in event


def test_split_and_map_take_the_first_field_that_gives_a_value_as_ceilometer_does():
    """With several fields, split uses the first value that has the segment and map the first
    that translates; a map whose fields are all missing adds no trait (its default is for a
    value it does not know, not for no value)."""
    body = {"event_type": "e", "message_id": "m", "timestamp": "2024-01-01 00:00:00",
            "payload": {"a": "aval", "host": "node-7-x", "state": "running"}}
    distiller = distiller_for("""
- event_type: '*'
  traits:
    segment:
      fields: [payload.a, payload.host]
      plugin: {name: split, parameters: {separator: '-', segment: 1}}
    state:
      fields: [payload.a, payload.state]
      plugin: {name: map, parameters: {values: {running: up}}}
    unknown:
      fields: [payload.a]
      plugin: {name: map, parameters: {values: {running: up}, default: other}}
    absent:
      fields: [payload.nothere]
      plugin: {name: map, parameters: {values: {running: up}, default: other}}
""")
    event = distiller.distill(body)
    assert (event["segment"], event["state"], event["unknown"]) == ("7", "up", "other")
    assert "absent" not in event


def test_a_trait_given_as_a_bare_jsonpath_is_a_text_trait_as_in_ceilometer():
    """Ceilometer's short form `name: jsonpath` means `{fields: jsonpath}` (type text)."""
    distiller = distiller_for("""
- event_type: '*'
  traits:
    instance: payload.instance_id
    memory: payload.memory_mb
""")
    event = distiller.distill(NOTIFICATION)
    assert (event["instance"], event["memory"]) == ("i-1", "512")


class UpperPlugin(TraitPlugin):
    """A test plugin: upper-cases the first value."""

    def trait_value(self, matches):
        return matches[0][1].upper() if matches else None


class CeilometerStylePlugin:
    """A Ceilometer-style plugin: trait_values returns a list."""

    def __init__(self, suffix=""):
        self.suffix = suffix

    def trait_values(self, matches):
        return [f"{value}{self.suffix}" for _, value in matches]


def test_configured_plugins_are_imported_by_path(tmp_path):
    """distiller_trait_plugins loads `module:Class` plugins, ours and Ceilometer-style."""
    plugins, problems = available_plugins({
        "upper": "tests.test_distill:UpperPlugin",
        "suffix": f"{ROOT}|tests.test_distill:CeilometerStylePlugin",
    })
    assert problems == []
    event = distiller_for("""
- event_type: '*'
  traits:
    loud: {fields: payload.instance_id, plugin: upper}
    tagged: {fields: payload.instance_id, plugin: {name: suffix, parameters: {suffix: '!'}}}
""", plugins=plugins).distill(NOTIFICATION)
    assert event["loud"] == "I-1" and event["tagged"] == "i-1!"


def test_unimportable_configured_plugin_is_reported():
    """A distiller_trait_plugins entry that cannot be imported is reported with its name."""
    _, problems = available_plugins({"nope": "no_such_module_here:Thing"})
    assert len(problems) == 1 and "'nope'" in problems[0] and "No module named" in problems[0]


def test_plugin_that_raises_drops_only_its_trait():
    """A plugin raising at run time drops its trait, counts a warning and keeps the event."""

    class Broken(TraitPlugin):
        def trait_value(self, matches):
            raise RuntimeError("boom")

    distiller = distiller_for("- event_type: '*'\n  traits: {x: {fields: priority, plugin: broken}}\n",
                              plugins={**PLUGINS, "broken": Broken})
    event = distiller.distill(NOTIFICATION)
    assert event is not None and "x" not in event
    assert "plugin raised RuntimeError: boom" in next(iter(distiller.stats.last_warning.values()))


# --- envelopes and rejection --------------------------------------------------------------


def test_oslo_v2_envelope_is_unwrapped(real_data):
    """The messagingv2 envelope (inner JSON string) is decoded like a bare legacy message."""
    raw = (real_data / "oslo_wire_samples.jsonl").read_bytes().splitlines()[0]
    inner = orjson.loads(orjson.loads(raw)["oslo.message"])
    assert decode_notification(raw) == inner
    event = distiller_for("- event_type: '*'\n  traits: {}\n").distill_raw(raw)
    assert event["message_id"] == inner["message_id"]
    assert event["event_type"] == "compute.instance.create.end"


def test_legacy_format_without_envelope(real_data):
    """Format 1.0 (no envelope) bodies are taken as they are."""
    raw = (real_data / "oslo_wire_samples.jsonl").read_bytes().splitlines()[4]
    assert decode_notification(raw)["priority"] == "WARN"


def test_versioned_nova_payload_is_addressed_by_path():
    """Versioned notifications keep their nova_object wrapper; definitions address it by path."""
    notification = {"event_type": "instance.create.end", "message_id": "m", "timestamp": "2020-01-01",
                    "publisher_id": "nova-compute:host1",
                    "payload": {"nova_object.name": "InstanceCreatePayload",
                                "nova_object.data": {"uuid": "u-1", "state": "active"}}}
    event = distiller_for("""
- event_type: instance.*
  traits:
    instance_id: {fields: "payload.'nova_object.data'.uuid"}
    state: {fields: "payload.'nova_object.data'.state"}
""").distill(notification)
    assert event["instance_id"] == "u-1" and event["state"] == "active"


@pytest.mark.parametrize("raw, reason", [
    (b"not json", "not_json"),
    (b"[1, 2]", "not_an_object"),
    (b'"just a string"', "not_an_object"),
    (b'{"oslo.version": "1.0", "oslo.message": "{}"}', "bad_envelope"),
    (b'{"oslo.version": "2.0", "oslo.message": "{broken"}', "bad_envelope"),
    (b'{"oslo.version": "2.0", "oslo.message": "[1]"}', "bad_envelope"),
    (b'{"message_id": "m", "timestamp": "2014-08-01"}', "no_event_type"),
    (b'{"event_type": "x", "timestamp": "2014-08-01"}', "no_message_id"),
    (b'{"event_type": "x", "message_id": 7, "timestamp": "2014-08-01"}', "no_message_id"),
    (b'{"event_type": "x", "message_id": "m"}', "no_timestamp"),
    (b'{"event_type": "x", "message_id": "m", "timestamp": 1406854800}', "no_timestamp"),
    (b'{"event_type": "x", "message_id": "m", "timestamp": "soon"}', "bad_timestamp"),
    (b'\xff\xfe{}', "not_json"),
])
def test_malformed_notifications_are_rejected_with_a_reason(raw, reason):
    """Anything that cannot be an event raises NotificationRejected with a countable reason."""
    distiller = distiller_for("- event_type: '*'\n  traits: {}\n")
    with pytest.raises(NotificationRejected) as info:
        distiller.distill_raw(raw)
    assert info.value.reason == reason
    assert distiller.stats.rejected[reason] == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
notification_like = st.fixed_dictionaries(
    {}, optional={"event_type": json_values | st.sampled_from(["compute.instance.update", "x"]),
                  "message_id": json_values | st.just("m-1"),
                  "timestamp": json_values | st.just("2014-08-01T00:00:00"),
                  "publisher_id": json_values, "payload": json_values,
                  "_context_request_id": json_values, "metadata": json_values})
FULL_DISTILLER = distiller_for((ROOT / "etc" / "event_definitions.yaml").read_text(), catch_all=True)


@given(st.one_of(json_values, notification_like))
def test_arbitrary_json_raises_only_the_rejection_error(value):
    """Arbitrary JSON never makes the distiller raise anything but NotificationRejected."""
    try:
        event = FULL_DISTILLER.distill_raw(orjson.dumps(value))
    except NotificationRejected:
        return
    from winchester.events import make_event

    assert event is None or make_event(event) == event


# --- definition errors -------------------------------------------------------------------


def test_definition_errors_name_file_definition_trait_field_and_line():
    """Every problem is reported at once, each naming file, definition, trait, field and line."""
    problems = definition_errors("""\
- event_type: compute.instance.*
  traits:
    a: {type: decimal, fields: payload.a}
    b: {fields: 'payload.[unclosed'}
    c: {fields: payload.c, plugin: splitter}
    d: {type: int}
    e: {fields: payload.e, plugin: {name: split, parameters: {segment: one}}}
- event_type: [image.*]
  traits:
    f: [1, 2]
""")
    by_where = {p.where: p for p in problems}
    prefix = "definition #0 (compute.instance.*) > trait"
    assert "unknown type 'decimal'" in by_where[f"{prefix} 'a' > type"].message
    assert "cannot parse JSONPath 'payload.[unclosed'" in by_where[f"{prefix} 'b' > fields"].message
    unknown = by_where[f"{prefix} 'c' > plugin"]
    assert "unknown plugin 'splitter'; available: bitfield, map, split, timedelta" in unknown.message
    assert "is required" in by_where[f"{prefix} 'd' > fields"].message
    assert "rejected its parameters" in by_where[f"{prefix} 'e' > plugin > parameters"].message
    assert "must be a JSONPath, or a mapping" in by_where["definition #1 (image.*) > trait 'f'"].message
    assert all(p.file == "defs.yaml" for p in problems)
    assert by_where[f"{prefix} 'a' > type"].line == 3


def test_definition_without_event_type_is_an_error():
    """A definition lacking event_type is refused, naming its index."""
    [problem] = definition_errors("- traits: {a: {fields: payload.a}}\n")
    assert problem.where == "definition #0 > event_type" and "is required" in problem.message


def test_file_must_be_a_list():
    """A definitions file that is not a list is refused."""
    [problem] = definition_errors("event_type: x\n")
    assert "must be a list of event definitions" in problem.message


def test_reserved_trait_names_warn():
    """Traits named message_id/event_type are ignored with a warning; a datetime `timestamp` trait sets the event time."""
    data, _ = parse_yaml("""
- event_type: '*'
  traits:
    message_id: {fields: payload.instance_id}
    timestamp: {type: datetime, fields: payload.launched_at}
""", "defs.yaml")
    definitions = load_definitions(data, "defs.yaml", PLUGINS)
    [warning] = definitions.warnings
    assert "'message_id'" in warning.where and warning.severity == "warning"
    event = Distiller(definitions).distill(NOTIFICATION)
    assert event["message_id"] == "m-1" and event["timestamp"] == datetime(2014, 7, 31, 23, 0)


def test_check_command_reports_definition_errors(tmp_path):
    """`winchester check` lists distiller definition errors with file and line."""
    import shutil

    shutil.copytree(ROOT / "etc", tmp_path / "etc")
    defs = tmp_path / "etc" / "event_definitions.yaml"
    defs.write_text(defs.read_text().replace("type: int\n      fields: payload.memory_mb",
                                             "type: integer\n      fields: payload.memory_mb"))
    result = CliRunner().invoke(main, ["check", "-c", str(tmp_path / "etc" / "winchester.yaml")])
    assert result.exit_code == 1
    assert f"{defs}:" in result.output
    assert "trait 'memory_mb' > type: unknown type 'integer'" in result.output


# --- compatibility with the real StackDistiller --------------------------------------------


def test_same_events_as_stackdistiller(real_data):
    """Our events equal StackDistiller 0.12's output on every recorded notification.

    The one documented difference: a notification whose envelope timestamp is
    malformed is rejected even when no definition would match it (StackDistiller
    dropped those silently, or raised when one matched).
    """
    plugins, _ = available_plugins()
    distillers: dict = {}
    inputs: dict = {}
    compared = 0
    for line in (real_data / "legacy" / "golden_stackdistiller_0.12.jsonl").read_text().splitlines():
        row = json.loads(line)
        key = (row["config"], row["catchall"])
        if key not in distillers:
            data, _ = parse_yaml((real_data / row["config"]).read_text(), row["config"])
            distillers[key] = Distiller(load_definitions(data, row["config"], plugins),
                                        catch_all=row["catchall"])
        if row["input_file"] not in inputs:
            inputs[row["input_file"]] = [
                json.loads(x) for x in (real_data / row["input_file"]).read_text().splitlines()]
        source = inputs[row["input_file"]][row["input_line"] - 1]
        notification = source.get("notification", source)
        expected = row.get("result")
        if "error" in row or (expected is None and "bad_timestamp" == _rejection(distillers[key], notification)):
            with pytest.raises(NotificationRejected) as info:
                distillers[key].distill(notification)
            assert info.value.reason == "bad_timestamp"
            continue
        event = distillers[key].distill(notification)
        if expected is None:
            assert event is None, row
            continue
        envelope = expected["envelope"]
        wanted = {"message_id": envelope["message_id"], "event_type": envelope["event_type"],
                  "timestamp": datetime.fromisoformat(envelope["when"]).replace(tzinfo=None)}
        for name, trait in expected["traits"].items():
            value = trait["value"]
            if trait["type"] == "datetime":
                value = datetime.fromisoformat(value).replace(tzinfo=None)
            wanted[name] = value
        assert event == wanted, (row["config"], row["input_file"], row["input_line"])
        compared += 1
    assert compared == 723  # the rows StackDistiller converted (the rest it dropped or raised on)


def _rejection(distiller, notification):
    try:
        distiller.distill(notification)
    except NotificationRejected as exc:
        return exc.reason
    return None


# --- configuration and command line --------------------------------------------------------


def test_example_definitions_load_through_settings():
    """etc/event_definitions.yaml loads through the configured settings without warnings."""
    definitions = load_event_definitions(load_settings(ROOT / "etc" / "winchester.yaml", environ={}))
    assert len(definitions) == 3 and definitions.warnings == ()


def test_distill_command_prints_events_and_stats(tmp_path, real_data):
    """`winchester distill` prints one typed JSON event per line and, with --stats, the counts."""
    capture = tmp_path / "capture.jsonl.gz"
    lines = (real_data / "legacy" / "notigen_rendered.jsonl").read_bytes().splitlines()[:20]
    with gzip.open(capture, "wb") as handle:
        handle.write(b"\n".join([json.dumps(json.loads(x)["notification"]).encode() for x in lines]
                                + [b"not json", b""]))
    result = CliRunner().invoke(
        main, ["distill", "-c", str(ROOT / "etc" / "winchester.yaml"), str(capture), "--stats"])
    assert result.exit_code == 0, result.stderr
    events = [orjson.loads(x) for x in result.stdout.splitlines()]
    assert len(events) == 20
    assert events[0]["timestamp"] == {"__type__": "datetime", "datetime": "2015-02-01T00:00:00.000000"}
    assert f"{capture}:21: notification rejected (not_json)" in result.stderr
    assert "compute.instance.update" in result.stderr and "not_json" in result.stderr


def test_distill_command_reads_stdin_and_unwraps():
    """`winchester distill -` reads standard input; --unwrap takes the notification from a key."""
    line = json.dumps({"notification": {**NOTIFICATION, "event_type": "compute.instance.update"}})
    result = CliRunner().invoke(
        main, ["distill", "-c", str(ROOT / "etc" / "winchester.yaml"), "--unwrap", "notification", "-"],
        input=line + "\n")
    assert result.exit_code == 0, result.stderr
    assert orjson.loads(result.stdout)["instance_id"] == "i-1"


def test_distill_command_refuses_a_bad_configuration(tmp_path):
    """With broken definitions `winchester distill` exits 2 and names the problem."""
    import shutil

    shutil.copytree(ROOT / "etc", tmp_path / "etc")
    (tmp_path / "etc" / "event_definitions.yaml").write_text("- event_type: x\n  traits: {a: {}}\n")
    result = CliRunner().invoke(
        main, ["distill", "-c", str(tmp_path / "etc" / "winchester.yaml"), "-"], input="")
    assert result.exit_code == 2
    assert "trait 'a' > fields: is required" in result.stderr


@pytest.mark.parametrize("definitions_file", [
    "stacktach/sandbox_winchester/event_definitions.yaml",
    "ceilometer/event_definitions.yaml",
    "ceilometer/event_definitions_2015-09_split_plugin_syntax.yaml",
])
def test_generated_extractors_equal_the_general_code(real_data, definitions_file):
    """The compiled per-definition extractor gives exactly the general trait-by-trait result."""
    from winchester.distill._distiller import read_envelope, _generic_trait

    path = real_data / definitions_file
    data, _ = parse_yaml(path.read_text(), str(path))
    distiller = Distiller(load_definitions(data, str(path), PLUGINS), catch_all=True)
    compared = 0
    for name in ("legacy/notigen_rendered.jsonl", "legacy/ceilometer_test_notifications.jsonl",
                 "legacy/keystone_doc_notifications.jsonl"):
        for line in (real_data / name).read_text().splitlines():
            notification = json.loads(line)["notification"]
            try:
                event = distiller.distill(notification)
            except NotificationRejected:
                continue
            event_type, message_id, timestamp = read_envelope(notification)
            definition = distiller.definition_for(event_type)
            body = notification
            if definition.uses_ceilometer_form:
                from winchester.distill._distiller import _ceilometer_form

                body = _ceilometer_form(notification, message_id, timestamp)
            expected = {"message_id": message_id, "event_type": event_type, "timestamp": timestamp}
            for entry in definition.plan:
                _generic_trait(entry, body, expected, lambda *args: None, definition)
            assert event == expected, (name, event_type)
            compared += 1
    assert compared > 300
