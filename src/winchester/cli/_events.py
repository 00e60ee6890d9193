from __future__ import annotations

import click
from rich.table import Table

from winchester.cli._options import config_option, trait_filters
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
    with_options,
)

EVENT_OPTIONS = {"from_datetime": "--from", "to_datetime": "--to", "event_name": "--name",
                 "traits": "--traits", "mark": "--mark", "limit": "--limit"}


event_filters = with_options([
    click.option("--name", metavar="EVENT_TYPE", help="Only events of this type."),
    click.option("--from", "from_", metavar="TIME", help="Events generated after this (ISO 8601, UTC)."),
    click.option("--to", metavar="TIME", help="Events generated at or before this."),
    click.option("--traits", "-t", multiple=True, metavar="NAME:VALUE",
                 help="A trait filter, repeatable; values typed as int:, float:, datetime:, "
                      "string: (text by default), e.g. -t memory_mb:int:2048."),
])


def _params(name, from_, to, traits, mark=None, limit=None) -> dict[str, str | None]:
    return {"event_name": name, "from_datetime": from_, "to_datetime": to,
            "traits": trait_filters(traits), "mark": mark,
            "limit": None if limit is None else str(limit)}


@click.group("events")
def events() -> None:
    """Find stored events: by type, time and traits (the API's filters)."""


@events.command("list")
@config_option
@event_filters
@with_options(paging_options)
@json_option
@remote_options
def list_events(config_file, name, from_, to, traits, mark, limit, as_json, url, token) -> None:
    """Events, newest first, with their traits."""
    with queries(config_file, url, token, EVENT_OPTIONS) as backend:
        found = backend.events(_params(name, from_, to, traits, mark, limit))
    if as_json:
        print_json(found)
        return
    console = output_console()
    console.print(events_table(f"{len(found)} event(s)", found))
    print_next_page(console, found, limit, mark)


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
    output_console().print(table)


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
