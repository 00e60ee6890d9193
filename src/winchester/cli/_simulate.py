from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click
import orjson
from rich.console import Console
from rich.table import Table

from winchester.cli._inputs import capture_lines, unwrapped
from winchester.cli._options import config_option
from winchester.config import (
    build_distiller,
    indexed_traits,
    load_pipeline_definitions,
    load_settings,
    load_trigger_definitions,
)
from winchester.errors import ConfigError, WinchesterError
from winchester.logs import configure_logging
from winchester.services.replay import Notification
from winchester.services.simulate import OUTCOMES, SimulationReport, simulate


@click.command("simulate")
@config_option
@click.argument("source", metavar="FILE.jsonl | DIR | -")
@click.option("--triggers", "triggers_file", type=click.Path(exists=True, dir_okay=False),
              help="Try these trigger definitions instead of winchester.yaml's.")
@click.option("--pipelines", "pipelines_file", type=click.Path(exists=True, dir_okay=False),
              help="Try these pipeline definitions instead of winchester.yaml's.")
@click.option("--commit", is_flag=True,
              help="Really run the handlers' commit() (publish, POST...); by default each only "
                   "says what it would do.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as one JSON document.")
@click.option("--show", type=click.IntRange(0), default=5, show_default=True,
              help="Streams shown per trigger and outcome (the JSON report has them all).")
@click.option("--unwrap", metavar="KEY", help="Each line holds the notification under KEY.")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=1000, show_default=True)
def simulate_command(config_file: str, source: str, triggers_file: str | None,
                     pipelines_file: str | None, commit: bool, as_json: bool, show: int,
                     unwrap: str | None, batch_size: int) -> None:
    """What would these notifications do? Try triggers and pipelines before deploying them.

    Runs distill, triggers and pipelines over the capture in a throwaway
    in-memory store, in event time, and reports per trigger the streams
    created, fired (with their events and the pipeline output), expired and
    still active at the end. The configured database is not touched, and
    handlers' side effects are not performed unless --commit is given.
    """
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        settings = load_settings(config_file)
        overrides = {}
        if triggers_file:
            overrides["trigger_definitions"] = str(Path(triggers_file).resolve())
        if pipelines_file:
            overrides["pipeline_config"] = str(Path(pipelines_file).resolve())
        settings = dataclasses.replace(settings, **overrides)
        configure_logging(settings)
        distiller = build_distiller(settings)
        triggers = load_trigger_definitions(settings)
        pipelines = load_pipeline_definitions(settings)
    except ConfigError as exc:
        for problem in exc.problems:
            console.print(f"{problem.severity}: {problem}", markup=False)
        sys.exit(2)
    notifications = (Notification(unwrapped(line, unwrap) if unwrap else line, f"{name}:{number}")
                     for name, number, line in capture_lines(source))
    try:
        report = simulate(settings, distiller, triggers, pipelines, notifications, commit=commit,
                          batch_size=batch_size, indexed_traits=indexed_traits(settings, triggers))
    except WinchesterError as exc:
        console.print(f"error: {exc}", markup=False)
        sys.exit(1)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2) + b"\n")
        return
    _print(Console(highlight=False, soft_wrap=True), report, show)


def _print(console: Console, report: SimulationReport, show: int) -> None:
    summary = report.summary
    console.print(f"simulated {summary.read:,} notifications: {summary.saved:,} events, "
                  f"{summary.duplicates:,} duplicates, {summary.unconverted:,} unconverted, "
                  f"{sum(summary.rejected.values()):,} rejected; event time ended at "
                  f"{summary.event_time:%Y-%m-%d %H:%M:%S}" if summary.event_time else "",
                  markup=False)
    console.print("dry run: no handler's commit() ran (--commit runs them)" if not report.committed
                  else "handlers' commit() ran (--commit)", markup=False)
    triggers = report.by_trigger()
    table = Table(title="Triggers", title_justify="left")
    for column in ("trigger", "created", *OUTCOMES):
        table.add_column("active at end" if column == "active" else column,
                         justify="left" if column == "trigger" else "right")
    for name, entry in triggers.items():
        table.add_row(name, f"{entry['streams_created']:,}",
                      *(f"{entry[outcome]:,}" for outcome in OUTCOMES))
    console.print(table)
    if not show:
        return
    for name, entry in triggers.items():
        for outcome in OUTCOMES:
            chosen = [s for s in entry["streams"] if s.outcome == outcome][:show]
            if not chosen:
                continue
            detail = Table(title=f"{name}: {outcome} (first {len(chosen)} of {entry[outcome]:,})",
                           title_justify="left")
            for column in ("distinguished by", "events", "due (event time)", "pipeline output"):
                detail.add_column(column, overflow="fold")
            for stream in chosen:
                types: dict[str, int] = {}
                for event in stream.events:
                    types[event["event_type"]] = types.get(event["event_type"], 0) + 1
                when = _when(stream)
                output = "; ".join(
                    f"{event['event_type']}"
                    + (f" ({event['error_code']}: {event['error']})" if event.get("error") else "")
                    for event in stream.output)
                if stream.error:
                    output = f"error: {stream.error}"
                elif stream.dry_run:
                    output = "\n".join(filter(None, [output, *stream.dry_run]))
                detail.add_row(", ".join(f"{k}={_value(v)}" for k, v in
                                         stream.distinguishing_traits.items()),
                               ", ".join(f"{count} {t}" for t, count in types.items()), when, output)
            console.print(detail)


def _value(value) -> str:
    begin = getattr(value, "begin", None)
    if begin is not None:
        return f"{begin:%Y-%m-%d %H:%M}..{value.end:%Y-%m-%d %H:%M}"
    return str(value)


def _when(stream) -> str:
    """When the stream became due: its fire time, or its expiry (the worker may run it later)."""
    if stream.outcome == "fired" or (stream.outcome == "error" and stream.fire_timestamp):
        moment = stream.fire_timestamp
    else:
        moment = stream.expire_timestamp
    text = f"{moment:%Y-%m-%d %H:%M:%S}" if moment else ""
    return f"expires {text}" if stream.outcome == "active" else text
