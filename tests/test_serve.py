"""`serve` in-process: the parts run, answer on the bus, and stop in order."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx

from winchester.bus import Bus, apply_delta
from winchester.clock import EventClock
from winchester.config import (
    build_distiller,
    load_pipeline_definitions,
    load_settings,
    load_trigger_definitions,
    open_store,
)
from winchester.services.serve import BUS_NAME, STATUS_ADDRESS, STREAMS_TABLE, build_server

ROOT = Path(__file__).resolve().parents[1]


def test_serve_answers_status_and_publishes_stream_states_on_the_bus(migrated_url, tmp_path):
    """The server's bus answers winchester.status and keeps a streams-by-state table up to date."""
    bus_url = f"memory://{uuid.uuid4().hex[:8]}"
    (tmp_path / "winchester.yaml").write_text(
        (ROOT / "etc" / "winchester.yaml").read_text() + "\nstatistics_period: 0.2\n"
        f"bus:\n  url: {bus_url}\napi:\n  port: 0\n")
    for name in ("event_definitions.yaml", "triggers.yaml", "pipelines.yaml"):
        (tmp_path / name).write_text((ROOT / "etc" / name).read_text())
    settings = load_settings(tmp_path / "winchester.yaml", environ={"WINCHESTER_DATABASE_URL": migrated_url})
    triggers = load_trigger_definitions(settings)
    server = build_server(settings, triggers, load_pipeline_definitions(settings), build_distiller(settings),
                          lambda: open_store(settings, triggers), ("api", "worker"), EventClock())
    server.start()
    runner = threading.Thread(target=server.wait)
    runner.start()
    try:
        assert server.wait_ready()
        port = server.http.servers[0].sockets[0].getsockname()[1]
        with Bus(bus_url, name=BUS_NAME) as client:
            status = client.request(STATUS_ADDRESS, {}, timeout=10)
            assert {name: part["ready"] for name, part in status["parts"].items()} == {
                "api": True, "worker": True}
            table: dict = {}
            changed = threading.Event()

            def follow(kind, payload):
                if kind == "snapshot":
                    table.clear()
                    table.update(payload)
                else:
                    apply_delta(table, payload)
                changed.set()

            client.subscribe_table(STREAMS_TABLE, follow)
            notification = {"message_id": "m-1", "event_type": "compute.instance.update",
                            "publisher_id": "compute.host-a", "timestamp": "2015-02-01 10:00:00",
                            "payload": {"instance_id": "i-1", "tenant_id": "t"}}
            response = httpx.post(f"http://127.0.0.1:{port}/v1/notifications", json=notification)
            assert response.json()["accepted"] == 1
            deadline = time.monotonic() + 30
            while table.get("active", {}).get("streams") != 1:
                assert time.monotonic() < deadline, table
                changed.wait(1)
                changed.clear()
    finally:
        server.stop()
        runner.join(60)
    assert not runner.is_alive()
    assert all(not part.thread.is_alive() for part in server.parts)


def test_the_api_serves_without_a_broker_and_its_health_check_says_the_bus_is_down(migrated_url,
                                                                                     tmp_path, caplog):
    """`winchester api` (serve --with api) needs no broker for the HTTP intake and queries: with
    RabbitMQ unreachable it starts, takes notifications, and /healthz names the bus."""
    from tests.conftest import free_port

    (tmp_path / "winchester.yaml").write_text(
        (ROOT / "etc" / "winchester.yaml").read_text()
        + f"\nbus:\n  url: amqp://guest:guest@127.0.0.1:{free_port()}//\napi:\n  port: 0\n")
    for name in ("event_definitions.yaml", "triggers.yaml", "pipelines.yaml"):
        (tmp_path / name).write_text((ROOT / "etc" / name).read_text())
    settings = load_settings(tmp_path / "winchester.yaml", environ={"WINCHESTER_DATABASE_URL": migrated_url})
    triggers = load_trigger_definitions(settings)
    server = build_server(settings, triggers, load_pipeline_definitions(settings), build_distiller(settings),
                          lambda: open_store(settings, triggers), ("api",), EventClock())
    server.start()  # unfixed: BusConnectionError
    runner = threading.Thread(target=server.wait)
    runner.start()
    try:
        assert server.wait_ready()
        assert "the bus at amqp://guest:**@127.0.0.1" in caplog.text
        port = server.http.servers[0].sockets[0].getsockname()[1]
        notification = {"message_id": "m-1", "event_type": "compute.instance.update",
                        "publisher_id": "compute.host-a", "timestamp": "2015-02-01 10:00:00",
                        "payload": {"instance_id": "i-1", "tenant_id": "t"}}
        assert httpx.post(f"http://127.0.0.1:{port}/v1/notifications", json=notification
                          ).json()["accepted"] == 1
        health = httpx.get(f"http://127.0.0.1:{port}/healthz")
        assert health.status_code == 503 and health.json()["bus"] == "the bus is not running"
    finally:
        server.stop()
        runner.join(60)
    assert not runner.is_alive()
