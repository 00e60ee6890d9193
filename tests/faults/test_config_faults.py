"""Configuration faults (issue 9): refused at start, with the file, the definition and the field named.

Promise 4 of docs/architecture.md, at the command line. Each fault is put
into a copy of the example configuration and tried three ways: `winchester
check` (exit 1, every problem listed), and starting the real `winchester
worker` and `winchester ingest` console scripts (exit 2 before they touch the
database or the broker, the same messages on standard error, no traceback).
A service is only asked about the files it reads: the worker does not read
event definitions, ingest does not build pipelines.

tests/test_config.py checks the loader's messages key by key; this file checks
that the commands refuse to start and say so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ETC = ROOT / "etc"
BIN = Path(sys.executable).parent
TRIGGERS = (ETC / "triggers.yaml").read_text()

SECOND_TRIGGER = """
- name: instance_errors
  distinguished_by: [instance_id]
  expiration: "$last + 1h"
  fire_pipeline: usage_audit
  match_criteria:
    - event_type: compute.instance.*.error
      timestamp: "{timestamp}"
  fire_criteria:
    - event_type: compute.instance.exists
      traits:
        launched_at:
          datetime: "{datetime}"
"""


@dataclass(frozen=True)
class Fault:
    """A change to one file and what each command must say (regexes; FILE is the changed file)."""

    name: str
    file: str
    text: str | None = None        # the file's new contents (None: `edit` of the example)
    edit: tuple[str, str] | None = None
    append: str | None = None
    messages: tuple[str, ...] = ()
    commands: tuple[str, ...] = ("check", "worker", "ingest")
    extra_files: dict[str, str] = field(default_factory=dict)


def without(key: str) -> str:
    lines = [line for line in (ETC / "winchester.yaml").read_text().splitlines()
             if not line.startswith(f"{key}:")]
    return "\n".join(lines) + "\n"


FAULTS = [
    # Each required key of winchester.yaml.
    *(Fault(f"missing {key}", "winchester.yaml", text=without(key),
            messages=(rf"FILE: {key}: is required \(",))
      for key in ("distiller_config", "trigger_definitions", "pipeline_config")),
    Fault("all required keys missing", "winchester.yaml", text="log_level: warning\n",
          messages=tuple(rf"FILE: {key}: is required" for key in
                         ("distiller_config", "trigger_definitions", "pipeline_config"))),
    # Time expressions, wherever they are.
    Fault("expiration", "triggers.yaml", edit=('"$last + 2d"', '"$last +"'),
          messages=(r"FILE:21:3: trigger 'usage_audit' > expiration: invalid time expression: "
                    r"expected a duration such as '1h' after '\+', found end of expression",)),
    Fault("expiration variable", "triggers.yaml", edit=('"$last + 2d"', '"$audit_period_ending + 2d"'),
          messages=(r"FILE:21:3: trigger 'usage_audit' > expiration: uses \$audit_period_ending; an "
                    r"expiration can only use \$first, \$last",)),
    Fault("distinguished_by", "triggers.yaml", edit=("- timestamp: day", "- timestamp: dya"),
          messages=(r"FILE:18:7: trigger 'usage_audit' > distinguished_by #1 > timestamp: invalid "
                    r"time expression: unknown name 'dya'",)),
    Fault("criteria timestamp and datetime", "triggers.yaml",
          append=SECOND_TRIGGER.format(timestamp="$timestamp - 1 week", datetime="$last ++ 1d"),
          messages=(r"FILE:\d+:\d+: trigger 'instance_errors' > match_criteria #0 > timestamp: "
                    r"invalid time expression: unknown unit 'week'",
                    r"FILE:\d+:\d+: trigger 'instance_errors' > fire_criteria #0 > traits > "
                    r"launched_at: invalid time expression: expected a duration such as '1h' after "
                    r"'\+', found '\+'")),
    Fault("fire criterion datetime", "triggers.yaml",
          edit=("datetime: $audit_period_beginning + 1d", "datetime: $audit_period_beginning + 1x"),
          messages=(r"FILE:\d+:\d+: trigger 'usage_audit' > fire_criteria #0 > traits > "
                    r"audit_period_ending: invalid time expression: unknown unit 'x'",)),
    Fault("archive_retention", "winchester.yaml", append='archive_retention: "$timestamp - 90 days"',
          messages=(r"FILE:\d+:1: archive_retention: unknown unit 'days'",)),
    Fault("trim_events_age variable", "winchester.yaml",
          edit=('trim_events_age: "$timestamp - 14d"', 'trim_events_age: "$last - 14d"'),
          messages=(r"FILE:\d+:1: trim_events_age: '\$last - 14d' uses \$last: this expression is "
                    r"evaluated against now, and \$timestamp \(now\) is its only variable",)),
    # Where the services connect.
    Fault("bus url scheme", "winchester.yaml", append="bus: {url: 'redis://localhost:6379'}",
          messages=(r"FILE:\d+:7: bus.url: the bus url must start with one of memory://, amqp://, "
                    r"amqps://, pyamqp://; its scheme is 'redis'",)),
    Fault("database url", "winchester.yaml", append="database: {url: 'not a url'}",
          messages=(r"FILE:\d+:1: database: url is not a database URL \(expected e\.g\. ",)),
    Fault("intake and persistor on one queue", "winchester.yaml",
          append="intake: {queue: notifications-copy}\npersistor: {queue: notifications-copy}",
          messages=(r"FILE:\d+:13: persistor.queue: is the same queue as intake.queue "
                    r"\('notifications-copy'\): ingest and the persistor would each get only some",)),
    # Triggers.
    Fault("duplicate trigger names", "triggers.yaml", append=TRIGGERS[TRIGGERS.index("- name:"):],
          messages=(r"FILE:\d+:3: trigger 'usage_audit' > name: duplicate trigger name: trigger #0 "
                    r"and trigger #1 are both named 'usage_audit'",)),
    Fault("unknown pipeline", "triggers.yaml",
          edit=("expire_pipeline: usage_missing_exists", "expire_pipeline: usage_missed"),
          messages=(r"FILE:23:3: trigger 'usage_audit' > expire_pipeline: unknown pipeline "
                    r"'usage_missed' \(defined: usage_audit, usage_missing_exists\)",)),
    # Pipelines: only the worker builds them.
    Fault("unknown handler", "pipelines.yaml",
          text="usage_audit:\n  - logger\n  - usage_checker\nusage_missing_exists: [logger, usage]\n",
          messages=(r"FILE:3:5: pipeline 'usage_audit' > entry #2 \(usage_checker\): unknown handler "
                    r"'usage_checker' \(known: logger, notabene, publish, usage, webhook",),
          commands=("check", "worker")),
    Fault("unimportable handler", "pipelines.yaml",
          text="usage_audit:\n  - audit\nusage_missing_exists: [logger, usage]\n",
          extra_files={"winchester.yaml+": "pipeline_handlers:\n  audit: no_such_module_xyz:Audit\n"},
          messages=(r"FILE:2:5: pipeline 'usage_audit' > entry #1 \(audit\): cannot load handler "
                    r"'audit': ModuleNotFoundError: No module named 'no_such_module_xyz'",),
          commands=("check", "worker")),
    Fault("unknown handler param", "pipelines.yaml",
          text=("usage_audit:\n  - name: logger\n    params: {level: info, colour: red}\n"
                "usage_missing_exists: [logger, usage]\n"),
          messages=(r"FILE:3:5: pipeline 'usage_audit' > entry #1 \(logger\) > params: got an "
                    r"unexpected keyword argument 'colour' \(accepted: level\)",),
          commands=("check", "worker")),
    # Event definitions: only ingest distils.
    Fault("event definition", "event_definitions.yaml",
          text="- event_type: compute.*\n  traits:\n    x:\n      type: bignum\n      fields: payload.x\n",
          messages=(r"FILE:4:7: definition #0 \(compute\.\*\) > trait 'x' > type: unknown type "
                    r"'bignum'; expected one of text, int, float, datetime",),
          commands=("check", "ingest")),
    # YAML syntax errors, in each file.
    Fault("YAML in winchester.yaml", "winchester.yaml", append="database: {url: sqlite:///x.db\n",
          messages=(r"FILE:\d+:\d+: YAML syntax error: while parsing a flow mapping",)),
    Fault("YAML in event definitions", "event_definitions.yaml",
          text="- event_type: compute.*\n  traits: {instance_id: {fields: payload.instance_id}\n",
          messages=(r"FILE:3:1: YAML syntax error: while parsing a flow mapping",),
          commands=("check", "ingest")),
    Fault("YAML in triggers", "triggers.yaml", text="- name: usage_audit\n\tdistinguished_by: []\n",
          messages=(r"FILE:2:1: YAML syntax error: while scanning for the next token found "
                    r"character '\\t' that cannot start any token",)),
    Fault("YAML in pipelines", "pipelines.yaml", text="usage_audit:\n  - logger\n - usage\n",
          messages=(r"FILE:3:2: YAML syntax error: while parsing a block mapping expected <block "
                    r"end>, but found '<block sequence start>'",),
          commands=("check", "worker")),
    Fault("YAML in the logging configuration", "logging.yaml", text="version: 1\nhandlers: [\n",
          extra_files={"winchester.yaml+": "logging_config: logging.yaml\n"},
          messages=(r"FILE:3:1: YAML syntax error: while parsing a flow node expected the node "
                    r"content, but found '<stream end>'",)),
    Fault("logging configuration without version", "logging.json", text='{"handlers": {}}',
          extra_files={"winchester.yaml+": "logging_config: logging.json\n"},
          messages=(r"FILE: logging_config: invalid logging configuration",)),
    Fault("logging configuration INI", "logging.ini", text="[loggers]\nkeys=root\n[handlers\n",
          extra_files={"winchester.yaml+": "logging_config: logging.ini\n"},
          messages=(r"FILE: logging_config: invalid logging configuration",)),
]


def apply(fault: Fault, directory: Path) -> Path:
    """The fault written into ``directory`` (a copy of etc/); the path of the changed file."""
    for name in ("winchester.yaml", "event_definitions.yaml", "triggers.yaml", "pipelines.yaml"):
        shutil.copy(ETC / name, directory / name)
    main = directory / "winchester.yaml"
    main.write_text(main.read_text().replace("log_level: info", "log_level: warning"))
    for name, text in fault.extra_files.items():
        if name.endswith("+"):
            with (directory / name[:-1]).open("a") as extra:
                extra.write("\n" + text)
        else:
            (directory / name).write_text(text)
    path = directory / fault.file
    if fault.text is not None:
        path.write_text(fault.text)
    if fault.edit is not None:
        old, new = fault.edit
        text = path.read_text()
        assert old in text, f"{old!r} is not in {path.name}"
        path.write_text(text.replace(old, new, 1))
    if fault.append is not None:
        with path.open("a") as extra:
            extra.write("\n" + fault.append + "\n")
    return path


def run(*args: str, cwd: Path, env_url: str) -> subprocess.CompletedProcess:
    env = {"PATH": str(BIN) + ":/usr/bin:/bin", "COLUMNS": "400", "PYTHONIOENCODING": "utf-8",
           "WINCHESTER_DATABASE_URL": env_url, "HOME": str(cwd)}
    return subprocess.run([str(BIN / "winchester"), *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120, check=False)


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.name for fault in FAULTS])
def test_a_configuration_fault_is_refused_at_start_naming_file_definition_and_field(fault, tmp_path):
    directory = tmp_path / "etc"
    directory.mkdir()
    changed = apply(fault, directory)
    config = str(directory / "winchester.yaml")
    # Never migrated: a command that got past its configuration would say so instead.
    url = f"sqlite:///{tmp_path / 'never-created.db'}"
    patterns = [re.compile(message.replace("FILE", re.escape(str(changed)))) for message in fault.messages]
    for command in fault.commands:
        args = {"check": ("check", "-c", config), "worker": ("worker", "-c", config, "--once"),
                "ingest": ("ingest", "-c", config)}[command]
        result = run(*args, cwd=tmp_path, env_url=url)
        said = result.stdout if command == "check" else result.stderr
        expected_status = 1 if command == "check" else 2
        assert result.returncode == expected_status, (command, result.stdout, result.stderr)
        for pattern in patterns:
            assert pattern.search(said), (command, pattern.pattern, said)
        errors = [line for line in said.splitlines() if line.startswith("error: ")]
        # Every line of the refusal names the file; nothing else (the database, a traceback) was reached.
        assert errors and all(line.startswith(f"error: {changed}") for line in errors), (command, said)
        assert "Traceback" not in result.stdout + result.stderr, (command, result.stderr)
        assert "no Winchester schema" not in said
        if command == "check":
            assert f"configuration is invalid ({len(errors)} error(s)" in said
    assert not (tmp_path / "never-created.db").exists()
