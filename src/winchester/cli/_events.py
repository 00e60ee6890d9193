from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from winchester.cli._options import config_option
from winchester.cli._query import json_option, plain, print_json, queries, remote_options, short_time

# The event keys every event has; the rest are its traits.
_CORE = ("message_id", "event_type", "timestamp", "_mark")
EVENT_OPTIONS = {"from_datetime": "--from", "to_datetime": "--to", "event_name": "--name",
                 "traits": "--traits", "mark": "--mark", "limit": "--limit"}


def event_filters(command):
    for decorator in reversed([
        click.option("--name", metavar="EVENT_TYPE", help="Only events of this type."),
        click.option("--from", "from_", metavar="TIME", help="Events generated after this (ISO 8601, UTC)."),
        click.option("--to", metavar="TIME", help="Events generated at or before this."),
        click.option("--traits", "-t", multiple=True, metavar="NAME:VALUE",
                     help="A trait filter, repeatable; values typed as int:, float:, datetime:, "
                          "string: (text by default), e.g. -t memory_mb:int:2048."),
    ]):
        command = decorator(command)
    return command


def _params(name, from_, to, traits, mark=None, limit=None) -> dict[str, str | None]:
    return {"event_name": name, "from_datetime": from_, "to_datetime": to,
            "traits": ";".join(traits) or None, "mark": mark,
            "limit": None if limit is None else str(limit)}


@click.group("events")
def events() -> None:
    """Find stored events: by type, time and traits (the API's filters)."""


@events.command("list")
@config_option
@event_filters
@click.option("--mark", help="Page on from this _mark (the last one shown); +MARK pages oldest first.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
@remote_options
def list_events(config_file, name, from_, to, traits, mark, limit, as_json, url, token) -> None:
    """Events, newest first, with their traits."""
    with queries(config_file, url, token, EVENT_OPTIONS) as backend:
        found = backend.events(_params(name, from_, to, traits, mark, limit))
    if as_json:
        print_json(found)
        return
    console = Console(highlight=False, soft_wrap=True, markup=False)
    table = Table(title=f"{len(found)} event(s)", title_justify="left")
    for column in ("generated", "event type", "message_id", "traits"):
        table.add_column(column, overflow="fold")
    for event in found:
        table.add_row(short_time(event["timestamp"]), event["event_type"], event["message_id"],
                      ", ".join(f"{key}={plain(value)}" for key, value in event.items() if key not in _CORE))
    console.print(table)
    if len(found) == limit:
        sign = "+" if (mark or "").startswith("+") else ""
        console.print(f"more: --mark {sign}{found[-1]['_mark'].lstrip('+')}", markup=False)


@events.command("show")
@config_option
@click.argument("message_id")
@json_option
@remote_options
def show_event(config_file, message_id, as_json, url, token) -> None:
    """One event, every trait with its type."""
    with queries(config_file, url, token) as backend:
        event = backend.event(message_id)
    if as_json:
        print_json(event)
        return
    table = Table(title=f"event {message_id}", title_justify="left")
    for column in ("trait", "type", "value"):
        table.add_column(column, overflow="fold")
    for key, value in event.items():
        table.add_row(key, _type_of(value), plain(value))
    Console(highlight=False, soft_wrap=True, markup=False).print(table)


@events.command("count")
@config_option
@event_filters
@json_option
@remote_options
def count_events(config_file, name, from_, to, traits, as_json, url, token) -> None:
    """How many events match the filters."""
    with queries(config_file, url, token, EVENT_OPTIONS) as backend:
        count = backend.count_events(_params(name, from_, to, traits))
    if as_json:
        print_json({"count": count})
    else:
        click.echo(f"{count:,} event(s)")


def _type_of(value) -> str:
    if isinstance(value, dict) and value.get("__type__") == "datetime":
        return "datetime"
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "float", str: "text"}.get(type(value), type(value).__name__)
