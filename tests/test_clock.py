"""The clocks: wall time, event time (shared through the store), skew, and the settings behind them."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from winchester.clock import (
    AHEAD,
    LATE,
    ON_TIME,
    SHARED_EVENT_CLOCK,
    EventClock,
    WallClock,
    clock_from_settings,
    utc_now,
)
from winchester.config import load_settings, settings_from_mapping
from winchester.errors import ConfigError
from winchester.store import Store

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2015, 2, 1, 12, 0)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)


# -- event time ------------------------------------------------------------------------------


def test_event_time_is_the_newest_event_and_never_goes_back():
    """now() follows the newest timestamp observed; an older event does not move it back."""
    clock = EventClock()
    assert clock.observe(T0) == ON_TIME and clock.now() == T0
    assert clock.observe(T0 + timedelta(minutes=5)) == ON_TIME
    assert clock.observe(T0 + timedelta(minutes=1)) == ON_TIME
    assert clock.now() == T0 + timedelta(minutes=5)


def test_an_event_far_behind_the_clock_is_late_but_changes_nothing():
    """Older than max_skew behind event time: counted as late; time stays."""
    clock = EventClock(T0, max_skew=HOUR)
    assert clock.observe(T0 - 2 * HOUR) == LATE
    assert clock.now() == T0


def test_one_wrongly_stamped_event_does_not_move_time():
    """An event stamped further ahead than max_skew is 'ahead' and leaves event time alone."""
    clock = EventClock(T0, max_skew=HOUR)
    assert clock.observe(T0 + timedelta(days=365)) == AHEAD
    assert clock.now() == T0
    assert clock.observe(T0 + timedelta(minutes=10)) == ON_TIME
    assert clock.now() == T0 + timedelta(minutes=10)


def test_a_second_event_confirms_a_real_jump_in_time():
    """A quiet night is a real gap: the second event near the far-ahead one moves time to them."""
    clock = EventClock(T0, max_skew=HOUR)
    assert clock.observe(T0 + 5 * HOUR) == AHEAD
    assert clock.observe(T0 + 5 * HOUR + timedelta(minutes=3)) == ON_TIME
    assert clock.now() == T0 + 5 * HOUR


def test_before_any_event_event_time_reads_wall_time_and_the_first_event_sets_it():
    """An unset event clock answers real time; the first event sets it whatever its timestamp."""
    clock = EventClock()
    assert not clock.is_set and abs(clock.now() - utc_now()) < timedelta(minutes=1)
    assert clock.observe(datetime(2001, 1, 1)) == ON_TIME
    assert clock.now() == datetime(2001, 1, 1)


@given(st.lists(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1)),
                min_size=1, max_size=60),
       st.integers(min_value=1, max_value=48))
def test_event_time_never_goes_back_and_never_passes_what_was_seen(stamps, skew_hours):
    """Whatever the timestamps: time is monotonic, and always one of the timestamps observed."""
    clock = EventClock(max_skew=timedelta(hours=skew_hours))
    readings = []
    for stamp in stamps:
        clock.observe(stamp)
        readings.append(clock.now())
    assert readings == sorted(readings)
    assert set(readings) <= set(stamps)
    assert readings[-1] <= max(stamps)


def test_wall_clock_judges_events_against_real_time():
    """With wall time an event stamped over max_skew in the future is ahead; one far in the past, late."""
    clock = WallClock(max_skew=HOUR)
    now = utc_now()
    assert clock.observe(now) == ON_TIME
    assert clock.observe(now + 3 * HOUR) == AHEAD
    assert clock.observe(now - 3 * HOUR) == LATE


# -- the shared clock ------------------------------------------------------------------------


@pytest.fixture
def store(migrated_url):
    store = Store.from_url(migrated_url)
    yield store
    store.close()


def test_the_shared_clock_only_moves_forward_in_the_store(store):
    """advance_clock keeps the later of the stored and the given time; read_clock returns it."""
    assert store.read_clock(SHARED_EVENT_CLOCK) is None
    assert store.advance_clock(SHARED_EVENT_CLOCK, T0) == T0
    assert store.advance_clock(SHARED_EVENT_CLOCK, T0 - HOUR) == T0
    assert store.advance_clock(SHARED_EVENT_CLOCK, T0 + HOUR) == T0 + HOUR
    assert store.read_clock(SHARED_EVENT_CLOCK) == T0 + HOUR


def test_two_event_clocks_on_one_store_share_time(store):
    """A second process's clock (another EventClock on the store) sees what the first wrote."""
    writer = EventClock(reader=lambda: store.read_clock(SHARED_EVENT_CLOCK))
    reader = EventClock(reader=lambda: store.read_clock(SHARED_EVENT_CLOCK))
    writer.observe(T0)
    store.advance_clock(SHARED_EVENT_CLOCK, writer.now())
    assert not reader.is_set
    reader.refresh()
    assert reader.now() == T0
    # A clock that is ahead is not pulled back by an older shared value.
    writer.observe(T0 + HOUR)
    writer.refresh()
    assert writer.now() == T0 + HOUR


