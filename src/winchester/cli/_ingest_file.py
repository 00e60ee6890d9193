from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from concurrent.futures import Future, ThreadPoolExecutor

import click
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from winchester.cli._inputs import numbered_lines, open_lines, unwrapped
from winchester.cli._options import config_option
from winchester.clock import clock_from_settings
from winchester.cli._setup import open_parts
from winchester.errors import WinchesterError
from winchester.services.ingest import Ingester


@click.command("ingest-file")
@config_option
@click.argument("source", metavar="FILE.jsonl | -")
@click.option("--clock", "clock_kind", type=click.Choice(["wall", "event"]),
              help="'event': now follows the notifications' own timestamps (for captured data), "
                   "shared through the database [default: the clock setting].")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="Notifications per database transaction.")
@click.option("--unwrap", metavar="KEY",
              help="Each line holds the notification under KEY (captures stored with metadata).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def ingest_file(config_file: str, source: str, clock_kind: str, batch_size: int,
                unwrap: str | None, quiet: bool) -> None:
    """Ingest notifications from a JSON-lines file (plain or gzip) or '-' for stdin.

    Each line is one notification (legacy format or oslo.messaging v2
    envelope). Rejected lines are kept in the dead-letter table with their
    reason; duplicates (a message_id already stored) change nothing, so a file
    can be ingested again safely. Use --clock event for captured data: with
    wall time, week-old events would find their streams already expired.
    """
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    parts = open_parts(config_file, console, distiller=True)
    store, triggers, distiller = parts.store, parts.triggers, parts.distiller

    clock = clock_from_settings(parts.settings, store, clock_kind)
    ingester = Ingester(store, triggers, distiller, clock,
                        timedelta(seconds=parts.settings.late_event_grace))
    total_bytes = _plain_file_size(source)
    started = time.perf_counter()
    progress = Progress(
        SpinnerColumn(), TextColumn("{task.fields[count]:>12,} notifications"),
        TextColumn("{task.fields[rate]:>9,.0f}/s"), BarColumn(), TextColumn("{task.fields[now]}"),
        TimeElapsedColumn(), console=console, disable=quiet)
    # Distilling and matching (Python, holding the GIL) of one batch overlaps
    # with the database writing the previous one (which mostly releases it).
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-writer")
    pending: Future | None = None
    committed_through = 0  # the last line of the last batch known to be committed
    failure: BaseException | None = None
    try:
        with progress, open_lines(source) as stream:
            task = progress.add_task("ingest", total=total_bytes, count=0, rate=0.0, now="")
            batch: list = []
            numbers: list[int] = []
            consumed = 0

            def hand_over(batch: list, numbers: list[int]) -> Future:
                nonlocal committed_through
                prepared = ingester.prepare(batch)
                if pending is not None:
                    # One batch in flight: memory stays flat and order is kept.
                    committed_through = pending.result()
                return writer.submit(_commit, ingester, prepared, numbers, source, console)

            for number, line in numbered_lines(stream):
                consumed += len(line)
                batch.append(unwrapped(line, unwrap) if unwrap else line)
                numbers.append(number)
                if len(batch) >= batch_size:
                    pending = hand_over(batch, numbers)
                    batch, numbers = [], []
                    elapsed = time.perf_counter() - started
                    progress.update(task, completed=consumed if total_bytes else None,
                                    count=ingester.stats.received,
                                    rate=ingester.stats.received / max(elapsed, 1e-9),
                                    now=f"now {clock.now():%Y-%m-%d %H:%M:%S}")
            if batch:
                pending = hand_over(batch, numbers)
            if pending is not None:
                committed_through = pending.result()
            elapsed = time.perf_counter() - started
            progress.update(task, completed=total_bytes or consumed, count=ingester.stats.received,
                            rate=ingester.stats.received / max(elapsed, 1e-9))
    except (WinchesterError, SQLAlchemyError) as exc:
        failure = exc
    finally:
        writer.shutdown(wait=True)
        store.close()
    _summary(Console(highlight=False, soft_wrap=True), ingester, time.perf_counter() - started)
    if failure is not None:
        console.print(f"error: ingest stopped: {failure}", markup=False)
        console.print(f"every line up to {source}:{committed_through} is committed; run the same "
                      "command again to resume (lines already stored are skipped as duplicates)",
                      markup=False)
        sys.exit(1)


def _plain_file_size(source: str) -> int | None:
    """The size of an uncompressed regular file, for the progress bar (None: unknown)."""
    if source == "-" or not os.path.isfile(source):
        return None
    with open(source, "rb") as handle:
        if handle.read(2) == b"\x1f\x8b":
            return None
    return os.path.getsize(source)


_SHOWN_REJECTIONS = 20


def _commit(ingester: Ingester, prepared, numbers: list[int], source: str, console) -> int:
    """Write one batch (rejected lines go to the dead letters in the same transaction)."""
    outcome = ingester.commit(
        prepared, dead_letter_source=lambda r: f"ingest-file:{source}:{numbers[r.position]}")
    already = sum(ingester.stats.rejected.values()) - len(outcome.rejected)
    for index, rejected in enumerate(outcome.rejected, already):
        if index < _SHOWN_REJECTIONS:
            console.print(f"{source}:{numbers[rejected.position]}: rejected "
                          f"({rejected.reason}): {rejected.detail}", markup=False)
        elif index == _SHOWN_REJECTIONS:
            console.print("... further rejected lines are not shown; all are kept in the "
                          "dead-letter table with their reason", markup=False)
    return numbers[-1] if numbers else 0


def _summary(console: Console, ingester: Ingester, elapsed: float) -> None:
    stats = ingester.stats
    rate = stats.received / elapsed if elapsed > 0 else 0.0
    console.print(f"ingested {stats.received:,} notifications in {elapsed:.1f}s ({rate:,.0f}/s): "
                  f"{stats.saved:,} saved, {stats.duplicates:,} duplicates, "
                  f"{stats.unconverted:,} unconverted, {sum(stats.rejected.values()):,} rejected"
                  + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(stats.rejected.items()))})"
                     if stats.rejected else ""))
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
