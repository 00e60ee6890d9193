"""Replay throughput: `winchester replay --run-workers` over the bench workload, firing included.

Writes --count notifications of the seeded nova workload (bench/workload.py,
fleet of --instances) to a JSON-lines file, then times the real command,
`winchester replay -c etc/winchester.yaml FILE --run-workers --quiet`, on a
fresh database of each kind: distilling, matching, storing, and firing and
expiring the usage-audit streams as event time advances (the `usage`
pipeline runs for every stream and its verdicts are stored). Logging goes to
/dev/null, so its formatting is counted but not a terminal's speed.

Target (issue 7): at least 10,000 notifications/s on SQLite, firing included.

    python bench/replay.py [--count 100000] [--db sqlite|postgresql|both] [--instances 2000]
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, busy_cpu_seconds, database
from workload import Workload, WorkloadSpec

SUMMARY = re.compile(r"replayed ([\d,]+) notifications in ([\d.]+)s")
STREAMS = re.compile(r"streams: ([\d,]+) created, ([\d,]+) fired, ([\d,]+) expired")


def number(text: str) -> int:
    return int(text.replace(",", ""))


def run(kind: str, capture: Path, batch_size: int) -> dict:
    with database(kind) as url:
        env = {**os.environ, "WINCHESTER_DATABASE_URL": url}
        command = [sys.executable, "-m", "winchester"]
        config = str(ROOT / "etc" / "winchester.yaml")
        subprocess.run([*command, "db", "upgrade", "-c", config], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy = busy_cpu_seconds()
        started = time.perf_counter()
        completed = subprocess.run(
            [*command, "replay", "-c", config, str(capture), "--run-workers", "--quiet",
             "--batch-size", str(batch_size)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=False)
        wall = time.perf_counter() - started
        machine = busy_cpu_seconds() - busy
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if completed.returncode != 0:
            sys.exit(f"the {kind} replay failed (exit {completed.returncode}):\n{completed.stdout}")
        summary, streams = SUMMARY.search(completed.stdout), STREAMS.search(completed.stdout)
        if not summary or not streams:
            sys.exit(f"cannot read the replay's summary:\n{completed.stdout}")
        return {
            "db": kind, "notifications": number(summary.group(1)),
            "replay_seconds": float(summary.group(2)), "wall_seconds": wall,
            "created": number(streams.group(1)), "fired": number(streams.group(2)),
            "expired": number(streams.group(3)),
            "cpu_seconds": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
            "machine_cpu_seconds": machine,
            "peak_rss_mb": after.ru_maxrss / 1024,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=WorkloadSpec.seed)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="winchester-replay-") as directory:
        capture = Path(directory) / "workload.jsonl"
        spec = WorkloadSpec(instances=args.instances, days=args.count // args.instances + 3,
                            seed=args.seed, broken_fraction=0.02)
        workload = Workload(spec, detailed_truth=False)
        with open(capture, "wb") as handle:
            for line in itertools.islice(workload.lines(), args.count):
                handle.write(line + b"\n")
        kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
        results = [run(kind, capture, args.batch_size) for kind in kinds]

    print(f"{args.count:,} nova notifications (bench/workload.py: fleet of {args.instances:,}, "
          f"seed {args.seed}, 2% broken), `winchester replay --run-workers` with etc/winchester.yaml "
          f"(usage audit), batches of {args.batch_size:,}")
    print(f"{'db':<12}{'notifs':>10}{'replay s':>10}{'notifs/s':>10}{'created':>9}{'fired':>9}"
          f"{'expired':>9}{'fired/s':>9}{'cpu s':>8}{'machine':>9}{'peak MB':>9}")
    for r in results:
        rate = r["notifications"] / r["replay_seconds"]
        print(f"{r['db']:<12}{r['notifications']:>10,}{r['replay_seconds']:>10.1f}{rate:>10,.0f}"
              f"{r['created']:>9,}{r['fired']:>9,}{r['expired']:>9,}"
              f"{r['fired'] / r['replay_seconds']:>9,.0f}{r['cpu_seconds']:>8.1f}"
              f"{r['machine_cpu_seconds'] / r['replay_seconds']:>8.2f}c{r['peak_rss_mb']:>9.0f}")
    print("(replay s: the command's own figure, reading the file included; cpu s: the replay "
          "process; machine: cores busy on average, the database server included)")


if __name__ == "__main__":
    main()
