from __future__ import annotations

import platform

import click

from winchester import __version__


@click.command()
def version() -> None:
    """Print the Winchester version (and the Python running it)."""
    click.echo(f"winchester {__version__} (Python {platform.python_version()})")
