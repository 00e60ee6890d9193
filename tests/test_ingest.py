"""Ingest with the example usage-audit configuration, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from winchester.cli import main
from winchester.clock import EventClock, FixedClock
from winchester.config import build_distiller, load_settings, load_trigger_definitions, open_store
from winchester.services.ingest import Ingester
from winchester.store import SchemaError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "etc" / "winchester.yaml"
DAY1 = datetime(2014, 8, 1)


def nova(event_type, instance, when, message_id=None, **payload):
    """A legacy nova notification as the example definitions expect it."""
    return {"event_type": event_type, "message_id": message_id or str(uuid.uuid4()),
            "timestamp": when.isoformat(sep=" "), "publisher_id": "compute.host-1",
            "_context_request_id": "req-1",
            "payload": {"instance_id": instance, "tenant_id": "t-1", "state": "active", **payload}}


def exists(instance, day, sent_after=timedelta(minutes=5), **payload):
    return nova("compute.instance.exists", instance, day + timedelta(days=1) + sent_after,
                audit_period_beginning=day.isoformat(sep=" "),
                audit_period_ending=(day + timedelta(days=1)).isoformat(sep=" "), **payload)


@pytest.fixture
def settings(migrated_url):
    return load_settings(CONFIG, environ={"WINCHESTER_DATABASE_URL": migrated_url})


@pytest.fixture
def ingester(settings):
    triggers = load_trigger_definitions(settings)
    store = open_store(settings, triggers)
    yield Ingester(store, triggers, build_distiller(settings), EventClock())
    store.close()


def streams_by_instance(store):
    result = {}
    for stream in store.list_streams():
        result.setdefault(stream.distinguishing_traits["instance_id"], []).append(stream)
    return result


def test_one_stream_per_instance_per_day_fired_by_its_exists(ingester):
    """Lifecycle events group per instance and UTC day; the .exists joins its audit day and fires it."""
    outcome = ingester.add_notifications([
        nova("compute.instance.create.start", "i-a", DAY1 + timedelta(hours=1)),
        nova("compute.instance.create.end", "i-a", DAY1 + timedelta(hours=1, minutes=2)),
        nova("compute.instance.update", "i-b", DAY1 + timedelta(hours=3)),
        nova("compute.instance.update", "i-a", DAY1 + timedelta(days=1, hours=3)),
        exists("i-a", DAY1),
    ])
    assert outcome.stored.saved == 5 and not outcome.rejected
    store = ingester.store
    by_instance = streams_by_instance(store)
    day1, day2 = sorted(by_instance["i-a"], key=lambda s: s.first_event)
    assert day1.distinguishing_traits["timestamp"].begin == DAY1
    assert [e["event_type"] for e in store.stream_events(day1.id)] == [
        "compute.instance.create.start", "compute.instance.create.end", "compute.instance.exists"]
    assert day1.fire_timestamp is not None and day2.fire_timestamp is None
    assert [e["event_type"] for e in store.stream_events(day2.id)] == ["compute.instance.update"]
    assert len(by_instance["i-b"]) == 1 and by_instance["i-b"][0].fire_timestamp is None
    assert ingester.stats.ready["usage_audit"] == 1
    assert ingester.stats.new_streams["usage_audit"] == 3


def test_exists_that_is_not_end_of_day_does_not_fire(ingester):
    """An .exists whose audit period is not a whole day joins the stream but does not fire it."""
    partial = nova("compute.instance.exists", "i-a", DAY1 + timedelta(hours=12),
                   audit_period_beginning=DAY1.isoformat(sep=" "),
                   audit_period_ending=(DAY1 + timedelta(hours=12)).isoformat(sep=" "))
    ingester.add_notifications([nova("compute.instance.update", "i-a", DAY1 + timedelta(hours=1)),
                                partial])
    [stream] = ingester.store.list_streams()
    assert stream.event_count == 2 and stream.fire_timestamp is None


def test_duplicates_are_counted_and_join_no_stream_twice(ingester):
    """Ingesting the same notifications again stores nothing and changes no stream."""
    batch = [nova("compute.instance.update", "i-a", DAY1 + timedelta(hours=h), message_id=f"m-{h}")
             for h in range(3)]
    ingester.add_notifications(batch)
    again = ingester.add_notifications(list(reversed(batch)))
    assert again.stored.saved == 0 and len(again.stored.duplicates) == 3
    [stream] = ingester.store.list_streams()
    assert stream.event_count == 3 and len(ingester.store.stream_events(stream.id)) == 3
    assert ingester.stats.duplicates == 3


def test_event_without_distinguishing_trait_joins_no_stream(ingester):
    """A matching event type without instance_id is stored but starts no stream."""
    notification = nova("compute.instance.update", "i-a", DAY1)
    del notification["payload"]["instance_id"]
    outcome = ingester.add_notifications([notification])
    assert outcome.stored.saved == 1
    assert ingester.store.list_streams() == []


def test_rejected_and_unconverted_notifications_are_reported(ingester):
    """Malformed notifications come back with a reason; unmatched ones are counted."""
    outcome = ingester.add_notifications([
        b"not json", b'{"event_type": "x"}', orjson.dumps(nova("image.upload", "i", DAY1)),
        orjson.dumps(nova("compute.instance.update", "i-a", DAY1)),
    ])
    assert [r.reason for r in outcome.rejected] == ["not_json", "no_message_id"]
    assert outcome.unconverted == 1 and outcome.stored.saved == 1
    assert ingester.stats.rejected == {"not_json": 1, "no_message_id": 1}


def test_wall_clock_expires_old_streams_event_clock_does_not(settings):
    """With real time as now, week-old events each start a new stream; with event time they group."""
    triggers = load_trigger_definitions(settings)
    store = open_store(settings, triggers)
    try:
        notifications = [nova("compute.instance.update", "i-a", DAY1 + timedelta(hours=h))
                         for h in range(3)]
        wall = Ingester(store, triggers, build_distiller(settings), FixedClock(DAY1 + timedelta(days=30)))
        wall.add_notifications(notifications[:2])
        assert store.count_streams() == 2  # each event found the previous stream already expired
        event_time = Ingester(store, triggers, build_distiller(settings), EventClock())
        event_time.add_notifications([nova("compute.instance.update", "i-c", DAY1 + timedelta(hours=h))
                                      for h in range(3)])
        assert len(streams_by_instance(store)["i-c"]) == 1
    finally:
        store.close()


def test_fire_delay_postpones_the_fire_time(tmp_path, migrated_url):
    """fire_delay adds its seconds to the time the stream became ready."""
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("winchester.yaml", "pipelines.yaml", "event_definitions.yaml"):
        (etc / name).write_text((ROOT / "etc" / name).read_text())
    (etc / "triggers.yaml").write_text((ROOT / "etc" / "triggers.yaml").read_text().replace(
        "  expiration:", "  fire_delay: 300\n  expiration:"))
    settings = load_settings(etc / "winchester.yaml", environ={"WINCHESTER_DATABASE_URL": migrated_url})
    triggers = load_trigger_definitions(settings)
    store = open_store(settings, triggers)
    try:
        Ingester(store, triggers, build_distiller(settings), EventClock(max_skew=timedelta(days=7))).add_notifications(
            [nova("compute.instance.update", "i-a", DAY1), exists("i-a", DAY1)])
        [stream] = store.list_streams()
        assert stream.fire_timestamp == DAY1 + timedelta(days=1, minutes=5, seconds=300)
    finally:
        store.close()


def test_older_event_moves_the_stream_start(ingester):
    """An event older than the stream's first event joins it and becomes its first."""
    ingester.add_notifications([nova("compute.instance.update", "i-a", DAY1 + timedelta(hours=5))])
    ingester.add_notifications([nova("compute.instance.update", "i-a", DAY1 + timedelta(hours=1))])
    [stream] = ingester.store.list_streams()
    assert stream.first_event == DAY1 + timedelta(hours=1) and stream.event_count == 2
    assert stream.expire_timestamp == DAY1 + timedelta(hours=5, days=2)


