from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from winchester.cli._inputs import capture_bytes, capture_files, capture_lines, unwrapped
from winchester.cli._options import config_option, stopped_by_signals
from winchester.cli._setup import open_parts
from winchester.clock import clock_from_settings
from winchester.errors import InputError, WinchesterError
from winchester.services.ingest import Ingester
from winchester.services.replay import SHOWN_REJECTIONS, Notification, Replayer, ReplaySummary


@click.command("ingest-file")
@config_option
@click.argument("source", metavar="FILE.jsonl | DIRECTORY | -")
@click.option("--clock", "clock_kind", type=click.Choice(["wall", "event"]),
              help="'event': now follows the notifications' own timestamps (for captured data), "
                   "shared through the database [default: the clock setting].")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="Notifications per database transaction.")
@click.option("--unwrap", metavar="KEY",
              help="Each line holds the notification under KEY (captures stored with metadata).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def ingest_file(config_file: str, source: str, clock_kind: str | None, batch_size: int,
                unwrap: str | None, quiet: bool) -> None:
    """Ingest notifications from a JSON-lines file (plain or gzip) or '-' for stdin.

    A DIRECTORY means every capture file below it (*.jsonl, *.ndjson, each
    also gzipped, and *.json.gz), in path order; how many is printed first.

    Each line is one notification (legacy format or oslo.messaging v2
    envelope). Rejected lines are kept in the dead-letter table with their
    reason; duplicates (a message_id already stored) change nothing, so a file
    can be ingested again safely. Use --clock event for captured data: with
    wall time, week-old events would find their streams already expired.
    `winchester replay` does the same with more sources, pacing and workers.
    """
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    if source != "-" and Path(source).is_dir():
        files = capture_files(source)
        console.print(f"{source}: {len(files):,} capture file(s) below it, from {files[0]} to "
                      f"{files[-1]}", markup=False)
    total_bytes = capture_bytes(source)
    parts = open_parts(config_file, console, distiller=True, streaming=True)
    store = parts.store
    clock = clock_from_settings(parts.settings, store, clock_kind)
    ingester = Ingester(store, parts.triggers, parts.distiller, clock,
                        timedelta(seconds=parts.settings.late_event_grace))
    progress = Progress(
        SpinnerColumn(), TextColumn("{task.fields[count]:>12,} notifications"),
        TextColumn("{task.fields[rate]:>9,.0f}/s"), BarColumn(), TextColumn("{task.fields[now]}"),
        TimeElapsedColumn(), console=console, disable=quiet)

    def show(summary: ReplaySummary) -> None:
        progress.update(task, completed=summary.bytes_read if total_bytes else None,
                        count=summary.read, rate=summary.rate,
                        now=f"now {summary.event_time:%Y-%m-%d %H:%M:%S}" if summary.event_time else "")

    replayer = Replayer(ingester, batch_size=batch_size, on_batch=show)
    lines = (Notification(unwrapped(line, unwrap) if unwrap else line, f"{name}:{number}")
             for name, number, line in capture_lines(source))
    failure: BaseException | None = None
    try:
        with progress, stopped_by_signals(replayer.stop):
            task = progress.add_task("ingest", total=total_bytes, count=0, rate=0.0, now="")
            summary = replayer.run(lines)
            progress.update(task, completed=total_bytes or 0)
    except (WinchesterError, SQLAlchemyError) as exc:
        failure = exc
        summary = replayer.summary
    finally:
        store.close()
    for index, (origin, reason, detail) in enumerate(summary.rejections):
        console.print(f"{origin}: rejected ({reason}): {detail}", markup=False)
    if sum(summary.rejected.values()) > SHOWN_REJECTIONS:
        console.print("... further rejected lines are not shown; all are kept in the "
                      "dead-letter table with their reason", markup=False)
    _summary(Console(highlight=False, soft_wrap=True), ingester, summary)
    if failure is not None or summary.interrupted:
        console.print(f"error: ingest stopped: {failure}" if failure else "ingest interrupted",
                      markup=False)
        if summary.committed_through and isinstance(failure, InputError):
            console.print(f"every line up to {summary.committed_through} is committed",
                          markup=False)
        elif summary.committed_through:
            console.print(f"every line up to {summary.committed_through} is committed; run the "
                          "same command again to resume (lines already stored are skipped as "
                          "duplicates)", markup=False)
        sys.exit(1 if failure is not None else 130)


def _summary(console: Console, ingester: Ingester, summary: ReplaySummary) -> None:
    stats = ingester.stats
    console.print(f"ingested {stats.received:,} notifications in {summary.elapsed:.1f}s "
                  f"({summary.rate:,.0f}/s): {stats.saved:,} saved, {stats.duplicates:,} duplicates, "
                  f"{stats.unconverted:,} unconverted, {sum(stats.rejected.values()):,} rejected"
                  + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(stats.rejected.items()))})"
                     if stats.rejected else ""), markup=False)
    if stats.matched:
        table = Table(title="Triggers", title_justify="left")
        table.add_column("trigger")
        table.add_column("events matched", justify="right")
        table.add_column("streams created", justify="right")
        table.add_column("ready to fire", justify="right")
        for name in sorted(stats.matched):
            table.add_row(name, f"{stats.matched[name]:,}", f"{stats.new_streams[name]:,}",
                          f"{stats.ready[name]:,}")
        console.print(table)
