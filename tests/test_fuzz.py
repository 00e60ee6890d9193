"""Fuzzing the pure parts (issue 9): arbitrary input raises only the documented errors.

What tests/test_distill.py, test_timex_properties.py and
test_triggers_properties.py already do is not repeated here: arbitrary JSON
through ``distill_raw``, arbitrary text through ``timex.parse``, arbitrary
trait criteria values, well-formed expressions evaluated. This adds:

* the distiller on arbitrary *bytes* and on mutated real notifications;
  on decoded dicts (what a Python caller or another JSON decoder hands
  over: ints past 64 bits, NaN, non-string keys, tuples, deep nesting) with
  payloads whose keys are the ones the definitions actually read, for the
  example definitions, Ceilometer 27's and a set using every plugin and
  path form; and the persistor's ``archive_row`` on arbitrary bytes (it must
  never raise, or the persistor would stall on the message);
* time expressions that parse, from arbitrary text, evaluated with variables
  of any type (trigger criteria pass the event's traits as variables);
* generated triggers (time expressions in criteria and distinguished_by)
  against arbitrary events, and the example triggers against events at the
  edges of the datetime range: match, fire counts, explain and diagnose
  never raise; expiry raises only TimexEvaluationError.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from tests.conftest import real_data_dir
from winchester._yaml import parse_yaml
from winchester.distill import (
    Distiller,
    NotificationRejected,
    available_plugins,
    decode_notification,
    load_definitions,
    read_envelope,
)
from winchester.errors import ConfigError, TimexEvaluationError, TimexSyntaxError
from winchester.events import dumps_event, loads_event, make_event
from winchester.services.intake import archive_row
from winchester.timex import TimeRange, Timestamp, parse
from winchester.triggers import Diagnosis, distinguishing_key, load_triggers

ROOT = Path(__file__).resolve().parents[1]
PLUGINS, _ = available_plugins()
FUZZ = settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow,
                                                         HealthCheck.data_too_large])
REASONS = {"not_json", "not_an_object", "bad_envelope", "no_event_type", "no_message_id",
           "no_timestamp", "bad_timestamp", "bad_identifier"}

# A definition set using every plugin, type and path form the distiller has.
EVERYTHING_YAML = r"""
- event_type: "*"
  traits:
    text: {fields: payload.text}
    number: {type: int, fields: [payload.number, payload.size]}
    real: {type: float, fields: payload.real}
    moment: {type: datetime, fields: [payload.launched_at, payload.moment]}
    nested: {fields: payload.image_meta.'org.openstack__1__architecture'}
    indexed: {fields: "payload.volume_attachment[0].server_id"}
    filtered: {fields: "payload.glance_metadata[?key=image_id].value"}
    either: {fields: "(payload.instance_uuid)|(payload.instance_id)"}
    by_split_function: {fields: "payload.host.`split(., 1, 1)`"}
    whole_payload: {fields: payload}
    host: {fields: publisher_id, plugin: {name: split, parameters: {segment: 1, max_split: 1}}}
    flags:
      type: int
      fields: [payload.state, payload.deleted_at]
      plugin:
        name: bitfield
        parameters:
          initial_bitfield: 1
          flags:
            - {path: payload.state, bit: 1, value: active}
            - {path: payload.deleted_at, bit: 2}
    lifetime:
      type: float
      fields: [payload.launched_at, payload.deleted_at]
      plugin: timedelta
    kind:
      fields: payload.state
      plugin: {name: map, parameters: {values: {active: up, error: down}, default: other}}
    from_context: {fields: _context_user_id}