def test_services_refuse_an_unmigrated_database(database_url):
    """open_store refuses a database without the schema and names the command to run."""
    settings = load_settings(CONFIG, environ={"WINCHESTER_DATABASE_URL": database_url})
    with pytest.raises(SchemaError, match="winchester db upgrade -c"):
        open_store(settings)


# --- command line ----------------------------------------------------------------------


def run_cli(*args, env=None):
    return CliRunner().invoke(main, list(args), catch_exceptions=False, env=env)


HEAD = "0006"


def test_db_commands_manage_the_schema(database_url):
    """db upgrade / current / history / downgrade / stamp work against a configured database."""
    env = {"WINCHESTER_DATABASE_URL": database_url}
    config = str(CONFIG)
    assert run_cli("db", "current", "-c", config, env=env).exit_code == 1
    result = run_cli("db", "upgrade", "-c", config, env=env)
    assert result.exit_code == 0 and f"schema upgraded from nothing to {HEAD}" in result.output
    assert run_cli("db", "current", "-c", config, env=env).output.strip() == f"{HEAD} (head)"
    history = run_cli("db", "history", "-c", config, env=env).output
    assert all(step in history for step in ("base -> 0001", "0001 -> 0002", "0002 -> 0003",
                                            "0003 -> 0004", "0004 -> 0005", f"0005 -> {HEAD}"))
    assert "downgraded to 0001" in run_cli("db", "downgrade", "0001", "-c", config, env=env).output
    assert "downgraded to nothing" in run_cli("db", "downgrade", "base", "-c", config, env=env).output
    assert f"stamped at {HEAD}" in run_cli("db", "stamp", "head", "-c", config, env=env).output


