"""Loading winchester.yaml: keys, defaults, types, lookups and error messages."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from winchester.config import DATABASE_URL_ENV, KEYS, load_settings
from winchester.config._settings import SECTIONS
from winchester.errors import ConfigError
from winchester.logs import configure_logging

ROOT = Path(__file__).resolve().parents[1]
ETC = ROOT / "etc"
MINIMAL = "distiller_config: e.yaml\ntrigger_definitions: t.yaml\npipeline_config: p.yaml\n"


def write(tmp_path: Path, text: str, name: str = "winchester.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_example_configuration_loads_without_warnings():
    """The shipped etc/winchester.yaml is valid and warning-free."""
    settings = load_settings(ETC / "winchester.yaml", environ={})
    assert settings.warnings == ()
    assert settings.distiller_config == "event_definitions.yaml"
    assert settings.find_file(settings.trigger_definitions, "trigger_definitions") == ETC / "triggers.yaml"


def test_defaults_are_the_originals(tmp_path):
    """Keys left out take the defaults the original Winchester documented."""
    settings = load_settings(write(tmp_path, MINIMAL), environ={}, cwd=tmp_path)
    assert settings.statistics_period == 10
    assert settings.pipeline_worker_batch_size == 1000
    assert settings.pipeline_worker_delay == 10
    assert settings.purge_completed_streams is True
    assert settings.catch_all_notifications is False
    assert settings.trim_events is False
    assert settings.trim_events_age == "$timestamp - 14d"
    assert settings.trim_events_batch_size == 100
    assert settings.pipeline_handlers == {} and settings.distiller_trait_plugins == {}
    assert settings.log_level == "info" and settings.logging_config is None
    assert settings.time_sync_endpoint is None


def test_default_database_is_sqlite_under_var(tmp_path):
    """Without a database section the store is an SQLite file in ./var/ of the working directory."""
    settings = load_settings(write(tmp_path, MINIMAL), environ={}, cwd=tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path}/var/winchester.db"


def test_environment_overrides_database_url(tmp_path):
    """WINCHESTER_DATABASE_URL wins over database.url."""
    path = write(tmp_path, MINIMAL + "database:\n  url: sqlite:///x.db\n")
    assert load_settings(path, environ={}).database_url == "sqlite:///x.db"
    settings = load_settings(path, environ={DATABASE_URL_ENV: "postgresql+psycopg://u@h/db"})
    assert settings.database_url == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize("name", ["winchester_etc_winchester.yaml", "sandbox_winchester.yaml"])
def test_stacktach_configurations_load_unchanged_with_a_supported_database(name, real_data):
    """The winchester.yaml files of existing StackTach deployments load without error or warning
    once the environment names a database Winchester supports; their own MySQL URL is refused
    at its line, not left to fail in the first database command."""
    path = real_data / "stacktach" / "other_configs" / name
    settings = load_settings(path, environ={DATABASE_URL_ENV: "sqlite:///x.db"})
    assert settings.warnings == ()
    assert settings.database_url == "sqlite:///x.db"
    assert "logger" in settings.pipeline_handlers
    with pytest.raises(ConfigError) as refused:
        load_settings(path, environ={})
    [problem] = refused.value.problems
    assert (problem.where, problem.line) == ("database.url", 27)
    assert problem.message.startswith("names a mysql database, which Winchester does not support")
    assert "testpasswd" not in str(refused.value)
    with pytest.raises(ConfigError) as refused:
        load_settings(path, environ={DATABASE_URL_ENV: "mysql+pymysql://w:testpasswd@db/w"})
    [problem] = refused.value.problems
    assert (problem.file, problem.where) == (DATABASE_URL_ENV, "database.url")
    assert "testpasswd" not in str(refused.value)


@pytest.mark.parametrize("url", ["postgres://u@h/db", "postgresql://u@h/db",
                                 "postgresql+psycopg://u@h/db", "sqlite:///x.db"])
def test_every_spelling_of_a_supported_database_is_accepted(url, tmp_path):
    """postgres:// is PostgreSQL too: only other databases are refused."""
    path = write(tmp_path, MINIMAL + f"database:\n  url: {url}\n")
    assert load_settings(path, environ={}).database_url == url
    assert load_settings(path, environ={DATABASE_URL_ENV: url}).database_url == url


