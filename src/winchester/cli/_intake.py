from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from datetime import timedelta

import click
from amqp.exceptions import AccessRefused
from rich.console import Console

from winchester.cli._options import config_option, metrics_port_option, start_metrics, stopped_by_signals
from winchester.cli._setup import open_parts
from winchester.clock import clock_from_settings
from winchester.services._consumer import IntakeError
from winchester.services.ingest import Ingester
from winchester.services.intake import IngestService, Persistor


logger = logging.getLogger("winchester.services.intake")


def _default_name(kind: str) -> str:
    return f"{kind}-{socket.gethostname()}-{os.getpid()}"


@click.command("ingest")
@config_option
@click.option("--clock", "clock_kind", type=click.Choice(["wall", "event"]),
              help="'event': now follows the notifications' own timestamps, shared with every "
                   "process through the database [default: the clock setting].")
@click.option("--name", help="This process's name in logs [default: ingest-HOST-PID].")
@metrics_port_option
def ingest(config_file: str, clock_kind: str, name: str | None, metrics_port: int | None) -> None:
    """Consume OpenStack notifications from the bus (bus.url) into events and streams.

    Reads the exchanges, topic and priorities of the intake section, from the
    publishers' queues or the intake.queue pool; a batch is acknowledged only
    once committed. Malformed notifications go to the dead-letter table.
    SIGTERM/SIGINT: the batch in hand is committed and acknowledged, then it exits.
    """
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    parts = open_parts(config_file, console, distiller=True)
    ingester = Ingester(parts.store, parts.triggers, parts.distiller,
                        clock_from_settings(parts.settings, parts.store, clock_kind),
                        timedelta(seconds=parts.settings.late_event_grace))
    service = IngestService(parts.settings.bus_url, parts.settings.intake, ingester,
                            name=name or _default_name("ingest"))

    def watch(metrics) -> None:
        metrics.watch_ingester(ingester, "ingest")
        metrics.watch_consumer(service.consumer, "ingest")
        metrics.watch_clock(ingester.clock, "ingest")
        metrics.watch_store(parts.store)

    start_metrics(metrics_port, parts.settings.api.host, watch)
    stats = ingester.stats

    def figures() -> str:
        consumer = service.consumer.stats
        return (f"{stats.received:,} received, {stats.saved:,} saved, {stats.duplicates:,} "
                f"duplicates, {stats.unconverted:,} unconverted, {sum(stats.rejected.values()):,} "
                f"rejected; {consumer.acknowledged:,} acknowledged, {consumer.reconnects:,} "
                "reconnects")

    _run(service, console, parts.store, parts.settings.statistics_period,
         lambda: f"{service.consumer.name}: {figures()}")
    console.print(f"ingest stopped: {figures()}", markup=False)


@click.command("persistor")
@config_option
@click.option("--name", help="This process's name in logs [default: persistor-HOST-PID].")
@metrics_port_option
def persistor(config_file: str, name: str | None, metrics_port: int | None) -> None:
    """Archive every raw notification from the bus, as received (the complete history).

    Uses its own queue (persistor.queue) bound to every intake exchange and
    priority, so it gets a copy of everything whatever ingest does. Applies
    archive_retention when set.
    """
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    parts = open_parts(config_file, console)
    service = Persistor(parts.settings.bus_url, parts.settings.intake, parts.settings.persistor,
                        parts.store, retention=parts.settings.archive_retention,
                        name=name or _default_name("persistor"))
    start_metrics(metrics_port, parts.settings.api.host, lambda metrics: metrics.watch_persistor(service))

    def figures() -> str:
        return (f"{service.archived:,} archived, {service.duplicates:,} duplicates skipped, "
                f"{service.trimmed:,} trimmed; {service.consumer.stats.acknowledged:,} acknowledged")

    _run(service, console, parts.store, parts.settings.statistics_period,
         lambda: f"{service.consumer.name}: {figures()}")
    console.print(f"persistor stopped: {figures()}", markup=False)


def _log_statistics(every: float, line: Callable[[], str], stopped: threading.Event) -> None:
    while not stopped.wait(every):
        try:
            logger.info("%s", line())
        except Exception as exc:  # noqa: BLE001 - a statistics line must never stop intake
            logger.debug("statistics line failed: %s", exc)


def _run(service, console: Console, store, statistics_period: float,
         statistics: Callable[[], str]) -> None:
    stopped = threading.Event()
    threading.Thread(target=_log_statistics, args=(statistics_period, statistics, stopped),
                     name="winchester-statistics", daemon=True).start()
    try:
        with stopped_by_signals(service.stop):
            service.run()
    except IntakeError as exc:
        console.print(f"error: {exc}", markup=False)
        sys.exit(2)
    except AccessRefused as exc:
        # Retrying cannot cure wrong credentials: say so once and stop.
        console.print(f"error: the broker refused the login ({exc.reply_text or exc}); check the user "
                      "and password in bus.url", markup=False)
        sys.exit(2)
    finally:
        stopped.set()
        store.close()
