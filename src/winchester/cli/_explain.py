from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.table import Table

from winchester.cli._options import STREAM_ID, config_option
from winchester.cli._query import json_option, output_console, plain, print_json, queries, remote_options


@click.command("explain")
@config_option
@click.argument("stream_id", required=False, type=STREAM_ID)
@click.option("--event", "message_id", metavar="MESSAGE_ID",
              help="Explain an event instead: which triggers it matched, and why not the others.")
@json_option
@remote_options
def explain(config_file: str, stream_id: int | None, message_id: str | None, as_json: bool,
            url: str | None, token: str | None) -> None:
    """Why a stream is where it is (or what an event matched).

    For a stream: its trigger, state history, expiry, each fire criterion's
    progress, the closest events that did not count and the condition each
    failed, and for a failed stream the recorded error.
    """
    if (stream_id is None) == (message_id is None):
        raise click.UsageError("give a STREAM_ID, or --event MESSAGE_ID (not both)")
    with queries(config_file, url, token) as backend:
        report = backend.explain_stream(stream_id) if stream_id else backend.explain_event(message_id)
    if as_json:
        print_json(report)
        return
    console = output_console()
    if stream_id:
        _print_stream(console, report)
    else:
        _print_event(console, report)


def _print_stream(console: Console, report: dict[str, Any]) -> None:
    stream, trigger = report["stream"], report["trigger"]
    say = lambda text="": console.print(text, markup=False)  # noqa: E731
    say(f"stream {stream['id']}  trigger {stream['trigger']}  state {stream['state']}")
    say(f"verdict: {report['verdict']}")
    say("distinguished by: " + (", ".join(f"{k}={plain(v)}" for k, v in
                                          stream["distinguishing_traits"].items()) or "-"))
    say(f"events: {stream['event_count']}, first {stream['first_event']}, last {stream['last_event']}")
    expiry = report["expiry"]
    when = (f"in {expiry['in']}" if expiry["seconds_from_now"] > 0 else f"{expiry['in']} ago")
    say(f"expires: {expiry['at']} ({when}; now is {report['now']})")
    if report["fire"]["fire_at"]:
        say(f"fire at: {report['fire']['fire_at']}")
    if not trigger.get("defined", True):
        say(f"trigger {trigger['name']!r} is not defined any more")
    if report.get("error"):
        say(f"error: {report['error']}")

    history = Table(title="history", title_justify="left")
    for column in ("at", "state", "from", "by", "detail"):
        history.add_column(column, overflow="fold")
    for entry in report["history"]:
        history.add_row(entry["at"], entry["state"], entry["previous_state"] or "", entry["actor"] or "",
                        entry["detail"] or "")
    console.print(history)

    criteria = Table(title="fire criteria", title_justify="left")
    for column in ("#", "criterion", "matched", "needed", "met"):
        criteria.add_column(column, overflow="fold")
    for entry in report["fire"]["criteria"]:
        criteria.add_row(str(entry["index"]), entry["description"], str(entry["counted"]),
                         str(entry["needed"]), "yes" if entry["met"] else "no")
    console.print(criteria)
    for entry in report["fire"]["criteria"]:
        if not entry["closest"]:
            continue
        closest = Table(title=f"closest events not matching criterion #{entry['index']}",
                        title_justify="left")
        for column in ("message_id", "event type", "timestamp", "failed", "why"):
            closest.add_column(column, overflow="fold")
        for event in entry["closest"]:
            closest.add_row(event["message_id"], event["event_type"], event["timestamp"],
                            event["failed"] or "", event["detail"] or "")
        console.print(closest)


def _print_event(console: Console, report: dict[str, Any]) -> None:
    event = report["event"]
    console.print(f"event {event['message_id']}  {event['event_type']}  {event['timestamp']}",
                  markup=False)
    table = Table(title="triggers", title_justify="left")
    for column in ("trigger", "matched", "stream", "why"):
        table.add_column(column, overflow="fold")
    for verdict in report["triggers"]:
        stream = verdict.get("stream")
        table.add_row(verdict["trigger"], "yes" if verdict["matched"] else "no",
                      f"{stream['id']} ({stream['state']})" if stream else "", verdict["reason"])
    console.print(table)
