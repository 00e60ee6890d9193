"""Replay in event time: equal to the live run, never expiring early, resumable, from every source."""

from __future__ import annotations

import gzip
import itertools
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from winchester.cli import main
from winchester.clock import SHARED_EVENT_CLOCK, EventClock, utc_now
from winchester.config import (
    build_distiller,
    load_pipeline_definitions,
    load_settings,
    load_trigger_definitions,
    open_store,
)
from winchester.services.ingest import Ingester
from winchester.services.intake import archive_row
from winchester.services.replay import Notification, Replayer
from winchester.services.worker import build_worker
from winchester.store import FIRE, Store, create_engine, upgrade

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from workload import Workload, WorkloadSpec  # noqa: E402

GENERATED = ("compute.instance.exists.verified", "compute.instance.exists.failed",
             "compute.instance.exists.warnings")


# -- helpers ---------------------------------------------------------------------------------


def replay_config(tmp_path: Path, name: str = "etc") -> Path:
    """The example configuration, keeping completed streams (so runs can be compared whole)."""
    etc = tmp_path / name
    etc.mkdir()
    for file_name in ("pipelines.yaml", "event_definitions.yaml", "triggers.yaml"):
        (etc / file_name).write_text((ROOT / "etc" / file_name).read_text())
    text = (ROOT / "etc" / "winchester.yaml").read_text()
    text = text.replace("purge_completed_streams: true", "purge_completed_streams: false")
    assert "purge_completed_streams: false" in text
    (etc / "winchester.yaml").write_text(text + "\nclock: event\nlog_level: warning\n")
    return etc / "winchester.yaml"


def workload_file(tmp_path: Path, instances: int = 40, days: int = 4, seed: int = 11,
                  name: str = "capture.jsonl") -> tuple[Path, Workload]:
    workload = Workload(WorkloadSpec(instances=instances, days=days, seed=seed,
                                     broken_fraction=0.1))
    path = tmp_path / name
    path.write_bytes(b"\n".join(workload.lines()) + b"\n")
    return path, workload


def fresh_sqlite(tmp_path: Path, name: str) -> str:
    url = f"sqlite:///{tmp_path / name}.db"
    engine = create_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def state_of(url: str) -> dict:
    """Everything a user sees of a run, without database ids: streams and pipeline outputs."""
    store = Store.from_url(url)
    try:
        streams = []
        for stream in store.list_streams():
            streams.append((
                stream.trigger_name, orjson.dumps(
                    {k: str(v) for k, v in sorted(stream.distinguishing_traits.items())}).decode(),
                stream.state, stream.first_event, stream.last_event, stream.expire_timestamp,
                stream.fire_timestamp, tuple(e["message_id"] for e in store.stream_events(stream.id))))
        outputs = []
        for event_type in GENERATED:
            for event in store.find_events(event_type):
                content = {k: v for k, v in event.items() if k not in ("message_id", "stream_id")}
                outputs.append(orjson.dumps(content, option=orjson.OPT_SORT_KEYS).decode())
        return {"streams": sorted(streams, key=repr), "outputs": sorted(outputs),
                "clock": store.read_clock(SHARED_EVENT_CLOCK), "events": store.count_events()}
    finally:
        store.close()


def winchester(*args: str, env: dict[str, str], **options) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "winchester", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options)


def finished(process: subprocess.Popen, timeout: float = 180) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"exit {process.returncode}\n{out}\n{err}"
    return out + err


def environment(url: str) -> dict[str, str]:
    return {**os.environ, "WINCHESTER_DATABASE_URL": url}


def wait_until_idle(url: str, config: Path, timeout: float = 120) -> None:
    """Until the live worker has nothing due and nothing half-done."""
    settings = load_settings(config, environ={"WINCHESTER_DATABASE_URL": url})
    store = open_store(settings, load_trigger_definitions(settings))
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = store.read_clock(SHARED_EVENT_CLOCK)
            states = store.count_streams_by_state()
            if (now is not None and not states.get("firing") and not states.get("expiring")
                    and not store.count_due_streams(now, utc_now())):
                return
            time.sleep(0.2)
        raise AssertionError(f"the worker did not catch up: {store.count_streams_by_state()}")
    finally:
        store.close()


# -- replay equals live ----------------------------------------------------------------------


