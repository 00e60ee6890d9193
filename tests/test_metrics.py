"""Prometheus metrics: what `serve` exposes at /metrics, and a standalone worker's --metrics-port."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_worker_cli import (  # noqa: F401 - isolated is an autouse fixture
    BIN,
    DAY,
    isolated,
    lifecycle,
    make_config,
    nova,
    upgrade_and_ingest,
)
from tests.conftest import free_port
from winchester.config import (
    build_distiller,
    load_pipeline_definitions,
    load_settings,
    load_trigger_definitions,
    open_store,
)
from winchester.services.serve import build_server

TOKEN = "metrics-token-0123456789"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """(sample name, labels) -> value."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def wait_for(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def served(tmp_path, database_url) -> Iterator[tuple[str, object]]:
    """`serve --with api,worker` (tokens on, reads protected) on the instance_life trigger."""
    config = make_config(tmp_path, url_in_env=True)
    with config.path.open("a") as extra:
        extra.write(f"bus:\n  url: memory://{uuid.uuid4().hex[:8]}\napi:\n  port: 0\n"
                    f"  tokens: [{TOKEN}]\n  protect_reads: true\npipeline_worker_delay: 0.1\n"
                    "clock: event\n")
    environ = {"WINCHESTER_DATABASE_URL": database_url}
    from winchester.store import create_engine, upgrade

    engine = create_engine(database_url)
    upgrade(engine)
    engine.dispose()
    settings = load_settings(config.path, environ=environ)
    triggers = load_trigger_definitions(settings)
    server = build_server(settings, triggers, load_pipeline_definitions(settings), build_distiller(settings),
                          lambda: open_store(settings, triggers), ("api", "worker"))
    server.start()
    runner = threading.Thread(target=server.wait)
    runner.start()
    try:
        assert server.wait_ready()
        port = server.http.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.stop()
        runner.join(60)


def test_serve_metrics_count_ingest_by_type_streams_and_pipeline_runs(served):
    url, server = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    notifications = lifecycle(DAY, fired=("i-a",), unfired=("i-b",))
    body = b"\n".join(orjson.dumps(n) for n in notifications) + b"\n{not json\n"
    answer = httpx.post(f"{url}/v1/notifications", content=body, headers=auth).json()
    assert (answer["accepted"], answer["rejected"]) == (3, 1)
    again = httpx.post(f"{url}/v1/notifications", content=orjson.dumps(notifications[0]),
                       headers=auth).json()
    assert again["duplicates"] == 1

    def scrape() -> dict:
        response = httpx.get(f"{url}/metrics", headers=auth)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return samples(response.text)

    # The fired stream's pipeline ran (the worker follows the event clock, which the events moved).
    found = wait_for(lambda: (m := scrape()) and value(
        m, "winchester_streams_finished_total", trigger="instance_life", action="fire",
        outcome="fired") == 1 and m, "the stream to fire")
    start, end = "compute.instance.create.start", "compute.instance.delete.end"
    assert value(found, "winchester_events_stored_total", service="http", event_type=start) == 2
    assert value(found, "winchester_events_stored_total", service="http", event_type=end) == 1
    assert value(found, "winchester_events_duplicate_total", service="http", event_type=start) == 1
    assert value(found, "winchester_notifications_received_total", service="http") == 5
    rejected = [v for (name, labels), v in found.items()
                if name == "winchester_notifications_rejected_total"]
    assert rejected == [1]
    assert value(found, "winchester_streams_created_total", service="http", trigger="instance_life") == 2
    assert value(found, "winchester_pipeline_seconds_count", trigger="instance_life", action="fire") == 1
    assert value(found, "winchester_ingest_batch_seconds_count", service="http") == 2
    assert value(found, "winchester_handler_commit_errors_total", worker="serve") == 0
    assert value(found, "winchester_worker_claims_lost_total", worker="serve") == 0
    # The worker's clock is event time: the newest event's.
    assert value(found, "winchester_clock_seconds", service="worker") == datetime(
        2024, 1, 1, 1, 0, tzinfo=timezone.utc).timestamp()
    assert value(found, "winchester_bus_messages_total", direction="out") is not None


