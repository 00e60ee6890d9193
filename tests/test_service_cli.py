"""`winchester serve`, `archive`, `ingest` and `persistor` as an operator runs them."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from kombu import Connection, Exchange, Producer

import winchester.logs
from winchester.cli import main
from winchester.clock import EventClock
from winchester.config import build_distiller, load_settings, load_trigger_definitions, open_store
from winchester.events import to_naive_utc
from winchester.services.ingest import Ingester
from winchester.services.intake import DirectIntake
from winchester.store import Store, create_engine, upgrade

ROOT = Path(__file__).resolve().parents[1]
ETC = ROOT / "etc"
SAMPLES = ETC / "samples" / "nova-notifications.jsonl.gz"
BIN = Path(sys.executable).parent
WIDE = {"COLUMNS": "400"}  # rich folds table cells to the terminal width
MALFORMED = b'{"event_type": "compute.instance.update", "message_id"'


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    """No outside configuration, and log records go to this test's CliRunner streams."""
    for name in ("WINCHESTER_CONFIG", "WINCHESTER_DATABASE_URL", "WINCHESTER_BUS_URL",
                 "WINCHESTER_API_TOKENS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(winchester.logs, "_handler", None)
    root = logging.getLogger(winchester.logs.ROOT_LOGGER)
    handlers, level = list(root.handlers), root.level
    for handler in handlers:
        root.removeHandler(handler)
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


# -- helpers ------------------------------------------------------------------------------------


def make_config(tmp_path: Path, *extra: str, url: str | None = None, log_level: str = "warning",
                name: str = "cfg") -> Path:
    """A config dir with the example definitions; ``extra`` lines are appended to winchester.yaml."""
    directory = tmp_path / name
    directory.mkdir()
    for file in ("event_definitions.yaml", "triggers.yaml", "pipelines.yaml"):
        shutil.copy(ETC / file, directory / file)
    lines = ["distiller_config: event_definitions.yaml", "trigger_definitions: triggers.yaml",
             "pipeline_config: pipelines.yaml", f"log_level: {log_level}"]
    if url is not None:
        lines += ["database:", f"  url: {url}"]
    (directory / "winchester.yaml").write_text("\n".join([*lines, *extra]) + "\n")
    return directory / "winchester.yaml"


def migrate(url: str) -> str:
    engine = create_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    return url


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), catch_exceptions=False, env={**WIDE, **(env or {})})


def script_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("WINCHESTER_CONFIG", "WINCHESTER_DATABASE_URL", "WINCHESTER_BUS_URL",
                          "WINCHESTER_API_TOKENS")}
    return {**env, **WIDE, "PYTHONIOENCODING": "utf-8", **extra}


def sample_lines() -> list[bytes]:
    with gzip.open(SAMPLES, "rb") as lines:
        return [line.strip() for line in lines if line.strip()]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Script:
    """A console script run as a subprocess, its output in files."""

    def __init__(self, tmp_path: Path, name: str, *args: str, env: dict[str, str] | None = None):
        self.out, self.err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen([str(BIN / "winchester"), *args], stdout=out, stderr=err,
                                         env=env or script_env())

    @property
    def log(self) -> str:
        return self.err.read_text(encoding="utf-8", errors="replace")

    @property
    def output(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, text: str, timeout: float = 120) -> None:
        """Until ``text`` is in standard error; fails at once if the process exits first."""
        deadline = time.monotonic() + timeout
        while text not in self.log:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode} before {text!r}:\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {text!r}:\n{self.log}")
            time.sleep(0.1)

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def scripts() -> Iterator[list[Script]]:
    """Started scripts; any still running at the end of the test is killed."""
    started: list[Script] = []
    yield started
    for script in started:
        script.kill()


# -- winchester serve ----------------------------------------------------------------------------