@pytest.fixture
def second_url(request, tmp_path, database_url):
    """Another empty database of the same kind as ``database_url``."""
    from tests.conftest import postgres_schema_url

    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'second.db'}"
        return
    with postgres_schema_url() as url:
        yield url


def migrate(url: str) -> str:
    engine = create_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def test_a_fast_replay_builds_what_the_live_run_built(tmp_path, database_url, second_url):
    """Four days delivered at their own pace (compressed) to a separately running worker, and the
    same four days replayed as fast as possible: identical streams, states and pipeline outputs."""
    live_url, fast_url = migrate(database_url), migrate(second_url)
    config = replay_config(tmp_path)
    capture, workload = workload_file(tmp_path, instances=60, days=4)

    worker = winchester("worker", "-c", str(config), "--delay", "0.1", env=environment(live_url))
    try:
        # Four days in about eight seconds, a notification at a time as they come.
        finished(winchester("replay", "-c", str(config), str(capture), "--speed", "43200",
                            "--quiet", env=environment(live_url)))
        wait_until_idle(live_url, config)
    finally:
        worker.send_signal(signal.SIGTERM)
        finished(worker)
    finished(winchester("replay", "-c", str(config), str(capture), "--run-workers", "--quiet",
                        env=environment(fast_url)))

    live, fast = state_of(live_url), state_of(fast_url)
    assert live["events"] == fast["events"] == workload.truth.notifications + len(live["outputs"])
    assert live["clock"] == fast["clock"]
    assert len(live["streams"]) == workload.truth.instance_days
    # Fired streams (a fire time), expired ones (none: their .exists never came) among them.
    completed = [stream for stream in live["streams"] if stream[2] == "completed"]
    assert any(stream[6] is not None for stream in completed)
    assert any(stream[6] is None for stream in completed)
    assert live["outputs"] and any("exists.failed" in output for output in live["outputs"])
    assert live["streams"] == fast["streams"]
    assert live["outputs"] == fast["outputs"]


# -- no early expiry -------------------------------------------------------------------------


def test_no_stream_expires_before_its_time_during_a_fast_replay(tmp_path, migrated_url):
    """Replayed as fast as possible, every stream fires or expires only once event time has
    reached its fire or expiry time, and each instance-day stays one stream."""
    config = replay_config(tmp_path)
    settings = load_settings(config, environ={"WINCHESTER_DATABASE_URL": migrated_url})
    triggers = load_trigger_definitions(settings)
    store = open_store(settings, triggers)
    try:
        clock = EventClock(reader=lambda: store.read_clock(SHARED_EVENT_CLOCK))
        runs = []
        worker = build_worker(settings, store, triggers, load_pipeline_definitions(settings),
                              clock=clock, on_run=lambda stream, events, result, now:
                              runs.append((stream, now)))
        workload = Workload(WorkloadSpec(instances=50, days=5, seed=3, broken_fraction=0.1))
        summary = Replayer(Ingester(store, triggers, build_distiller(settings), clock),
                           worker=worker, batch_size=500).run(
            Notification(line, f"w:{n}") for n, line in enumerate(workload.lines(), 1))
        assert summary.streams_created == workload.truth.instance_days
        fired = [(s, now) for s, now in runs if s.action == FIRE]
        expired = [(s, now) for s, now in runs if s.action != FIRE]
        assert fired and expired
        assert all(stream.fire_timestamp <= now for stream, now in fired)
        assert all(stream.expire_timestamp <= now for stream, now in expired)
        # Expired: exactly the instance-days whose .exists never came (and are two days old).
        assert summary.expired == len(expired)
        assert summary.fired + summary.expired == len(runs)
    finally:
        store.close()


# -- resume ----------------------------------------------------------------------------------


