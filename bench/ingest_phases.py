"""Where serial ingest spends its time: microseconds per notification in each store phase.

Feeds the seeded nova workload (bench/workload.py) through
Ingester.add_notifications in batches of --batch-size, as bench/ingest.py's
serial mode does, with the store's bulk-writer methods and the transaction
commit timed. Every --every notifications it prints the time per
notification of each phase over that stretch, so the growth of a phase with
the database (COMMIT, mostly) shows. Phases nest: `ingest` includes `_ingest`
and COMMIT; `_ingest` includes the writer's inserts.

    python bench/ingest_phases.py [--count 100000] [--db sqlite|postgresql] [--every 25000]
"""

from __future__ import annotations

import argparse
import collections
import itertools
import time

import sqlalchemy.engine.base as engine_base
from _common import database, example_ingester
from workload import Workload, WorkloadSpec

from winchester.services import tune_garbage_collection
from winchester.store import _bulk, _store

spent: collections.Counter[str] = collections.Counter()


def timed(owner: type, name: str, label: str | None = None) -> None:
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[label or name] += time.perf_counter() - started

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--every", type=int, default=25_000)
    parser.add_argument("--instances", type=int, default=2000)
    args = parser.parse_args()

    writer = _bulk.SQLiteWriter if args.db == "sqlite" else _bulk.PostgreSQLWriter
    for name in ("known_message_ids", "insert_events", "insert_traits", "insert_streams",
                 "update_streams", "insert_members", "open_streams"):
        if name in vars(writer):
            timed(writer, name)
    for name in ("ingest", "_ingest", "_save_events", "_note_activity"):
        timed(_store.Store, name)
    timed(engine_base.Transaction, "commit", "COMMIT")

    with database(args.db) as url:
        store, ingester = example_ingester(url)
        tune_garbage_collection()
        spec = WorkloadSpec(instances=args.instances, days=args.count // args.instances + 3)
        lines = itertools.islice(Workload(spec, detailed_truth=False).lines(), args.count)
        print(f"{args.db}: microseconds per notification, each stretch of {args.every:,}")
        done = reported = 0
        total = 0.0
        spent.clear()
        while batch := list(itertools.islice(lines, args.batch_size)):
            started = time.perf_counter()
            ingester.add_notifications(batch)
            total += time.perf_counter() - started
            done += len(batch)
            if done - reported >= args.every:
                count = done - reported
                phases = "  ".join(f"{name} {seconds * 1e6 / count:.1f}"
                                   for name, seconds in spent.most_common())
                print(f"{done:>9,}  all {total * 1e6 / count:.1f}  {phases}")
                reported, total = done, 0.0
                spent.clear()
        store.close()


if __name__ == "__main__":
    main()
