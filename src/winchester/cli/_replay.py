from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from collections.abc import Iterator
from datetime import datetime, timedelta

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from winchester.cli._inputs import capture_bytes, capture_lines, unwrapped
from winchester.cli._options import config_option, stopped_by_signals, utc_timestamp
from winchester.cli._setup import open_parts
from winchester.clock import clock_from_settings
from winchester.errors import InputError, WinchesterError
from winchester.services.ingest import Ingester
from winchester.services.replay import (
    Notification,
    Replayer,
    ReplaySummary,
    WorkerProcess,
    WorkerProcessError,
    from_archive,
)

ARCHIVE_SOURCE = "archive:"
# The name replay's in-process worker claims streams under (--resume takes its claims back).
REPLAY_WORKER = "replay"


@click.command("replay")
@config_option
@click.argument("source", metavar="SOURCE")
@click.option("--from", "since", callback=utc_timestamp, metavar="TIMESTAMP",
              help="archive: only notifications stamped at or after this UTC time.")
@click.option("--to", "until", callback=utc_timestamp, metavar="TIMESTAMP",
              help="archive: only notifications stamped before this UTC time.")
@click.option("--event-type", help="archive: only this event type.")
@click.option("--clock", "clock_kind", type=click.Choice(["event", "wall"]), default="event",
              show_default=True,
              help="'event': now is the newest event time replayed (shared through the database), "
                   "so streams expire when the notifications' own time says; 'wall': real time.")
@click.option("--speed", type=click.FloatRange(min=0, min_open=True), metavar="N",
              help="Deliver at N times real time, paced by the notifications' own timestamps "
                   "[default: as fast as possible].")
@click.option("--run-workers", is_flag=True,
              help="Fire and expire streams as event time advances, running their pipelines (a "
                   "worker in a child process of this command, on its own core).")
@click.option("--resume", is_flag=True,
              help="Skip notifications already stored (by message_id) without distilling them, "
                   "and with --run-workers run again the streams an interrupted replay had "
                   "claimed: pick up an interrupted replay.")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="Notifications per database transaction.")
@click.option("--archive/--no-archive", "keep_archive", default=False, show_default=True,
              help="Also keep each raw notification in the archive, as the persistor would "
                   "(never for the archive: source).")
@click.option("--unwrap", metavar="KEY",
              help="Each line holds the notification under KEY (e.g. `archive export` output: "
                   "notification).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def replay(config_file: str, source: str, since: datetime | None, until: datetime | None,
           event_type: str | None, clock_kind: str, speed: float | None, run_workers: bool,
           resume: bool, batch_size: int, keep_archive: bool, unwrap: str | None,
           quiet: bool) -> None:
    """Replay notifications from the past in event time.

    SOURCE is a JSON-lines capture (plain or gzip), a directory of them (every
    *.jsonl, *.ndjson, each also gzipped, and *.json.gz below it, in path
    order),
    - for stdin, or archive:
    for the persistor's archive (--from / --to / --event-type filter it; it
    is read in arrival order).

    With the event clock (the default) streams expire when the
    notifications' own time says so, however fast they are replayed: a fast
    replay builds the streams, states and pipeline outputs the live run
    built. Replaying is idempotent (message_id): run it again, or with
    --resume, after an interruption.
    """
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    from_the_archive = source == ARCHIVE_SOURCE
    if not from_the_archive and (since or until or event_type):
        raise click.UsageError("--from, --to and --event-type filter the archive: use SOURCE archive:")
    if from_the_archive and keep_archive:
        raise click.UsageError("--archive copies notifications into the archive; they are already there")
    if from_the_archive and unwrap:
        raise click.UsageError("--unwrap is for capture files; archived notifications are stored bare")
    total_bytes = None if from_the_archive else capture_bytes(source)
    parts = open_parts(config_file, console, distiller=True, pipelines=run_workers, streaming=True)
    settings, store = parts.settings, parts.store
    clock = clock_from_settings(settings, store, clock_kind)
    ingester = Ingester(store, parts.triggers, parts.distiller, clock,
                        timedelta(seconds=settings.late_event_grace))
    worker = WorkerProcess(str(Path(config_file).resolve()), clock_kind=clock_kind,
                           name=REPLAY_WORKER, record_every=max(batch_size, 250)) if run_workers else None
    if worker is not None and resume:
        # A killed replay's claims would wait out their lease; their pipelines
        # run again (generated ids are deterministic, so outputs are not doubled).
        taken_back = store.release_claims_of(REPLAY_WORKER, clock.now())
        if taken_back:
            console.print(f"{taken_back:,} stream(s) the interrupted replay had claimed will run "
                          "again", markup=False)
    skipped_in_archive: Counter[str] = Counter()
    if from_the_archive:
        total = store.count_archive(since, until, event_type)
        notifications: Iterator[Notification] = from_archive(
            store.iter_archive(since, until, event_type), skipped_in_archive)
    else:
        total = None
        notifications = _from_capture(source, unwrap)

    progress = Progress(
        SpinnerColumn(), TextColumn("{task.fields[count]:>12,} notifications"),
        TextColumn("{task.fields[rate]:>9,.0f}/s"), BarColumn(), TextColumn("{task.fields[now]}"),
        TimeElapsedColumn(), console=console, disable=quiet)
    replayer: Replayer

    def show(summary: ReplaySummary) -> None:
        progress.update(task, completed=summary.read if total is not None else (
                            summary.bytes_read if total_bytes else None),
                        count=summary.read, rate=summary.rate,
                        now=f"event time {summary.event_time:%Y-%m-%d %H:%M:%S}"
                        if summary.event_time and clock_kind == "event" else "")

    replayer = Replayer(ingester, worker_process=worker, batch_size=batch_size, speed=speed,
                        resume=resume,
                        archive=keep_archive, on_batch=show)
    failure: BaseException | None = None
    try:
        with progress, stopped_by_signals(replayer.stop):
            task = progress.add_task("replay", total=total if total is not None else total_bytes,
                                     count=0, rate=0.0, now="")
            summary = replayer.run(notifications)
    except (WinchesterError, SQLAlchemyError, WorkerProcessError) as exc:
        failure = exc
        summary = replayer.summary
    finally:
        store.close()
    _report(Console(highlight=False, soft_wrap=True), summary, skipped_in_archive, ingester)
    if failure is not None or summary.interrupted:
        if failure is not None:
            console.print(f"error: replay stopped: {failure}", markup=False)
        else:
            console.print("replay interrupted", markup=False)
        if summary.committed_through and isinstance(failure, InputError):
            console.print(f"everything up to {summary.committed_through} is committed",
                          markup=False)
        elif summary.committed_through:
            console.print(f"everything up to {summary.committed_through} is committed; run the same "
                          "command with --resume to go on", markup=False)
        sys.exit(1 if failure is not None else 130)


