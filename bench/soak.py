"""Soak: the whole system end to end through RabbitMQ and PostgreSQL, with the books checked.

Starts 2 `winchester ingest` processes sharing one queue, 1 `winchester
persistor` and 2 `winchester worker` processes (real subprocesses, the event
clock, the example usage-audit configuration with a recording handler added
to its fire pipeline), then publishes --count notifications of the seeded
nova workload (bench/workload.py) to a private exchange as fast as the broker
takes them, and waits until everything is stored and every ready stream has
fired.

Reports: the publish rate; notifications/s end to end (first publish to the
last notification stored and archived, and to the last ready stream fired);
latency from publishing a stream's `.exists` record to its fire pipeline's
commit (p50, p99, max); each process's RSS at 10% of the run and at the end;
and the books: every notification archived once and stored as an event once,
every stream whose fire criteria were met fired exactly once (the recording
handler's rows), none left firing, expiring or in error.

Targets (issue 9): 1,000,000 notifications with nothing lost or duplicated,
at least 5,000 notifications/s sustained end to end, RSS flat within 10%.

    python bench/soak.py [--count 1000000] [--instances 20000] [--keep]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg
from _common import POSTGRES, ROOT, Autovacuum
from kombu import Connection, Exchange
from workload import Workload, WorkloadSpec

from winchester.store._schema import STREAM_STATES

AMQP = "amqp://guest:guest@127.0.0.1:5672//"
BIN = Path(sys.executable).parent
EXISTS = "compute.instance.exists"
GENERATED = ("compute.instance.exists.verified", "compute.instance.exists.failed",
             "compute.instance.exists.warnings")  # what the usage handler emits


class CpuMeter(threading.Thread):
    """CPU seconds spent by each part of the system during the run, the broker and the
    database server included: every process is sampled each second and its last reading
    kept, so processes that end before the run does (PostgreSQL backends) still count."""

    def __init__(self, names: dict[int, str], database: str | None = None):
        super().__init__(daemon=True)
        self.names, self.tick = names, os.sysconf("SC_CLK_TCK")
        # Backends are told apart by the application_name their client set
        # (PGAPPNAME, which Processes.start sets for each process).
        self.database = psycopg.connect(database, autocommit=True) if database else None
        self.backends: dict[int, str] = {}
        self.before = self._sample()
        self.latest: dict[int, tuple[str, float]] = {}
        self.finished = threading.Event()

    def _sample(self) -> dict[int, tuple[str, float]]:
        found = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as stat:
                    text = stat.read()
            except OSError:
                continue
            pid, command = int(entry.name), text[text.index("(") + 1:text.rindex(")")]
            fields = text[text.rindex(")") + 2:].split()
            part = self.names.get(pid) or ("RabbitMQ" if command == "beam.smp" else
                                          self.backends.get(pid, "PostgreSQL (other)")
                                          if command.startswith("postgres") else
                                          "publisher" if pid == os.getpid() else None)
            if part:
                found[pid] = (part, (int(fields[11]) + int(fields[12])) / self.tick)
        return found

    def _name_backends(self) -> None:
        if self.database is not None:
            self.backends.update(
                (pid, f"PostgreSQL ({name.removeprefix('soak:')})") for pid, name in self.database.execute(
                    "SELECT pid, application_name FROM pg_stat_activity "
                    "WHERE application_name LIKE 'soak:%'").fetchall())

    def run(self) -> None:
        while not self.finished.wait(1):
            self._name_backends()
            self.latest.update(self._sample())

    def stop(self) -> dict[str, float]:
        self.finished.set()
        self.join()
        self._name_backends()
        self.latest.update(self._sample())
        if self.database is not None:
            self.database.close()
        spent: dict[str, float] = {}
        for pid, (part, seconds) in self.latest.items():
            spent[part] = spent.get(part, 0.0) + seconds - self.before.get(pid, (part, 0.0))[1]
        return spent


class RunningCount:
    """The rows of a table, counted as they are added: each call counts only the ids above
    a mark. Writers commit out of id order (two ingest processes), so the mark trails the
    newest id by LAG seconds; a row that commits later than that would be missed, which
    only delays the end of the run (the books count everything again)."""

    LAG = 30.0

    def __init__(self, table: str, condition: str = "true"):
        self.table, self.condition = table, condition
        self.below, self.mark = 0, 0  # rows with id <= mark
        self.seen: list[tuple[float, int]] = []  # (when, newest id then)

    def count(self, db, **params) -> int:
        now = time.monotonic()
        while self.seen and self.seen[0][0] < now - self.LAG:
            _, newest = self.seen.pop(0)
            if newest > self.mark:
                self.below += db.execute(
                    f"SELECT count(*) FROM {self.table} WHERE id > %(mark)s AND id <= %(newest)s "
                    f"AND {self.condition}", {"mark": self.mark, "newest": newest, **params}).fetchone()[0]
                self.mark = newest
        above, newest = db.execute(
            f"SELECT count(*), max(id) FROM {self.table} WHERE id > %(mark)s AND {self.condition}",
            {"mark": self.mark, **params}).fetchone()
        self.seen.append((now, newest or self.mark))
        return self.below + above


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def configure(directory: Path, schema: str, tag: str) -> Path:
    for name in ("event_definitions.yaml", "triggers.yaml"):
        shutil.copy(ROOT / "etc" / name, directory / name)
    (directory / "pipelines.yaml").write_text(
        "usage_audit:\n  - usage\n  - name: record\n    params:\n"
        f"      url: \"{POSTGRES}?options=-csearch_path%3D{schema}\"\n"
        "usage_missing_exists:\n  - usage\n")
    (directory / "winchester.yaml").write_text(f"""\
