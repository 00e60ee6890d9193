"""Alembic environment: Winchester runs migrations itself (``winchester db ...``).

The engine or URL comes from the caller through ``config.attributes``; the
target metadata is the package's schema.
"""

from __future__ import annotations

from alembic import context

from winchester.store._schema import metadata

config = context.config


def run_offline() -> None:
    context.configure(url=config.attributes["url"], target_metadata=metadata,
                      literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes["connection"]
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
