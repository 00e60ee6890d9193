from __future__ import annotations

import os
import socket
import sys
from datetime import datetime

import click
from rich.console import Console
from rich.table import Table

from winchester.cli._options import (
    config_option,
    metrics_port_option,
    start_metrics,
    stopped_by_signals,
    utc_timestamp,
)
from winchester.cli._setup import open_parts
from winchester.clock import FixedClock, clock_from_settings
from winchester.errors import WinchesterError
from winchester.services.worker import Worker, build_worker


@click.command("worker")
@config_option
@click.option("--name", default=lambda: f"{socket.gethostname()}-{os.getpid()}",
              show_default="HOST-PID", help="This worker's name, in logs and on the streams it claims.")
@click.option("--once", is_flag=True, help="Process everything due now, then exit.")
@click.option("--now", "now", metavar="TIMESTAMP", callback=utc_timestamp,
              help="With --once: take this UTC time as now (catching up on captured data, tests).")
@click.option("--batch-size", type=click.IntRange(1, 100_000),
              help="Streams claimed at a time [default: pipeline_worker_batch_size].")
@click.option("--delay", type=click.FloatRange(0),
              help="Seconds to sleep when idle [default: pipeline_worker_delay].")
@metrics_port_option
# The original's `pipeline_worker -d` daemonized; scripts written for it still pass it.
@click.option("-d", "--daemon", is_flag=True, hidden=True)
def worker(config_file: str, name: str, once: bool, now: datetime | None, batch_size: int | None,
           delay: float | None, metrics_port: int | None, daemon: bool) -> None:
    """Fire and expire due streams, running their pipelines (the original pipeline_worker).

    Run as many as you like, on any hosts, against the same database: each
    stream is claimed by exactly one of them. SIGTERM or SIGINT stops a
    worker after the stream it is running; nothing is left half-done.
    """
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    if daemon:
        raise click.UsageError(
            "-d/--daemon: the worker does not put itself in the background; run it in the "
            "foreground under a service manager (systemd, supervisord), which restarts it and "
            "keeps its logs")
    if now is not None and not once:
        raise click.UsageError("--now needs --once (a running worker takes its time from the clock)")
    parts = open_parts(config_file, console, pipelines=True)
    runner = build_worker(parts.settings, parts.store, parts.triggers, parts.pipelines, name=name,
                          clock=FixedClock(now) if now is not None else clock_from_settings(
                              parts.settings, parts.store),
                          batch_size=batch_size, delay=delay)

    def watch(metrics) -> None:
        metrics.watch_worker(runner)
        metrics.watch_clock(runner.clock, "worker")
        metrics.watch_store(parts.store)

    start_metrics(metrics_port, parts.settings.api.host, watch)
    try:
        with stopped_by_signals(runner.stop):
            if once:
                processed = runner.run_until_idle()
                _summary(Console(highlight=False, soft_wrap=True), runner, processed)
            else:
                runner.run()
    except WinchesterError as exc:
        console.print(f"error: {exc}", markup=False)
        sys.exit(1)
    finally:
        parts.store.close()


def _summary(console: Console, runner: Worker, processed: int) -> None:
    stats = runner.stats
    console.print(f"worker {runner.name}: {processed:,} stream(s) processed: {stats.fired:,} fired, "
                  f"{stats.expired:,} expired, {sum(stats.errors.values()):,} failed, "
                  f"{stats.generated:,} event(s) generated, {stats.trimmed:,} event(s) trimmed"
                  + (f", {stats.commit_errors:,} handler commit(s) failed (their side effects did "
                     "not happen; the log says why)" if stats.commit_errors else ""))
    if stats.by_trigger:
        table = Table(title="Streams", title_justify="left")
        table.add_column("trigger")
        table.add_column("action")
        table.add_column("streams", justify="right")
        table.add_column("failed", justify="right")
        for key in sorted(stats.by_trigger):
            trigger, action = key.rsplit(" ", 1)
            table.add_row(trigger, action, f"{stats.by_trigger[key]:,}", f"{stats.errors[key]:,}")
        console.print(table)
    if stats.errors:
        console.print("failed streams are in state error / expire_error with the reason; "
                      "`winchester streams list --state error` shows them and "
                      "`winchester streams reset` retries them", markup=False)


def pipeline_worker() -> None:
    """Entry point of the ``pipeline_worker`` console script (the original's name)."""
    worker(prog_name="pipeline_worker")


__all__ = ["pipeline_worker", "worker"]
