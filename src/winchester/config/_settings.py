"""``winchester.yaml``: the keys, their types and defaults, and the loader.

The keys are those existing StackTach deployments use, with the defaults the
original Winchester documented. Every key is declared once in :data:`KEYS`;
the loader, ``winchester check`` and the README's configuration reference
(checked by a test) all follow that table.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from winchester._yaml import kind_of, parse_yaml, position_of
from winchester.errors import ConfigError, Problem, TimexSyntaxError
from winchester.events import IDENTIFIER_MAX_LENGTH

DATABASE_URL_ENV = "WINCHESTER_DATABASE_URL"
BUS_URL_ENV = "WINCHESTER_BUS_URL"
API_TOKENS_ENV = "WINCHESTER_API_TOKENS"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# simport syntax, as the original used: "module.path:ClassName", optionally
# preceded by "directory|" to add that directory to the import path.
_IMPORT_PATH = re.compile(r"^(?:[^|]+\|)?[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

Validator = Callable[[Any], str | None]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be a whole number, not {_describe(value)}"
    return None if value > 0 else f"must be greater than 0, not {value}"


def _positive_number(value: Any) -> str | None:
    if not _is_number(value):
        return f"must be a number of seconds, not {_describe(value)}"
    return None if value > 0 else f"must be greater than 0, not {value}"


def _non_negative_number(value: Any) -> str | None:
    if not _is_number(value):
        return f"must be a number of seconds, not {_describe(value)}"
    return None if value >= 0 else f"must not be negative, not {value}"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, not {_describe(value)}"


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {_describe(value)}"
    return None if value.strip() else "must not be empty"


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _text_or_list(value: Any) -> str | None:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, list) and value and all(isinstance(item, str) and item for item in value):
        return None
    return f"must be a directory or a list of directories, not {_describe(value)}"


def _import_map(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return f"must be a mapping of name to 'module.path:ClassName', not {_describe(value)}"
    for name, target in value.items():
        if not isinstance(name, str) or not name:
            return f"has a name that is not a string: {name!r}"
        if not isinstance(target, str) or not _IMPORT_PATH.match(target):
            return f"entry {name!r} must be 'module.path:ClassName', not {target!r}"
    return None


def _name_list(value: Any) -> str | None:
    if not (isinstance(value, list) and all(isinstance(item, str) and item for item in value)):
        return f"must be a list of trait names, not {_describe(value)}"
    too_long = [item for item in value if len(item) > IDENTIFIER_MAX_LENGTH]
    if too_long:
        return (f"has a trait name of {len(too_long[0])} characters; an indexed trait's name has "
                f"at most {IDENTIFIER_MAX_LENGTH}")
    return None


def _log_level(value: Any) -> str | None:
    if isinstance(value, str) and value.lower() in LOG_LEVELS:
        return None
    return f"must be one of {', '.join(LOG_LEVELS)}, not {_describe(value)}"


def _time_expression(value: Any) -> str | None:
    """A time expression relative to now: ``$timestamp`` (now) is the only variable it has."""
    problem = _text(value)
    if problem:
        return problem
    from winchester import timex

    try:
        expression = timex.parse(value)
    except TimexSyntaxError as exc:
        return str(exc)
    unknown = sorted(expression.variables - {timex.TIMESTAMP})
    if unknown:
        return (f"{value!r} uses {', '.join('$' + name for name in unknown)}: this expression is "
                "evaluated against now, and $timestamp (now) is its only variable")
    return None


def _database(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return f"must be a mapping with a 'url' key, not {_describe(value)}"
    url = value.get("url")
    if url is None:
        return None
    problem = _text(url) or database_url_problem(url)
    return f"url {problem}" if problem else None


def database_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a database URL, or None. Never repeats the URL (it may hold a password)."""
    from sqlalchemy.engine import make_url

    try:
        make_url(url)
    except Exception:  # noqa: BLE001 - SQLAlchemy raises ArgumentError and others
        return ("is not a database URL (expected e.g. sqlite:///var/winchester.db or "
                "postgresql://user@host:5432/winchester)")
    return None


def unsupported_database(url: str) -> str | None:
    """Why the database ``url`` names is not one Winchester can use, or None."""
    from sqlalchemy.engine import make_url

    from winchester.store._engine import unsupported_backend

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - a malformed URL is database_url_problem's to report
        return None
    return unsupported_backend(parsed)


