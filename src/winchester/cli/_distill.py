from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.table import Table

from winchester.cli._inputs import numbered_lines, open_lines
from winchester.cli._options import config_option
from winchester.config import build_distiller, load_settings
from winchester.distill import DistillStats, NotificationRejected, decode_notification
from winchester.errors import ConfigError, InputError
from winchester.events import dumps_event


@click.command()
@config_option
@click.argument("source", default="-", metavar="[FILE.jsonl | -]")
@click.option("--stats", is_flag=True,
              help="At the end, print counts per event type and the trait conversion warnings.")
@click.option("--unwrap", metavar="KEY",
              help="Each line holds the notification under KEY (captures stored with metadata).")
def distill(config_file: str, source: str, stats: bool, unwrap: str | None) -> None:
    """Convert captured notifications to events with the configured definitions.

    Reads one notification per line (plain or gzip; '-' for standard input),
    legacy or oslo.messaging v2 envelope, and prints one event per line as
    JSON (datetimes as {"__type__": "datetime", ...}). Rejected lines are
    reported on standard error with their line number. Use it to try a
    definitions file against real traffic.
    """
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        distiller = build_distiller(load_settings(config_file))
    except ConfigError as exc:
        for problem in exc.problems:
            errors.print(f"{problem.severity}: {problem}", markup=False)
        sys.exit(2)
    out = sys.stdout.buffer
    unreadable: InputError | None = None
    with open_lines(source) as stream:
        lines = numbered_lines(stream, source)
        while True:
            try:
                number, line = next(lines)
            except StopIteration:
                break
            except InputError as exc:
                unreadable = exc
                break
            try:
                notification = decode_notification(line)
                if unwrap is not None:
                    notification = decode_notification(notification.get(unwrap))
                event = distiller.distill(notification)
            except NotificationRejected as exc:
                if exc.reason in ("not_json", "not_an_object", "bad_envelope"):
                    distiller.stats.rejected[exc.reason] += 1
                errors.print(f"{source}:{number}: {exc}", markup=False)
                continue
            if event is not None:
                out.write(dumps_event(event) + b"\n")
    out.flush()
    if stats:
        _print_stats(errors, distiller.stats)
    if unreadable is not None:
        errors.print(f"error: {unreadable}", markup=False)
        sys.exit(1)


def _print_stats(console: Console, stats: DistillStats) -> None:
    table = Table(title="Notifications by event type", title_justify="left")
    table.add_column("event type", overflow="fold")
    table.add_column("converted", justify="right")
    table.add_column("unconverted", justify="right")
    for event_type in sorted(set(stats.converted) | set(stats.unconverted)):
        table.add_row(event_type, str(stats.converted[event_type]),
                      str(stats.unconverted[event_type]))
    table.add_row("[bold]total[/bold]", str(sum(stats.converted.values())),
                  str(sum(stats.unconverted.values())))
    console.print(table)
    if stats.rejected:
        rejected = Table(title="Rejected notifications", title_justify="left")
        rejected.add_column("reason")
        rejected.add_column("count", justify="right")
        for reason, count in sorted(stats.rejected.items()):
            rejected.add_row(reason, str(count))
        console.print(rejected)
    if stats.trait_warnings:
        warnings = Table(title="Trait conversion warnings (trait dropped)", title_justify="left")
        warnings.add_column("definition", overflow="fold")
        warnings.add_column("trait")
        warnings.add_column("count", justify="right")
        warnings.add_column("last reason", overflow="fold")
        for (label, trait), count in sorted(stats.trait_warnings.items()):
            warnings.add_row(label, trait, str(count), stats.last_warning[(label, trait)])
        console.print(warnings)


