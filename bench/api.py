"""Query API latency with a big store: the operator's everyday questions, over real HTTP.

Loads --events notifications (default 1 million; the seeded nova workload of
bench/workload.py through the pipelined ingest of `ingest-file`) into a fresh
PostgreSQL schema (or SQLite with --db sqlite), starts the API (uvicorn, in a
thread) and times each query --repeat times over HTTP, each time with other
values (another instance, another tenant), after a few warm-up calls:

* streams of a trigger in a state:   GET /v1/streams?trigger_name=usage_audit&state=active&limit=200
* events by an indexed trait:        GET /v1/events?traits=instance_id:<id>&limit=200
* events by type and indexed trait:  GET /v1/events?event_name=compute.instance.exists&traits=instance_id:<id>
* streams by distinguishing trait:   GET /v1/streams?distinguishing_traits=instance_id:<id>
* events by an unindexed trait:      GET /v1/events?traits=tenant_id:<id>&limit=200 (JSON scan)
* counts:                            GET /v1/events/count?traits=instance_id:<id>, /v1/streams/count?state=active
* explain:                           GET /v1/streams/<id>/explain

Prints median, p90 and max milliseconds per query and the target verdict
(median under 50 ms for the first two). --keep leaves the schema (its URL is
printed) and --url reuses one, so the load is paid once:

    python bench/api.py [--events 1000000] [--db postgresql|sqlite] [--repeat 50]
                        [--keep | --url URL]
"""

from __future__ import annotations

import argparse
import itertools
import random
import socket
import statistics
import sys
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager

from _common import POSTGRES, ROOT, database, example_ingester
from workload import Workload, WorkloadSpec

from winchester.clock import EventClock
from winchester.config import load_settings, load_trigger_definitions, open_store
from winchester.services.replay import Notification, Replayer

TARGET_MS = 50.0


