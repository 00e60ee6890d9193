"""The worker and streams commands as an operator runs them (SQLite, in-process and as scripts)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from sqlalchemy.exc import OperationalError

import winchester.logs
from winchester.cli import main
from winchester.store import Store, StoreError

ROOT = Path(__file__).resolve().parents[1]
ETC = ROOT / "etc"
BIN = Path(sys.executable).parent
DAY = datetime(2024, 1, 1)
WIDE = {"COLUMNS": "400"}  # rich folds table cells to the terminal width

TRIGGERS = """\
- name: instance_life
  distinguished_by: [instance_id]
  expiration: "$last + 1d"
  fire_pipeline: on_fire
  expire_pipeline: on_expire
  match_criteria:
    - event_type: compute.instance.*
  fire_criteria:
    - event_type: compute.instance.delete.end
"""

BOOM = """\
class Boom:
    def __init__(self):
        pass

    def handle_events(self, events, env):
        raise RuntimeError("boom goes the handler")

    def commit(self):
        pass

    def rollback(self):
        pass
"""


@dataclass
class Config:
    path: Path
    url: str
    pipelines: Path

    @property
    def c(self) -> str:
        return str(self.path)


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    """No outside configuration, and log records go to this test's CliRunner streams."""
    monkeypatch.delenv("WINCHESTER_CONFIG", raising=False)
    monkeypatch.delenv("WINCHESTER_DATABASE_URL", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # `dir|module:Class` appends to it
    monkeypatch.setattr(winchester.logs, "_handler", None)
    root = logging.getLogger(winchester.logs.ROOT_LOGGER)
    handlers, level = list(root.handlers), root.level
    for handler in handlers:
        root.removeHandler(handler)
    modules = set(sys.modules)
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name in set(sys.modules) - modules:
        if name.startswith("boom_"):
            del sys.modules[name]


def make_config(tmp_path: Path, pipelines: str = "on_fire: [logger]\non_expire: [logger]\n", *,
                url_in_env: bool = False, log_level: str = "warning", boom: bool = False) -> Config:
    """A config dir: winchester.yaml, the example event definitions, our triggers and pipelines."""
    directory = tmp_path / "cfg"
    directory.mkdir()
    shutil.copy(ETC / "event_definitions.yaml", directory / "event_definitions.yaml")
    (directory / "triggers.yaml").write_text(TRIGGERS)
    (directory / "pipelines.yaml").write_text(pipelines)
    url = f"sqlite:///{tmp_path / 'winchester.db'}"
    lines = [
        "distiller_config: event_definitions.yaml",
        "trigger_definitions: triggers.yaml",
        "pipeline_config: pipelines.yaml",
        "purge_completed_streams: false",
        f"log_level: {log_level}",
    ]
    if not url_in_env:
        lines += ["database:", f"  url: {url}"]
    if boom:
        module = f"boom_{uuid.uuid4().hex[:12]}"
        (directory / f"{module}.py").write_text(BOOM)
        lines += ["pipeline_handlers:", f'  boom: "{directory}|{module}:Boom"']
    (directory / "winchester.yaml").write_text("\n".join(lines) + "\n")
    return Config(directory / "winchester.yaml", url, directory / "pipelines.yaml")


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), catch_exceptions=False, env={**WIDE, **(env or {})})


def nova(event_type: str, instance: str, when: datetime) -> dict:
    """A legacy nova notification as the example event definitions expect it."""
    return {"event_type": event_type, "message_id": str(uuid.uuid4()),
            "timestamp": when.isoformat(sep=" "), "publisher_id": "compute.host-1",
            "_context_request_id": "req-1",
            "payload": {"instance_id": instance, "tenant_id": "t-1", "state": "active"}}


def lifecycle(start: datetime, fired=("i-a",), unfired=("i-b",)) -> list[dict]:
    """Instances in `fired` are created and deleted (their stream fires); `unfired` only created."""
    notifications = []
    for instance in fired:
        notifications += [nova("compute.instance.create.start", instance, start),
                          nova("compute.instance.delete.end", instance, start + timedelta(hours=1))]
    for instance in unfired:
        notifications.append(nova("compute.instance.create.start", instance, start + timedelta(minutes=30)))
    return notifications