def test_resume_after_a_killed_replay_ends_as_an_uninterrupted_one(tmp_path, database_url,
                                                                   second_url):
    """kill -9 in the middle of a replay, then --resume: the same state as replaying in one go."""
    interrupted_url, whole_url = migrate(database_url), migrate(second_url)
    config = replay_config(tmp_path)
    capture, workload = workload_file(tmp_path, instances=30, days=4)
    total = workload.truth.notifications

    replay = winchester("replay", "-c", str(config), str(capture), "--run-workers", "--batch-size",
                        "25", "--speed", "20000", "--quiet", env=environment(interrupted_url))
    store = Store.from_url(interrupted_url)
    try:
        deadline = time.monotonic() + 120
        while store.count_events() < total // 3 and time.monotonic() < deadline:
            assert replay.poll() is None, "the replay ended before it could be interrupted"
            time.sleep(0.05)
        replay.kill()
        # Its worker process notices and exits too (else it would hold the pipes open).
        replay.communicate(timeout=60)
        stored = store.count_events()
    finally:
        store.close()
    assert 0 < stored < total
    output = finished(winchester("replay", "-c", str(config), str(capture), "--run-workers",
                                 "--resume", "--quiet", env=environment(interrupted_url)))
    assert "already stored (skipped)" in output
    finished(winchester("replay", "-c", str(config), str(capture), "--run-workers", "--quiet",
                        env=environment(whole_url)))
    assert state_of(interrupted_url) == state_of(whole_url)


def test_a_replay_whose_worker_process_is_killed_stops_and_says_so(tmp_path):
    """kill -9 of the worker child (the OOM killer, say): the replay stops with exit 1 and says
    what happened and where to resume, rather than hanging for ever signalling the dead child."""
    def worker_children(pid: int) -> list[int]:
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                command = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in command:
                found.append(int(entry))
        return found

    url = fresh_sqlite(tmp_path, "child-killed")
    config = replay_config(tmp_path)
    capture, workload = workload_file(tmp_path, instances=30, days=4)
    replay = winchester("replay", "-c", str(config), str(capture), "--run-workers", "--batch-size",
                        "25", "--speed", "20000", "--quiet", env=environment(url))
    deadline = time.monotonic() + 60
    children: list = []
    while not children and time.monotonic() < deadline:
        assert replay.poll() is None, "the replay ended before its worker could be killed"
        children = worker_children(replay.pid)
        time.sleep(0.05)
    time.sleep(0.5)  # the child is at work: waiting on its parent's signals, or draining
    for child in children:
        os.kill(child, signal.SIGKILL)
    try:
        out, err = replay.communicate(timeout=60)  # unfixed, it never returned
    finally:
        if replay.poll() is None:
            replay.kill()
    assert replay.returncode == 1, out + err
    assert "the replay's worker process ended early" in err
    assert "run the same command with --resume" in err


def test_a_stopped_replay_says_where_it_got_to(tmp_path):
    """stop() ends the replay after the batch in hand; the summary names the last committed line."""
    url = fresh_sqlite(tmp_path, "stopped")
    settings = load_settings(replay_config(tmp_path), environ={"WINCHESTER_DATABASE_URL": url})
    triggers = load_trigger_definitions(settings)
    store = open_store(settings, triggers)
    try:
        replayer = Replayer(Ingester(store, triggers, build_distiller(settings), EventClock()),
                            batch_size=10, on_batch=lambda summary: summary.read >= 30 and replayer.stop())
        lines = Workload(WorkloadSpec(instances=10, days=2)).lines()
        summary = replayer.run(Notification(line, f"capture:{n}") for n, line in enumerate(lines, 1))
        assert summary.interrupted and summary.read == 30 and summary.committed_through == "capture:30"
        assert store.count_events() == 30
    finally:
        store.close()


# -- pacing ----------------------------------------------------------------------------------


def test_paced_delivery_follows_the_notifications_own_time(tmp_path):
    """--speed N waits (span / N) between notifications, writing what arrived before each wait."""
    url = fresh_sqlite(tmp_path, "paced")
    settings = load_settings(replay_config(tmp_path), environ={"WINCHESTER_DATABASE_URL": url})
    triggers = load_trigger_definitions(settings)
    store = open_store(settings, triggers)
    fake_now = [100.0]
    waits = []

    def sleep(seconds: float) -> bool:
        waits.append(round(seconds, 6))
        fake_now[0] += seconds
        return False

    batches = []
    try:
        lines = list(itertools.islice(Workload(WorkloadSpec(instances=5, days=1)).lines(), 6))
        stamps = [datetime.fromisoformat(orjson.loads(line)["timestamp"]) for line in lines]
        replayer = Replayer(Ingester(store, triggers, build_distiller(settings), EventClock()),
                            speed=10.0, monotonic=lambda: fake_now[0], sleep=sleep,
                            on_batch=lambda summary: batches.append(summary.read))
        replayer.run(Notification(line, f"c:{n}") for n, line in enumerate(lines, 1))
        expected = [round((b - a).total_seconds() / 10.0, 6) for a, b in zip(stamps, stamps[1:])
                    if b > a]
        assert waits == expected
        assert fake_now[0] - 100.0 == pytest.approx((max(stamps) - stamps[0]).total_seconds() / 10)
        # Every notification was written before the wait for the next one.
        assert batches[-1] == 6 and len(batches) == len(waits) + 1
    finally:
        store.close()


