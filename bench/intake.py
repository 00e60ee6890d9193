"""Intake throughput: notifications/s from RabbitMQ to committed events (one ingest process),
and the persistor's rate to committed archive rows.

Publishes --count notifications of the seeded nova workload (bench/workload.py)
to a private exchange first, so both queues (the publishers' queue that
ingest reads, and the persistor's own) hold the whole backlog; then times one
consumer draining each queue into a fresh database: from start to the last
batch committed and acknowledged. The example configuration (the usage audit)
is used for ingest.

Target (issue 6): at least 10,000 notifications/s into PostgreSQL.

    python bench/intake.py [--count 100000] [--db postgresql|sqlite|both] [--batch-size 1000]
"""

from __future__ import annotations

import argparse
import itertools
import os
import threading
import time
import uuid
from dataclasses import replace

from _common import busy_cpu_seconds, database, example_ingester
from kombu import Connection, Exchange, Producer
from workload import Workload, WorkloadSpec

from winchester.config._settings import IntakeSettings, PersistorSettings
from winchester.services.intake import IngestService, Persistor

AMQP = "amqp://guest:guest@127.0.0.1:5672//"


def publish(exchange_name: str, topic: str, count: int, instances: int) -> float:
    """Publish the workload's first ``count`` notifications; returns the rate."""
    spec = WorkloadSpec(instances=instances, days=count // instances + 3)
    lines = itertools.islice(Workload(spec, detailed_truth=False).lines(), count)
    exchange = Exchange(exchange_name, type="topic", durable=False)
    started = time.perf_counter()
    with Connection(AMQP) as connection:
        producer = Producer(connection.channel(), exchange=exchange)
        producer.declare()
        for line in lines:
            producer.publish(line, routing_key=f"{topic}.info", content_type="application/json",
                             content_encoding="utf-8", delivery_mode=2)
    return count / (time.perf_counter() - started)


def drain(service, done) -> tuple[float, str]:
    """Run ``service`` until ``done()``; seconds from start to the last commit, and where the CPU went."""
    thread = threading.Thread(target=service.run, daemon=True)
    started, busy, own = time.perf_counter(), busy_cpu_seconds(), time.process_time()
    thread.start()
    while not done():
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    own, busy = time.process_time() - own, busy_cpu_seconds() - busy
    service.stop()
    thread.join(60)
    cpu = (f"CPU: Winchester {own:.1f}s, broker + database + rest {max(0.0, busy - own):.1f}s, "
           f"of {elapsed * os.cpu_count():.1f}s available")
    return elapsed, cpu


def run(kind: str, args: argparse.Namespace) -> None:
    tag = uuid.uuid4().hex[:8]
    exchange, topic = f"bench-nova-{tag}", f"bench-notifications-{tag}"
    intake = IntakeSettings(exchanges=(exchange,), topic=topic, priorities=("info",),
                            batch_size=args.batch_size, batch_seconds=1.0)
    persistor_queue = f"bench-persistor-{tag}"
    with database(kind) as url:
        store, ingester = example_ingester(url)
        ingest = IngestService(AMQP, intake, ingester)
        persistor = Persistor(AMQP, intake, replace(PersistorSettings(), queue=persistor_queue,
                                                    batch_size=args.batch_size), store)
        # Declare both queues before publishing, so each gets every message.
        for service in (ingest, persistor):
            with Connection(AMQP) as connection:
                service.consumer._declare(connection, connection.channel())
        rate = publish(exchange, topic, args.count, args.instances)
        print(f"{kind}: published {args.count:,} notifications ({rate:,.0f}/s)")
        seconds, cpu = drain(ingest, lambda: ingest.consumer.stats.acknowledged >= args.count)
        stats = ingester.stats
        print(f"{kind}: ingest   {args.count / seconds:>8,.0f} notifications/s "
              f"({args.count:,} in {seconds:.1f}s; {stats.saved:,} events saved, "
              f"{stats.unconverted:,} unconverted, {sum(stats.rejected.values()):,} rejected)\n"
              f"{'':<18}{cpu}")
        seconds, cpu = drain(persistor, lambda: persistor.consumer.stats.acknowledged >= args.count)
        print(f"{kind}: persistor {args.count / seconds:>7,.0f} notifications/s "
              f"({persistor.archived:,} archived in {seconds:.1f}s)\n{'':<18}{cpu}")
        store.close()
    with Connection(AMQP) as connection:
        channel = connection.channel()
        for queue in (f"{topic}.info", persistor_queue):
            channel.queue_delete(queue)
        channel.exchange_delete(exchange)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="postgresql")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=6000)
    args = parser.parse_args()
    for kind in (["sqlite", "postgresql"] if args.db == "both" else [args.db]):
        run(kind, args)


if __name__ == "__main__":
    main()
