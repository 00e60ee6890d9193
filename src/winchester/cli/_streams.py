from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table

from winchester.cli._options import config_option
from winchester.cli._setup import open_parts
from winchester.clock import WallClock
from winchester.store import STREAM_STATES


@click.group("streams")
def streams() -> None:
    """Inspect streams, and retry the ones whose pipeline failed."""


@streams.command("list")
@config_option
@click.option("--state", type=click.Choice(STREAM_STATES), help="Only streams in this state.")
@click.option("--trigger", help="Only streams of this trigger.")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
def list_streams(config_file: str, state: str | None, trigger: str | None, limit: int) -> None:
    """List streams (oldest first) with their state and, for failed ones, the reason."""
    console = Console(highlight=False, soft_wrap=True)
    parts = open_parts(config_file, Console(stderr=True, highlight=False))
    try:
        found = parts.store.list_streams(trigger_name=trigger, state=state, limit=limit)
        errors = parts.store.stream_errors([s.id for s in found if s.state.endswith("error")])
        counts = parts.store.count_streams_by_state()
    finally:
        parts.store.close()
    table = Table(title_justify="left", title=", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
                  or "no streams")
    for column in ("id", "trigger", "state", "events", "first event", "last event", "fire at",
                   "expires", "distinguished by", "error"):
        table.add_column(column, overflow="fold")
    for s in found:
        table.add_row(str(s.id), s.trigger_name, s.state, str(s.event_count), f"{s.first_event:%Y-%m-%d %H:%M:%S}",
                      f"{s.last_event:%Y-%m-%d %H:%M:%S}",
                      f"{s.fire_timestamp:%Y-%m-%d %H:%M:%S}" if s.fire_timestamp else "",
                      f"{s.expire_timestamp:%Y-%m-%d %H:%M:%S}",
                      ", ".join(f"{k}={v}" for k, v in s.distinguishing_traits.items()),
                      errors.get(s.id) or "")
    console.print(table)


@streams.command("reset")
@config_option
@click.argument("stream_ids", metavar="[ID]...", nargs=-1, type=int)
@click.option("--all-errors", is_flag=True, help="Every stream in state error or expire_error.")
def reset(config_file: str, stream_ids: tuple[int, ...], all_errors: bool) -> None:
    """Retry failed streams: error -> retry_fire, expire_error -> retry_expire.

    The next worker loop runs their pipeline again. Streams not in an error
    state are left alone (and reported).
    """
    if bool(stream_ids) == all_errors:
        raise click.UsageError("give stream ids, or --all-errors (not both)")
    console = Console(highlight=False, soft_wrap=True)
    parts = open_parts(config_file, Console(stderr=True, highlight=False))
    try:
        moved = parts.store.reset_streams(None if all_errors else stream_ids, WallClock().now())
        skipped = {} if all_errors else {
            stream_id: (record.state if record else None)
            for stream_id in stream_ids if stream_id not in moved
            for record in [parts.store.get_stream(stream_id)]}
    finally:
        parts.store.close()
    for stream_id, state in sorted(moved.items()):
        console.print(f"stream {stream_id}: -> {state}", markup=False)
    for stream_id, state in sorted(skipped.items()):
        console.print(f"stream {stream_id}: " + ("no such stream" if state is None else
                      f"left alone (state {state}, not an error state)"), markup=False)
    console.print(f"{len(moved)} stream(s) reset", markup=False)
    if skipped:
        sys.exit(1)