"""


def definitions_from(text: str, name: str):
    data, _ = parse_yaml(text, name)
    return load_definitions(data, name, PLUGINS)


def _distillers() -> dict[str, Distiller]:
    found = {
        "example": Distiller(definitions_from((ROOT / "etc" / "event_definitions.yaml").read_text(),
                                              "event_definitions.yaml"), catch_all=True),
        "everything": Distiller(definitions_from(EVERYTHING_YAML, "everything.yaml")),
    }
    ceilometer = real_data_dir() / "ceilometer" / "event_definitions.yaml"
    found["ceilometer"] = Distiller(definitions_from(ceilometer.read_text(encoding="utf-8"),
                                                     ceilometer.name))
    return found


DISTILLERS = _distillers()
# The keys the definitions read (and the event types they name), so that payloads reach them.
_DEFINITION_TEXT = (EVERYTHING_YAML + (ROOT / "etc" / "event_definitions.yaml").read_text()
                    + (real_data_dir() / "ceilometer" / "event_definitions.yaml").read_text())
KEYS = sorted(set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", _DEFINITION_TEXT)) | {
    "org.openstack__1__architecture", "nova_object.data"})
EVENT_TYPES = sorted(set(re.findall(r"\b(?:compute|volume|image|network|port|snapshot|identity|"
                                    r"orchestration|dns|magnum|trove|floatingip|router|subnet)"
                                    r"\.[a-z_.]+[a-z]", _DEFINITION_TEXT)))

# -- values -------------------------------------------------------------------------------------

DATETIME_TEXT = st.one_of(
    st.datetimes().map(lambda moment: moment.isoformat(sep=" ")),
    st.datetimes(timezones=st.just(timezone.utc)).map(
        lambda moment: moment.isoformat()),
    st.from_regex(r"\A\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2})?([.,]\d{1,9})?)? ?"
                  r"(Z|UTC|GMT|[+-]\d{2}(:?\d{2})?)?\Z"),
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30), st.just(""),
    DATETIME_TEXT, st.sampled_from(["active", "error", "deleted", "compute.host-1", "image_id"]),
)
# What another JSON decoder (or a Python caller) can hand over, beyond orjson's range.
WILD_SCALARS = st.one_of(
    SCALARS, st.integers(), st.floats(),
    # Built from a small draw: hypothesis cannot print (or shrink) a 4400-digit choice itself.
    st.integers(0, 100).map(lambda k: 10**4400 + k),
    # Python's json (unlike orjson) decodes "\ud800" to a lone surrogate, which no store can write.
    st.builds("{}\ud800{}".format, st.text(max_size=3), st.text(max_size=3)),
    st.datetimes(), st.datetimes(timezones=st.just(timezone(timedelta(hours=-5)))),
)


def deep(value: Any, depth: int) -> Any:
    for level in range(depth):
        value = [value] if level % 2 else {"d": value}
    return value


def trees(scalars, keys):
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=4),
        max_leaves=12)


JSON_VALUES = trees(SCALARS, st.sampled_from(KEYS) | st.text(max_size=6))
WILD_VALUES = st.one_of(
    trees(WILD_SCALARS, st.sampled_from(KEYS) | st.text(max_size=6) | st.integers()
          | st.tuples(st.integers())),
    st.builds(deep, SCALARS, st.integers(250, 700)),
    st.lists(WILD_SCALARS, max_size=3).map(tuple),
)
PAYLOADS = st.dictionaries(st.sampled_from(KEYS), JSON_VALUES, max_size=10)
WILD_PAYLOADS = st.dictionaries(st.sampled_from(KEYS), WILD_VALUES, max_size=10)


def notifications(values, payloads):
    """Mostly well-formed envelopes (any of the four keys may be missing or of any type)."""
    proper = {"event_type": st.sampled_from(EVENT_TYPES) | st.text(max_size=20),
              "message_id": st.text(min_size=1, max_size=40) | st.uuids().map(str),
              "timestamp": DATETIME_TEXT, "payload": payloads}

    @st.composite
    def build(draw):
        notification = {}
        for key, strategy in proper.items():
            choice = draw(st.integers(0, 9))
            if choice == 0:
                continue  # missing
            notification[key] = draw(values if choice == 1 else strategy)
        notification.update(draw(st.fixed_dictionaries({}, optional={
            key: values for key in ("publisher_id", "priority", "_context_user_id",
                                    "_context_request_id", "_context_project_id",
                                    "_context_tenant", "metadata", "ctxt")})))
        return notification

    return build()


def check_event(event: Any) -> None:
    """What distill may return: nothing, or an event the model accepts and can write and read back."""
    if event is None:
        return
    assert make_event(event) == event
    assert loads_event(dumps_event(event)) == event
    for name, value in event.items():
        if isinstance(value, float):
            assert math.isfinite(value), name
        if isinstance(value, int) and not isinstance(value, bool):
            assert -(2**63) <= value < 2**63, name
        if isinstance(value, str):
            assert "\x00" not in value, name


def distill_with(name: str, value: Any) -> None:
    """``distill`` a dict, ``distill_raw`` anything else: an event, nothing, or NotificationRejected."""
    distiller = DISTILLERS[name]
    try:
        event = distiller.distill(value) if isinstance(value, dict) else distiller.distill_raw(value)
    except NotificationRejected as rejection:
        assert rejection.reason in REASONS
        return
    check_event(event)


# -- the distiller --------------------------------------------------------------------------------


@FUZZ
@given(st.sampled_from(sorted(DISTILLERS)), st.binary(max_size=300))
def test_distill_raw_of_arbitrary_bytes_rejects_or_converts(name, raw):
    distill_with(name, raw)


GOOD = orjson.dumps({
    "event_type": "compute.instance.update", "message_id": "m-1",
    "timestamp": "2014-08-01 01:00:00.123456", "publisher_id": "compute.host-1",
    "_context_request_id": "req-1", "_context_user_id": "u-1",
    "payload": {"instance_id": "i-1", "tenant_id": "t-1", "memory_mb": 512, "state": "active",
                "launched_at": "2014-07-31T23:00:00Z", "deleted_at": "",
                "image_meta": {"org.openstack__1__architecture": "x64"},
                "volume_attachment": [{"server_id": "s-1"}],
                "glance_metadata": [{"key": "image_id", "value": "img-1"}]}})


@st.composite
def mutated(draw) -> bytes:
    """A real notification with a few bytes deleted, replaced or inserted, or cut short."""
    body = bytearray(GOOD)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(["delete", "replace", "insert", "truncate"]))
        if action == "truncate":
            del body[position:]
        elif action == "delete":
            del body[position:position + draw(st.integers(1, 8))]
        else:
            chunk = draw(st.binary(min_size=1, max_size=4) | st.sampled_from(
                [b'"', b"{", b"}", b"[", b"]", b",", b":", b"\\", b"\\u0000", b"\xff", b"null",
                 b"1e999", b"-0", b'"\\ud800"']))
            if action == "replace":
                body[position:position + len(chunk)] = chunk
            else:
                body[position:position] = chunk
    return bytes(body)


@FUZZ
@given(st.sampled_from(sorted(DISTILLERS)), mutated())
def test_distill_raw_of_mutated_notifications_rejects_or_converts(name, raw):
    distill_with(name, raw)


@FUZZ
@given(st.sampled_from(sorted(DISTILLERS)), notifications(JSON_VALUES, PAYLOADS))
def test_notifications_with_arbitrary_payloads_as_json_reject_or_convert(name, notification):
    """Payload keys the definitions read, any JSON values: through distill_raw and in an oslo envelope."""
    raw = orjson.dumps(notification)
    distill_with(name, raw)
    envelope = orjson.dumps({"oslo.version": "2.0", "oslo.message": raw.decode()})
    distill_with(name, envelope)


@FUZZ
@given(st.sampled_from(sorted(DISTILLERS)), notifications(WILD_VALUES, WILD_PAYLOADS))
# Found by this test: the split plugin's str() of an int past 4300 digits, in the generated code,
# the int and float converters' messages quoting such an int, read_envelope's quoting such a
# timestamp, and lone surrogates kept in text traits and identifiers.
@example("example", {"event_type": "compute.instance.update", "message_id": "m",
                     "timestamp": "2014-08-01", "publisher_id": 10**4400, "payload": {}})
@example("everything", {"event_type": "x", "message_id": "m", "timestamp": "2014-08-01",
                        "payload": {"number": 10**4400, "real": 10**4400, "text": 10**4400}})
@example("ceilometer", {"event_type": "x", "message_id": "m", "timestamp": 10**4400})
@example("example", {"event_type": "compute.instance.update", "message_id": "m\ud800",
                     "timestamp": "2014-08-01", "payload": {}})
@example("example", {"event_type": "compute.instance.update", "message_id": "m",
                     "timestamp": "2014-08-01", "payload": {"instance_id": "i-\udc80",
                                                        "display_name": "\ud800"}})
def test_decoded_notifications_with_wild_values_reject_or_convert(name, notification):
    """Dicts (not JSON): ints past 64 bits, NaN, tuples, int keys, 700 levels deep; distill()."""
    distill_with(name, notification)


@FUZZ
@given(st.sampled_from(sorted(DISTILLERS)), st.integers(250, 1000),
       st.sampled_from(["payload.instance_id", "payload.text", "publisher_id", "_context_request_id",
                        "payload.tenant_id", "payload.display_name", "payload"]))
def test_deep_values_where_traits_are_read_are_dropped_not_raised(name, depth, where):
    """JSON nested up to orjson's limit, exactly where a text trait is read."""
    mark = b'"DEEP"'
    notification = {"event_type": "compute.instance.update", "message_id": "m-deep",
                    "timestamp": "2014-08-01T00:00:00", "payload": {"instance_id": "i"}}
    head, _, leaf = where.rpartition(".")
    (notification[head] if head else notification)[leaf] = "DEEP"
    raw = orjson.dumps(notification).replace(
        mark, b'{"d":[' * (depth // 2) + b"1" + b"]}" * (depth // 2))
    distill_with(name, raw)


@FUZZ
@given(st.binary(max_size=300) | mutated() | notifications(JSON_VALUES, PAYLOADS).map(orjson.dumps))
def test_the_persistors_archive_row_never_raises(raw):
    """Whatever the broker delivers becomes an archive row (a failure would stall the persistor)."""
    now = datetime(2026, 1, 1)
    row = archive_row(raw, now)
    assert row["body"] == raw and row["received_at"] == now
    assert row["status"] in ("archived", "rejected")
    if row["status"] == "rejected":
        assert row["reason"].split(":")[0] in REASONS
    for key in ("message_id", "event_type", "publisher_id"):
        assert row.get(key) is None or (isinstance(row[key], str) and "\x00" not in row[key])
    try:
        decoded = decode_notification(raw)
        read_envelope(decoded)
    except NotificationRejected:
        assert row["status"] == "rejected"
    else:
        assert row["status"] == "archived" and isinstance(row["generated"], datetime)


# -- time expressions -----------------------------------------------------------------------------

GRAMMAR = "$()+-@ tohdaymnrsu0123456789_xabl"
ANY_VARIABLE_VALUE = st.one_of(
    st.datetimes(), st.datetimes(timezones=st.just(timezone(timedelta(hours=14)))),
    st.none(), st.text(max_size=10), st.integers(), st.floats(), st.booleans(),
    st.builds(lambda begin, length: TimeRange(begin, begin + length),
              st.datetimes(max_value=datetime(9000, 1, 1)),
              st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=400))),
)