distiller_config: event_definitions.yaml
trigger_definitions: triggers.yaml
pipeline_config: pipelines.yaml
pipeline_handlers:
  record: "{ROOT / 'bench'}|soak_recorder:Recorder"
database:
  url: "postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
bus:
  url: {AMQP}
clock: event
log_level: warning
statistics_period: 30
pipeline_worker_delay: 0.05
purge_completed_streams: false
intake:
  exchanges: [soak-nova-{tag}]
  topic: soak-notifications-{tag}
  priorities: [info]
  queue: soak-ingest-{tag}
  batch_size: 1000
  batch_seconds: 0.5
persistor:
  queue: soak-persistor-{tag}
  batch_size: 1000
  batch_seconds: 0.5
""")
    return directory / "winchester.yaml"


class Processes:
    def __init__(self, config: Path, logs: Path):
        self.config, self.logs = config, logs
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *command: str) -> None:
        log = open(self.logs / f"{name}.log", "wb")
        self.running[name] = subprocess.Popen(
            [str(BIN / "winchester"), *command, "-c", str(self.config), "--name", name],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PGAPPNAME": f"soak:{name}"})

    def check(self) -> None:
        for name, process in self.running.items():
            if process.poll() is not None:
                sys.exit(f"{name} exited with {process.returncode}; see {self.logs / (name + '.log')}")

    def rss(self) -> dict[str, float]:
        return {name: rss_mb(process.pid) for name, process in self.running.items()}

    def stop(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def queue_exists(name: str) -> bool:
    with Connection(AMQP) as connection:
        try:
            connection.channel().queue_declare(name, passive=True)
            return True
        except Exception:  # noqa: BLE001 - any failure: not there (yet)
            return False


def write_workload(path: Path, count: int, instances: int, seed: int) -> None:
    """The notifications to publish, generated before the run: in production they come
    from other machines, and generating them here would take CPU from the system measured."""
    spec = WorkloadSpec(instances=instances, days=count // instances + 3, seed=seed)
    with path.open("wb") as out:
        for line in itertools.islice(Workload(spec, detailed_truth=False).lines(), count):
            out.write(line + b"\n")


def publish(exchange_name: str, topic: str, workload: Path, published_at: dict[str, float],
            progress) -> float:
    """Publish the workload file; remembers when each .exists left. Returns the seconds taken."""
    import amqp
    import orjson

    exchange = Exchange(exchange_name, type="topic", durable=False)
    routing_key = f"{topic}.info"
    started = time.perf_counter()
    with Connection(AMQP) as connection, workload.open("rb") as lines:
        channel = connection.channel()
        exchange(channel).declare()
        # The protocol library's own publish: kombu's Producer costs the
        # publisher (and the broker, with the extra properties) more per message.
        for number, line in enumerate(lines, 1):
            line = line.rstrip(b"\n")
            if b'"compute.instance.exists"' in line:
                published_at[orjson.loads(line)["message_id"]] = time.time()
            channel.basic_publish(amqp.Message(line, content_type="application/json",
                                               content_encoding="utf-8", delivery_mode=2),
                                  exchange=exchange_name, routing_key=routing_key)
            if number % 10_000 == 0:
                progress(number)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--instances", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=20150201)
    parser.add_argument("--keep", action="store_true", help="Keep the schema and the logs.")
    parser.add_argument("--no-vacuum", action="store_true",
                        help="When the server runs without autovacuum, do not do its work either "
                             "(by default the soak does, as a production server would)")
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    schema = f"soak_{tag}"
    with psycopg.connect(POSTGRES, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    db = psycopg.connect(f"{POSTGRES}?options=-csearch_path%3D{schema}&application_name=soak:progress",
                         autocommit=True)
    directory = Path(tempfile.mkdtemp(prefix="winchester-soak-"))
    config = configure(directory, schema, tag)
    subprocess.run([str(BIN / "winchester"), "db", "upgrade", "-c", str(config)], check=True,
                   stdout=subprocess.DEVNULL)
    db.execute("CREATE TABLE soak_fired (stream_id bigint, committed_at double precision, exists_id text)")
    workload = directory / "workload.jsonl"
    print(f"generating {args.count:,} notifications of the workload...", file=sys.stderr, flush=True)
    write_workload(workload, args.count, args.instances, args.seed)
    processes = Processes(config, directory)
    for name, command in (("ingest-1", "ingest"), ("ingest-2", "ingest"), ("persistor", "persistor"),
                          ("worker-1", "worker"), ("worker-2", "worker")):
        processes.start(name, command)
    try:
        deadline = time.monotonic() + 60
        while not (queue_exists(f"soak-ingest-{tag}") and queue_exists(f"soak-persistor-{tag}")):
            processes.check()
            if time.monotonic() > deadline:
                sys.exit(f"the consumers did not declare their queues within 60s; logs in {directory}")
            time.sleep(0.2)
        rss_start: dict[str, float] = {}
        rss_middle: dict[str, float] = {}
        published_at: dict[str, float] = {}

        def progress(number: int) -> None:
            if number >= args.count // 10 and not rss_start:
                rss_start.update(processes.rss())
            if number >= args.count // 2 and not rss_middle:
                rss_middle.update(processes.rss())
            if number % 100_000 == 0:
                print(f"  published {number:,}", file=sys.stderr, flush=True)

        meter = CpuMeter({process.pid: name for name, process in processes.running.items()},
                         f"{POSTGRES}?application_name=soak:meter")
        meter.start()
        vacuuming = None
        if not args.no_vacuum and Autovacuum.needed():
            vacuuming = Autovacuum(schema, application_name="soak:autovacuum").start()
            print("the server runs with autovacuum off: the soak vacuums and analyzes at autovacuum's "
                  "default thresholds, its CPU counted as PostgreSQL (autovacuum)", file=sys.stderr)
        started = time.time()
        publish_seconds = publish(f"soak-nova-{tag}", f"soak-notifications-{tag}", workload,
                                  published_at, progress)
        print(f"published {args.count:,} notifications in {publish_seconds:.0f}s "
              f"({args.count / publish_seconds:,.0f}/s)", file=sys.stderr)

        archived_rows = RunningCount("archive")
        stored_rows = RunningCount("events", "event_type_id NOT IN (SELECT id FROM event_types "
                                             "WHERE name = ANY(%(generated)s))")
        not_completed = [state for state in STREAM_STATES if state != "completed"]

        def figures() -> tuple[int, int, int]:
            # Counted without rereading the tables each second (a million
            # archived bodies are gigabytes): only rows added since, and the
            # ready streams through the (state, fire_timestamp) index.
            archived = archived_rows.count(db)
            stored = stored_rows.count(db, generated=list(GENERATED))
            waiting = db.execute("SELECT count(*) FROM streams WHERE state = ANY(%s) "
                                 "AND fire_timestamp IS NOT NULL", (not_completed,)).fetchone()[0]
            return archived, stored, waiting

        stored_at = fired_at = None
        last: tuple = ()
        stable_since = time.monotonic()
        while True:
            processes.check()
            current = figures()
            if current != last:
                last, stable_since = current, time.monotonic()
                print(f"  archived {current[0]:,}, stored {current[1]:,}, ready streams not yet fired "
                      f"{current[2]:,}", file=sys.stderr, flush=True)
            archived, stored, waiting = current
            if stored_at is None and archived >= args.count and time.monotonic() - stable_since > 3:
                stored_at = time.time() - 3
            if stored_at is not None and waiting == 0:
                fired_at = time.time()
                break
            if time.monotonic() - stable_since > 120:
                sys.exit(f"no progress for 120s: {current}; logs in {directory}")
            time.sleep(1)
        rss_end = processes.rss()
        cpu = meter.stop()
        if vacuuming:
            vacuuming.stop()
    finally:
        processes.stop()

    # -- the books ---------------------------------------------------------------------------
    one = lambda sql, *params: db.execute(sql, params or None).fetchone()  # noqa: E731
    archived, archived_distinct = one("SELECT count(*), count(DISTINCT message_id) FROM archive")
    events_stored = one("SELECT count(*) FROM events e JOIN event_types t ON t.id = e.event_type_id "
                        "WHERE t.name <> ALL(%s)", list(GENERATED))[0]
    unconverted = sum(_summary(directory / f"ingest-{n}.log", "unconverted") for n in (1, 2))
    fired_rows, fired_streams = one("SELECT count(*), count(DISTINCT stream_id) FROM soak_fired")
    should_fire = one("SELECT count(*) FROM streams WHERE fire_timestamp IS NOT NULL")[0]
    stuck = dict(db.execute("SELECT state, count(*) FROM streams WHERE state IN "
                            "('firing', 'expiring', 'error', 'expire_error') GROUP BY state").fetchall())
    latencies = sorted(committed - published_at[exists] for committed, exists in db.execute(
        "SELECT committed_at, exists_id FROM soak_fired").fetchall() if exists in published_at)
    states = dict(db.execute("SELECT state, count(*) FROM streams GROUP BY state").fetchall())
    dead = one("SELECT count(*) FROM dead_letters")[0]

    print(f"\nsoak: {args.count:,} notifications of {args.instances:,} instances, 2 ingest, 1 persistor, "
          "2 workers, PostgreSQL and RabbitMQ on this machine\n")
    print(f"publish                {args.count / publish_seconds:>9,.0f} notifications/s")
    print(f"end to end (stored)    {args.count / (stored_at - started):>9,.0f} notifications/s "
          f"({stored_at - started:,.0f}s)")
    print(f"end to end (fired)     {args.count / (fired_at - started):>9,.0f} notifications/s "
          f"({fired_at - started:,.0f}s)")
    if latencies:
        print(f"publish .exists -> fired: p50 {statistics.median(latencies):.2f}s, "
              f"p99 {latencies[int(0.99 * (len(latencies) - 1))]:.2f}s, max {latencies[-1]:.2f}s "
              f"({len(latencies):,} streams)")
    print("RSS MB at 10% -> 50% -> end:  " + ", ".join(
        f"{name} {rss_start.get(name, 0):.0f} -> {rss_middle.get(name, 0):.0f} -> {rss_end[name]:.0f} "
        f"({100 * (rss_end[name] / rss_start[name] - 1) if rss_start.get(name) else 0:+.1f}%)"
        for name in rss_end))
    print(f"CPU, µs per notification ({sum(cpu.values()) / (fired_at - started):.2f} of 2 cores busy): "
          + ", ".join(f"{part} {1e6 * seconds / args.count:,.0f}"
                      for part, seconds in sorted(cpu.items(), key=lambda item: -item[1]))
          + f"; all {1e6 * sum(cpu.values()) / args.count:,.0f}")
    services = sum(seconds for part, seconds in cpu.items() if part.startswith(("RabbitMQ", "PostgreSQL")))
    print(f"RabbitMQ and PostgreSQL alone: {1e6 * services / args.count:,.0f} µs per notification, "
          f"so at most {2 * args.count / services:,.0f} notifications/s on 2 cores if nothing else ran")
    if vacuuming:
        print(f"autovacuum's work, done by the soak: {vacuuming.vacuums} vacuums, "
              f"{vacuuming.analyzes} analyzes")
    print("streams: " + ", ".join(f"{state} {n:,}" for state, n in sorted(states.items())))
    books = {
        "archived once each": archived == archived_distinct == args.count,
        "stored once each (events + unconverted = published)": events_stored + unconverted == args.count,
        "fired exactly once": fired_rows == fired_streams == should_fire,
        "none stuck or failed": not stuck,
        "no dead letters": dead == 0,
    }
    print(f"books: archive {archived:,} ({archived_distinct:,} distinct); events {events_stored:,} + "
          f"{unconverted:,} unconverted; fired {fired_rows:,} commits of {fired_streams:,} streams, "
          f"{should_fire:,} met their fire criteria; stuck {stuck or 'none'}; dead letters {dead:,}")
    for check, ok in books.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {check}")
    db.close()
    if args.keep:
        print(f"kept: schema {schema}, logs in {directory}")
    else:
        with psycopg.connect(POSTGRES, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')
        shutil.rmtree(directory, ignore_errors=True)
        with Connection(AMQP) as connection:
            channel = connection.channel()
            for queue in (f"soak-ingest-{tag}", f"soak-persistor-{tag}"):
                channel.queue_delete(queue)
            channel.exchange_delete(f"soak-nova-{tag}")
    if not all(books.values()):
        sys.exit(1)


def _summary(log: Path, key: str) -> int:
    """A figure from an ingest process's exit line (`ingest stopped: ...`)."""
    import re

    text = log.read_text(errors="replace")
    found = re.findall(rf"([\d,]+) {key}", text)
    return int(found[-1].replace(",", "")) if found else 0


if __name__ == "__main__":
    main()