def upgrade_and_ingest(config: Config, notifications: list[dict], env=None) -> None:
    result = run("db", "-c", config.c, "upgrade", env=env)
    assert result.exit_code == 0 and "schema upgraded from nothing to" in result.output, result.output
    capture = config.path.parent.parent / f"capture-{uuid.uuid4().hex[:6]}.jsonl"
    capture.write_bytes(b"".join(orjson.dumps(n) + b"\n" for n in notifications))
    result = run("ingest-file", "-c", config.c, str(capture), "--clock", "event", "--quiet", env=env)
    assert result.exit_code == 0, result.output
    assert f"{len(notifications)} saved" in result.output


def streams_by_instance(config: Config) -> dict[str, tuple[int, str]]:
    store = Store.from_url(config.url, ["instance_id"])
    try:
        return {s.distinguishing_traits["instance_id"]: (s.id, s.state) for s in store.list_streams()}
    finally:
        store.close()


def states(config: Config) -> dict[str, str]:
    return {instance: state for instance, (_, state) in streams_by_instance(config).items()}


# -- worker --once -----------------------------------------------------------------------------


def test_worker_once_with_now_processes_ready_streams_and_prints_the_summary(tmp_path):
    """`worker --once --now T` fires and expires what is due at T and prints counts and the Streams table."""
    config = make_config(tmp_path)
    upgrade_and_ingest(config, lifecycle(DAY))
    assert states(config) == {"i-a": "active", "i-b": "active"}
    result = run("worker", "-c", config.c, "--once", "--now", "2030-01-01T00:00:00", "--name", "w1")
    assert result.exit_code == 0, result.output
    assert ("worker w1: 2 stream(s) processed: 1 fired, 1 expired, 0 failed, "
            "0 event(s) generated, 0 event(s) trimmed") in result.output
    assert "Streams" in result.output
    rows = [line.split() for line in result.output.splitlines() if "instance_life" in line]
    assert [[cell for cell in row if cell.isalnum() or "_" in cell] for row in rows] == [
        ["instance_life", "expire", "1", "0"], ["instance_life", "fire", "1", "0"]]
    assert states(config) == {"i-a": "completed", "i-b": "completed"}


def test_worker_once_at_an_earlier_now_only_fires_what_is_due_then(tmp_path):
    """--now decides what is due: before the expiry only the ready stream runs."""
    config = make_config(tmp_path)
    upgrade_and_ingest(config, lifecycle(DAY))
    result = run("worker", "-c", config.c, "--once", "--now", "2024-01-01 12:00:00Z")
    assert result.exit_code == 0, result.output
    assert "1 stream(s) processed: 1 fired, 0 expired" in result.output
    assert states(config) == {"i-a": "completed", "i-b": "active"}


def test_worker_once_without_now_leaves_future_streams_alone(tmp_path):
    """Without --now the wall clock decides: a stream ready in the future is not processed yet."""
    config = make_config(tmp_path)
    future = datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0) + timedelta(days=30)
    upgrade_and_ingest(config, lifecycle(future))
    result = run("worker", "-c", config.c, "--once")
    assert result.exit_code == 0, result.output
    assert "0 stream(s) processed: 0 fired, 0 expired, 0 failed" in result.output
    assert states(config) == {"i-a": "active", "i-b": "active"}
    later = (future + timedelta(hours=2)).isoformat()
    result = run("worker", "-c", config.c, "--once", "--now", later)
    assert "1 stream(s) processed: 1 fired" in result.output
    assert states(config) == {"i-a": "completed", "i-b": "active"}


def test_now_without_once_is_a_usage_error(tmp_path):
    """--now on a long-running worker is refused as a usage error (exit 2)."""
    config = make_config(tmp_path)
    result = run("worker", "-c", config.c, "--now", "2030-01-01T00:00:00")
    assert result.exit_code == 2
    assert "--now needs --once" in result.output


def test_a_bad_now_value_is_a_clear_error(tmp_path):
    """An unparseable --now says it is not an ISO 8601 timestamp and shows an example."""
    config = make_config(tmp_path)
    result = run("worker", "-c", config.c, "--once", "--now", "next tuesday")
    assert result.exit_code == 2
    assert "Invalid value for '--now'" in result.output
    assert "'next tuesday' is not an ISO 8601 timestamp" in result.output