@st.composite
def parsable_text(draw) -> str:
    """Text in the language's alphabet that parses (grammar-like noise, filtered), or big numbers."""
    if draw(st.booleans()):
        number = draw(st.integers(0, 10**30))
        unit = draw(st.sampled_from(["y", "mo", "d", "h", "m", "s", "us"]))
        head = draw(st.sampled_from(["$t", "$timestamp", "day", "month($t)", "year", "hour($x)"]))
        return f"{head} {draw(st.sampled_from(['+', '-', '@']))} {number}{unit}"
    text = draw(st.text(alphabet=GRAMMAR, min_size=1, max_size=30))
    try:
        parse(text)
    except TimexSyntaxError:
        assume(False)
    return text


@FUZZ
@given(parsable_text(), st.dictionaries(st.sampled_from(["t", "x", "a", "first", "last", "timestamp"]),
                                        ANY_VARIABLE_VALUE, max_size=6),
       st.none() | st.datetimes())
def test_an_expression_that_parses_evaluates_or_raises_only_evaluation_errors(text, variables, now):
    """With variables of any type (criteria pass the event's traits): a value or TimexEvaluationError."""
    try:
        expression = parse(text)
    except TimexSyntaxError:
        return  # the big-number form can be refused at parse time, with its position
    try:
        result = expression.evaluate(variables, now)
    except TimexEvaluationError:
        return
    assert isinstance(result, (Timestamp, TimeRange))
    probe = now or datetime(2014, 8, 1)
    assert isinstance(probe in result, bool)