def test_db_index_traits_fills_in_a_trait_indexed_after_events_were_stored(tmp_path, database_url):
    """`db index-traits`: after tenant_id joins indexed_traits, it adds the index rows of the
    events stored before, with a progress bar, and then has nothing left to do."""
    env = {"WINCHESTER_DATABASE_URL": database_url}
    assert run_cli("db", "upgrade", "-c", str(CONFIG), env=env).exit_code == 0
    settings = load_settings(CONFIG, environ=env)
    triggers = load_trigger_definitions(settings)
    store = open_store(settings, triggers)
    try:
        Ingester(store, triggers, build_distiller(settings), FixedClock(DAY1)).add_notifications(
            [orjson.dumps(nova("compute.instance.update", f"i-{n}", DAY1 + timedelta(minutes=n)))
             for n in range(3)])
    finally:
        store.close()
    config = tmp_path / "winchester.yaml"
    for name in ("event_definitions.yaml", "triggers.yaml", "pipelines.yaml"):
        shutil.copy(CONFIG.parent / name, tmp_path / name)
    config.write_text(CONFIG.read_text() + "\nindexed_traits: [instance_id, tenant_id]\n")
    result = run_cli("db", "index-traits", "-c", str(config), "--quiet", env=env)
    assert result.exit_code == 0, result.output
    assert "tenant_id: 3 index row(s) added, for the events stored without them" in result.output
    result = run_cli("db", "index-traits", "-c", str(config), env=env)
    assert "nothing to do" in result.output
    result = run_cli("db", "index-traits", "-c", str(config), "--name", "flavor", env=env)
    assert result.exit_code == 2 and "not an indexed trait: flavor" in result.output


