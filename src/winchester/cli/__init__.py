"""The ``winchester`` command.

Subcommands live in their own modules and are imported only when invoked, so
``winchester --help`` stays fast however heavy a subcommand's imports are.
To add one, write ``cli/_<name>.py`` with a click command and list it in
:data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import importlib

import click

from winchester import __version__

# name -> (module, attribute, one-line help shown by ``winchester --help``)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "api": ("winchester.cli._serve", "api",
            "Serve the HTTP API and dashboard alone (serve --with api)."),
    "archive": ("winchester.cli._archive", "archive",
                "Count, list and export archived notifications."),
    "check": ("winchester.cli._check", "check", "Validate winchester.yaml and every file it names."),
    "distill": ("winchester.cli._distill", "distill",
                "Convert captured notifications to events (try your definitions)."),
    "db": ("winchester.cli._db", "db", "Create and migrate the database schema."),
    "events": ("winchester.cli._events", "events", "Find stored events by type, time and traits."),
    "explain": ("winchester.cli._explain", "explain",
                "Why a stream is where it is, or what an event matched."),
    "ingest": ("winchester.cli._intake", "ingest",
               "Consume notifications from the bus into streams."),
    "ingest-file": ("winchester.cli._ingest_file", "ingest_file",
                    "Ingest captured notifications from a JSON-lines file or stdin."),
    "persistor": ("winchester.cli._intake", "persistor",
                  "Archive every raw notification from the bus."),
    "replay": ("winchester.cli._replay", "replay",
               "Replay captured or archived notifications in event time."),
    "serve": ("winchester.cli._serve", "serve",
              "Run API, intake, persistor and worker together."),
    "simulate": ("winchester.cli._simulate", "simulate_command",
                 "Try triggers and pipelines on captured notifications (dry run)."),
    "streams": ("winchester.cli._streams", "streams",
                "Find streams and their events; retry or delete them."),
    "version": ("winchester.cli._version", "version", "Print the Winchester version."),
    "worker": ("winchester.cli._worker", "worker",
               "Fire and expire due streams, running their pipelines."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *SUBCOMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in SUBCOMMANDS:
            module_name, attribute, _ = SUBCOMMANDS[cmd_name]
            return getattr(importlib.import_module(module_name), attribute)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing must not import every subcommand just to read its help.
        rows = [(name, SUBCOMMANDS[name][2]) for name in sorted(SUBCOMMANDS)]
        rows += [(name, cmd.get_short_help_str()) for name, cmd in sorted(self.commands.items())]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="winchester")
def main() -> None:
    """Winchester: OpenStack notifications in, decisions out, through persistent streams.

    Every subcommand that needs configuration takes -c/--config (or the
    WINCHESTER_CONFIG environment variable) naming winchester.yaml.
    """


__all__ = ["main", "SUBCOMMANDS"]