# -- triggers ------------------------------------------------------------------------------------

EXPRESSIONS = ["day", "hour", "month", "year", "$timestamp", "$timestamp - 1d",
               "$when + 1d", "$when - 1y", "day($when)", "$when @ 0h 0m 0s", "$when to $other",
               "($when + 1d) @ 0h", "month($other) + 1mo", "$last + 1h", "$missing + 1h",
               "year($when) - 9998y", "$when + 9999y", "hour @ 30m", "$other + 12mo"]
TRAIT_NAMES = ["x", "y", "when", "other", "instance_id", "state"]
TRAIT_SPECS = st.one_of(
    st.text(max_size=8), st.integers(-5, 5), st.floats(allow_nan=False, width=32),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.fixed_dictionaries({}, optional={
        "int": st.sampled_from(["> 3", "<= -1", "!= 0", "5"]),
        "float": st.sampled_from(["> 0.5", "< 1e300", "= 2"]),
        "numeric": st.sampled_from([">= 0", "< 10"]),
        "text": st.text(max_size=5), "string": st.text(max_size=5),
        "datetime": st.sampled_from(EXPRESSIONS)}),
)
CRITERIA = st.fixed_dictionaries({}, optional={
    "event_type": st.lists(st.sampled_from(["*", "compute.*", "!compute.instance.exists",
                                             "a.b", "?.*", "[ab]*"]), min_size=1, max_size=3),
    "timestamp": st.sampled_from(EXPRESSIONS),
    "traits": st.dictionaries(st.sampled_from(TRAIT_NAMES), TRAIT_SPECS, max_size=3),
    "number": st.integers(1, 3),
    "map_distinguished_by": st.dictionaries(st.sampled_from(["x", "when"]),
                                            st.sampled_from(TRAIT_NAMES), max_size=1),
})
DISTINGUISHED_BY = st.lists(st.one_of(
    st.sampled_from(TRAIT_NAMES),
    st.builds(lambda name, text: {name: text}, st.sampled_from(["timestamp", "when", "other"]),
              st.sampled_from(EXPRESSIONS))), max_size=3)