def test_metrics_need_the_token_when_reads_are_protected(served):
    url, server = served
    assert httpx.get(f"{url}/metrics").status_code == 401
    found = samples(httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text)
    assert value(found, "winchester_api_unauthorised_requests_total") == 1


def test_streams_by_state_come_from_the_database(served, monkeypatch):
    import winchester.metrics

    monkeypatch.setattr(winchester.metrics, "DATABASE_REFRESH", 0.0)
    url, server = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    only_created = [nova("compute.instance.create.start", f"i-{n}", DAY) for n in range(3)]
    httpx.post(f"{url}/v1/notifications", content=b"\n".join(map(orjson.dumps, only_created)),
               headers=auth)
    found = samples(httpx.get(f"{url}/metrics", headers=auth).text)
    assert value(found, "winchester_streams", trigger="instance_life", state="active") == 3




def test_a_standalone_worker_serves_metrics_on_its_port(tmp_path):
    config = make_config(tmp_path)
    with config.path.open("a") as extra:
        extra.write("api:\n  host: 127.0.0.1\npipeline_worker_delay: 0.1\n")
    upgrade_and_ingest(config, lifecycle(DAY))
    port = free_port()
    process = subprocess.Popen([str(BIN / "winchester"), "worker", "-c", config.c, "--metrics-port",
                                str(port), "--name", "w-metrics"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def finished() -> dict | None:
            try:
                found = samples(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
            except httpx.HTTPError:
                return None
            # The worker counts a stream just after recording it, and the database figures are
            # cached for a few seconds: wait until both have caught up with both streams.
            done = (value(found, "winchester_streams_finished_total", trigger="instance_life",
                          action="fire", outcome="fired"),
                    value(found, "winchester_streams_finished_total", trigger="instance_life",
                          action="expire", outcome="expired"),
                    value(found, "winchester_streams", trigger="instance_life", state="completed"))
            return found if done == (1, 1, 2) else None

        found = wait_for(finished, "the worker to fire one stream, expire the other and report them")
        assert value(found, "winchester_pipeline_seconds_count", trigger="instance_life",
                     action="fire") == 1
        assert value(found, "winchester_worker_claims_lost_total", worker="w-metrics") == 0
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 0, output


def test_a_metrics_port_in_use_is_a_usage_error(tmp_path):
    config = make_config(tmp_path)
    upgrade_and_ingest(config, lifecycle(DAY))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with config.path.open("a") as extra:
            extra.write("api:\n  host: 127.0.0.1\n")
        result = subprocess.run([sys.executable, "-m", "winchester", "worker", "-c", config.c, "--once",
                                 "--metrics-port", str(port)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"--metrics-port {port}: cannot listen on 127.0.0.1:{port}" in result.stderr


def test_two_ingesters_in_one_process_give_one_family_per_metric_with_both_services():
    """`serve` runs the bus ingester and the HTTP one in one process: each metric is one family
    (the text format allows one HELP/TYPE group per name), with a sample per service."""
    from winchester.metrics import Metrics
    from winchester.services.ingest import Ingester
    from winchester.services.simulate import memory_store
    from winchester.triggers import load_triggers

    triggers = load_triggers([{"name": "t", "distinguished_by": ["instance_id"],
                               "expiration": "$last + 1h", "fire_pipeline": "p",
                               "match_criteria": [{"event_type": "compute.*"}]}], "triggers.yaml")
    store = memory_store(())
    metrics = Metrics()
    for service in ("ingest", "http"):
        ingester = Ingester(store, triggers)
        ingester.add_events([{"message_id": f"{service}-1", "event_type": "compute.start",
                              "timestamp": datetime(2024, 1, 1), "instance_id": "i-1"}])
        metrics.watch_ingester(ingester, service)
    text = metrics.exposition()[0].decode()
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types)), sorted(name for name in types if types.count(name) > 1)
    found = samples(text)
    assert value(found, "winchester_events_stored_total", service="ingest",
                 event_type="compute.start") == 1
    assert value(found, "winchester_events_stored_total", service="http",
                 event_type="compute.start") == 1