def test_a_batch_moves_the_shared_clock_only_as_far_as_its_own_events(migrated_url):
    """Committing a batch while the next is already prepared (pipelined ingest) must not
    publish the next batch's event time before its events are stored."""
    from winchester.config import build_distiller, load_trigger_definitions, open_store
    from winchester.services.ingest import Ingester

    settings = load_settings(ROOT / "etc" / "winchester.yaml",
                             environ={"WINCHESTER_DATABASE_URL": migrated_url})
    triggers = load_trigger_definitions(settings)
    store = open_store(settings, triggers)
    try:
        clock = EventClock(reader=lambda: store.read_clock(SHARED_EVENT_CLOCK))
        ingester = Ingester(store, triggers, build_distiller(settings), clock)
        first = ingester.prepare([_notification("i-1", T0), _notification("i-1", T0 + 10 * MINUTE)])
        second = ingester.prepare([_notification("i-2", T0 + 40 * MINUTE)])
        ingester.commit(first)
        assert store.read_clock(SHARED_EVENT_CLOCK) == T0 + 10 * MINUTE
        ingester.commit(second)
        assert store.read_clock(SHARED_EVENT_CLOCK) == T0 + 40 * MINUTE
    finally:
        store.close()


def _notification(instance: str, when: datetime) -> bytes:
    return orjson.dumps({
        "event_type": "compute.instance.update", "message_id": str(uuid.uuid4()),
        "timestamp": when.isoformat(sep=" "), "publisher_id": "compute.host-1",
        "payload": {"instance_id": instance, "tenant_id": "t-1", "state": "active"}})


def _event_clock_config(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("pipelines.yaml", "event_definitions.yaml", "triggers.yaml"):
        (etc / name).write_text((ROOT / "etc" / name).read_text())
    (etc / "winchester.yaml").write_text((ROOT / "etc" / "winchester.yaml").read_text()
                                         + "\nclock: event\n")
    return etc / "winchester.yaml"


def _winchester(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "winchester", *args], capture_output=True,
                          text=True, env=env, timeout=120, check=False)