def test_migration_0005_rewrites_open_stream_keys_both_ways(database_url):
    """Open streams keep getting their events across the key-order change, up and down."""
    from winchester.store import create_engine, downgrade, upgrade
    from winchester.triggers import distinguishing_from_json, distinguishing_key

    engine = create_engine(database_url)
    upgrade(engine)
    settings = load_settings(CONFIG, environ={"WINCHESTER_DATABASE_URL": database_url})
    triggers = load_trigger_definitions(settings)

    def ingest(*notifications):
        store = open_store(settings, triggers)
        try:
            Ingester(store, triggers, build_distiller(settings), FixedClock(DAY1 + timedelta(hours=6))
                     ).add_notifications([orjson.dumps(n) for n in notifications])
            return {s.distinguishing_traits["instance_id"]: s for s in store.list_streams()}
        finally:
            store.close()

    def keys(ranges_first):
        with engine.connect() as connection:
            rows = connection.exec_driver_sql(
                "SELECT trigger_name, distinguishing_traits, open_key, dist_key FROM streams "
                "ORDER BY id").all()
        for trigger_name, traits, open_key, dist_key in rows:
            expected = distinguishing_key(trigger_name, distinguishing_from_json(orjson.loads(traits)),
                                          ranges_first=ranges_first)
            assert open_key == dist_key == expected
        return [row[2] for row in rows]

    try:
        ingest(nova("compute.instance.update", "i-1", DAY1 + timedelta(hours=1)),
               nova("compute.instance.update", "i-2", DAY1 + timedelta(hours=2)))
        new_keys = keys(ranges_first=True)
        assert all(key.startswith('["usage_audit","timestamp","r:') for key in new_keys)
        downgrade(engine, "0004")
        assert all(key.startswith('["usage_audit","instance_id","s:') for key in keys(False))
        upgrade(engine)
        assert keys(ranges_first=True) == new_keys
        streams = ingest(nova("compute.instance.update", "i-1", DAY1 + timedelta(hours=3)))
        assert len(streams) == 2 and streams["i-1"].event_count == 2  # joined, not a new stream
    finally:
        engine.dispose()


def test_db_upgrade_sql_prints_instead_of_running(tmp_path):
    """`db upgrade --sql` prints the DDL and leaves the database untouched."""
    env = {"WINCHESTER_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}"}
    result = run_cli("db", "upgrade", "--sql", "-c", str(CONFIG), env=env)
    assert result.exit_code == 0 and "CREATE TABLE events" in result.output
    assert not (tmp_path / "w.db").exists()