def _bus_url(value: Any) -> str | None:
    from winchester.bus._connect import check_url

    try:
        check_url(value)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def _text_list(value: Any) -> str | None:
    if isinstance(value, list) and value and all(isinstance(item, str) and item for item in value):
        return None
    return f"must be a non-empty list of names, not {_describe(value)}"


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else f"must be a string, not {_describe(value)}"


def _token_list(value: Any) -> str | None:
    # Never echo the value: these are secrets.
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return f"must be a list of token strings, not a {kind_of(value)}"
    short = sum(1 for item in value if len(item) < 16)
    return f"{short} of {len(value)} token(s) shorter than 16 characters" if short else None


def _port(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        return f"must be a port number (0-65535), not {_describe(value)}"
    return None


def _priorities(value: Any) -> str | None:
    problem = _text_list(value)
    if problem:
        return problem
    unknown = [p for p in value if p not in NOTIFICATION_PRIORITIES]
    if unknown:
        return f"has unknown priorities {unknown} (known: {', '.join(NOTIFICATION_PRIORITIES)})"
    return None


def _optional_time_expression(value: Any) -> str | None:
    return None if value is None else _time_expression(value)


_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(d|h|m|s)\s*")
_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(value: Any) -> float:
    """Seconds in a duration: a number of seconds, or text such as ``1h``, ``90s``, ``1h30m``, ``2d``.

    Raises ValueError with a message fit for a configuration problem.
    """
    if _is_number(value):
        if value < 0:
            raise ValueError(f"must not be negative, not {value}")
        return float(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a duration (seconds, or e.g. '1h', '30m', '1h30m'), not "
                         f"{_describe(value)}")
    seconds = 0.0
    position = 0
    while position < len(value):
        part = _DURATION_PART.match(value, position)
        if part is None:
            raise ValueError(f"must be a duration such as '1h', '30m', '90s', '2d' or '1h30m', not "
                             f"{value!r}")
        seconds += float(part.group(1)) * _DURATION_UNITS[part.group(2)]
        position = part.end()
    return seconds


def _duration(value: Any) -> str | None:
    try:
        parse_duration(value)
    except ValueError as exc:
        return str(exc)
    return None


def _default_traits(value: Any) -> str | None:
    from winchester.distill import DEFAULT_TRAIT_CHOICES

    return None if value in DEFAULT_TRAIT_CHOICES else (
        f"must be one of {', '.join(DEFAULT_TRAIT_CHOICES)}, not {_describe(value)}")


def _clock_kind(value: Any) -> str | None:
    return None if value in ("wall", "event") else f"must be 'wall' or 'event', not {_describe(value)}"


def _section(value: Any) -> str | None:
    # Each field is checked on its own (with its line) by the loader.
    return None if isinstance(value, Mapping) else f"must be a mapping, not {_describe(value)}"


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind_of(value)} {text}"


@dataclass(frozen=True)
class Key:
    """One top-level key of ``winchester.yaml``."""

    name: str
    validate: Validator
    default: Any = None
    required: bool = False
    help: str = ""


@dataclass(frozen=True)
class SubKey:
    """One key of a section (``intake: {batch_size: ...}``)."""

    name: str
    validate: Validator
    default: Any
    help: str = ""


# oslo.messaging's notification priorities, lower case as in routing keys.
NOTIFICATION_PRIORITIES = ("audit", "debug", "info", "warn", "error", "critical", "sample")