def load(url: str, count: int, instances: int, seed: int) -> None:
    store, ingester = example_ingester(url)
    workload = Workload(WorkloadSpec(instances=instances, days=count // instances + 3, seed=seed),
                        detailed_truth=False)
    started = time.perf_counter()

    def progress(summary) -> None:
        if summary.read % 100_000 < 1000:
            rate = summary.read / (time.perf_counter() - started)
            print(f"  loaded {summary.read:>9,} notifications ({rate:,.0f}/s)", file=sys.stderr, flush=True)

    lines = itertools.islice(workload.lines(), count)
    summary = Replayer(ingester, batch_size=1000, on_batch=progress).run(
        Notification(line, f"workload:{number}") for number, line in enumerate(lines, 1))
    seconds = time.perf_counter() - started
    print(f"loaded {summary.read:,} notifications in {seconds:,.0f}s ({summary.read / seconds:,.0f}/s)",
          file=sys.stderr)
    with store.engine.begin() as connection:
        if store._postgresql:
            connection.exec_driver_sql("ANALYZE")
    store.close()


@contextmanager
def serving(url: str):
    import uvicorn

    from winchester.api import create_app

    settings = load_settings(ROOT / "etc" / "winchester.yaml", environ={"WINCHESTER_DATABASE_URL": url})
    triggers = load_trigger_definitions(settings)
    store = open_store(settings, triggers)
    app = create_app(store, triggers=triggers, clock=EventClock())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", store
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()


def samples_of(store) -> dict[str, list]:
    """Values to query by: instance and tenant ids and stream ids actually stored."""
    import sqlalchemy as sa

    from winchester.store._schema import event_traits, streams

    with store.engine.connect() as connection:
        instances = list(connection.execute(
            sa.select(event_traits.c.t_string).where(event_traits.c.name == "instance_id")
            .distinct().limit(5000)).scalars())
        stream_ids = list(connection.execute(sa.select(streams.c.id).limit(5000)).scalars())
    from winchester.store import EventQuery

    tenant_ids = sorted({found.event.get("tenant_id") for found in store.query_events(EventQuery(limit=500))}
                        - {None})
    return {"instance": instances, "stream": stream_ids, "tenant": tenant_ids}


def measure(client, path_for, repeat: int, rng: random.Random) -> tuple[list[float], int]:
    for _ in range(3):
        client.get(path_for(rng)).raise_for_status()
    timings, rows = [], 0
    for _ in range(repeat):
        path = path_for(rng)
        started = time.perf_counter()
        response = client.get(path)
        timings.append(1000 * (time.perf_counter() - started))
        response.raise_for_status()
        body = response.json()
        rows += len(body) if isinstance(body, list) else 1
    return timings, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--instances", type=int, default=20_000)
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--seed", type=int, default=20150201)
    parser.add_argument("--keep", action="store_true", help="Keep the loaded PostgreSQL schema.")
    parser.add_argument("--url", help="Query this already loaded database instead of loading one.")
    args = parser.parse_args()

    import httpx

    with ExitStack() as stack:
        if args.url:
            url = args.url
        elif args.keep and args.db == "postgresql":
            import psycopg

            schema = f"bench_api_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(POSTGRES, autocommit=True) as connection:
                connection.execute(f'CREATE SCHEMA "{schema}"')
            url = f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
            print(f"keeping the loaded schema: --url '{url}'", file=sys.stderr)
        else:
            url = stack.enter_context(database(args.db))
        if not args.url:
            load(url, args.events, args.instances, args.seed)
        base, store = stack.enter_context(serving(url))
        values = samples_of(store)
        counts = store.count_streams_by_state()
        events = store.count_events()
        rng = random.Random(args.seed)
        pick = rng.choice
        queries = [
            ("streams by trigger and state", True,
             lambda r: "/v1/streams?trigger_name=usage_audit&state=active&limit=200"),
            ("events by indexed trait", True,
             lambda r: f"/v1/events?traits=instance_id:{pick(values['instance'])}&limit=200"),
            ("events by type and trait", False,
             lambda r: "/v1/events?event_name=compute.instance.exists&traits=instance_id:"
                       f"{pick(values['instance'])}"),
            ("streams by distinguishing trait", False,
             lambda r: f"/v1/streams?distinguishing_traits=instance_id:{pick(values['instance'])}"),
            ("streams page 2 (mark)", False, None),
            ("events by unindexed trait (JSON scan)", False,
             lambda r: f"/v1/events?traits=tenant_id:{pick(values['tenant'])}&limit=200"),
            ("count events by trait", False,
             lambda r: f"/v1/events/count?traits=instance_id:{pick(values['instance'])}"),
            ("count active streams", False, lambda r: "/v1/streams/count?state=active"),
            ("explain a stream", False, lambda r: f"/v1/streams/{pick(values['stream'])}/explain"),
        ]
        with httpx.Client(base_url=base, timeout=120) as client:
            first_page = client.get("/v1/streams?trigger_name=usage_audit&state=active&limit=200").json()
            mark = first_page[-1]["_mark"] if first_page else ""
            print(f"\n{args.db}: {events:,} events, streams "
                  + ", ".join(f"{state} {n:,}" for state, n in sorted(counts.items()))
                  + f"; {args.repeat} calls each (the scan fewer), over HTTP\n")
            print(f"{'query':40} {'median ms':>10} {'p90 ms':>8} {'max ms':>8} {'rows/call':>10}")
            verdicts = []
            for name, targeted, path_for in queries:
                if path_for is None:
                    path_for = (lambda r, m=mark:
                                f"/v1/streams?trigger_name=usage_audit&state=active&limit=200&mark={m}")
                # A scan of every event's JSON takes seconds: a few calls tell enough.
                repeat = max(3, args.repeat // 10) if "scan" in name else args.repeat
                timings, rows = measure(client, path_for, repeat, rng)
                timings.sort()
                median = statistics.median(timings)
                p90 = timings[int(0.9 * (len(timings) - 1))]
                print(f"{name:40} {median:10.1f} {p90:8.1f} {timings[-1]:8.1f} {rows / repeat:10.1f}")
                if targeted:
                    verdicts.append((name, median))
        print()
        for name, median in verdicts:
            print(f"target {name}: median {median:.1f} ms "
                  f"{'<' if median < TARGET_MS else '>='} {TARGET_MS:.0f} ms: "
                  f"{'met' if median < TARGET_MS else 'NOT met'}")


if __name__ == "__main__":
    main()
