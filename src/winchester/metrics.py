"""Prometheus metrics for every service (``prometheus-client``).

The services already keep running totals (their statistics lines); the
metrics read those at scrape time instead of counting a second time on the
hot path. Only the latency histograms are observed as things happen, once
per batch or pipeline run. Database-wide figures (streams by state and
trigger, the shared event clock) are read from the store at most every
:data:`DATABASE_REFRESH` seconds, however often Prometheus scrapes.

Each process has one :class:`Metrics`; ``serve`` and ``api`` expose it at
``/metrics``, the standalone services on ``--metrics-port``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from winchester.clock import SHARED_EVENT_CLOCK

logger = logging.getLogger(__name__)

DATABASE_REFRESH = 5.0
# Ingest batches take milliseconds to seconds; pipelines from microseconds (logger) to minutes (webhooks).
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PIPELINE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0)

Families = Iterator[Any]


def _epoch(value: datetime) -> float:
    return value.replace(tzinfo=timezone.utc).timestamp()


class Metrics:
    """One process's metrics: the services it runs are *watched* (added as sources)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.ingest_batch_seconds = Histogram(
            "winchester_ingest_batch_seconds", "Seconds to store one batch of events (one transaction).",
            ["service"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.pipeline_seconds = Histogram(
            "winchester_pipeline_seconds", "Seconds a stream's pipeline ran (handlers and commit).",
            ["trigger", "action"], buckets=PIPELINE_BUCKETS, registry=self.registry)
        self._sources: list[Callable[[], Families]] = []
        self._lock = threading.Lock()
        self.registry.register(_Sources(self))

    # -- sources ------------------------------------------------------------------------

    def watch_ingester(self, ingester: Any, service: str) -> None:
        ingester.observe_batch = self.ingest_batch_seconds.labels(service).observe
        self._add(lambda: _ingester_families(ingester, service))

    def watch_worker(self, worker: Any) -> None:
        def observe(trigger: str, action: str, seconds: float) -> None:
            self.pipeline_seconds.labels(trigger, action).observe(seconds)

        worker.observe_pipeline = observe
        self._add(lambda: _worker_families(worker))

    def watch_consumer(self, consumer: Any, service: str) -> None:
        self._add(lambda: _consumer_families(consumer, service))

    def watch_persistor(self, persistor: Any) -> None:
        self.watch_consumer(persistor.consumer, "persistor")
        self._add(lambda: _persistor_families(persistor))

    def watch_bus(self, bus: Any) -> None:
        self._add(lambda: _bus_families(bus))

    def watch_clock(self, clock: Any, service: str) -> None:
        self._add(lambda: _clock_families(clock, service))

    def watch_store(self, store: Any) -> None:
        """Streams by state and trigger, and the shared event clock (cached database reads)."""
        cached = _Cached(lambda: (store.count_streams_by_trigger_and_state(), store.read_clock(SHARED_EVENT_CLOCK)))
        self._add(lambda: _store_families(cached.get()))

    def watch_unauthorised(self, read: Callable[[], int]) -> None:
        self._add(lambda: _single(CounterMetricFamily(
            "winchester_api_unauthorised_requests", "Requests refused for want of a valid token."),
            read()))

    def _add(self, source: Callable[[], Families]) -> None:
        with self._lock:
            self._sources.append(source)

    # -- exposition ---------------------------------------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        """The text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def serve(self, port: int, host: str = "0.0.0.0") -> Any:
        """Serve /metrics on ``port`` in a daemon thread (standalone services)."""
        from prometheus_client import start_http_server

        served = start_http_server(port, addr=host, registry=self.registry)
        logger.info("metrics at http://%s:%d/metrics", host, port)
        return served


class _Sources(Collector):
    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self) -> Families:
        with self.metrics._lock:
            sources = list(self.metrics._sources)
        # One family per name: `serve` watches two ingesters and two consumers, each
        # yielding the same families with its own service label, and the text format
        # allows one HELP/TYPE group per name (strict scrapers reject the repeat).
        merged: dict[str, Any] = {}
        for source in sources:
            try:
                families = list(source())
            except Exception as exc:  # noqa: BLE001 - a failing source must not take the others down
                logger.warning("a metrics source failed: %s: %s", type(exc).__name__, exc)
                continue
            for family in families:
                known = merged.setdefault(family.name, family)
                if known is not family:
                    known.samples.extend(family.samples)
        yield from merged.values()


class _Cached:
    def __init__(self, read: Callable[[], Any]):
        self.read = read
        self.value: Any = None
        self.at = float("-inf")
        self.lock = threading.Lock()

    def get(self) -> Any:
        with self.lock:
            if time.monotonic() - self.at >= DATABASE_REFRESH:
                self.value = self.read()
                self.at = time.monotonic()
            return self.value


def _single(family: Any, value: float, labels: list[str] | None = None) -> Families:
    family.add_metric(labels or [], value)
    yield family


