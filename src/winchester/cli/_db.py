"""``winchester db`` (and the original ``winchester_db``): schema migrations."""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click
from alembic.util import CommandError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from winchester.cli._options import CONFIG_ENV
from winchester.config import load_settings
from winchester.errors import ConfigError, WinchesterError
from winchester.store import (
    create_engine,
    current_revision,
    downgrade,
    head_revision,
    history,
    migration_sql,
    stamp,
    upgrade,
)

# -c is accepted before the subcommand (`winchester_db -c x upgrade head`, the
# original's syntax) and after it (`winchester db upgrade -c x`).
_sub_config = click.option("-c", "--config", "config_file", default=None,
                           type=click.Path(dir_okay=False),
                           help="Path to winchester.yaml (overrides the group's -c).")


def _reported(command):
    """Turn database and migration failures into one `error:` line and exit status 1."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (SQLAlchemyError, CommandError, WinchesterError) as exc:
            message = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            click.echo(f"error: {message}", err=True)
            sys.exit(1)

    return run


@contextmanager
def _engine(url: str) -> Iterator[Engine]:
    engine = create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def _database_url(ctx: click.Context, config_file: str | None) -> str:
    path = config_file or ctx.obj["config_file"]
    try:
        return load_settings(path).database_url
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"{problem.severity}: {problem}", err=True)
        sys.exit(2)


@click.group()
@click.option("-c", "--config", "config_file", envvar=CONFIG_ENV, show_envvar=True,
              default="winchester.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="Path to winchester.yaml.")
@click.pass_context
def db(ctx: click.Context, config_file: str) -> None:
    """Create and migrate the database schema.

    Run `winchester db upgrade -c winchester.yaml` once before starting any
    service, and after installing a new version.
    """
    ctx.ensure_object(dict)
    ctx.obj["config_file"] = config_file


@db.command("upgrade")
@click.argument("revision", default="head")
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it.")
@_sub_config
@click.pass_context
@_reported
def upgrade_command(ctx: click.Context, revision: str, sql: bool, config_file: str | None) -> None:
    """Upgrade the schema to REVISION (default: head)."""
    url = _database_url(ctx, config_file)
    if sql:
        click.echo(migration_sql(url, revision))
        return
    with _engine(url) as engine:
        before = current_revision(engine)
        upgrade(engine, revision)
        after = current_revision(engine)
    click.echo(f"schema upgraded from {before or 'nothing'} to {after}" if before != after
               else f"schema already at {after}")


@db.command("downgrade")
@click.argument("revision")
@click.option("--sql", is_flag=True, help="Print the SQL instead of running it.")
@_sub_config
@click.pass_context
@_reported
def downgrade_command(ctx: click.Context, revision: str, sql: bool, config_file: str | None) -> None:
    """Downgrade the schema to REVISION ('base' removes every table: all data is lost)."""
    url = _database_url(ctx, config_file)
    if sql:
        start = head_revision()
        click.echo(migration_sql(url, f"{start}:{revision}", downgrade_to=True))
        return
    with _engine(url) as engine:
        downgrade(engine, revision)
        click.echo(f"schema downgraded to {current_revision(engine) or 'nothing (base)'}")


@db.command("current")
@_sub_config
@click.pass_context
@_reported
def current_command(ctx: click.Context, config_file: str | None) -> None:
    """Print the schema revision of the database (and whether it is current)."""
    with _engine(_database_url(ctx, config_file)) as engine:
        revision = current_revision(engine)
    head = head_revision()
    if revision is None:
        click.echo(f"no schema (head is {head}); run `winchester db upgrade`")
        sys.exit(1)
    click.echo(f"{revision}{' (head)' if revision == head else f' (head is {head})'}")


@db.command("history")
@_sub_config
@click.pass_context
@_reported
def history_command(ctx: click.Context, config_file: str | None) -> None:
    """List the schema revisions, newest first."""
    for revision, down, message in history():
        click.echo(f"{down or 'base'} -> {revision}: {message.splitlines()[0] if message else ''}")


@db.command("stamp")
@click.argument("revision")
@_sub_config
@click.pass_context
@_reported
def stamp_command(ctx: click.Context, revision: str, config_file: str | None) -> None:
    """Record REVISION as the schema's version without running migrations."""
    with _engine(_database_url(ctx, config_file)) as engine:
        stamp(engine, revision)
        click.echo(f"schema stamped at {current_revision(engine)}")


def winchester_db() -> None:
    """Entry point of the ``winchester_db`` console script (the original's name)."""
    db(prog_name="winchester_db")


@db.command("index-traits")
@click.option("--name", "names", multiple=True, metavar="TRAIT",
              help="Only this indexed trait (repeatable) [default: every one that needs it].")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=5000, show_default=True,
              help="Events read per transaction.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_sub_config
@click.pass_context
@_reported
def index_traits_command(ctx: click.Context, names: tuple[str, ...], batch_size: int, quiet: bool,
                         config_file: str | None) -> None:
    """Fill in the index rows of traits indexed after events were stored.

    A trait added to indexed_traits (or a trigger's new distinguishing trait)
    is indexed for the events stored after the change. Until this has run,
    filters on it read the older events' JSON (slowly). Restart every ingest
    process on the new configuration first: this reads every stored event, so
    what an old process stored in the meantime is covered too. Ingest may go
    on while it runs, and running it again adds only what is still missing.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from winchester.cli._setup import open_parts

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    parts = open_parts(config_file or ctx.obj["config_file"], console)
    store = parts.store
    try:
        pending = store.index_coverage()
        unknown = sorted(set(names) - set(store.indexed_traits))
        if unknown:
            console.print(f"error: not an indexed trait: {', '.join(unknown)} (indexed: "
                          f"{', '.join(sorted(store.indexed_traits))})", markup=False)
            sys.exit(2)
        wanted = [name for name in sorted(pending) if not names or name in names]
        if not wanted:
            click.echo("every indexed trait is indexed for every stored event: nothing to do")
            return
        progress = Progress(TextColumn("{task.description}"), BarColumn(),
                            TextColumn("up to event id {task.completed:,.0f}"),
                            TimeElapsedColumn(), console=console, disable=quiet)
        tasks = {name: progress.add_task(f"{name:<24}", total=None) for name in wanted}
        with progress:
            added = store.index_traits(
                wanted, batch_size,
                lambda name, reached, last: progress.update(tasks[name], completed=reached, total=last))
        for name in wanted:
            click.echo(f"{name}: {added.get(name, 0):,} index row(s) added, for the events stored "
                       "without them")
    finally:
        store.close()
