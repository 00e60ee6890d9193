"""winchester simulate: a dry run of triggers and pipelines that reports what a real run does."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
from click.testing import CliRunner

from winchester.cli import main
from winchester.store import Store
from tests.test_replay import replay_config, workload_file
from tests.test_webhook_handler import Receiver, receiver  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def run_cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env or {}, catch_exceptions=False)


def simulated(config: Path, capture: Path, *extra: str, env: dict[str, str] | None = None) -> dict:
    result = run_cli("simulate", "-c", str(config), str(capture), "--json", *extra, env=env)
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout)


def canonical_report(report: dict) -> set:
    """(trigger, outcome, distinguishing traits, event ids) of every stream simulated."""
    found = set()
    for name, entry in report["triggers"].items():
        for stream in entry["streams"]:
            found.add((name, stream["outcome"], orjson.dumps(stream["distinguishing_traits"],
                                                             option=orjson.OPT_SORT_KEYS),
                       tuple(sorted(e["message_id"] for e in stream["events"]))))
    return found


def canonical_store(url: str) -> set:
    store = Store.from_url(url)
    try:
        found = set()
        for stream in store.list_streams():
            if stream.state == "completed":
                outcome = "fired" if stream.fire_timestamp is not None else "expired"
            elif stream.state in ("error", "expire_error"):
                outcome = "error"
            else:
                outcome = stream.state
            from winchester.triggers import distinguishing_to_json

            found.add((stream.trigger_name, outcome,
                       orjson.dumps(distinguishing_to_json(stream.distinguishing_traits),
                                    option=orjson.OPT_SORT_KEYS),
                       tuple(sorted(e["message_id"] for e in store.stream_events(stream.id)))))
        return found
    finally:
        store.close()


def test_simulate_reports_what_a_real_run_does(tmp_path):
    """Every stream the simulation reports (fired, expired, active, with its events) is what a
    real replay with workers leaves in a database; and so are the pipeline outputs."""
    config = replay_config(tmp_path)
    capture, workload = workload_file(tmp_path, instances=40, days=4)
    unused = tmp_path / "configured.db"
    report = simulated(config, capture, env={"WINCHESTER_DATABASE_URL": f"sqlite:///{unused}"})
    assert not unused.exists()  # the configured database is not touched

    real = tmp_path / "real.db"
    env = {"WINCHESTER_DATABASE_URL": f"sqlite:///{real}"}
    assert run_cli("db", "upgrade", "-c", str(config), env=env).exit_code == 0
    result = run_cli("replay", "-c", str(config), str(capture), "--run-workers", "--quiet", env=env)
    assert result.exit_code == 0, result.output

    assert canonical_report(report) == canonical_store(f"sqlite:///{real}")
    audit = report["triggers"]["usage_audit"]
    assert audit["streams_created"] == workload.truth.instance_days
    assert audit["fired"] and audit["expired"] and audit["active"] is not None
    assert (audit["fired"] + audit["expired"] + audit["error"] + audit["active"]
            == audit["streams_created"])
    simulated_outputs = sorted(
        (event["event_type"], event["original_message_id"]) for stream in audit["streams"]
        for event in stream["output"])
    store = Store.from_url(f"sqlite:///{real}")
    try:
        real_outputs = sorted(
            (event["event_type"], event["original_message_id"])
            for event_type in ("compute.instance.exists.verified", "compute.instance.exists.failed",
                               "compute.instance.exists.warnings")
            for event in store.find_events(event_type))
    finally:
        store.close()
    assert simulated_outputs == real_outputs
    assert any(t == "compute.instance.exists.failed" for t, _ in simulated_outputs)


def _webhook_config(tmp_path: Path, url: str) -> Path:
    config = replay_config(tmp_path)
    (config.parent / "pipelines.yaml").write_text(
        "usage_audit:\n  - usage\n  - name: webhook\n    params:\n"
        f"      url: {url}\n      event_types: ['compute.instance.exists.*']\n"
        "usage_missing_exists:\n  - usage\n")
    return config


def test_simulate_performs_no_side_effects_unless_told_to_commit(tmp_path, receiver):  # noqa: F811
    """The webhook is not called in a dry run (the report says what would be POSTed); --commit calls it."""
    config = _webhook_config(tmp_path, receiver.url)
    capture, _ = workload_file(tmp_path, instances=5, days=2)
    report = simulated(config, capture)
    assert receiver.requests == [] and report["committed"] is False
    fired = [s for s in report["triggers"]["usage_audit"]["streams"] if s["outcome"] == "fired"]
    assert fired and all(any(line.startswith("webhook: would POST 1 request(s) to http://127.0.0.1:")
                             for line in stream["dry_run"]) for stream in fired)
    committed = simulated(config, capture, "--commit")
    assert committed["committed"] is True
    assert len(receiver.requests) == len(fired)


def test_simulate_tries_other_trigger_definitions(tmp_path):
    """--triggers replaces the configured triggers for the run: here, one stream per tenant and day."""
    config = replay_config(tmp_path)
    capture, workload = workload_file(tmp_path, instances=10, days=2)
    other = tmp_path / "per_tenant.yaml"
    text = (config.parent / "triggers.yaml").read_text()
    assert "    - instance_id\n" in text
    other.write_text(text.replace("    - instance_id\n", "    - tenant_id\n")
                     .replace("name: usage_audit", "name: per_tenant"))
    report = simulated(config, capture, "--triggers", str(other))
    assert list(report["triggers"]) == ["per_tenant"]
    streams = report["triggers"]["per_tenant"]["streams"]
    assert {tuple(s["distinguishing_traits"]) for s in streams} == {("tenant_id", "timestamp")}
    tenants = {orjson.loads(line)["payload"]["tenant_id"] for line in capture.read_bytes().splitlines()
               if b"compute.instance." in line}
    assert {s["distinguishing_traits"]["tenant_id"] for s in streams} == tenants


def test_simulate_prints_a_table_per_trigger(tmp_path):
    """Without --json: the per-trigger counts, then a few streams of each outcome with their output."""
    config = replay_config(tmp_path)
    capture, _ = workload_file(tmp_path, instances=10, days=3)
    result = run_cli("simulate", "-c", str(config), str(capture), "--show", "2",
                     env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "dry run: no handler's commit() ran" in result.output
    assert "usage_audit: fired (first 2 of" in result.output
    assert "compute.instance.exists.verified" in result.output


def test_simulate_refuses_a_bad_trigger_file_naming_where(tmp_path):
    """A broken --triggers file is a configuration error with its file, trigger and field."""
    config = replay_config(tmp_path)
    capture, _ = workload_file(tmp_path, instances=2, days=1)
    broken = tmp_path / "broken.yaml"
    broken.write_text("- name: broken\n  expiration: \"$last + 2 days\"\n  fire_pipeline: usage_audit\n"
                      "  distinguished_by: [instance_id]\n  match_criteria: [{event_type: '*'}]\n")
    result = CliRunner().invoke(main, ["simulate", "-c", str(config), str(capture),
                                       "--triggers", str(broken)])
    assert result.exit_code == 2
    assert "broken.yaml:2" in result.output and "'broken' > expiration" in result.output


VERDICTS_TRIGGER = """
- name: verdicts
  distinguished_by: [instance_id]
  expiration: "$last + 1h"
  fire_pipeline: usage_missing_exists
  expire_pipeline: usage_missing_exists
  match_criteria:
    - event_type: compute.instance.exists.failed
  fire_criteria:
    - event_type: compute.instance.exists.failed