def test_worker_refuses_a_config_with_an_unknown_handler(tmp_path):
    """An unknown handler name stops the worker at start (exit 2), naming file:line, pipeline and entry."""
    config = make_config(tmp_path, "on_fire:\n  - logger\n  - loggr\non_expire: [logger]\n")
    upgrade_and_ingest(config, lifecycle(DAY))
    result = run("worker", "-c", config.c, "--once", "--now", "2030-01-01T00:00:00")
    assert result.exit_code == 2
    assert (f"error: {config.pipelines}:3:5: pipeline 'on_fire' > entry #2 (loggr): "
            "unknown handler 'loggr'; did you mean 'logger'?") in result.output
    assert states(config) == {"i-a": "active", "i-b": "active"}


def test_worker_refuses_an_unmigrated_database(tmp_path):
    """A database without the schema (URL from WINCHESTER_DATABASE_URL) exits 2 naming `winchester db upgrade`."""
    config = make_config(tmp_path, url_in_env=True)
    env = {"WINCHESTER_DATABASE_URL": config.url}
    result = run("worker", "-c", config.c, "--once", env=env)
    assert result.exit_code == 2
    assert "winchester db upgrade" in result.output
    # once upgraded through the same variable, the worker runs
    upgrade_and_ingest(config, lifecycle(DAY), env=env)
    result = run("worker", "-c", config.c, "--once", "--now", "2030-01-01T00:00:00", env=env)
    assert result.exit_code == 0 and "2 stream(s) processed" in result.output


# -- streams list / reset ------------------------------------------------------------------------


@pytest.fixture
def failed(tmp_path) -> Config:
    """Streams of i-a and i-c failed (their fire pipeline raises), i-b still active."""
    config = make_config(tmp_path, "on_fire: [logger, boom]\non_expire: [logger]\n", boom=True)
    upgrade_and_ingest(config, lifecycle(DAY, fired=("i-a", "i-c")))
    result = run("worker", "-c", config.c, "--once", "--now", "2024-01-01T12:00:00")
    assert result.exit_code == 0, result.output
    assert "2 stream(s) processed: 0 fired, 0 expired, 2 failed" in result.output
    assert "`winchester streams list --state error` shows them" in result.output
    assert states(config) == {"i-a": "error", "i-b": "active", "i-c": "error"}
    return config


def test_streams_list_shows_states_and_error_reasons(failed):
    """`streams list` shows each stream's id, trigger, state, traits and, for failed ones, why."""
    by_instance = streams_by_instance(failed)
    result = run("streams", "list", "-c", failed.c)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].strip() == "active 1, error 2"
    for instance, (stream_id, state) in by_instance.items():
        [row] = [line for line in result.output.splitlines() if f"instance_id={instance}" in line]
        assert row.split("│")[1].strip() == str(stream_id) and f" {state} " in row
        assert ("RuntimeError: boom goes the handler" in row) == (state == "error")
    assert "handle_events 'boom' in pipeline 'on_fire'" in result.output


def test_streams_list_filters_by_state(failed):
    """`streams list --state error` lists only the failed streams."""
    result = run("streams", "list", "-c", failed.c, "--state", "error")
    assert result.exit_code == 0, result.output
    assert "instance_id=i-a" in result.output and "instance_id=i-c" in result.output
    assert "instance_id=i-b" not in result.output


def test_streams_reset_moves_an_error_stream_to_retry(failed):
    """`streams reset ID` moves an error stream to retry_fire; the next worker run retries it."""
    stream_id = streams_by_instance(failed)["i-a"][0]
    result = run("streams", "reset", "-c", failed.c, str(stream_id))
    assert result.exit_code == 0, result.output
    assert f"stream {stream_id}: -> retry_fire" in result.output
    assert "1 stream(s) reset" in result.output
    assert states(failed) == {"i-a": "retry_fire", "i-b": "active", "i-c": "error"}
    result = run("worker", "-c", failed.c, "--once", "--now", "2024-01-01T12:00:00")
    assert "1 stream(s) processed: 0 fired, 0 expired, 1 failed" in result.output
    assert states(failed)["i-a"] == "error"