def _ingester_families(ingester: Any, service: str) -> Families:
    stats = ingester.stats
    received = CounterMetricFamily("winchester_events_received",
                                   "Events distilled from notifications, by event type.",
                                   labels=["service", "event_type"])
    stored = CounterMetricFamily("winchester_events_stored", "Events stored, by event type.",
                                 labels=["service", "event_type"])
    duplicate = CounterMetricFamily("winchester_events_duplicate",
                                    "Events already stored (same message_id), by event type.",
                                    labels=["service", "event_type"])
    for name, count in sorted(stats.events_by_type.items()):
        received.add_metric([service, name], count)
    for name, count in sorted(stats.stored_by_type.items()):
        stored.add_metric([service, name], count)
    for name, count in sorted(stats.duplicates_by_type.items()):
        duplicate.add_metric([service, name], count)
    notifications = CounterMetricFamily("winchester_notifications_received",
                                        "Notifications taken in (before distilling).", labels=["service"])
    notifications.add_metric([service], stats.received)
    unconverted = CounterMetricFamily("winchester_notifications_unconverted",
                                      "Notifications no event definition matched.", labels=["service"])
    unconverted.add_metric([service], stats.unconverted)
    rejected = CounterMetricFamily("winchester_notifications_rejected",
                                   "Notifications rejected (dead-lettered), by reason.",
                                   labels=["service", "reason"])
    for reason, count in sorted(stats.rejected.items()):
        rejected.add_metric([service, reason], count)
    yield from _trigger_families(stats, service)
    clock_skew = CounterMetricFamily("winchester_events_off_clock",
                                     "Events stamped too far ahead of or behind the clock.",
                                     labels=["service", "direction"])
    clock_skew.add_metric([service, "ahead"], stats.ahead)
    clock_skew.add_metric([service, "late"], stats.late)
    yield from (received, stored, duplicate, notifications, unconverted, rejected, clock_skew)


def _trigger_families(stats: Any, service: str) -> Families:
    matched = CounterMetricFamily("winchester_trigger_events_matched", "Events a trigger matched.",
                                  labels=["service", "trigger"])
    created = CounterMetricFamily("winchester_streams_created", "Streams a trigger started.",
                                  labels=["service", "trigger"])
    for name, count in sorted(stats.matched.items()):
        matched.add_metric([service, name], count)
    for name, count in sorted(stats.new_streams.items()):
        created.add_metric([service, name], count)
    yield from (matched, created)


def _worker_families(worker: Any) -> Families:
    stats = worker.stats
    runs = CounterMetricFamily("winchester_streams_finished",
                               "Streams whose pipeline ran, by trigger, action and outcome.",
                               labels=["trigger", "action", "outcome"])
    for key, count in sorted(stats.by_trigger.items()):
        trigger, _, action = key.rpartition(" ")
        failed = stats.errors.get(key, 0)
        outcome = "fired" if action == "fire" else "expired"
        runs.add_metric([trigger, action, outcome], count - failed)
        runs.add_metric([trigger, action, "error"], failed)
    yield runs
    # Generated events join streams like ingested ones: the same families, as service "worker".
    yield from _trigger_families(stats, "worker")
    for name, value, text in (
            ("winchester_handler_commit_errors", stats.commit_errors,
             "Handler commits that raised (after the pipeline succeeded)."),
            ("winchester_worker_claims_lost", stats.lost_claims,
             "Streams whose lease expired before the worker finished them."),
            ("winchester_worker_events_generated", stats.generated, "Events pipelines generated."),
            ("winchester_worker_database_errors", stats.database_errors,
             "Worker loops the database failed (waited out)."),
            ("winchester_events_trimmed", stats.trimmed, "Old events deleted by trim_events.")):
        yield from _single(CounterMetricFamily(name, text, labels=["worker"]), value, [worker.name])


def _consumer_families(consumer: Any, service: str) -> Families:
    stats = consumer.stats
    for name, value, text in (
            ("winchester_bus_notifications_received", stats.received,
             "Notifications delivered by the broker."),
            ("winchester_bus_notifications_acknowledged", stats.acknowledged,
             "Notifications acknowledged to the broker (stored first)."),
            ("winchester_bus_reconnects", stats.reconnects, "Reconnections to the broker."),
            ("winchester_bus_batch_failures", stats.handler_failures,
             "Batches that could not be stored (retried).")):
        yield from _single(CounterMetricFamily(name, text, labels=["service"]), value, [service])


def _persistor_families(persistor: Any) -> Families:
    yield from _single(CounterMetricFamily("winchester_archive_stored",
                                           "Raw notifications archived by the persistor."),
                       persistor.archived)
    yield from _single(CounterMetricFamily("winchester_archive_duplicates",
                                           "Raw notifications already archived."), persistor.duplicates)
    if persistor.last_generated is not None:
        lag = (persistor.last_archived_at - persistor.last_generated).total_seconds()
        yield from _single(GaugeMetricFamily(
            "winchester_persistor_lag_seconds",
            "Seconds between the newest notification of the last batch and its archiving."), lag)


def _bus_families(bus: Any) -> Families:
    messages = CounterMetricFamily("winchester_bus_messages", "Bus messages, by direction.",
                                   labels=["direction"])
    messages.add_metric(["out"], bus.messages_out)
    messages.add_metric(["in"], bus.messages_in)
    yield messages


def _clock_families(clock: Any, service: str) -> Families:
    now = clock.now()
    if now is not None:
        yield from _single(GaugeMetricFamily("winchester_clock_seconds",
                                             "What 'now' is for this service (event time on the event "
                                             "clock), as a Unix time.", labels=["service"]),
                           _epoch(now), [service])


def _store_families(read: tuple[dict[str, dict[str, int]], datetime | None]) -> Families:
    by_trigger, event_clock = read
    streams = GaugeMetricFamily("winchester_streams", "Streams in the database, by trigger and state.",
                                labels=["trigger", "state"])
    for trigger, states in sorted(by_trigger.items()):
        for state, count in sorted(states.items()):
            streams.add_metric([trigger, state], count)
    yield streams
    if event_clock is not None:
        yield from _single(GaugeMetricFamily("winchester_event_clock_seconds",
                                             "The shared event clock (newest event time confirmed), "
                                             "as a Unix time."), _epoch(event_clock))


__all__ = ["Metrics"]
