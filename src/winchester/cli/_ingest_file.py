from __future__ import annotations

import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor

import click
import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from winchester.cli._inputs import numbered_lines, open_lines
from winchester.cli._options import config_option
from winchester.clock import make_clock
from winchester.config import (
    build_distiller,
    load_settings,
    load_trigger_definitions,
    open_store,
)
from winchester.errors import ConfigError
from winchester.logs import configure_logging
from winchester.services.ingest import Ingester
from winchester.store import SchemaError


@click.command("ingest-file")
@config_option
@click.argument("source", metavar="FILE.jsonl | -")
@click.option("--clock", "clock_kind", type=click.Choice(["wall", "event"]), default="wall",
              show_default=True,
              help="'event': now follows the notifications' own timestamps (for captured data).")
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
    try:
        settings = load_settings(config_file)
        configure_logging(settings)
        distiller = build_distiller(settings)
        triggers = load_trigger_definitions(settings)
        store = open_store(settings, triggers)
    except ConfigError as exc:
        for problem in exc.problems:
            console.print(f"{problem.severity}: {problem}", markup=False)
        sys.exit(2)
    except SchemaError as exc:
        console.print(f"error: {exc}", markup=False)
        sys.exit(2)

    clock = make_clock(clock_kind)
    ingester = Ingester(store, triggers, distiller, clock)
    total_bytes = os.path.getsize(source) if source != "-" and os.path.isfile(source) else None
    started = time.perf_counter()
    progress = Progress(
        SpinnerColumn(), TextColumn("{task.fields[count]:>12,} notifications"),
        TextColumn("{task.fields[rate]:>9,.0f}/s"), BarColumn(), TextColumn("{task.fields[now]}"),
        TimeElapsedColumn(), console=console, disable=quiet)
    # Distilling and matching (Python, holding the GIL) of one batch overlaps
    # with the database writing the previous one (which mostly releases it).
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-writer")
    pending: Future | None = None
    try:
        with progress, open_lines(source) as stream:
            task = progress.add_task("ingest", total=total_bytes, count=0, rate=0.0, now="")
            batch: list = []
            lines: dict[int, int] = {}
            consumed = 0

            def hand_over(batch: list, lines: dict) -> Future:
                prepared = ingester.prepare(batch)
                if pending is not None:
                    pending.result()  # one batch in flight: memory stays flat, order kept
                return writer.submit(_commit, ingester, store, prepared, lines, source, clock,
                                     console)

            for number, line in numbered_lines(stream):
                consumed += len(line) + 1
                body = _unwrapped(line, unwrap) if unwrap else line
                batch.append(body)
                lines[id(body)] = number
                if len(batch) >= batch_size:
                    pending = hand_over(batch, lines)
                    batch, lines = [], {}
                    elapsed = time.perf_counter() - started
                    progress.update(task, completed=consumed if total_bytes else None,
                                    count=ingester.stats.received,
                                    rate=ingester.stats.received / max(elapsed, 1e-9),
                                    now=f"now {clock.now():%Y-%m-%d %H:%M:%S}")
            if batch:
                pending = hand_over(batch, lines)
            if pending is not None:
                pending.result()
            elapsed = time.perf_counter() - started
            progress.update(task, completed=total_bytes or consumed, count=ingester.stats.received,
                            rate=ingester.stats.received / max(elapsed, 1e-9))
    finally:
        writer.shutdown(wait=True)
        store.close()
    _summary(Console(highlight=False, soft_wrap=True), ingester, time.perf_counter() - started)


def _unwrapped(line: bytes, key: str):
    """The notification under ``key``; the raw line when it has none (it is then rejected)."""
    try:
        wrapper = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    if isinstance(wrapper, dict) and key in wrapper:
        return wrapper[key]
    return line


_SHOWN_REJECTIONS = 20


def _commit(ingester: Ingester, store, prepared, lines: dict, source: str, clock,
            console) -> None:
    outcome = ingester.commit(prepared)
    if outcome.rejected:
        store.save_dead_letters(
            [{"source": f"ingest-file:{source}:{lines.get(id(r.body), '?')}", "reason": r.reason,
              "detail": r.detail, "body": r.body} for r in outcome.rejected], clock.now())
        already = sum(ingester.stats.rejected.values()) - len(outcome.rejected)
        for index, rejected in enumerate(outcome.rejected, already):
            if index < _SHOWN_REJECTIONS:
                console.print(f"{source}:{lines.get(id(rejected.body), '?')}: rejected "
                              f"({rejected.reason}): {rejected.detail}", markup=False)
            elif index == _SHOWN_REJECTIONS:
                console.print("... further rejected lines are not shown; all are kept in the "
                              "dead-letter table with their reason", markup=False)


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