def test_serve_loads_the_samples_answers_health_and_stops_on_sigterm(tmp_path, scripts):
    """`serve --clock event --load samples`: 626 accepted, Streams table, /healthz ok, SIGTERM -> exit 0."""
    url = migrate(f"sqlite:///{tmp_path / 'winchester.db'}")
    config = make_config(tmp_path, "pipeline_worker_delay: 1", "api:", "  port: 0", url=url,
                         log_level="info")
    serve = Script(tmp_path, "serve", "serve", "-c", str(config), "--clock", "event",
                   "--load", str(SAMPLES))
    scripts.append(serve)
    serve.wait_for("look around:", timeout=300)
    log = serve.log
    [api] = re.findall(r"API at (http://[\d.]+:\d+)/docs", log)
    assert not api.endswith(":0")
    assert "winchester serving api, worker (bus memory://" in log
    assert (f"loaded {SAMPLES}: 626 notifications, 626 accepted, 0 duplicates, 0 unconverted, "
            "0 rejected") in log
    assert "Streams by state" in log
    table = log[log.index("Streams by state"):log.index("look around:")]
    shown = {state: int(count.replace(",", ""))
             for state, count in re.findall(r"│\s*(\w+)\s*│\s*([\d,]+)\s*│", table)}
    verdicts = {name: int(count.replace(",", ""))
                for name, count in re.findall(r"^(compute\.instance\.exists\.\w+): ([\d,]+)$", table, re.M)}
    assert f"look around: {api}/docs (API), {api}/healthz" in log
    with urllib.request.urlopen(f"{api}/healthz", timeout=30) as response:
        assert response.status == 200
        assert orjson.loads(response.read())["status"] == "ok"
    assert serve.proc.poll() is None, serve.log
    assert serve.terminate(60) == 0, serve.log
    log = serve.log
    assert "worker serve stopped" in log
    assert "Traceback" not in log
    store = Store.from_url(url)
    try:
        by_type = store.count_events_by_type()
        # The samples, plus the verdicts the usage handler generated.
        assert sum(n for name, n in by_type.items() if not name.startswith("compute.instance.exists.")) == 626
        assert store.count_archive() == 626
        assert shown and shown == store.count_streams_by_state()
        assert verdicts and verdicts == {name: count for name, count in by_type.items()
                                         if name.startswith("compute.instance.exists.")}
    finally:
        store.close()


