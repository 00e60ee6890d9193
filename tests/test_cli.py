"""The winchester command: help, version and check."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from winchester import __version__
from winchester.cli import SUBCOMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
ETC = ROOT / "etc"


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def etc_copy(tmp_path) -> Path:
    """A writable copy of the example configuration."""
    shutil.copytree(ETC, tmp_path / "etc")
    return tmp_path / "etc"


def test_help_lists_every_subcommand():
    """`winchester --help` lists each registered subcommand with its help line."""
    result = run("--help")
    assert result.exit_code == 0
    for name, (_, _, help_line) in SUBCOMMANDS.items():
        assert name in result.output and help_line in result.output


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_subcommand_has_help(name):
    """Every subcommand answers --help with a usage line."""
    result = run(name, "--help")
    assert result.exit_code == 0
    assert f"Usage: main {name}" in result.output or f"Usage: winchester {name}" in result.output


def test_version_prints_the_package_version():
    """`winchester version` prints the installed version."""
    result = run("version")
    assert result.exit_code == 0 and result.output.startswith(f"winchester {__version__} ")


def test_check_passes_on_the_example_configuration():
    """`winchester check -c etc/winchester.yaml` reports a valid configuration and exits 0."""
    result = run("check", "-c", str(ETC / "winchester.yaml"))
    assert result.exit_code == 0, result.output
    assert "configuration is valid (0 error(s), 0 warning(s))" in result.output
    assert "3 event definitions" in result.output and "1 triggers" in result.output


def test_check_reports_a_broken_trigger_with_file_and_field(etc_copy):
    """A bad expiration is reported with the triggers file, line, trigger name and field."""
    triggers = etc_copy / "triggers.yaml"
    triggers.write_text(triggers.read_text().replace('expiration: "$last + 2d"',
                                                     'expiration: "$last + 2 days"'))
    result = run("check", "-c", str(etc_copy / "winchester.yaml"))
    assert result.exit_code == 1
    line = next(i for i, text in enumerate(triggers.read_text().splitlines(), 1)
                if text.strip().startswith("expiration:"))
    assert f"{triggers}:{line}:" in result.output
    assert "trigger 'usage_audit' > expiration: invalid time expression" in result.output
    assert "configuration is invalid (1 error(s)" in result.output


def test_check_reports_every_problem_not_only_the_first(etc_copy):
    """Problems in several files are all listed in one run."""
    (etc_copy / "pipelines.yaml").write_text("usage_audit: [logger, no_such_handler]\n")
    winchester = etc_copy / "winchester.yaml"
    winchester.write_text(winchester.read_text() + "\nbogus_key: 1\n")
    result = run("check", "-c", str(winchester))
    assert result.exit_code == 1
    assert "unknown handler 'no_such_handler'" in result.output
    assert "pipeline 'usage_audit' > entry #2 (no_such_handler)" in result.output
    assert "trigger 'usage_audit' > expire_pipeline: unknown pipeline 'usage_missing_exists'" in result.output
    assert "bogus_key: unknown key, ignored" in result.output


def test_check_goes_on_to_the_other_files_past_an_error_in_winchester_yaml(etc_copy):
    """A wrong value in winchester.yaml does not hide the problems of the files it names, nor
    its own unknown keys: one run lists them all."""
    triggers = etc_copy / "triggers.yaml"
    triggers.write_text(triggers.read_text().replace('"$last + 2d"', '"$last + 2 days"'))
    winchester = etc_copy / "winchester.yaml"
    winchester.write_text(winchester.read_text() + "\nstatistics_perod: 3\nintake: {batch_size: lots}\n")
    output = run("check", "-c", str(winchester)).output
    reported = [message for message in (
        "intake.batch_size: must be a whole number, not string 'lots'",
        "statistics_perod: unknown key, ignored",
        "trigger 'usage_audit' > expiration: invalid time expression: unknown unit 'days'",
        "configuration is invalid (2 error(s), 1 warning(s))") if message in output]
    assert len(reported) == 4, output


def test_check_names_a_missing_file(etc_copy):
    """A file named in winchester.yaml but absent is reported with where it was looked for."""
    (etc_copy / "event_definitions.yaml").unlink()
    result = run("check", "-c", str(etc_copy / "winchester.yaml"))
    assert result.exit_code == 1
    assert "distiller_config: file 'event_definitions.yaml' not found" in result.output


def test_check_reports_yaml_syntax_errors_with_position(etc_copy):
    """A YAML syntax error names the file, line and column."""
    (etc_copy / "triggers.yaml").write_text("- name: x\n  expiration: [\n")
    result = run("check", "-c", str(etc_copy / "winchester.yaml"))
    assert result.exit_code == 1
    assert f"{etc_copy / 'triggers.yaml'}:3:1: YAML syntax error" in result.output


def test_check_strict_fails_on_warnings(etc_copy):
    """--strict turns warnings (here an unknown key) into a failing exit code."""
    winchester = etc_copy / "winchester.yaml"
    winchester.write_text(winchester.read_text() + "\nbogus_key: 1\n")
    assert run("check", "-c", str(winchester)).exit_code == 0
    assert run("check", "--strict", "-c", str(winchester)).exit_code == 1


def test_check_warns_of_an_unimportable_handler_no_pipeline_uses_yet(etc_copy):
    """An unused pipeline_handlers entry that cannot be imported is a warning naming the entry."""
    winchester = etc_copy / "winchester.yaml"
    winchester.write_text(winchester.read_text()
                          + "\npipeline_handlers:\n  spare: no_such_module_here:Handler\n")
    result = run("check", "-c", str(winchester))
    assert result.exit_code == 0, result.output
    assert "pipeline_handlers > spare" in result.output
    assert "cannot import 'no_such_module_here:Handler'" in result.output
    assert run("check", "--strict", "-c", str(winchester)).exit_code == 1


def test_check_reads_config_from_environment(monkeypatch):
    """WINCHESTER_CONFIG names the configuration when -c is not given."""
    monkeypatch.setenv("WINCHESTER_CONFIG", str(ETC / "winchester.yaml"))
    assert run("check").exit_code == 0


def test_console_script_is_installed():
    """The `winchester` console script runs from the environment's bin directory."""
    script = Path(sys.executable).parent / "winchester"
    result = subprocess.run([str(script), "check", "-c", str(ETC / "winchester.yaml")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration is valid" in result.stdout


def test_a_test_run_that_selects_nothing_fails(tmp_path):
    """pytest selecting no test exits non-zero, so CI cannot pass silently."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
         "-k", "no_test_has_this_name", str(ROOT / "tests" / "test_events.py")],
        capture_output=True, text=True, check=False, cwd=ROOT,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 5, result.stdout