"""


def test_streams_opened_by_generated_events_are_counted_as_created(tmp_path):
    """A trigger fed only by the usage handler's verdicts: simulate and replay count its
    streams as created, so "created" adds up to the streams there are."""
    config = replay_config(tmp_path)
    triggers = config.parent / "triggers.yaml"
    triggers.write_text(triggers.read_text() + VERDICTS_TRIGGER)
    capture, _ = workload_file(tmp_path, instances=40, days=4)

    report = simulated(config, capture)
    verdicts = report["triggers"]["verdicts"]
    assert verdicts["streams_created"] > 0
    assert verdicts["streams_created"] == (verdicts["fired"] + verdicts["expired"] + verdicts["error"]
                                           + verdicts["active"])
    assert report["input"]["streams_created"] == sum(
        entry["streams_created"] for entry in report["triggers"].values())

    real = tmp_path / "real.db"
    env = {"WINCHESTER_DATABASE_URL": f"sqlite:///{real}"}
    assert run_cli("db", "upgrade", "-c", str(config), env=env).exit_code == 0
    result = run_cli("replay", "-c", str(config), str(capture), "--run-workers", env=env)
    assert result.exit_code == 0, result.output
    store = Store.from_url(f"sqlite:///{real}")
    try:
        streams = store.list_streams()
    finally:
        store.close()
    assert f"streams: {len(streams):,} created" in result.output
    created_verdicts = sum(1 for stream in streams if stream.trigger_name == "verdicts")
    assert created_verdicts == verdicts["streams_created"]
    [row] = [line for line in result.output.splitlines() if "│ verdicts " in line]
    trigger, _, created, _ = (cell.strip() for cell in row.split("│")[1:-1])
    assert created == f"{created_verdicts:,}"


def test_replay_says_how_many_handler_commits_failed(tmp_path):
    """A webhook nobody answers fails every commit: the streams still count as fired (their
    pipeline ran), and the summary says that many commits failed instead of staying silent."""
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = _webhook_config(tmp_path, f"http://127.0.0.1:{port}/hook")
    text = (config.parent / "pipelines.yaml").read_text()
    (config.parent / "pipelines.yaml").write_text(
        text.replace("      event_types:", "      retries: 0\n      timeout: 1\n      event_types:"))
    capture, _ = workload_file(tmp_path, instances=5, days=2)
    env = {"WINCHESTER_DATABASE_URL": f"sqlite:///{tmp_path / 'real.db'}"}
    assert run_cli("db", "upgrade", "-c", str(config), env=env).exit_code == 0
    result = run_cli("replay", "-c", str(config), str(capture), "--run-workers", env=env)
    assert result.exit_code == 0, result.output
    fired = int(result.output.split(" fired")[0].rsplit(" ", 1)[1].replace(",", ""))
    assert fired > 0
    assert f", {fired:,} handler commits failed (their side effects did not happen" in result.output