@contextlib.contextmanager
def config_on_a_taken_port(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A migrated SQLite store and a config whose api.port another socket holds meanwhile."""
    url = migrate(f"sqlite:///{tmp_path / 'winchester.db'}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        yield make_config(tmp_path, "api:", "  host: 127.0.0.1", f"  port: {busy}", url=url), busy


def test_serve_port_0_listens_on_an_ephemeral_port(tmp_path, scripts):
    """`serve --port 0` listens on a port of the system's choosing, not on api.port."""
    with config_on_a_taken_port(tmp_path) as (config, busy):
        serve = Script(tmp_path, "serve", "serve", "-c", str(config), "--with", "api", "--port", "0")
        scripts.append(serve)
        deadline = time.monotonic() + 120
        while "API at" not in serve.log and serve.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        found = re.findall(r"API at http://127\.0\.0\.1:(\d+)/docs", serve.log)
        assert found, f"exit {serve.proc.poll()}:\n{serve.log}"
        assert int(found[0]) not in (0, busy)
        assert serve.terminate(60) == 0, serve.log


def test_serve_on_a_port_in_use_says_so_without_a_traceback(tmp_path):
    """A second server on a taken port exits 1 with one line naming the address and the
    setting to change, before it opens anything."""
    with config_on_a_taken_port(tmp_path) as (config, busy):
        result = run("api", "-c", str(config))
    assert result.exit_code == 1
    assert (f"error: the API cannot listen on 127.0.0.1:{busy}: Address already in use; another "
            "process has that port") in result.output
    assert "Traceback" not in result.output


def test_serve_on_an_ipv6_host_prints_a_usable_url_and_loads(tmp_path, scripts):
    """`serve --host ::1 --load samples`: the URL is http://[::1]:PORT and the samples are loaded."""
    url = migrate(f"sqlite:///{tmp_path / 'winchester.db'}")
    config = make_config(tmp_path, "api:", "  port: 0", url=url)
    serve = Script(tmp_path, "serve", "serve", "-c", str(config), "--host", "::1", "--clock", "event",
                   "--load", str(SAMPLES))
    scripts.append(serve)
    serve.wait_for("API at", timeout=120)
    deadline = time.monotonic() + 300
    while ("look around:" not in serve.log and "Traceback" not in serve.log
           and time.monotonic() < deadline and serve.proc.poll() is None):
        time.sleep(0.1)
    log = serve.log
    assert re.search(r"API at http://\[::1\]:\d+/docs", log), log
    assert "626 accepted" in log and "look around:" in log, log
    assert serve.terminate(60) == 0, serve.log


def test_serve_with_an_unknown_part_is_a_usage_error(tmp_path):
    """`serve --with bogus` exits 2 naming the parts to choose from."""
    config = make_config(tmp_path, url=f"sqlite:///{tmp_path / 'winchester.db'}")
    result = run("serve", "-c", str(config), "--with", "api,bogus")
    assert result.exit_code == 2
    assert "Invalid value for '--with'" in result.output
    assert "choose from api, ingest, persistor, worker" in result.output


def test_serve_load_without_the_api_is_a_usage_error(tmp_path):
    """`serve --with worker --load FILE` exits 2: --load posts to the HTTP intake."""
    url = migrate(f"sqlite:///{tmp_path / 'winchester.db'}")
    config = make_config(tmp_path, url=url)
    result = run("serve", "-c", str(config), "--with", "worker", "--load", str(SAMPLES))
    assert result.exit_code == 2
    assert "--load posts to the HTTP intake: include api in --with" in result.output


# -- winchester archive ----------------------------------------------------------------------------


class Archived:
    """The samples (and one malformed line) taken in through DirectIntake, and the config to read them."""

    def __init__(self, tmp_path: Path, url: str):
        self.url = url
        self.config = make_config(tmp_path)
        self.env = {"WINCHESTER_DATABASE_URL": url}
        self.lines = sample_lines()
        self.notifications = [orjson.loads(line) for line in self.lines]
        settings = load_settings(self.config, environ=self.env)
        triggers = load_trigger_definitions(settings)
        store = open_store(settings, triggers)
        try:
            intake = DirectIntake(Ingester(store, triggers, build_distiller(settings), EventClock()), store)
            answer = intake.accept([*self.lines, MALFORMED])
            assert (answer["accepted"], answer["rejected"], answer["archived"]) == (626, 1, 627), answer
            self.events_by_type = store.count_events_by_type()
        finally:
            store.close()

    def cli(self, *args: str):
        return run(args[0], args[1], "-c", str(self.config), *args[2:], env=self.env)

    def stamped(self, since: datetime | None = None, until: datetime | None = None,
                event_type: str | None = None) -> int:
        """How many sample notifications fall within the filters (computed from the file)."""
        count = 0
        for notification in self.notifications:
            generated = to_naive_utc(datetime.fromisoformat(notification["timestamp"]))
            if ((since is None or generated >= since) and (until is None or generated < until)
                    and (event_type is None or notification["event_type"] == event_type)):
                count += 1
        return count


@pytest.fixture
def archived(tmp_path, migrated_url) -> Archived:
    return Archived(tmp_path, migrated_url)


def test_archive_count_with_and_without_filters(archived):
    """`archive count` matches what was taken in; --event-type and --from/--to filter on the notification."""
    result = archived.cli("archive", "count")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "627"  # the malformed line is archived too (as rejected)
    result = archived.cli("archive", "count", "--event-type", "compute.instance.exists")
    assert result.stdout.strip() == str(archived.stamped(event_type="compute.instance.exists")) == "107"
    since, until = datetime(2015, 2, 2), datetime(2015, 2, 2, 12)
    expected = archived.stamped(since, until)
    assert 0 < expected < 626
    result = archived.cli("archive", "count", "--from", "2015-02-02T00:00:00", "--to", "2015-02-02 12:00")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(expected)
    # A timestamp with an offset is converted to UTC.
    result = archived.cli("archive", "count", "--from", "2015-02-02T01:00:00+01:00",
                          "--to", "2015-02-02T12:00:00Z")
    assert result.stdout.strip() == str(expected)
    # --from alone: only notifications with a timestamp (not the malformed one), at or after it.
    result = archived.cli("archive", "count", "--from", "2015-01-01")
    assert result.stdout.strip() == "626"
    result = archived.cli("archive", "count", "--to", "2015-02-02", "--event-type",
                          "compute.instance.update")
    assert result.stdout.strip() == str(archived.stamped(until=since, event_type="compute.instance.update"))


def test_archive_count_refuses_a_bad_timestamp(archived):
    """An unparseable --from is a usage error naming ISO 8601."""
    result = archived.cli("archive", "count", "--from", "yesterday")
    assert result.exit_code == 2
    assert "'yesterday' is not an ISO 8601 timestamp" in result.output


def test_archive_list_shows_the_oldest_rows_within_the_filters(archived):
    """`archive list --limit N` shows the first N rows in arrival order; --event-type filters them."""
    result = archived.cli("archive", "list", "--limit", "5")
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if "│" in line and "message id" not in line]
    assert len(rows) == 5
    for row, notification in zip(rows, archived.notifications):
        cells = [cell.strip() for cell in row.split("│")[1:-1]]
        assert cells[3:7] == [notification["event_type"], notification["message_id"],
                              notification["publisher_id"], "archived"]
    result = archived.cli("archive", "list", "--event-type", "compute.instance.exists", "--limit", "200")
    rows = [line for line in result.stdout.splitlines() if "│" in line and "message id" not in line]
    assert len(rows) == 107
    assert all(" compute.instance.exists " in row for row in rows)
    result = archived.cli("archive", "list", "--limit", "1000")
    [rejected] = [line for line in result.stdout.splitlines() if "rejected" in line]
    assert "not_json" in rejected