# -- sources ---------------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str], input: bytes | None = None):
    return CliRunner().invoke(main, list(args), env=env, input=input, catch_exceptions=False)


def test_replay_reads_a_directory_of_captures_plain_and_gzip(tmp_path):
    """A directory: every capture file below it, in path order; gzip is read as such."""
    url = fresh_sqlite(tmp_path, "dir")
    config = replay_config(tmp_path)
    lines = list(Workload(WorkloadSpec(instances=10, days=2)).lines())
    captures = tmp_path / "captures"
    (captures / "day2").mkdir(parents=True)
    (captures / "day1.jsonl").write_bytes(b"\n".join(lines[:100]) + b"\n")
    with gzip.open(captures / "day2" / "rest.jsonl.gz", "wb") as handle:
        handle.write(b"\n".join(lines[100:]) + b"\n")
    (captures / "notes.txt").write_text("not a capture")
    result = run_cli("replay", "-c", str(config), str(captures), "--quiet",
                     env={"WINCHESTER_DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    assert f"replayed {len(lines):,} notifications" in result.output
    assert f"{len(lines):,} ingested" in result.output


def test_a_truncated_gzip_capture_keeps_every_line_before_the_damage_and_says_where(tmp_path):
    """A .gz cut short (a capture still being written, a partial copy): ingest-file, replay and
    distill keep or print every complete line, then exit 1 naming the file and the last good line."""
    config = replay_config(tmp_path)
    lines = list(itertools.islice(Workload(WorkloadSpec(instances=20, days=2)).lines(), 600))
    whole = gzip.compress(b"\n".join(lines) + b"\n")
    capture = tmp_path / "capture.jsonl.gz"
    capture.write_bytes(whole[: len(whole) // 2])
    readable = 0
    with pytest.raises(EOFError), gzip.open(capture) as handle:
        for _ in handle:
            readable += 1
    assert 0 < readable < len(lines)
    damaged = f"capture.jsonl.gz: cannot be read past line {readable:,}"

    # A batch larger than the file: the batch in hand is written before the error surfaces.
    for command in (["ingest-file", "--clock", "event", "--batch-size", "5000"],
                    ["replay", "--batch-size", "5000"], ["replay", "--batch-size", "50"]):
        url = fresh_sqlite(tmp_path, "-".join(command[:2]) + command[-1])
        result = run_cli(*command, "-c", str(config), str(capture), "--quiet",
                         env={"WINCHESTER_DATABASE_URL": url})
        assert result.exit_code == 1, result.output
        assert damaged in result.output and "truncated or damaged" in result.output
        assert f"up to {capture}:{readable} is committed" in result.output
        assert "resume" not in result.output  # running it again would meet the same damage
        store = Store.from_url(url)
        try:
            assert store.count_events() == readable
        finally:
            store.close()

    result = run_cli("distill", "-c", str(config), str(capture), env={})
    assert result.exit_code == 1
    assert len(result.stdout.splitlines()) == readable
    assert damaged in result.stderr

    # In a directory the files after the damaged one are not read, and the message says so.
    captures = tmp_path / "captures"
    captures.mkdir()
    (captures / "a.jsonl.gz").write_bytes(capture.read_bytes())
    (captures / "b.jsonl").write_bytes(lines[-1] + b"\n")
    url = fresh_sqlite(tmp_path, "directory")
    result = run_cli("replay", "-c", str(config), str(captures), "--quiet",
                     env={"WINCHESTER_DATABASE_URL": url})
    assert result.exit_code == 1
    assert "the 1 capture file(s) after it were not read" in " ".join(result.output.split())


def test_replay_reads_stdin_and_dead_letters_bad_lines_with_their_line(tmp_path):
    """'-' reads standard input; a bad line is rejected and kept with where it came from."""
    url = fresh_sqlite(tmp_path, "stdin")
    lines = list(itertools.islice(Workload(WorkloadSpec(instances=5, days=1)).lines(), 20))
    data = b"\n".join([*lines[:10], b"{not json", *lines[10:]]) + b"\n"
    result = run_cli("replay", "-c", str(replay_config(tmp_path)), "-", "--quiet",
                     env={"WINCHESTER_DATABASE_URL": url}, input=data)
    assert result.exit_code == 0, result.output
    assert "20 ingested" in result.output and "1 rejected (not_json: 1)" in result.output
    store = Store.from_url(url)
    try:
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT source FROM dead_letters").scalar() == "-:11"
    finally:
        store.close()


def test_replay_from_the_archive_in_arrival_order_with_filters(tmp_path, migrated_url):
    """archive: replays what the persistor kept (--from/--to/--event-type filter it); notifications
    rejected on arrival are not replayed, but said."""
    config = replay_config(tmp_path)
    lines = list(Workload(WorkloadSpec(instances=20, days=2)).lines())
    store = Store.from_url(migrated_url)
    try:
        received = datetime(2026, 1, 1)
        store.archive_notifications([archive_row(line, received) for line in lines]
                                    + [archive_row(b"garbage", received)])
        stamps = sorted(datetime.fromisoformat(orjson.loads(line)["timestamp"]) for line in lines)
        cut = stamps[len(stamps) // 2]
        before = sum(1 for stamp in stamps if stamp < cut)
        env = {"WINCHESTER_DATABASE_URL": migrated_url}
        first = run_cli("replay", "-c", str(config), "archive:", "--to", cut.isoformat(), "--quiet",
                        env=env)
        assert first.exit_code == 0, first.output
        assert f"replayed {before:,} notifications" in first.output
        assert "were rejected when they arrived" not in first.output
        rest = run_cli("replay", "-c", str(config), "archive:", "--quiet", env=env)
        assert f"replayed {len(lines):,} notifications" in rest.output
        assert f"{before:,} duplicates" in rest.output
        assert "1 archived notification(s) were rejected when they arrived" in rest.output
        assert store.count_events() == len(lines)
        updates = run_cli("replay", "-c", str(config), "archive:", "--event-type",
                          "compute.instance.update", "--quiet", env=env)
        count = sum(1 for line in lines if b'"compute.instance.update"' in line)
        assert f"replayed {count:,} notifications" in updates.output
    finally:
        store.close()


def test_replay_can_keep_the_raw_notifications_in_the_archive(tmp_path):
    """--archive stores each raw notification as the persistor would; archive: refuses it."""
    url = fresh_sqlite(tmp_path, "archive")
    config = replay_config(tmp_path)
    capture, workload = workload_file(tmp_path, instances=5, days=1)
    result = run_cli("replay", "-c", str(config), str(capture), "--archive", "--quiet",
                     env={"WINCHESTER_DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    store = Store.from_url(url)
    try:
        assert store.count_archive() == workload.truth.notifications
    finally:
        store.close()
    refused = CliRunner().invoke(main, ["replay", "-c", str(config), "archive:", "--archive"],
                                 env={"WINCHESTER_DATABASE_URL": url})
    assert refused.exit_code == 2 and "already there" in refused.output


def test_archive_filters_need_the_archive_source(tmp_path):
    """--from/--to/--event-type on a file are a usage error, not silently ignored."""
    result = CliRunner().invoke(main, ["replay", "-c", str(replay_config(tmp_path)),
                                       str(tmp_path / "x.jsonl"), "--from", "2015-02-01"])
    assert result.exit_code == 2 and "archive:" in result.output


def test_the_replay_clock_is_event_time_by_default(tmp_path):
    """Replaying last year's capture with the default clock groups streams as they were; the
    shared event clock ends at the capture's newest trustworthy timestamp."""
    url = fresh_sqlite(tmp_path, "clock")
    config = replay_config(tmp_path)
    capture, workload = workload_file(tmp_path, instances=10, days=2)
    result = run_cli("replay", "-c", str(config), str(capture), "--quiet",
                     env={"WINCHESTER_DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    assert f"{workload.truth.instance_days:,} created" in result.output
    newest = max(datetime.fromisoformat(orjson.loads(line)["timestamp"])
                 for line in capture.read_bytes().splitlines())
    store = Store.from_url(url)
    try:
        assert newest - timedelta(hours=1) <= store.read_clock(SHARED_EVENT_CLOCK) <= newest
    finally:
        store.close()