SECTIONS: dict[str, tuple[SubKey, ...]] = {
    "bus": (
        SubKey("url", _bus_url, "memory://",
               "`memory://` (in-process, the embedded default) or `amqp://user:pass@host:port/vhost`."),
    ),
    "intake": (
        SubKey("exchanges", _text_list,
               ["nova", "cinder", "neutron", "glance", "heat", "keystone", "openstack"],
               "Exchanges OpenStack services publish their notifications to."),
        SubKey("topic", _text, "notifications", "oslo.messaging notification topic."),
        SubKey("priorities", _priorities, ["info", "warn", "error"],
               "Priorities consumed (routing keys `<topic>.<priority>`)."),
        SubKey("queue", _string, "",
               "Empty: consume the publishers' own queues `<topic>.<priority>` (shared with other "
               "consumers of them); a name: one queue of that name bound to every exchange and "
               "priority (a private copy, shared by every ingest process)."),
        SubKey("durable", _boolean, False,
               "Declare exchanges and queues durable. Must match the publishers "
               "(oslo.messaging's `amqp_durable_queues`, default false)."),
        SubKey("batch_size", _positive_int, 1000, "Notifications per ingest transaction."),
        SubKey("batch_seconds", _positive_number, 1.0,
               "A batch is written at the latest this long after its first notification arrived."),
    ),
    "persistor": (
        SubKey("queue", _text, "winchester-persistor",
               "The persistor's own queue, bound to every intake exchange and priority."),
        SubKey("batch_size", _positive_int, 1000, "Notifications archived per transaction."),
        SubKey("batch_seconds", _positive_number, 1.0,
               "An archive batch is written at the latest this long after its first notification."),
    ),
    "api": (
        SubKey("host", _text, "127.0.0.1", "Address the HTTP API listens on."),
        SubKey("port", _port, 8000, "Port the HTTP API listens on."),
        SubKey("tokens", _token_list, [],
               "Bearer tokens: when set, writes (POST, PUT, DELETE) need `Authorization: Bearer "
               "<token>`. The `WINCHESTER_API_TOKENS` environment variable (comma-separated) overrides it."),
        SubKey("protect_reads", _boolean, False,
               "With `tokens`: reads (GET: the query API, explain, the dashboard, metrics) need "
               "the token too. `/healthz` stays open."),
    ),
}


KEYS: tuple[Key, ...] = (
    Key("config_path", _text_or_list, ".",
        help="Directories searched for the other files named here (string or list)."),
    Key("database", _database, None,
        help="Database connection: `url` (SQLAlchemy URL). Default: SQLite file `./var/winchester.db`."),
    Key("distiller_config", _text, required=True,
        help="Event definitions file (StackDistiller / Ceilometer format)."),
    Key("trigger_definitions", _text, required=True, help="Trigger definitions file."),
    Key("pipeline_config", _text, required=True, help="Pipeline definitions file."),
    Key("pipeline_handlers", _import_map, {},
        help="Handler name -> `module.path:ClassName`, added to the built-in handlers."),
    Key("distiller_trait_plugins", _import_map, {},
        help="Trait plugin name -> `module.path:ClassName`, added to the built-in plugins."),
    Key("distiller_default_traits", _default_traits, "auto",
        help="Whose default traits every event gets: `stackdistiller` (service, request_id, "
             "tenant_id), `ceilometer` (also project_id and user_id, tenant_id from the "
             "context's project_id), or `auto`: Ceilometer's when the definitions address "
             "`ctxt.` or `metadata.`, as Ceilometer's files do."),
    Key("catch_all_notifications", _boolean, False,
        help="Turn notifications that match no event definition into events with the default traits."),
    Key("statistics_period", _positive_number, 10,
        help="Seconds between statistics log lines."),
    Key("pipeline_worker_batch_size", _positive_int, 1000,
        help="Streams a worker claims at a time."),
    Key("pipeline_worker_delay", _non_negative_number, 10,
        help="Seconds a worker sleeps when it finds no stream to process."),
    Key("pipeline_worker_lease", _positive_number, 300,
        help="Seconds a worker's claim on a stream lasts; a stream left claimed longer (its "
             "worker died) is taken over by another worker."),
    Key("pipeline_worker_max_attempts", _positive_int, 5,
        help="Claims of a stream whose workers all died before finishing it, after which it goes "
             "to an error state instead of being retried again."),
    Key("purge_completed_streams", _boolean, True,
        help="Delete streams once their pipeline has completed (false keeps them as `completed`)."),
    Key("trim_events", _boolean, False, help="Delete old events that belong to no active stream."),
    Key("trim_events_age", _time_expression, "$timestamp - 14d",
        help="Time expression: events older than this are trimmed."),
    Key("trim_events_batch_size", _positive_int, 100, help="Events deleted per trimming batch."),
    Key("indexed_traits", _name_list, ["instance_id"],
        help="Traits copied into the typed, indexed trait table so queries can filter on them "
             "(every trigger's distinguishing traits are added automatically); after adding one, "
             "`winchester db index-traits` indexes the events stored before."),
    Key("log_level", _log_level, "info",
        help="Level of the `winchester` loggers: debug, info, warning, error, critical."),
    Key("logging_config", _optional_text, None,
        help="A logging configuration file (`.ini`/`.conf` fileConfig, `.yaml`/`.json` dictConfig); "
             "replaces `log_level`."),
    Key("bus", _section, None,
        help="The message bus: `url`. The `WINCHESTER_BUS_URL` environment variable overrides it."),
    Key("intake", _section, None,
        help="Consuming OpenStack notifications from the bus: `exchanges`, `topic`, `priorities`, "
             "`queue`, `durable`, `batch_size`, `batch_seconds`."),
    Key("persistor", _section, None,
        help="Archiving every raw notification: `queue`, `batch_size`, `batch_seconds`."),
    Key("archive_retention", _optional_time_expression, None,
        help="Time expression: archived notifications received before it are deleted "
             "(e.g. `$timestamp - 90d`). Off by default: the archive keeps everything."),
    Key("api", _section, None, help="The HTTP API and intake: `host`, `port`, `tokens`, `protect_reads`."),
    Key("clock", _clock_kind, "wall",
        help="Where \"now\" comes from: `wall` (real UTC time) or `event` (the newest event "
             "timestamp ingested, shared by every process through the database; for replays "
             "and captured data)."),
    Key("clock_max_skew", _duration, "1h",
        help="An event stamped further ahead of the clock than this (event clock) or of real "
             "time (wall clock) does not move time forward; it is still stored, and counted. "
             "Seconds or a duration such as `1h`, `30m`."),
    Key("late_event_grace", _duration, 0,
        help="How long past its expiry time a stream waits for late events stamped before its "
             "expiry before it is expired (0: expire on time; a later event starts a new stream)."),
    Key("time_sync_endpoint", _optional_text, None,
        help="Accepted from old configurations and ignored: the built-in event clock replaces "
             "the time-sync service (setting it selects `clock: event`, with a warning)."),
)
KEYS_BY_NAME = {key.name: key for key in KEYS}