def test_archive_export_replays_into_a_fresh_database(archived, tmp_path):
    """`archive export` read back by `ingest-file --unwrap notification` rebuilds the same events."""
    exported = tmp_path / "export.jsonl"
    result = archived.cli("archive", "export", "-o", str(exported))
    assert result.exit_code == 0, result.output
    assert "627 notification(s) exported" in result.stderr
    records = [orjson.loads(line) for line in exported.read_bytes().splitlines()]
    assert len(records) == 627
    assert set(records[0]) == {"id", "received_at", "message_id", "event_type", "publisher_id",
                               "status", "reason", "notification"}
    assert [r["notification"] for r in records[:626]] == archived.notifications
    assert [r["message_id"] for r in records[:626]] == [n["message_id"] for n in archived.notifications]
    assert records[-1]["status"] == "rejected" and records[-1]["notification"] == MALFORMED.decode()
    assert "not_json" in records[-1]["reason"]

    fresh = migrate(f"sqlite:///{tmp_path / 'fresh.db'}")
    result = run("ingest-file", "-c", str(archived.config), str(exported), "--unwrap", "notification",
                 "--clock", "event", "--quiet", env={"WINCHESTER_DATABASE_URL": fresh})
    assert result.exit_code == 0, result.output
    assert "626 saved, 0 duplicates, 0 unconverted, 1 rejected (not_json: 1)" in result.output
    store = Store.from_url(fresh)
    try:
        assert store.count_events() == 626
        assert store.count_events_by_type() == archived.events_by_type
    finally:
        store.close()


def test_archive_export_writes_bodies_nested_deeper_than_orjson_writes(tmp_path, migrated_url):
    """A body nested 300 levels deep (orjson reads 1024, writes 255) is exported whole, and read back."""
    config = make_config(tmp_path)
    env = {"WINCHESTER_DATABASE_URL": migrated_url}
    notification = orjson.loads(sample_lines()[0])
    notification["message_id"] = "deep-payload-1"
    deep = orjson.loads(b"[" * 300 + b"]" * 300)
    notification["payload"]["deep"] = deep
    settings = load_settings(config, environ=env)
    triggers = load_trigger_definitions(settings)
    store = open_store(settings, triggers)
    try:
        intake = DirectIntake(Ingester(store, triggers, build_distiller(settings), EventClock()), store)
        body = json.dumps(notification).encode()
        assert intake.accept([body, sample_lines()[1]])["archived"] == 2
    finally:
        store.close()
    exported = tmp_path / "export.jsonl"
    result = run("archive", "export", "-c", str(config), "-o", str(exported), env=env)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in exported.read_bytes().splitlines()]
    assert [r["message_id"] for r in records] == ["deep-payload-1",
                                                  orjson.loads(sample_lines()[1])["message_id"]]
    assert records[0]["notification"] == notification and records[0]["status"] == "archived"

    fresh = migrate(f"sqlite:///{tmp_path / 'fresh.db'}")
    result = run("ingest-file", "-c", str(config), str(exported), "--unwrap", "notification",
                 "--clock", "event", "--quiet", env={"WINCHESTER_DATABASE_URL": fresh})
    assert result.exit_code == 0, result.output
    assert "2 saved, 0 duplicates, 0 unconverted, 0 rejected" in result.output


