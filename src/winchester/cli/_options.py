"""Options shared by several subcommands."""

from __future__ import annotations

import click

CONFIG_ENV = "WINCHESTER_CONFIG"

config_option = click.option(
    "-c", "--config", "config_file",
    envvar=CONFIG_ENV, show_envvar=True, default="winchester.yaml", show_default=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="Path to winchester.yaml; relative file names in it are looked up via config_path.",
)