def test_original_winchester_db_command_line(tmp_path):
    """`winchester_db -c winchester.yaml upgrade head`, the original syntax, works."""
    script = Path(sys.executable).parent / "winchester_db"
    env = {**os.environ, "WINCHESTER_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}"}
    result = subprocess.run([str(script), "-c", str(CONFIG), "upgrade", "head"],
                            capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert f"schema upgraded from nothing to {HEAD}" in result.stdout


def test_ingest_file_command(tmp_path, migrated_url):
    """`winchester ingest-file` ingests a capture, keeps rejected lines and prints a summary."""
    capture = tmp_path / "capture.jsonl"
    lines = [orjson.dumps(nova("compute.instance.update", "i-a", DAY1 + timedelta(hours=h)))
             for h in range(4)]
    lines += [orjson.dumps(exists("i-a", DAY1)), b"{broken"]
    capture.write_bytes(b"\n".join(lines) + b"\n")
    env = {"WINCHESTER_DATABASE_URL": migrated_url}
    result = run_cli("ingest-file", "-c", str(CONFIG), str(capture), "--clock", "event", "--quiet",
                     env=env)
    assert result.exit_code == 0, result.output
    assert "ingested 6 notifications" in result.output
    assert "5 saved, 0 duplicates, 0 unconverted, 1 rejected (not_json: 1)" in result.output
    assert f"{capture}:6: rejected (not_json)" in result.output
    assert "usage_audit" in result.output
    settings = load_settings(CONFIG, environ=env)
    store = open_store(settings)
    try:
        assert store.count_dead_letters() == 1
        [stream] = store.list_streams()
        assert stream.event_count == 5 and stream.fire_timestamp is not None
    finally:
        store.close()


def test_ingest_file_refuses_unmigrated_database(tmp_path):
    """ingest-file on a database without schema exits 2 naming `winchester db upgrade`."""
    env = {"WINCHESTER_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}"}
    result = run_cli("ingest-file", "-c", str(CONFIG), "-", env=env)
    assert result.exit_code == 2 and "winchester db upgrade" in result.output


# --- two ingest processes at once (PostgreSQL) ---------------------------------------------


@pytest.mark.postgres
def test_two_ingest_processes_never_duplicate_streams_or_lose_events(tmp_path, postgres_url):
    """Two real processes ingesting overlapping input concurrently create one stream per key, lose nothing."""
    now = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    notifications = [nova("compute.instance.update", f"i-{i % 40}", now - timedelta(seconds=i),
                          message_id=f"m-{i}") for i in range(4000)]
    first = tmp_path / "first.jsonl"
    second = tmp_path / "second.jsonl"
    # Same messages, different orders and batch boundaries: maximum contention.
    first.write_bytes(b"\n".join(orjson.dumps(n) for n in notifications))
    second.write_bytes(b"\n".join(orjson.dumps(n) for n in reversed(notifications)))
    url = postgres_url
    env = {**os.environ, "WINCHESTER_DATABASE_URL": url}
    script = str(Path(sys.executable).parent / "winchester")
    subprocess.run([script, "db", "upgrade", "-c", str(CONFIG)], env=env, check=True,
                   capture_output=True)
    processes = [subprocess.Popen([script, "ingest-file", "-c", str(CONFIG), str(path),
                                   "--quiet", "--batch-size", str(size)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for path, size in ((first, 100), (second, 37))]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (_out, err) in zip(processes, outputs):
        assert process.returncode == 0, err.decode()
    settings = load_settings(CONFIG, environ={"WINCHESTER_DATABASE_URL": url})
    store = open_store(settings)
    try:
        assert store.count_events() == 4000
        streams = store.list_streams()
        keys = [(s.trigger_name, s.distinguishing_traits["instance_id"],
                 s.distinguishing_traits["timestamp"]) for s in streams]
        assert len(keys) == len(set(keys)), "two streams for the same trigger and traits"
        assert sum(s.event_count for s in streams) == 4000
        members = sum(len(store.stream_events(s.id)) for s in streams)
        assert members == 4000
    finally:
        store.close()


def test_overlong_identifiers_are_rejected_not_fatal(ingester):
    """A message_id or event_type too long for the store is rejected alone; the batch is stored."""
    outcome = ingester.add_notifications([
        nova("compute.instance.update", "i-a", DAY1, message_id="m" * 300),
        nova("compute.instance." + "x" * 300, "i-a", DAY1),
        nova("compute.instance.update", "i-a", DAY1 + timedelta(hours=1)),
    ])
    assert [r.reason for r in outcome.rejected] == ["bad_identifier", "bad_identifier"]
    assert outcome.stored.saved == 1


def test_db_command_reports_errors_in_one_line(tmp_path):
    """A bad revision gives a one-line error and exit status 1, not a traceback."""
    env = {"WINCHESTER_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}"}
    result = run_cli("db", "upgrade", "nosuch", "-c", str(CONFIG), env=env)
    assert result.exit_code == 1
    assert "error: Can't locate revision identified by 'nosuch'" in result.output
    assert "Traceback" not in result.output


def test_ingest_file_keeps_rejected_lines_with_their_own_line_numbers(tmp_path, migrated_url):
    """With --unwrap, rejected lines that unwrap to the same value keep their own line numbers."""
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(b'{"n": null}\n{"n": null}\n' + orjson.dumps(
        {"n": nova("compute.instance.update", "i-a", DAY1)}) + b"\n")
    env = {"WINCHESTER_DATABASE_URL": migrated_url}
    result = run_cli("ingest-file", "-c", str(CONFIG), str(capture), "--unwrap", "n", "--quiet",
                     env=env)
    assert result.exit_code == 0, result.output
    assert f"{capture}:1: rejected" in result.output and f"{capture}:2: rejected" in result.output
    assert "1 saved" in result.output
