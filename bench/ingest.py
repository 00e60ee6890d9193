"""End-to-end ingest throughput: JSON line -> distill -> store -> streams, on SQLite and PostgreSQL.

Feeds the seeded nova workload (bench/workload.py: a fleet of --instances
instances, day after day) through the Ingester with the example configuration
(etc/winchester.yaml: the usage audit, one stream per instance per UTC day),
in batches of --batch-size lines, each batch one add_notifications call.

The workload is generated lazily, one batch ahead: a batch's lines are made
before its clock starts, so "ingest" rates time only add_notifications;
"overall" includes generating the JSON. Each database runs in its own child
process, so its peak RSS is its own; RSS is also sampled at the --rss-at
notification counts, to show that memory does not grow with the input.

    python bench/ingest.py [--count 100000] [--db sqlite|postgresql|both] [--batch-size 1000]
                           [--rss-at 250000,500000,1000000]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import database, example_ingester
from workload import Workload, WorkloadSpec

from winchester.services import tune_garbage_collection

PAGE = os.sysconf("SC_PAGE_SIZE")


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run(kind: str, args: argparse.Namespace) -> dict:
    """Ingest ``args.count`` notifications into a fresh ``kind`` database; the figures as a dict."""
    checkpoints = sorted(set(args.rss_at))
    with database(kind) as url:
        store, ingester = example_ingester(url)
        tune_garbage_collection()  # as `winchester ingest-file` does

        # More days than the count can need (every instance sends at least one
        # notification a day); generation is lazy, so unused days cost nothing.
        spec = WorkloadSpec(instances=args.instances, days=args.count // args.instances + 3,
                            seed=args.seed)
        workload = Workload(spec, detailed_truth=False)
        lines = itertools.islice(workload.lines(), args.count)
        if args.mode == "pipelined":
            return _pipelined(kind, args, store, ingester, workload, lines, checkpoints)

        samples = []
        done = last_done = 0
        ingest_seconds = last_seconds = 0.0
        batch_seconds = []
        started = time.perf_counter()
        while True:
            batch = list(itertools.islice(lines, args.batch_size))
            if not batch:
                break
            t0 = time.perf_counter()
            ingester.add_notifications(batch)
            elapsed = time.perf_counter() - t0
            ingest_seconds += elapsed
            batch_seconds.append(elapsed)
            done += len(batch)
            if checkpoints and done >= checkpoints[0]:
                while checkpoints and done >= checkpoints[0]:
                    checkpoints.pop(0)
                interval = ingest_seconds - last_seconds
                samples.append({"at": done, "peak_rss_mb": peak_rss_mb(),
                                "rss_mb": current_rss_mb(),
                                "interval_rate": (done - last_done) / interval if interval else 0.0})
                last_done, last_seconds = done, ingest_seconds
        overall_seconds = time.perf_counter() - started
        stats = ingester.stats
        streams_in_store = store.count_streams()
        with store.engine.connect() as connection:
            version = connection.exec_driver_sql(
                "SELECT sqlite_version()" if kind == "sqlite" else "SHOW server_version").scalar()
        store.close()
    batch_seconds.sort()
    return {
        "db": kind, "version": str(version).split()[0], "notifications": done, "ingest_seconds": ingest_seconds,
        "overall_seconds": overall_seconds, "saved": stats.saved,
        "unconverted": stats.unconverted, "rejected": sum(stats.rejected.values()),
        "new_streams": sum(stats.new_streams.values()), "streams_in_store": streams_in_store,
        "ready": sum(stats.ready.values()), "instance_days": workload.truth.instance_days,
        "batch_p50_ms": 1000 * batch_seconds[len(batch_seconds) // 2] if batch_seconds else 0.0,
        "batch_max_ms": 1000 * batch_seconds[-1] if batch_seconds else 0.0,
        "peak_rss_mb": peak_rss_mb(), "rss_mb": current_rss_mb(), "samples": samples,
    }


def _pipelined(kind: str, args: argparse.Namespace, store, ingester, workload, lines,
               checkpoints: list[int]) -> dict:
    """What `ingest-file` and `replay` do: read a capture file, distil a batch while the
    writer thread stores the one before."""
    import tempfile

    from winchester.cli._inputs import capture_lines
    from winchester.services.replay import Notification, Replayer

    with tempfile.NamedTemporaryFile(suffix=".jsonl", prefix="winchester-bench-") as capture:
        for line in lines:
            capture.write(line + b"\n")
        capture.flush()
        samples: list[dict] = []
        last = [0, 0.0]
        batch_seconds: list[float] = []
        previous = [time.perf_counter()]

        def on_batch(summary) -> None:
            now = time.perf_counter()
            batch_seconds.append(now - previous[0])
            previous[0] = now
            if checkpoints and summary.read >= checkpoints[0]:
                while checkpoints and summary.read >= checkpoints[0]:
                    checkpoints.pop(0)
                interval = summary.elapsed - last[1]
                samples.append({"at": summary.read, "peak_rss_mb": peak_rss_mb(),
                                "rss_mb": current_rss_mb(),
                                "interval_rate": (summary.read - last[0]) / interval if interval else 0.0})
                last[:] = [summary.read, summary.elapsed]

        replayer = Replayer(ingester, batch_size=args.batch_size, on_batch=on_batch)
        started = time.perf_counter()
        summary = replayer.run(Notification(line, f"{name}:{number}")
                               for name, number, line in capture_lines(capture.name))
        seconds = time.perf_counter() - started
    stats = ingester.stats
    streams_in_store = store.count_streams()
    with store.engine.connect() as connection:
        version = connection.exec_driver_sql(
            "SELECT sqlite_version()" if kind == "sqlite" else "SHOW server_version").scalar()
    store.close()
    batch_seconds.sort()
    return {
        "db": kind, "version": str(version).split()[0], "notifications": summary.read,
        "ingest_seconds": seconds, "overall_seconds": seconds, "saved": stats.saved,
        "unconverted": stats.unconverted, "rejected": sum(stats.rejected.values()),
        "new_streams": sum(stats.new_streams.values()), "streams_in_store": streams_in_store,
        "ready": sum(stats.ready.values()), "instance_days": workload.truth.instance_days,
        "batch_p50_ms": 1000 * batch_seconds[len(batch_seconds) // 2] if batch_seconds else 0.0,
        "batch_max_ms": 1000 * batch_seconds[-1] if batch_seconds else 0.0,
        "peak_rss_mb": peak_rss_mb(), "rss_mb": current_rss_mb(), "samples": samples,
    }


def report(results: list[dict], args: argparse.Namespace) -> None:
    print(f"{args.count:,} nova notifications (bench/workload.py: fleet of {args.instances:,}, "
          f"seed {args.seed}), batches of {args.batch_size:,}, etc/winchester.yaml usage audit; "
          + ", ".join(f"{r['db']} {r['version']}" for r in results))
    print(f"{'db':<20}{'notifs':>10}{'ingest s':>10}{'ingest/s':>10}{'overall s':>11}"
          f"{'overall/s':>11}{'events':>10}{'streams':>9}{'expected':>10}{'ready':>8}"
          f"{'p50 ms':>8}{'max ms':>8}{'peak MB':>9}")
    for r in results:
        n = r["notifications"]
        print(f"{r['db']:<20}{n:>10,}{r['ingest_seconds']:>10.1f}{n / r['ingest_seconds']:>10,.0f}"
              f"{r['overall_seconds']:>11.1f}{n / r['overall_seconds']:>11,.0f}{r['saved']:>10,}"
              f"{r['new_streams']:>9,}{r['instance_days']:>10,}{r['ready']:>8,}"
              f"{r['batch_p50_ms']:>8.0f}{r['batch_max_ms']:>8.0f}{r['peak_rss_mb']:>9.0f}")
        if (r["unconverted"] or r["rejected"] or r["streams_in_store"] != r["new_streams"]
                or r["new_streams"] != r["instance_days"]):
            print(f"  MISMATCH: {r['unconverted']} unconverted, {r['rejected']} rejected, "
                  f"{r['streams_in_store']} streams in the store, {r['instance_days']} expected")
    print("(events: saved; streams: created; expected: distinct instance-days the workload sent; "
          "ready: streams whose end-of-day .exists arrived; p50/max: one batch)")
    print()
    print(f"{'db':<20}{'at':>10}{'peak RSS MB':>13}{'RSS MB':>9}{'ingest/s since last':>21}")
    for r in results:
        for s in r["samples"]:
            print(f"{r['db']:<20}{s['at']:>10,}{s['peak_rss_mb']:>13.0f}{s['rss_mb']:>9.0f}"
                  f"{s['interval_rate']:>21,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=2000, help="workload fleet size")
    parser.add_argument("--seed", type=int, default=WorkloadSpec.seed)
    parser.add_argument("--rss-at", default=None,
                        help="comma-separated notification counts at which to sample RSS "
                             "(default: every quarter of --count)")
    parser.add_argument("--mode", choices=("serial", "pipelined", "both"), default="both",
                        help="serial: add_notifications batch after batch (the JSON already in "
                             "memory); pipelined: what ingest-file and replay do, reading a file "
                             "and distilling one batch while the writer thread stores the last")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.rss_at:
        args.rss_at = [int(value.replace("_", "")) for value in args.rss_at.split(",") if value]
    else:
        args.rss_at = [args.count * k // 4 for k in range(1, 5)]
    args.rss_at = [value for value in args.rss_at if 0 < value <= args.count]

    if args.json:
        print(json.dumps(run(args.db, args)))
        return
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    modes = ["serial", "pipelined"] if args.mode == "both" else [args.mode]
    results = []
    for kind, mode in itertools.product(kinds, modes):
        # A child per run: ru_maxrss is a process-wide high-water mark.
        command = [sys.executable, str(Path(__file__).resolve()), "--json", "--db", kind,
                   "--mode", mode,
                   "--count", str(args.count), "--batch-size", str(args.batch_size),
                   "--instances", str(args.instances), "--seed", str(args.seed),
                   "--rss-at", ",".join(map(str, args.rss_at)) or "0"]
        completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
        if completed.returncode != 0:
            sys.exit(f"the {kind} run failed (exit status {completed.returncode})")
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        result["db"] = f"{kind} {mode}"
        results.append(result)
    report(results, args)


if __name__ == "__main__":
    main()