def test_unknown_key_is_a_warning_naming_key_and_line(tmp_path):
    """An unknown key does not stop loading; the warning names it, its line and a likely fix."""
    settings = load_settings(write(tmp_path, MINIMAL + "statistic_period: 5\n"), environ={})
    [warning] = settings.warnings
    assert warning.severity == "warning"
    assert warning.where == "statistic_period" and warning.line == 4
    assert "did you mean 'statistics_period'" in warning.message


@pytest.mark.parametrize("line, key, fragment", [
    ("statistics_period: ten", "statistics_period", "must be a number"),
    ("pipeline_worker_batch_size: 0", "pipeline_worker_batch_size", "greater than 0"),
    ("pipeline_worker_batch_size: true", "pipeline_worker_batch_size", "whole number"),
    ("pipeline_worker_delay: -1", "pipeline_worker_delay", "must not be negative"),
    ("purge_completed_streams: maybe", "purge_completed_streams", "true or false"),
    ("log_level: loud", "log_level", "must be one of debug"),
    ("pipeline_handlers: {logger: not-an-import-path}", "pipeline_handlers", "module.path:ClassName"),
    ("config_path: 42", "config_path", "list of directories"),
    ("trim_events_age: '$timestamp - 14'", "trim_events_age", "time expression"),
    ("database: sqlite:///x.db", "database", "mapping with a 'url'"),
])
def test_wrong_types_name_file_key_and_line(tmp_path, line, key, fragment):
    """A wrong value raises ConfigError naming the file, the key, its line and what is expected."""
    path = write(tmp_path, MINIMAL + line + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    [problem] = info.value.problems
    assert problem.file == str(path)
    assert problem.where == key and problem.line == 4
    assert fragment in problem.message
    assert f"{path}:4" in str(info.value)


def test_all_problems_are_reported_at_once(tmp_path):
    """Several errors in one file are all listed, not only the first."""
    path = write(tmp_path, "statistics_period: x\nlog_level: 3\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    wheres = {p.where for p in info.value.problems}
    assert wheres == {"statistics_period", "log_level", "distiller_config",
                      "trigger_definitions", "pipeline_config"}


def test_missing_file_is_named(tmp_path):
    """A configuration file that does not exist raises ConfigError naming it."""
    with pytest.raises(ConfigError, match="nowhere.yaml: file not found"):
        load_settings(tmp_path / "nowhere.yaml")


def test_yaml_syntax_error_names_line(tmp_path):
    """Broken YAML raises ConfigError with the file, line and column."""
    path = write(tmp_path, MINIMAL + "database: [unclosed\nlog_level: info\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    [problem] = info.value.problems
    assert problem.file == str(path) and problem.line == 5
    assert "YAML syntax error" in problem.message


def test_top_level_must_be_a_mapping(tmp_path):
    """A file holding a list instead of settings is refused with a clear message."""
    with pytest.raises(ConfigError, match="must be a mapping of settings"):
        load_settings(write(tmp_path, "- a\n- b\n"))


def test_relative_files_are_found_through_config_path(tmp_path, monkeypatch):
    """Relative names are searched in config_path (relative to the config file), then its directory."""
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "t.yaml").write_text("[]")
    (tmp_path / "p.yaml").write_text("{}")
    path = write(tmp_path, MINIMAL + "config_path: [defs]\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(path, environ={})
    assert settings.find_file("t.yaml", "trigger_definitions") == tmp_path / "defs" / "t.yaml"
    assert settings.find_file("p.yaml", "pipeline_config") == tmp_path / "p.yaml"
    with pytest.raises(ConfigError) as info:
        settings.find_file("e.yaml", "distiller_config")
    assert "file 'e.yaml' not found" in str(info.value)
    assert str(tmp_path / "defs" / "e.yaml") in str(info.value)


def test_config_path_also_accepts_working_directory_relative_entries(tmp_path, monkeypatch):
    """An entry relative to the working directory (as the sandbox used) still works."""
    conf_dir = tmp_path / "winchester"
    conf_dir.mkdir()
    (conf_dir / "t.yaml").write_text("[]")
    path = write(conf_dir, MINIMAL + "config_path: winchester\n")
    monkeypatch.chdir(tmp_path)
    settings = load_settings(path, environ={})
    assert settings.find_file("t.yaml", "trigger_definitions") == conf_dir / "t.yaml"


def test_every_key_has_help_and_a_readme_entry():
    """Each configuration key is documented in the README's configuration reference."""
    readme = (ROOT / "README.md").read_text()
    for key in KEYS:
        assert key.help, key.name
        assert f"`{key.name}`" in readme, f"README does not document {key.name}"
    for section, fields in SECTIONS.items():
        for field in fields:
            assert f"`{section}.{field.name}`" in readme, f"README does not document {section}.{field.name}"


@pytest.fixture
def restore_logging():
    logger = logging.getLogger("winchester")
    level, handlers = logger.level, list(logger.handlers)
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers


@pytest.mark.usefixtures("restore_logging")
def test_log_level_is_applied_to_the_package_logger(tmp_path):
    """log_level sets the level of the winchester logger tree."""
    settings = load_settings(write(tmp_path, MINIMAL + "log_level: DEBUG\n"), environ={})
    configure_logging(settings)
    assert logging.getLogger("winchester.distill").getEffectiveLevel() == logging.DEBUG
    configure_logging(load_settings(write(tmp_path, MINIMAL), environ={}))
    assert logging.getLogger("winchester.distill").getEffectiveLevel() == logging.INFO


@pytest.mark.usefixtures("restore_logging")
def test_logging_config_file_is_honoured(tmp_path):
    """A logging_config YAML file is applied with dictConfig."""
    (tmp_path / "logging.yaml").write_text(
        "version: 1\nincremental: false\ndisable_existing_loggers: false\n"
        "loggers:\n  winchester:\n    level: ERROR\n")
    settings = load_settings(write(tmp_path, MINIMAL + "logging_config: logging.yaml\n"), environ={})
    configure_logging(settings)
    assert logging.getLogger("winchester").level == logging.ERROR


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("name, text", [
    ("logging.yaml", "version: 1\nhandlers:\n  out: {class: logging.StreamHandler}\n"
                     "root: {level: INFO, handlers: [out]}\n"),
    ("logging.json", '{"version": 1, "handlers": {"out": {"class": "logging.StreamHandler"}},'
                     ' "root": {"level": "INFO", "handlers": ["out"]}}')])
def test_a_dict_logging_config_leaves_winchesters_loggers_on(tmp_path, name, text):
    """A YAML or JSON logging_config that does not say disable_existing_loggers keeps the
    loggers Winchester already made working (dictConfig's own default silences them)."""
    existing = logging.getLogger("winchester.services.ingest")
    (tmp_path / name).write_text(text)
    configure_logging(load_settings(write(tmp_path, MINIMAL + f"logging_config: {name}\n"),
                                    environ={}))
    assert not existing.disabled and existing.isEnabledFor(logging.INFO)


def test_bad_logging_config_names_the_file(tmp_path):
    """An invalid logging configuration is a ConfigError naming its file."""
    (tmp_path / "logging.yaml").write_text("version: 99\n")
    settings = load_settings(write(tmp_path, MINIMAL + "logging_config: logging.yaml\n"), environ={})
    with pytest.raises(ConfigError) as info:
        configure_logging(settings)
    assert "logging.yaml" in str(info.value) and "invalid logging configuration" in str(info.value)


def test_copied_example_directory_works_anywhere(tmp_path, monkeypatch):
    """A copy of etc/ is self-contained: its files are found from any working directory."""
    shutil.copytree(ETC, tmp_path / "etc")
    monkeypatch.chdir("/")
    settings = load_settings(tmp_path / "etc" / "winchester.yaml", environ={})
    for key in ("distiller_config", "trigger_definitions", "pipeline_config"):
        assert settings.read_yaml(key)[0].parent == tmp_path / "etc"


def test_sections_default_when_absent(tmp_path):
    """Without bus/intake/persistor/api sections every field has its documented default."""
    settings = load_settings(write(tmp_path, MINIMAL), environ={})
    assert settings.bus_url == "memory://"
    assert settings.intake.exchanges[0] == "nova" and settings.intake.queue == ""
    assert settings.intake.durable is False and settings.persistor.queue == "winchester-persistor"
    assert settings.api.port == 8000 and settings.archive_retention is None


def test_section_values_are_validated_with_their_line(tmp_path):
    """A wrong value inside a section names section.key and its line; all problems are listed."""
    text = MINIMAL + "intake:\n  batch_size: lots\n  priorities: [info, loud]\napi:\n  port: 99999\n"
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), environ={})
    problems = {p.where: p for p in caught.value.problems}
    assert problems["intake.batch_size"].line == 5
    assert "loud" in problems["intake.priorities"].message
    assert problems["api.port"].line == 8


def test_unknown_section_keys_warn_and_the_bus_url_can_come_from_the_environment(tmp_path):
    """An unknown key in a section is a warning naming it; WINCHESTER_BUS_URL overrides bus.url."""
    text = MINIMAL + "bus:\n  url: memory://\n  urll: x\nintake:\n  queue: mine\n  durable: true\n"
    settings = load_settings(write(tmp_path, text),
                             environ={"WINCHESTER_BUS_URL": "amqp://guest:guest@broker:5672//"})
    assert [w.where for w in settings.warnings] == ["bus.urll"]
    assert settings.bus_url == "amqp://guest:guest@broker:5672//"
    assert settings.intake.queue == "mine" and settings.intake.durable is True


def test_unusable_urls_from_the_environment_are_refused_naming_the_variable_not_the_value(tmp_path):
    """A WINCHESTER_DATABASE_URL or WINCHESTER_BUS_URL no service could use is a configuration
    error at load (as `check` reports it), without the value, which may hold a password."""
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={DATABASE_URL_ENV: "secret-password@nowhere",
                                     "WINCHESTER_BUS_URL": "redis://:secret-password@cache:6379"})
    problems = {p.file: p for p in caught.value.problems}
    assert problems[DATABASE_URL_ENV].where == "database.url"
    assert problems[DATABASE_URL_ENV].message.startswith("is not a database URL")
    assert problems["WINCHESTER_BUS_URL"].where == "bus.url"
    assert "its scheme is 'redis'" in problems["WINCHESTER_BUS_URL"].message
    assert "secret-password" not in str(caught.value)


