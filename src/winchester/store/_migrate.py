"""Schema migrations (alembic, shipped inside the package)."""

from __future__ import annotations

import io
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from winchester.errors import WinchesterError

MIGRATIONS = Path(__file__).with_name("migrations")


class SchemaError(WinchesterError):
    """The database schema is missing or not at the version this code needs."""


def _config(url: str = "", output: io.StringIO | None = None) -> Config:
    config = Config(output_buffer=output, stdout=output or io.StringIO())
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    return config


def head_revision() -> str:
    heads = ScriptDirectory.from_config(_config()).get_heads()
    if len(heads) != 1:  # a packaging mistake, not an operator's
        raise SchemaError(f"the migrations have {len(heads)} heads: {heads}")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    _run(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str) -> None:
    _run(engine, command.downgrade, revision)


def stamp(engine: Engine, revision: str) -> None:
    _run(engine, command.stamp, revision)


def _run(engine: Engine, action, revision: str) -> None:
    config = _config(str(engine.url))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        action(config, revision)


def migration_sql(url: str, revision: str, downgrade_to: bool = False) -> str:
    """The SQL a migration would run, without touching a database (``--sql``)."""
    output = io.StringIO()
    config = _config(url, output)
    if downgrade_to:
        command.downgrade(config, revision, sql=True)
    else:
        command.upgrade(config, revision, sql=True)
    return output.getvalue()


def history() -> list[tuple[str, str | None, str]]:
    """(revision, down revision, message), newest first."""
    script = ScriptDirectory.from_config(_config())
    return [(rev.revision, rev.down_revision, rev.doc or "")  # type: ignore[misc]
            for rev in script.walk_revisions()]


def check_schema(engine: Engine, config_hint: str = "winchester.yaml") -> None:
    """Refuse to run on an unmigrated or outdated schema, saying what to run."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    url = engine.url.render_as_string(hide_password=True)
    if current is None:
        raise SchemaError(f"the database {url} has no Winchester schema; create it with "
                          f"`winchester db upgrade -c {config_hint}`")
    known = {revision for revision, _, _ in history()}
    if current not in known:
        raise SchemaError(f"the database {url} is at schema revision {current}, which this "
                          f"version of Winchester does not know (newer code wrote it?); "
                          f"expected {head}")
    raise SchemaError(f"the database {url} is at schema revision {current}, this version needs "
                      f"{head}; upgrade it with `winchester db upgrade -c {config_hint}`")
