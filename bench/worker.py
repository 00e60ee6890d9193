"""Pipeline worker throughput: streams fired per second with a ``logger`` pipeline.

Seeds --streams ready-to-fire streams of --events events each (one trigger,
distinguished by instance_id, fired by its last event), then times workers
processing all of them (claim, read events, run the pipeline, record the
outcome; completed streams purged, as by default): one worker on SQLite, one
and two worker processes on PostgreSQL. The logger handler logs at INFO to
--log-file (default: /dev/null), so its formatting cost is counted.

Target (issue 5): 2,000 streams/s for one worker; two workers 1.6x one.

    python bench/worker.py [--streams 10000] [--events 10] [--db sqlite|postgresql|both]
                           [--batch-size 1000]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import time
from datetime import datetime, timedelta

from _common import busy_cpu_seconds, database

from winchester.clock import FixedClock
from winchester.pipelines import Pipeline, PipelineEntry, PipelineSet
from winchester.pipelines._logging import LoggingHandler
from winchester.services.ingest import Ingester
from winchester.services.worker import Worker
from winchester.store import Store, create_engine, upgrade
from winchester.triggers import load_triggers

START = datetime(2024, 1, 1)
NOW = START + timedelta(days=1)

TRIGGERS = [{
    "name": "bench", "distinguished_by": ["instance_id"], "expiration": "$last + 2d",
    "fire_pipeline": "log", "expire_pipeline": "log",
    "match_criteria": [{"event_type": "compute.instance.*"}],
    "fire_criteria": [{"event_type": "compute.instance.delete.end"}],
}]


def parts():
    triggers = load_triggers(TRIGGERS, "bench-triggers.yaml", pipelines={"log"})
    pipelines = PipelineSet({"log": Pipeline("log", (PipelineEntry("logger", LoggingHandler, {}),))})
    return triggers, pipelines


def seed(url: str, streams: int, events: int) -> float:
    engine = create_engine(url)
    upgrade(engine)
    engine.dispose()
    triggers, _ = parts()
    store = Store.from_url(url, ["instance_id"])
    ingester = Ingester(store, triggers, clock=FixedClock(START))
    started = time.perf_counter()
    batch = []
    for stream in range(streams):
        for number in range(events):
            last = number == events - 1
            batch.append({
                "message_id": f"{stream:08d}-{number:03d}",
                "event_type": "compute.instance.delete.end" if last else "compute.instance.update",
                "timestamp": START + timedelta(seconds=stream + number),
                "instance_id": f"instance-{stream:08d}", "tenant_id": "tenant-1",
                "state": "active", "host": f"compute-{stream % 97}", "memory_mb": 2048,
            })
        if len(batch) >= 5000:
            ingester.add_events(batch)
            batch = []
    if batch:
        ingester.add_events(batch)
    if store.engine.dialect.name == "postgresql":
        # What autovacuum does on a production server (it is off on the bench
        # machine's): without statistics the planner joins by full scans.
        with store.engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE")
            connection.commit()
    store.close()
    return time.perf_counter() - started


def work(url: str, name: str, batch_size: int, log_file: str, barrier, results) -> None:
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("winchester")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    triggers, pipelines = parts()
    store = Store.from_url(url, ["instance_id"])
    worker = Worker(store, triggers, pipelines, name=name, clock=FixedClock(NOW),
                    batch_size=batch_size, purge_completed=True)
    barrier.wait()
    started, cpu = time.perf_counter(), time.process_time()
    processed = worker.run_until_idle()
    results.put((name, processed, time.perf_counter() - started, time.process_time() - cpu))
    store.close()


class _Vacuum:
    """Vacuums the streams table every ``interval`` seconds, as autovacuum would.

    The bench machine's PostgreSQL runs with autovacuum off; without it the
    index entries of claimed and purged streams pile up and every claim walks
    over them, which no production server (autovacuum on by default) sees.
    """

    def __init__(self, url: str, interval: float):
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, interval), daemon=True)
        self._thread.start()

    def _run(self, url: str, interval: float) -> None:
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            while not self._stop.wait(interval):
                connection.exec_driver_sql("VACUUM streams")
        engine.dispose()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def measure(kind: str, workers: int, args: argparse.Namespace) -> dict:
    with database(kind) as url:
        seconds_to_seed = seed(url, args.streams, args.events)
        context = multiprocessing.get_context("fork")
        barrier = context.Barrier(workers + 1)
        results = context.Queue()
        processes = [context.Process(target=work, args=(url, f"w{i}", args.batch_size, args.log_file,
                                                        barrier, results)) for i in range(workers)]
        for process in processes:
            process.start()
        barrier.wait()
        started, busy = time.perf_counter(), busy_cpu_seconds()
        vacuuming = _Vacuum(url, args.vacuum) if kind == "postgresql" and args.vacuum else None
        finished = [results.get() for _ in processes]
        elapsed = time.perf_counter() - started
        machine = busy_cpu_seconds() - busy
        if vacuuming:
            vacuuming.stop()
        for process in processes:
            process.join()
        store = Store.from_url(url)
        left = store.count_streams()
        store.close()
    processed = sum(count for _, count, _, _ in finished)
    worker_cpu = sum(cpu for _, _, _, cpu in finished)
    return {"db": kind, "workers": workers, "streams": processed, "left": left,
            "seconds": elapsed, "rate": processed / elapsed, "seed_seconds": seconds_to_seed,
            "per_worker": sorted((name, count) for name, count, _, _ in finished),
            "worker_cpu": worker_cpu, "other_cpu": max(0.0, machine - worker_cpu)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=10, help="events per stream")
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--batch-size", type=int, default=1000, help="streams claimed at a time")
    parser.add_argument("--log-file", default=os.devnull)
    parser.add_argument("--vacuum", type=float, default=1.0, metavar="SECONDS",
                        help="PostgreSQL: vacuum the streams table this often during the run, as "
                             "autovacuum would (0: never; this machine runs with autovacuum off)")
    args = parser.parse_args()
    runs = []
    if args.db in ("sqlite", "both"):
        runs.append(("sqlite", 1))
    if args.db in ("postgresql", "both"):
        runs += [("postgresql", 1), ("postgresql", 2)]
    print(f"{args.streams:,} ready streams of {args.events} events, logger pipeline, "
          f"batch {args.batch_size}")
    figures = {}
    for kind, workers in runs:
        result = measure(kind, workers, args)
        figures[(kind, workers)] = result["rate"]
        check = "" if result["left"] == 0 and result["streams"] == args.streams else \
            f"  (!! {result['streams']:,} processed, {result['left']:,} left)"
        print(f"{kind:<10} {workers} worker(s): {result['rate']:>8,.0f} streams/s  "
              f"({result['streams']:,} in {result['seconds']:.2f}s; split {result['per_worker']}; "
              f"seeding took {result['seed_seconds']:.1f}s){check}")
        print(f"{'':<21}CPU: workers {result['worker_cpu']:.1f}s, everything else (the database) "
              f"{result['other_cpu']:.1f}s, of {result['seconds'] * os.cpu_count():.1f}s available")
    if ("postgresql", 1) in figures and ("postgresql", 2) in figures:
        print(f"postgresql scaling, 2 workers / 1: {figures[('postgresql', 2)] / figures[('postgresql', 1)]:.2f}x")


if __name__ == "__main__":
    main()