def test_streams_reset_of_a_stream_not_in_error_leaves_it_alone_and_exits_1(failed):
    """Resetting an active stream (or an unknown id) changes nothing, says so, and exits 1."""
    active = streams_by_instance(failed)["i-b"][0]
    result = run("streams", "reset", "-c", failed.c, str(active), "999")
    assert result.exit_code == 1
    assert f"stream {active}: left alone (state active, not an error state)" in result.output
    assert "stream 999: no such stream" in result.output
    assert "0 stream(s) reset" in result.output
    assert states(failed) == {"i-a": "error", "i-b": "active", "i-c": "error"}


def test_streams_reset_all_errors(failed):
    """`streams reset --all-errors` moves every error stream and nothing else."""
    result = run("streams", "reset", "-c", failed.c, "--all-errors")
    assert result.exit_code == 0, result.output
    assert "2 stream(s) reset" in result.output
    assert states(failed) == {"i-a": "retry_fire", "i-b": "active", "i-c": "retry_fire"}


@pytest.mark.parametrize("args", [["1", "--all-errors"], []], ids=["both", "neither"])
def test_streams_reset_needs_ids_or_all_errors_but_not_both(tmp_path, args):
    """Giving ids and --all-errors (or neither) is a usage error."""
    config = make_config(tmp_path)
    result = run("streams", "reset", "-c", config.c, *args)
    assert result.exit_code == 2
    assert "give stream ids, or --all-errors (not both)" in result.output


# -- the installed scripts -----------------------------------------------------------------------


def script_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("WINCHESTER_CONFIG", "WINCHESTER_DATABASE_URL")}
    return {**env, **WIDE}


def test_pipeline_worker_script_runs_once(tmp_path):
    """The original's `pipeline_worker -c cfg --once --now T` script processes the due streams."""
    config = make_config(tmp_path)
    upgrade_and_ingest(config, lifecycle(DAY))
    result = subprocess.run(
        [str(BIN / "pipeline_worker"), "-c", config.c, "--once", "--now", "2030-01-01T00:00:00"],
        capture_output=True, text=True, env=script_env(), timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 stream(s) processed: 1 fired, 1 expired, 0 failed" in result.stdout
    assert states(config) == {"i-a": "completed", "i-b": "completed"}


def test_a_running_worker_stops_cleanly_on_sigterm(tmp_path):
    """`winchester worker` processes the due streams, then exits 0 on SIGTERM."""
    config = make_config(tmp_path, log_level="info")
    upgrade_and_ingest(config, lifecycle(DAY))
    stdout, stderr = tmp_path / "worker.out", tmp_path / "worker.err"
    with stdout.open("w") as out, stderr.open("w") as err:
        proc = subprocess.Popen([str(BIN / "winchester"), "worker", "-c", config.c, "--delay", "0.2",
                                 "--name", "sigterm-test"],
                                stdout=out, stderr=err, env=script_env())
        try:
            deadline = time.monotonic() + 60
            done = False
            while not done and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.2)
                try:
                    done = set(states(config).values()) == {"completed"}
                except (StoreError, OperationalError):  # the worker holds the SQLite lock a moment
                    continue
            assert done, f"worker did not process the streams: {states(config)}\n{stderr.read_text()}"
            assert proc.poll() is None, stderr.read_text()
            proc.send_signal(signal.SIGTERM)
            returncode = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    log = stderr.read_text()
    assert returncode == 0, log
    assert "worker sigterm-test stopped" in log
    assert "Traceback" not in log
    assert states(config) == {"i-a": "completed", "i-b": "completed"}


def test_the_originals_daemon_flag_is_refused_saying_what_to_do_instead(tmp_path):
    """`pipeline_worker -d` daemonized the original; here it is a usage error (exit 2) that
    says to run the worker under a service manager, before anything is opened."""
    missing = tmp_path / "nowhere" / "winchester.yaml"  # nothing is read before the refusal
    result = CliRunner().invoke(main, ["worker", "-c", str(missing), "-d"])
    assert result.exit_code == 2
    assert "run it in the foreground under a service manager" in result.output
