from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from winchester.cli._options import config_option
from winchester.config._check import check_configuration


@click.command()
@config_option
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
def check(config_file: str, strict: bool) -> None:
    """Validate winchester.yaml and every file it names.

    Reports every problem found, each with its file, line and the definition
    and field concerned. Exits 1 if there is any error (or, with --strict,
    any warning), 0 otherwise.
    """
    console = Console(highlight=False, soft_wrap=True)
    report = check_configuration(config_file)
    settings = report.settings

    table = Table(title=f"Configuration {report.config_file}", title_justify="left")
    table.add_column("key", no_wrap=True)
    table.add_column("file", overflow="fold")
    table.add_column("result", overflow="fold")
    if settings is not None:
        # Keys with errors were left at their defaults to check the rest: show no default
        # as if it were the configured database.
        broken = report.broken_keys
        shown = ("[red]database: invalid (see below)[/red]" if "database" in broken
                 else f"database {_safe(settings.database_url)}")
        table.add_row("winchester.yaml", _short(settings.source),
                      f"[red]{len(broken)} key(s) with errors[/red]; " + shown if broken else shown)
        for file_report in report.files:
            errors = sum(p.severity == "error" for p in file_report.problems)
            status = f"[red]{errors} error(s)[/red]" if errors else f"[green]ok[/green] {file_report.summary}"
            table.add_row(file_report.key, _short(file_report.path), status)
        console.print(table)

    problems = report.all_problems
    for problem in problems:
        colour = "red" if problem.severity == "error" else "yellow"
        console.print(f"[{colour}]{problem.severity}[/{colour}]: {problem}", markup=True,
                      highlight=False)
    errors = len(report.errors)
    warnings = len(problems) - errors
    failed = errors > 0 or (strict and warnings > 0)
    verdict = "[red]configuration is invalid[/red]" if failed else "[green]configuration is valid[/green]"
    console.print(f"{verdict} ({errors} error(s), {warnings} warning(s))")
    sys.exit(1 if failed else 0)


def _short(path: Path | None) -> str:
    """A path relative to the working directory when it is below it."""
    if path is None:
        return "-"
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported elsewhere; show nothing of it
        return "(unparsable URL)"