def test_archive_export_by_receipt_time_takes_every_row_and_writes_an_empty_period(archived,
                                                                                   tmp_path):
    """--received-from/--received-to bound when rows were archived: the malformed line, which
    has no timestamp of its own, is in; a period with nothing archived is an empty file."""
    today = datetime.now(timezone.utc).replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)
    window = ("--received-from", f"{today - timedelta(days=1):%Y-%m-%d}",
              "--received-to", f"{today + timedelta(days=2):%Y-%m-%d}")
    exported = tmp_path / "period.jsonl"
    result = archived.cli("archive", "export", "-o", str(exported), *window)
    assert result.exit_code == 0, result.output
    records = [orjson.loads(line) for line in exported.read_bytes().splitlines()]
    assert len(records) == 627 and any(r["reason"] for r in records)
    assert archived.cli("archive", "count", *window).output.strip() == "627"
    assert archived.cli("archive", "count", "--from", "2000-01-01").output.strip() == "626"

    empty = tmp_path / "next-month.jsonl"
    result = archived.cli("archive", "export", "-o", str(empty), "--received-from",
                          f"{today + timedelta(days=2):%Y-%m-%d}")
    assert result.exit_code == 0, result.output
    assert empty.exists() and empty.read_bytes() == b""
    assert "0 notification(s) exported" in result.output


def test_archive_export_filters(archived, tmp_path):
    """`archive export --event-type/--from/--to` writes only the rows within the filters."""
    exported = tmp_path / "exists.jsonl"
    result = archived.cli("archive", "export", "-o", str(exported), "--event-type",
                          "compute.instance.exists", "--from", "2015-02-02")
    assert result.exit_code == 0, result.output
    records = [orjson.loads(line) for line in exported.read_bytes().splitlines()]
    expected = archived.stamped(datetime(2015, 2, 2), event_type="compute.instance.exists")
    assert 0 < expected < 107 and len(records) == expected
    assert {r["event_type"] for r in records} == {"compute.instance.exists"}
    assert f"{expected:,} notification(s) exported" in result.stderr


def test_archive_export_raw_writes_the_bodies_as_received(archived, tmp_path):
    """`archive export --raw`: each body exactly as it was posted, one per line, oldest first."""
    exported = tmp_path / "raw.jsonl"
    result = archived.cli("archive", "export", "--raw", "-o", str(exported))
    assert result.exit_code == 0, result.output
    assert exported.read_bytes() == b"".join(line + b"\n" for line in [*archived.lines, MALFORMED])
    result = archived.cli("archive", "export", "--raw")
    assert result.stdout_bytes == exported.read_bytes()


# -- winchester ingest / persistor against the real RabbitMQ ----------------------------------------


class Corner:
    """A private corner of the real RabbitMQ: a unique exchange, topic and persistor queue."""

    def __init__(self, url: str):
        self.url = url
        tag = uuid.uuid4().hex[:10]
        self.exchange = f"nova-{tag}"
        self.topic = f"notifications-{tag}"
        self.persistor_queue = f"persistor-{tag}"

    def config_lines(self, durable: bool = False) -> list[str]:
        return ["bus:", f"  url: {self.url}",
                "intake:", f"  exchanges: [{self.exchange}]", f"  topic: {self.topic}",
                "  batch_seconds: 0.2", f"  durable: {'true' if durable else 'false'}",
                "persistor:", f"  queue: {self.persistor_queue}", "  batch_seconds: 0.2"]

    def publish(self, bodies: list[dict]) -> None:
        """As oslo.messaging does by default: a non-durable topic exchange, routing key <topic>.info."""
        exchange = Exchange(self.exchange, type="topic", durable=False)
        with Connection(self.url, transport_options={"confirm_publish": True}) as connection:
            producer = Producer(connection.channel(), exchange=exchange)
            for body in bodies:
                producer.publish(orjson.dumps(body), routing_key=f"{self.topic}.info", declare=[exchange],
                                 content_type="application/json", content_encoding="utf-8")

    def declare_exchange(self) -> None:
        with Connection(self.url) as connection:
            Exchange(self.exchange, type="topic", durable=False)(connection.channel()).declare()

    def cleanup(self) -> None:
        with Connection(self.url) as connection:
            channel = connection.channel()
            queues = [f"{self.topic}.{p}" for p in ("info", "warn", "error")] + [self.persistor_queue]
            for queue in queues:
                try:
                    channel.queue_delete(queue)
                except Exception:  # noqa: BLE001 - it may never have been declared
                    channel = connection.channel()
            try:
                channel.exchange_delete(self.exchange)
            except Exception:  # noqa: BLE001
                pass