def _from_capture(source: str, unwrap: str | None) -> Iterator[Notification]:
    for name, number, line in capture_lines(source):
        yield Notification(unwrapped(line, unwrap) if unwrap else line, f"{name}:{number}")


def _report(console: Console, summary: ReplaySummary, skipped_in_archive: Counter[str],
            ingester: Ingester) -> None:
    rejected = sum(summary.rejected.values())
    console.print(
        f"replayed {summary.read:,} notifications in {summary.elapsed:.1f}s ({summary.rate:,.0f}/s): "
        f"{summary.saved:,} ingested, {summary.duplicates:,} duplicates, "
        + (f"{summary.skipped:,} already stored (skipped), " if summary.skipped else "")
        + f"{summary.unconverted:,} unconverted, {rejected:,} rejected"
        + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(summary.rejected.items()))})"
           if rejected else ""), markup=False)
    for origin, reason, detail in summary.rejections:
        console.print(f"{origin}: rejected ({reason}): {detail}", markup=False)
    if rejected > len(summary.rejections):
        console.print("... further rejected notifications are not shown; all are kept in the "
                      "dead-letter table with their reason", markup=False)
    if skipped_in_archive:
        console.print(f"{sum(skipped_in_archive.values()):,} archived notification(s) were rejected "
                      f"when they arrived and are not replayed ("
                      + ", ".join(f"{k}: {v}" for k, v in sorted(skipped_in_archive.items())) + ")",
                      markup=False)
    if summary.late or summary.ahead:
        console.print(f"{summary.late:,} stamped more than clock_max_skew behind the clock (late), "
                      f"{summary.ahead:,} ahead of it (did not move time)", markup=False)
    console.print(f"streams: {summary.streams_created:,} created, {summary.fired:,} fired, "
                  f"{summary.expired:,} expired"
                  + (f", {summary.pipeline_errors:,} pipeline failures" if summary.pipeline_errors else "")
                  + (f", {summary.commit_errors:,} handler commits failed (their side effects "
                     "did not happen; the log says why)" if summary.commit_errors else "")
                  + (f"; event time now {summary.event_time:%Y-%m-%d %H:%M:%S}"
                     if summary.event_time else ""), markup=False)
    stats = ingester.stats
    generated = summary.generated_counts
    # Generated events count where they landed, as the summary line's "created" does.
    matched = stats.matched + generated["matched"]
    new_streams = stats.new_streams + generated["new_streams"]
    ready = stats.ready + generated["ready"]
    if matched:
        table = Table(title="Triggers", title_justify="left")
        table.add_column("trigger")
        table.add_column("events matched", justify="right")
        table.add_column("streams created", justify="right")
        table.add_column("ready to fire", justify="right")
        for name in sorted(matched):
            table.add_row(name, f"{matched[name]:,}", f"{new_streams[name]:,}", f"{ready[name]:,}")
        console.print(table)