def test_an_indexed_trait_name_longer_than_the_store_keeps_is_an_error(tmp_path):
    """Indexed trait names go into a column of 255 characters on every store."""
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, MINIMAL + f"indexed_traits: [instance_id, {'n' * 256}]\n"),
                      environ={})
    [problem] = caught.value.problems
    assert problem.where == "indexed_traits" and "256 characters" in problem.message


@pytest.mark.parametrize("name, text, where", [
    ("logging.yaml", "version: 1\nhandlers:\n  out: {class: nosuch.Handler}\n"
                     "root: {handlers: [out]}\n", "handlers > out"),
    ("logging.ini", "[loggers]\nkeys=root\n[handlers]\nkeys=out\n[formatters]\nkeys=\n"
                    "[logger_root]\nhandlers=out\n[handler_out]\nclass=nosuch.Handler\nargs=()\n",
     "handler_out")])
def test_check_refuses_a_logging_config_naming_a_class_that_cannot_be_imported(name, text, where,
                                                                             tmp_path):
    """What would stop every service at start is found by `check`, naming the handler."""
    from winchester.logs import check_logging_file

    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as refused:
        check_logging_file(tmp_path / name)
    assert f"{where}: cannot import 'nosuch.Handler'" in str(refused.value)
    (tmp_path / name).write_text(text.replace("nosuch.Handler", "logging.StreamHandler"))
    check_logging_file(tmp_path / name)  # a class that exists passes
