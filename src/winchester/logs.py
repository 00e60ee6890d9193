"""Logging set-up from ``log_level`` / ``logging_config``.

Each package logs through ``logging.getLogger(__name__)``, so every logger
is a child of ``winchester`` and one level setting governs them all.
"""

from __future__ import annotations

import logging
import logging.config
from pathlib import Path
from typing import Any

import orjson

from winchester._yaml import parse_yaml
from winchester.config import Settings, read_text
from winchester.errors import ConfigError, Problem

ROOT_LOGGER = "winchester"
_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_handler: logging.Handler | None = None


def configure_logging(settings: Settings, level_override: str | None = None) -> None:
    """Apply the logging settings; a ``logging_config`` file replaces ``log_level``."""
    if settings.logging_config and level_override is None:
        path = settings.find_file(settings.logging_config, "logging_config")
        _apply_logging_file(path)
        return
    configure_level(level_override or settings.log_level)


def configure_level(level: str) -> None:
    """Send ``winchester.*`` records at ``level`` and above to standard error."""
    global _handler
    # Our format shows none of the caller's file and line, thread or process:
    # not looking them up halves the cost of a record (the logging HOWTO's
    # "optimization" advice). A logging_config file keeps them.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logger = logging.getLogger(ROOT_LOGGER)
    logger.setLevel(level.upper())
    if _handler is None:
        _handler = logging.StreamHandler()
        _handler.setFormatter(logging.Formatter(_FORMAT))
    # A logging_config applied earlier may have detached it.
    if _handler not in logger.handlers:
        logger.addHandler(_handler)


# logging_config files read with dictConfig; any other suffix is fileConfig's INI.
DICT_CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def _read_dict_config(path: Path) -> Any:
    """The document of a YAML or JSON logging_config; ConfigError naming the file if it
    does not parse."""
    text = read_text(path, "logging_config")
    if path.suffix.lower() != ".json":
        return parse_yaml(text, str(path))[0]
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(Problem(file=str(path), where="logging_config",
                                  message=f"invalid JSON: {exc}")) from None


def _apply_logging_file(path: Path) -> None:
    suffix = path.suffix.lower()
    try:
        if suffix in DICT_CONFIG_SUFFIXES:
            data = _plain(_read_dict_config(path))
            if isinstance(data, dict):
                # dictConfig's default would silence every logger that exists
                # already: all of Winchester's, errors and dead letters included.
                data.setdefault("disable_existing_loggers", False)
            logging.config.dictConfig(data)
        else:
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except ConfigError:
        raise
    except Exception as exc:  # the logging module raises many unrelated types
        raise ConfigError(Problem(file=str(path), where="logging_config",
                                  message=f"invalid logging configuration: {exc}")) from exc


def check_logging_file(path: Path) -> None:
    """Read a ``logging_config`` file without applying it (``winchester check``).

    Catches what would stop a service at start that can be seen without
    configuring logging: syntax errors (and, in YAML, tags other than plain
    data), a document that is not a mapping with ``version: 1``, or an INI
    file without the sections ``fileConfig`` needs. Raises ConfigError.
    """
    if path.suffix.lower() in DICT_CONFIG_SUFFIXES:
        data = _read_dict_config(path)
        if not isinstance(data, dict) or data.get("version") != 1:
            raise ConfigError(Problem(file=str(path), where="logging_config", message=(
                "invalid logging configuration: must be a mapping with version: 1 "
                "(logging.config.dictConfig's schema)")))
        for section in ("handlers", "formatters", "filters"):
            entries = data.get(section)
            for name, spec in (entries.items() if isinstance(entries, dict) else ()):
                target = spec.get("class", spec.get("()")) if isinstance(spec, dict) else None
                if isinstance(target, str):
                    _check_importable(path, f"{section} > {name}", target)
        return
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(read_text(path, "logging_config"), str(path))
    except configparser.Error as exc:
        raise ConfigError(Problem(file=str(path), where="logging_config",
                                  message=f"invalid logging configuration: {exc}")) from None
    missing = [name for name in ("loggers", "handlers", "formatters") if not parser.has_section(name)]
    if missing:
        raise ConfigError(Problem(file=str(path), where="logging_config", message=(
            f"invalid logging configuration: no [{'], ['.join(missing)}] section(s) "
            "(logging.config.fileConfig's format)")))
    for section in parser.sections():
        target = parser.get(section, "class", fallback=None)
        if section.startswith(("handler_", "formatter_")) and target:
            # fileConfig evaluates the name in the logging module's namespace first
            # (StreamHandler, handlers.RotatingFileHandler), then imports it.
            if not _in_logging(target.strip()):
                _check_importable(path, section, target.strip())


def _in_logging(dotted: str) -> bool:
    import logging.handlers  # noqa: F401 - fileConfig's namespace has it

    found: object = logging
    for part in dotted.split("."):
        found = getattr(found, part, None)
        if found is None:
            return False
    return True


def _check_importable(path: Path, where: str, target: str) -> None:
    """The class a logging configuration names can be imported (else it stops every service)."""
    try:
        logging.config.BaseConfigurator({}).resolve(target)
    except Exception as exc:  # noqa: BLE001 - resolve raises ValueError wrapping ImportError and others
        raise ConfigError(Problem(file=str(path), where="logging_config", message=(
            f"invalid logging configuration: {where}: cannot import {target!r} ({exc})"))) from None


def _plain(data):
    """dictConfig rejects dict subclasses in some places; hand it plain containers."""
    if isinstance(data, dict):
        return {key: _plain(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_plain(value) for value in data]
    return data