@pytest.fixture
def corner(amqp_url) -> Iterator[Corner]:
    corner = Corner(amqp_url)
    yield corner
    corner.cleanup()


def legacy(n: int) -> dict:
    return {"event_type": "compute.instance.update", "message_id": f"bus-{uuid.uuid4().hex}-{n}",
            "timestamp": f"2024-05-01 10:{n // 60:02d}:{n % 60:02d}.000000",
            "publisher_id": "compute.host-1", "priority": "INFO",
            "payload": {"instance_id": f"i-{n % 5}", "tenant_id": "t-1", "state": "active"}}


@pytest.mark.rabbitmq
def test_ingest_and_persistor_scripts_store_and_archive_what_is_published(tmp_path, corner, migrated_url,
                                                                         scripts):
    """`ingest` + `persistor`: 50 published -> 50 events and 50 archived; a statistics line every
    statistics_period; SIGTERM -> exit 0, summaries."""
    config = make_config(tmp_path, *corner.config_lines(), "statistics_period: 0.5", url=migrated_url,
                         log_level="info")
    ingest = Script(tmp_path, "ingest", "ingest", "-c", str(config), "--name", "ingest-test")
    scripts.append(ingest)
    persistor = Script(tmp_path, "persistor", "persistor", "-c", str(config), "--name", "persistor-test")
    scripts.append(persistor)
    ingest.wait_for("ingest-test: consuming")
    persistor.wait_for("persistor-test: consuming")
    assert corner.persistor_queue in persistor.log and f"{corner.topic}.info" in ingest.log
    corner.publish([legacy(n) for n in range(50)])
    store = Store.from_url(migrated_url)
    try:
        wait_until(lambda: store.count_events() == 50 and store.count_archive() == 50, 120,
                   f"50 events and 50 archived\n{ingest.log}\n{persistor.log}")
        wait_until(lambda: "ingest-test: 50 received, 50 saved" in ingest.log
                   and "persistor-test: 50 archived" in persistor.log, 60,
                   f"statistics lines\n{ingest.log}\n{persistor.log}")
        assert ingest.terminate(60) == 0, ingest.log
        assert persistor.terminate(60) == 0, persistor.log
        assert store.count_events() == 50 and store.count_archive() == 50
        assert {row.status for row in store.iter_archive()} == {"archived"}
        assert store.count_dead_letters() == 0
    finally:
        store.close()
    assert "ingest stopped: 50 received, 50 saved, 0 duplicates, 0 unconverted, 0 rejected" in ingest.log
    assert "persistor stopped: 50 archived, 0 duplicates skipped, 0 trimmed" in persistor.log
    assert "Traceback" not in ingest.log + persistor.log


@pytest.mark.rabbitmq
def test_ingest_refuses_a_durability_mismatch_naming_the_exchange(tmp_path, corner):
    """intake.durable against a non-durable exchange: exit 2 naming the exchange and intake.durable."""
    url = migrate(f"sqlite:///{tmp_path / 'winchester.db'}")
    corner.declare_exchange()
    config = make_config(tmp_path, *corner.config_lines(durable=True), url=url)
    result = subprocess.run([str(BIN / "winchester"), "ingest", "-c", str(config)], capture_output=True,
                            text=True, env=script_env(), timeout=120, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error: " in result.stderr
    assert f"exchange {corner.exchange!r}" in result.stderr and "intake.durable" in result.stderr
    assert "guest:guest" not in result.stderr
    assert "Traceback" not in result.stderr