@dataclass(frozen=True)
class IntakeSettings:
    exchanges: tuple[str, ...] = tuple(SECTIONS["intake"][0].default)
    topic: str = "notifications"
    priorities: tuple[str, ...] = ("info", "warn", "error")
    queue: str = ""
    durable: bool = False
    batch_size: int = 1000
    batch_seconds: float = 1.0


@dataclass(frozen=True)
class PersistorSettings:
    queue: str = "winchester-persistor"
    batch_size: int = 1000
    batch_seconds: float = 1.0


@dataclass(frozen=True)
class ApiSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    tokens: tuple[str, ...] = ()
    protect_reads: bool = False


@dataclass(frozen=True)
class Settings:
    """A validated ``winchester.yaml``; build it with :func:`load_settings`."""

    source: Path | None
    config_path: tuple[Path, ...]
    database_url: str
    distiller_config: str
    trigger_definitions: str
    pipeline_config: str
    pipeline_handlers: Mapping[str, str]
    distiller_trait_plugins: Mapping[str, str]
    distiller_default_traits: str
    catch_all_notifications: bool
    statistics_period: float
    pipeline_worker_batch_size: int
    pipeline_worker_delay: float
    pipeline_worker_lease: float
    pipeline_worker_max_attempts: int
    purge_completed_streams: bool
    trim_events: bool
    trim_events_age: str
    trim_events_batch_size: int
    indexed_traits: list[str]
    log_level: str
    logging_config: str | None
    time_sync_endpoint: str | None
    clock: str = "wall"
    clock_max_skew: float = 3600.0
    late_event_grace: float = 0.0
    archive_retention: str | None = None
    bus_url: str = "memory://"
    intake: IntakeSettings = None  # type: ignore[assignment]
    persistor: PersistorSettings = None  # type: ignore[assignment]
    api: ApiSettings = None  # type: ignore[assignment]
    warnings: tuple[Problem, ...] = ()

    def __post_init__(self) -> None:
        for name, kind in (("intake", IntakeSettings), ("persistor", PersistorSettings),
                           ("api", ApiSettings)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, kind())

    @property
    def file_name(self) -> str:
        return str(self.source) if self.source else "<settings>"

    def search_directories(self) -> list[Path]:
        """Where relative file names are looked up, in order."""
        directories: list[Path] = []
        for directory in self.config_path:
            if directory not in directories:
                directories.append(directory)
        if self.source is not None and self.source.parent not in directories:
            directories.append(self.source.parent)
        return directories

    def find_file(self, name: str, key: str) -> Path:
        """Locate a file named by ``key``; :class:`ConfigError` lists where it looked."""
        path = Path(name).expanduser()
        if path.is_absolute():
            candidates = [path]
        else:
            candidates = [directory / path for directory in self.search_directories()]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        looked = ", ".join(str(c) for c in candidates)
        raise ConfigError(Problem(
            file=self.file_name, where=key,
            message=f"file {name!r} not found (looked in: {looked})"))

    def read_yaml(self, key: str) -> tuple[Path, Any, list[Problem]]:
        """Find, read and parse the file named by ``key``."""
        path = self.find_file(getattr(self, key), key)
        data, warnings = parse_yaml(read_text(path, key), str(path))
        return path, data, warnings


