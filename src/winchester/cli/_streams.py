from __future__ import annotations

import sys

import click
from rich.table import Table

from winchester.cli._options import STREAM_ID, config_option, trait_filters
from winchester.cli._query import (
    events_table,
    json_option,
    output_console,
    paging_options,
    plain,
    print_json,
    print_next_page,
    queries,
    remote_options,
    short_time,
    with_options,
)
from winchester.store import STREAM_STATES

STREAM_OPTIONS = {"younger_than": "--from", "older_than": "--to", "trigger_name": "--name",
                  "distinguishing_traits": "--traits", "state": "--state", "mark": "--mark",
                  "limit": "--limit"}


stream_filters = with_options([
    click.option("--name", "--trigger", "name", metavar="TRIGGER", help="Only this trigger's streams."),
    click.option("--state", type=click.Choice(STREAM_STATES), help="Only streams in this state."),
    click.option("--from", "from_", metavar="TIME",
                 help="Streams whose last event is after this (ISO 8601, UTC)."),
    click.option("--to", metavar="TIME", help="Streams whose first event is before this."),
    click.option("--traits", "-t", multiple=True, metavar="NAME:VALUE",
                 help="A distinguishing-trait filter, repeatable; typed as for events "
                      "(-t instance_id:i-1 -t timestamp:datetime:2015-02-01)."),
])


def _params(name, state, from_, to, traits, mark=None, limit=None, details=False) -> dict[str, str | None]:
    return {"trigger_name": name, "state": state, "younger_than": from_, "older_than": to,
            "distinguishing_traits": trait_filters(traits), "mark": mark,
            "limit": None if limit is None else str(limit), "details": "true" if details else None}


@click.group("streams")
def streams() -> None:
    """Find streams, see their events, retry the ones whose pipeline failed."""


@streams.command("list")
@config_option
@stream_filters
@click.option("--details", is_flag=True, help="Include each stream's events.")
@with_options(paging_options)
@json_option
@remote_options
def list_streams(config_file, name, state, from_, to, traits, details, mark, limit, as_json, url,
                 token) -> None:
    """Streams, newest first, with their state and, for failed ones, the reason."""
    with queries(config_file, url, token, STREAM_OPTIONS) as backend:
        found = backend.streams(_params(name, state, from_, to, traits, mark, limit, details))
        counts = None if as_json else backend.counts_by_state()
    if as_json:
        print_json(found)
        return
    console = output_console()
    table = Table(title_justify="left", title=", ".join(
        f"{k} {v:,}" for k, v in sorted(counts.items())) or "no streams")
    for column in ("id", "trigger", "state", "events", "first event", "last event", "fire at",
                   "expires", "distinguished by", "error"):
        table.add_column(column, overflow="fold")
    for s in found:
        table.add_row(str(s["id"]), s["name"], s["state"], str(s["event_count"]), short_time(s["first_event"]),
                      short_time(s["last_event"]), short_time(s["fire_timestamp"]),
                      short_time(s["expire_timestamp"]), _distinguishing(s), s.get("error") or "")
    console.print(table)
    if details:
        for s in found:
            console.print(_events_table(s))
    print_next_page(console, found, limit, mark)


@streams.command("show")
@config_option
@click.argument("stream_id", type=STREAM_ID)
@click.option("--details", is_flag=True, help="Include the stream's events.")
@json_option
@remote_options
def show_stream(config_file, stream_id, details, as_json, url, token) -> None:
    """One stream; with --details, its events and their traits."""
    with queries(config_file, url, token) as backend:
        stream = backend.stream(stream_id, details)
    if as_json:
        print_json(stream)
        return
    console = output_console()
    table = Table(title=f"stream {stream_id}", title_justify="left", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for key in ("name", "state", "distinguishing_traits", "event_count", "first_event", "last_event",
                "fire_timestamp", "expire_timestamp", "fire_counts", "accepting_events", "error"):
        if key in stream:
            value = _distinguishing(stream) if key == "distinguishing_traits" else plain(stream[key])
            table.add_row("trigger" if key == "name" else key, str(value))
    console.print(table)
    if details:
        console.print(_events_table(stream))


@streams.command("count")
@config_option
@stream_filters
@json_option
@remote_options
def count_streams(config_file, name, state, from_, to, traits, as_json, url, token) -> None:
    """How many streams match the filters."""
    with queries(config_file, url, token, STREAM_OPTIONS) as backend:
        count = backend.count_streams(_params(name, state, from_, to, traits))
    if as_json:
        print_json({"count": count})
    else:
        click.echo(f"{count:,} stream(s)")


@streams.command("reset")
@config_option
@click.argument("stream_ids", metavar="[ID]...", nargs=-1, type=STREAM_ID)
@click.option("--all-errors", is_flag=True, help="Every stream in state error or expire_error.")
@json_option
@remote_options
def reset(config_file, stream_ids, all_errors, as_json, url, token) -> None:
    """Retry failed streams: error -> retry_fire, expire_error -> retry_expire.

    The next worker loop runs their pipeline again. Streams not in an error
    state are left alone (and reported; the exit status is then 1).
    """
    if bool(stream_ids) == all_errors:
        raise click.UsageError("give stream ids, or --all-errors (not both)")
    with queries(config_file, url, token) as backend:
        moved, skipped = backend.reset_streams(None if all_errors else list(stream_ids))
    if as_json:
        print_json({"reset": {str(k): v for k, v in sorted(moved.items())},
                    "left_alone": {str(k): v for k, v in sorted(skipped.items())}})
    else:
        console = output_console()
        for stream_id, state in sorted(moved.items()):
            console.print(f"stream {stream_id}: -> {state}", markup=False)
        for stream_id, state in sorted(skipped.items()):
            console.print(f"stream {stream_id}: " + ("no such stream" if state is None else
                          f"left alone (state {state}, not an error state)"), markup=False)
        console.print(f"{len(moved)} stream(s) reset", markup=False)
    if skipped:
        sys.exit(1)


@streams.command("delete")
@config_option
@click.argument("stream_ids", metavar="ID...", nargs=-1, required=True, type=STREAM_ID)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@remote_options
def delete(config_file, stream_ids, yes, url, token) -> None:
    """Delete streams (their events stay stored). A stream a worker is running is refused."""
    if not yes:
        click.confirm(f"Delete {len(stream_ids)} stream(s): {', '.join(map(str, stream_ids))}?",
                      abort=True, err=True)
    failed = 0
    with queries(config_file, url, token) as backend:
        from winchester.cli._query import QueryFailed

        for stream_id in stream_ids:
            try:
                backend.delete_stream(stream_id)
            except QueryFailed as exc:
                if exc.exit_code == 2:
                    raise
                failed += 1
                click.echo(f"stream {stream_id}: not deleted: {exc}", err=True)
            else:
                click.echo(f"stream {stream_id}: deleted")
    if failed:
        sys.exit(1)


def _distinguishing(stream) -> str:
    return ", ".join(f"{k}={plain(v)}" for k, v in stream["distinguishing_traits"].items())


def _events_table(stream) -> Table:
    events = stream.get("events", [])
    return events_table(f"stream {stream['id']}: {len(events)} event(s)", events)