def test_the_event_clock_is_shared_between_processes(tmp_path, migrated_url):
    """Two ingest processes move one event time (never back); a worker process fires by it."""
    import os

    config = _event_clock_config(tmp_path)
    env = {**os.environ, "WINCHESTER_DATABASE_URL": migrated_url}
    early = tmp_path / "early.jsonl"
    early.write_bytes(b"\n".join(_notification("i-a", T0 + timedelta(minutes=m)) for m in range(3)))
    # Three days on: two events, so the jump is believed (one alone would be "ahead").
    late = tmp_path / "late.jsonl"
    late.write_bytes(b"\n".join(_notification("i-b", T0 + timedelta(days=3, minutes=m))
                                for m in range(2)))
    older = tmp_path / "older.jsonl"
    older.write_bytes(_notification("i-c", T0 + timedelta(days=1, hours=1)) + b"\n")

    for capture in (early, late, older):
        result = _winchester("ingest-file", "-c", str(config), str(capture), "--quiet", env=env)
        assert result.returncode == 0, result.stderr
    store = Store.from_url(migrated_url)
    try:
        assert store.read_clock(SHARED_EVENT_CLOCK) == T0 + timedelta(days=3)
        # The worker has no --now: it reads event time from the store. i-a's stream
        # ($last + 2d) is due by it; i-b's and i-c's are not.
        result = _winchester("worker", "-c", str(config), "--once", env=env)
        assert result.returncode == 0, result.stderr
        states = {s.distinguishing_traits["instance_id"]: s.state for s in store.list_streams()}
        assert states == {"i-b": "active", "i-c": "active"}, states
    finally:
        store.close()


# -- settings --------------------------------------------------------------------------------


def _settings(tmp_path: Path, text: str):
    path = tmp_path / "winchester.yaml"
    path.write_text("distiller_config: d.yaml\ntrigger_definitions: t.yaml\n"
                    "pipeline_config: p.yaml\n" + text)
    return load_settings(path)


def test_clock_settings_take_durations(tmp_path):
    """clock, clock_max_skew and late_event_grace read seconds or durations such as 1h30m."""
    settings = _settings(tmp_path, "clock: event\nclock_max_skew: 1h30m\nlate_event_grace: 90s\n")
    assert (settings.clock, settings.clock_max_skew, settings.late_event_grace) == ("event", 5400, 90)
    defaults = _settings(tmp_path, "")
    assert (defaults.clock, defaults.clock_max_skew, defaults.late_event_grace) == ("wall", 3600, 0)


def test_a_bad_clock_setting_names_the_file_key_and_line(tmp_path):
    """An unknown clock or an unreadable duration is refused with where it is."""
    with pytest.raises(ConfigError) as failure:
        _settings(tmp_path, "clock: lunar\nclock_max_skew: soon\n")
    text = "\n".join(str(problem) for problem in failure.value.problems)
    assert "winchester.yaml:4" in text and "clock" in text
    assert "winchester.yaml:5" in text and "clock_max_skew" in text


def test_time_sync_endpoint_selects_the_event_clock_with_one_warning(tmp_path):
    """An old configuration's time-sync service is replaced by the event clock, said once."""
    settings = _settings(tmp_path, "time_sync_endpoint: http://timesync:8080\n")
    assert settings.clock == "event"
    warnings = [str(w) for w in settings.warnings if "time_sync_endpoint" in str(w)]
    assert len(warnings) == 1 and "event clock" in warnings[0]


def test_time_sync_endpoint_does_not_override_an_explicit_wall_clock(tmp_path):
    """clock: wall set beside time_sync_endpoint stays wall time (and the endpoint is ignored, said)."""
    settings = _settings(tmp_path, "clock: wall\ntime_sync_endpoint: http://timesync:8080\n")
    assert settings.clock == "wall"
    assert any("time_sync_endpoint" in str(w) for w in settings.warnings)


def test_clock_from_settings_shares_the_event_clock_through_the_store(store):
    """clock: event with a store gives the shared event clock; wall gives real time."""
    settings = settings_from_mapping({"distiller_config": "d", "trigger_definitions": "t",
                                      "pipeline_config": "p", "clock": "event",
                                      "clock_max_skew": 600}, source=None, environ={}, cwd=ROOT)
    store.advance_clock(SHARED_EVENT_CLOCK, T0)
    clock = clock_from_settings(settings, store)
    assert isinstance(clock, EventClock) and clock.shared and clock.now() == T0
    assert clock.max_skew == timedelta(minutes=10)
    assert isinstance(clock_from_settings(settings, store, "wall"), WallClock)