def read_text(path: Path, key: str | None = None) -> str:
    """Read a configuration file as UTF-8, turning OS errors into :class:`ConfigError`."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        message = "file not found"
    except IsADirectoryError:
        message = "is a directory, not a file"
    except PermissionError:
        message = "permission denied"
    except UnicodeDecodeError as exc:
        message = f"is not valid UTF-8 ({exc.reason} at byte {exc.start})"
    except OSError as exc:
        message = f"cannot be read: {exc.strerror or exc}"
    raise ConfigError(Problem(file=str(path), where=key or "", message=message))


def default_database_url(cwd: Path) -> str:
    return f"sqlite:///{cwd / 'var' / 'winchester.db'}"


def load_settings(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None,
                  cwd: Path | None = None) -> Settings:
    """Read and validate ``winchester.yaml``.

    Raises :class:`ConfigError` listing every problem found (each names the
    file, the key and the line). Unknown keys and duplicate keys do not stop
    loading: they are returned in :attr:`Settings.warnings`.
    """
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    source = Path(path).expanduser()
    if not source.is_absolute():
        source = cwd / source
    data, warnings = parse_yaml(read_text(source), str(source))
    return settings_from_mapping(data, source=source, environ=environ, cwd=cwd, warnings=warnings)


def settings_from_mapping(data: Any, *, source: Path | None, environ: Mapping[str, str],
                          cwd: Path, warnings: list[Problem] | None = None) -> Settings:
    file_name = str(source) if source else "<settings>"
    problems: list[Problem] = []
    warnings = list(warnings or [])
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(Problem(file=file_name, where="", line=1,
                                  message=f"must be a mapping of settings, not {_describe(data)}"))

    def problem(key: str, message: str, severity: str = "error", subkey: Any = None) -> Problem:
        container = data[key] if subkey is not None else data
        line_col = position_of(container, subkey if subkey is not None else key)
        line, column = line_col if line_col else (None, None)
        where = f"{key}.{subkey}" if subkey is not None else key
        return Problem(file=file_name, where=where, message=message, line=line, column=column,
                       severity=severity)

    values: dict[str, Any] = {}
    for key in KEYS:
        if key.name not in data:
            if key.required:
                problems.append(Problem(file=file_name, where=key.name,
                                        message=f"is required ({key.help})"))
            else:
                values[key.name] = key.default
            continue
        value = data[key.name]
        if value is None and key.default is None and not key.required:
            values[key.name] = None
            continue
        message = key.validate(value)
        if message:
            problems.append(problem(key.name, message))
        else:
            values[key.name] = value
    for name in data:
        if name not in KEYS_BY_NAME:
            close = _close_matches(str(name))
            hint = f" (did you mean {close}?)" if close else ""
            warnings.append(problem(name, f"unknown key, ignored{hint}", severity="warning"))
    database = data.get("database")
    if isinstance(database, Mapping):
        for name in database:
            if name != "url":
                warnings.append(problem("database", "unknown key, ignored", "warning", subkey=name))
    sections: dict[str, dict[str, Any]] = {}
    for section, fields in SECTIONS.items():
        given = data.get(section)
        given = given if isinstance(given, Mapping) else {}
        known = {field.name: field for field in fields}
        sections[section] = {field.name: field.default for field in fields}
        for name, value in given.items():
            field = known.get(name)
            if field is None:
                warnings.append(problem(section, f"unknown key, ignored (known: {', '.join(known)})",
                                        "warning", subkey=name))
                continue
            message = field.validate(value)
            if message:
                problems.append(problem(section, message, subkey=name))
            else:
                sections[section][name] = value
    intake_queue = sections["intake"]["queue"]
    if intake_queue and intake_queue == sections["persistor"]["queue"]:
        # Two services on one queue share its messages instead of each getting all of them.
        given = data.get("persistor")
        section, other = (("persistor", "intake") if isinstance(given, Mapping) and "queue" in given
                          else ("intake", "persistor"))
        problems.append(problem(section, f"is the same queue as {other}.queue ({intake_queue!r}): "
                                "ingest and the persistor would each get only some of the "
                                "notifications; give each its own queue", subkey="queue"))
    for variable, where, check in ((DATABASE_URL_ENV, "database.url", database_url_problem),
                                   (BUS_URL_ENV, "bus.url", _bus_url)):
        message = check(environ[variable]) if environ.get(variable) else None
        if message:
            problems.append(Problem(file=variable, where=where, message=message))
    # Only the URL in effect must be usable: the environment may stand in for a file's.
    if environ.get(DATABASE_URL_ENV):
        message = unsupported_database(environ[DATABASE_URL_ENV])
        if message:
            problems.append(Problem(file=DATABASE_URL_ENV, where="database.url", message=message))
    elif isinstance(data.get("database"), Mapping) and isinstance(data["database"].get("url"), str):
        message = unsupported_database(data["database"]["url"])
        if message:
            problems.append(problem("database", message, subkey="url"))
    if problems:
        raise ConfigError([*problems, *warnings])

    config_dir = source.parent if source else cwd
    raw_paths = values["config_path"]
    raw_paths = [raw_paths] if isinstance(raw_paths, str) else raw_paths
    config_path: list[Path] = []
    for entry in raw_paths:
        entry_path = Path(entry).expanduser()
        # Relative entries are taken from the configuration file's directory
        # first (so it works from any working directory), then from the
        # working directory, as the original did.
        for candidate in ([entry_path] if entry_path.is_absolute()
                          else [config_dir / entry_path, cwd / entry_path]):
            resolved = Path(os.path.normpath(candidate))
            if resolved not in config_path:
                config_path.append(resolved)

    database_url = environ.get(DATABASE_URL_ENV) or (
        (values["database"] or {}).get("url") or default_database_url(cwd))
    plain = {name: value for name, value in values.items()
             if name not in ("database", "config_path", *SECTIONS)}
    intake = dict(sections["intake"])
    intake["exchanges"] = tuple(intake["exchanges"])
    intake["priorities"] = tuple(intake["priorities"])
    plain["intake"] = IntakeSettings(**intake)
    plain["persistor"] = PersistorSettings(**sections["persistor"])
    api = dict(sections["api"])
    if environ.get(API_TOKENS_ENV):
        tokens = [token.strip() for token in environ[API_TOKENS_ENV].split(",") if token.strip()]
        message = _token_list(tokens)
        if message:
            raise ConfigError(Problem(file=API_TOKENS_ENV, where="api.tokens", message=message))
        api["tokens"] = tokens
    api["tokens"] = tuple(api["tokens"])
    plain["api"] = ApiSettings(**api)
    plain["bus_url"] = environ.get(BUS_URL_ENV) or sections["bus"]["url"]
    plain["log_level"] = plain["log_level"].lower()
    plain["clock_max_skew"] = parse_duration(plain["clock_max_skew"])
    plain["late_event_grace"] = parse_duration(plain["late_event_grace"])
    if plain["time_sync_endpoint"]:
        if "clock" in data and plain["clock"] != "event":
            warnings.append(problem("time_sync_endpoint", "ignored: the built-in event clock "
                                    "replaces the time-sync service, and `clock` says wall time",
                                    "warning"))
        else:
            warnings.append(problem("time_sync_endpoint", "ignored: the built-in event clock "
                                    "replaces the time-sync service; using `clock: event`",
                                    "warning"))
            plain["clock"] = "event"
    plain["pipeline_handlers"] = dict(plain["pipeline_handlers"])
    plain["distiller_trait_plugins"] = dict(plain["distiller_trait_plugins"])
    return Settings(source=source, config_path=tuple(config_path), database_url=database_url,
                    warnings=tuple(warnings), **plain)


def _close_matches(name: str) -> str | None:
    import difflib

    matches = difflib.get_close_matches(name, KEYS_BY_NAME, n=1, cutoff=0.75)
    return repr(matches[0]) if matches else None
