from __future__ import annotations


import click
import orjson
from rich.console import Console
from rich.table import Table

from winchester.cli._options import config_option, utc_timestamp
from winchester.cli._setup import open_parts


_filters = [
    click.option("--from", "since", callback=utc_timestamp, metavar="TIMESTAMP",
                 help="Only notifications stamped at or after this UTC time."),
    click.option("--to", "until", callback=utc_timestamp, metavar="TIMESTAMP",
                 help="Only notifications stamped before this UTC time."),
    click.option("--received-from", "received_since", callback=utc_timestamp, metavar="TIMESTAMP",
                 help="Only notifications archived at or after this UTC time (every row has "
                      "one: for complete, non-overlapping periodic exports)."),
    click.option("--received-to", "received_until", callback=utc_timestamp, metavar="TIMESTAMP",
                 help="Only notifications archived before this UTC time."),
    click.option("--event-type", help="Only this event type."),
]


def filters(command):
    for option in reversed(_filters):
        command = option(command)
    return command


@click.group("archive")
def archive() -> None:
    """The persistor's archive of raw notifications: count, list, export for replay."""


@archive.command("count")
@config_option
@filters
def count(config_file: str, since, until, received_since, received_until, event_type) -> None:
    """How many notifications the archive holds (within the filters)."""
    parts = open_parts(config_file, Console(stderr=True, highlight=False))
    try:
        click.echo(parts.store.count_archive(since, until, event_type,
                                             received=(received_since, received_until)))
    finally:
        parts.store.close()


@archive.command("list")
@config_option
@filters
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
def list_archive(config_file: str, since, until, received_since, received_until, event_type,
                 limit: int) -> None:
    """The first archived notifications (oldest first), one row each."""
    parts = open_parts(config_file, Console(stderr=True, highlight=False))
    table = Table(title_justify="left")
    for column in ("id", "received", "stamped", "event type", "message id", "publisher", "status"):
        table.add_column(column, overflow="fold")
    try:
        for shown, row in enumerate(parts.store.iter_archive(
                since, until, event_type, batch=limit, received=(received_since, received_until))):
            if shown >= limit:
                break
            table.add_row(str(row.id), f"{row.received_at:%Y-%m-%d %H:%M:%S}",
                          f"{row.generated:%Y-%m-%d %H:%M:%S}" if row.generated else "",
                          row.event_type or "", row.message_id or "", row.publisher_id or "",
                          row.status + (f" ({row.reason})" if row.reason else ""))
    finally:
        parts.store.close()
    Console(highlight=False, soft_wrap=True).print(table)


@archive.command("export")
@config_option
@filters
@click.option("-o", "--output", type=click.File("wb"), default="-", show_default=True,
              help="Where to write the JSON lines.")
@click.option("--raw", is_flag=True,
              help="Write each body exactly as received (one per line) instead of a JSON object "
                   "with the archive's columns.")
def export(config_file: str, since, until, received_since, received_until, event_type, output,
           raw: bool) -> None:
    """Export notifications as JSON lines, oldest first (for replay or rebuilding a store).

    By default each line is {"id", "received_at", "message_id", "event_type",
    "publisher_id", "status", "reason", "notification"}; `winchester ingest-file
    --unwrap notification` reads it back.
    """
    parts = open_parts(config_file, Console(stderr=True, highlight=False))
    written = 0
    try:
        for row in parts.store.iter_archive(since, until, event_type,
                                            received=(received_since, received_until)):
            if raw:
                output.write(row.body.replace(b"\n", b" ") + b"\n")
            else:
                try:
                    notification = orjson.loads(row.body)
                except orjson.JSONDecodeError:
                    notification = row.body.decode("utf-8", "replace")
                columns = {
                    "id": row.id, "received_at": row.received_at, "message_id": row.message_id,
                    "event_type": row.event_type, "publisher_id": row.publisher_id,
                    "status": row.status, "reason": row.reason}
                try:
                    line = orjson.dumps({**columns, "notification": notification})
                except TypeError:
                    # Valid JSON that orjson cannot write back (nested past 255
                    # levels): the body is spliced in as it was stored.
                    line = (orjson.dumps(columns)[:-1] + b',"notification":'
                            + row.body.strip().replace(b"\n", b" ") + b"}")
                output.write(line + b"\n")
            written += 1
        # The file exists afterwards even when nothing matched: an empty period is
        # an empty export, not a missing one (backup scripts check for the file).
        output.flush()
    finally:
        parts.store.close()
    click.echo(f"{written:,} notification(s) exported", err=True)