TRIGGERS = st.builds(lambda distinguished, match, fire, expiration: [{
    "name": "fuzzed", "distinguished_by": distinguished, "expiration": expiration,
    "fire_pipeline": "p", "expire_pipeline": "q", "match_criteria": match, "fire_criteria": fire}],
    DISTINGUISHED_BY, st.lists(CRITERIA, min_size=1, max_size=3), st.lists(CRITERIA, max_size=3),
    st.sampled_from(["$last + 1h", "$first + 1d", "$last + 9999y", "$first - 9999y",
                     "($last + 1d) @ 0h", "day($last) + 1d", "$timestamp + 1h", "month($first)"]))
EDGE_DATETIMES = st.one_of(
    st.datetimes(),
    st.sampled_from([datetime.min, datetime.max, datetime(9999, 12, 31, 23), datetime(1, 1, 1, 1)]))
TRAIT_VALUES = st.one_of(
    st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=8), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), EDGE_DATETIMES)
EVENTS = st.builds(
    lambda event_type, timestamp, traits: make_event({
        "message_id": "m-1", "event_type": event_type, "timestamp": timestamp, **traits}),
    st.sampled_from(["compute.instance.update", "compute.instance.exists", "a.b", "x"]),
    EDGE_DATETIMES,
    st.dictionaries(st.sampled_from(TRAIT_NAMES + ["audit_period_beginning", "audit_period_ending",
                                                   "launched_at", "deleted_at"]),
                    TRAIT_VALUES, max_size=6))


def exercise(trigger, event) -> None:
    """Everything ingest, explain and the dashboard ask of a trigger about an event: no exception."""
    match = trigger.match(event)
    increments = trigger.fire_increments(event)
    assert len(increments) == len(trigger.fire_criteria) and set(increments) <= {0, 1}
    assert isinstance(trigger.is_ready(increments), bool)
    assert isinstance(trigger.explain(event), str)
    for criterion in (*trigger.match_criteria, *trigger.fire_criteria):
        diagnosis = criterion.diagnose(event)
        assert isinstance(diagnosis, Diagnosis)
        assert diagnosis.matches == criterion.matches(event)
        assert isinstance(criterion.describe(), str) and isinstance(criterion.explain(event), str)
    if match is not None:
        key = distinguishing_key(trigger.name, match.distinguishing)
        assert key.isascii() and len(key) <= 255
        assert match.key == key
        for first, last in ((event["timestamp"], event["timestamp"]),
                            (datetime.min, datetime.max)):
            try:
                assert isinstance(trigger.expire_time(first, last, event["timestamp"]), datetime)
            except TimexEvaluationError:
                pass


@FUZZ
@given(TRIGGERS, st.lists(EVENTS, min_size=1, max_size=4))
def test_generated_triggers_never_raise_on_arbitrary_events(data, events):
    try:
        trigger = load_triggers(data, "triggers.yaml").by_name["fuzzed"]
    except ConfigError as error:
        assert all(p.file == "triggers.yaml" and p.where.startswith("trigger 'fuzzed'")
                   for p in error.problems), error
        return
    for event in events:
        exercise(trigger, event)


EXAMPLE_TRIGGERS = load_triggers(parse_yaml((ROOT / "etc" / "triggers.yaml").read_text(),
                                            "triggers.yaml")[0], "triggers.yaml")


@FUZZ
@given(EVENTS)
def test_the_example_triggers_never_raise_at_the_edges_of_time(event):
    """The usage audit's day streams and its `$audit_period_beginning + 1d` on datetime.min/max."""
    for trigger in EXAMPLE_TRIGGERS:
        exercise(trigger, event)
    assert isinstance(EXAMPLE_TRIGGERS.matches(event), list)
