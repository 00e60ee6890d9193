from __future__ import annotations

import gzip
import sys
import threading
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from winchester.cli._options import config_option, stopped_by_signals
from winchester.cli._setup import open_parts
from winchester.bus._connect import safe_url
from winchester.config import open_store
from winchester.errors import WinchesterError
from winchester.services.serve import PARTS, build_server, default_parts

LOAD_BATCH = 500


def _parts(_ctx, _param, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in PARTS]
    if unknown or not names:
        raise click.BadParameter(f"choose from {', '.join(PARTS)} (comma-separated), not {value!r}")
    return names


@click.command("serve")
@config_option
@click.option("--with", "parts", callback=_parts, metavar="PART,...",
              help=f"Which of {', '.join(PARTS)} to run [default: api,worker with the memory:// "
                   "bus, all of them with a broker].")
@click.option("--clock", "clock_kind", type=click.Choice(["wall", "event"]),
              help="'event': now follows the notifications' own timestamps [default: the clock "
                   "setting].")
@click.option("--host", help="Listen address [default: api.host].")
@click.option("--port", type=click.IntRange(0, 65535), help="Listen port [default: api.port].")
@click.option("--load", "load_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Once started, post this JSON-lines file (plain or gzip) to the HTTP intake.")
def serve(config_file: str, parts: tuple[str, ...] | None, clock_kind: str, host: str | None,
          port: int | None, load_file: Path | None) -> None:
    """Run the services in one process: HTTP API and intake, ingest, persistor, worker.

    SIGTERM or SIGINT stops intake first, lets in-flight batches commit, then
    stops the worker after the stream it is running.
    """
    _serve(config_file, parts, clock_kind, host, port, load_file)


@click.command("api")
@config_option
@click.option("--clock", "clock_kind", type=click.Choice(["wall", "event"]),
              help="What 'now' is for explain (expiry times) [default: the clock setting].")
@click.option("--host", help="Listen address [default: api.host].")
@click.option("--port", type=click.IntRange(0, 65535), help="Listen port [default: api.port].")
def api(config_file: str, clock_kind: str, host: str | None, port: int | None) -> None:
    """Serve the HTTP API, dashboard, /metrics and the HTTP intake, alone (no worker).

    The same as `winchester serve --with api`: run workers (and bus
    consumers) as their own processes beside it.
    """
    _serve(config_file, ("api",), clock_kind, host, port, None)


def _serve(config_file: str, parts: tuple[str, ...] | None, clock_kind: str, host: str | None,
           port: int | None, load_file: Path | None) -> None:
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    loaded = open_parts(config_file, console, distiller=True, pipelines=True)
    settings = loaded.settings
    loaded.store.close()
    chosen = parts or default_parts(settings.bus_url)
    if load_file is not None and "api" not in chosen:
        raise click.UsageError("--load posts to the HTTP intake: include api in --with")
    try:
        server = build_server(settings, loaded.triggers, loaded.pipelines, loaded.distiller,
                              lambda: open_store(settings, loaded.triggers), chosen, clock_kind,
                              host=host, port=port)
    except WinchesterError as exc:
        console.print(f"error: {exc}", markup=False)
        sys.exit(1)
    with stopped_by_signals(server.stop):
        server.start()
        if not server.wait_ready():
            waiting = server.not_ready()
            if server.failures:
                pass  # reported below, once every part has stopped
            elif "api" in waiting:
                console.print("error: the API did not start within 30s", markup=False)
                server.stop()
                server.wait()
                sys.exit(1)
            else:
                # A broker that is not up yet is waited for: those parts keep reconnecting.
                console.print(f"warning: {', '.join(waiting)} not connected yet; retrying in the "
                              "background", markup=False)
        if not server.failures:
            url = _url(server)
            console.print(f"winchester serving {', '.join(chosen)} (bus {safe_url(settings.bus_url)}, "
                          f"database {_safe(settings.database_url)})"
                          + (f"; dashboard at {url}/, API at {url}/docs" if url else ""), markup=False)
            if load_file is not None:
                threading.Thread(target=_load, args=(server, url, load_file, settings, loaded.triggers,
                                                     console), daemon=True).start()
        server.wait()
    for name, failure in server.failures:
        console.print(f"error: {name} failed: {type(failure).__name__}: {failure}", markup=False)
    if server.failures:
        sys.exit(1)


def _url(server) -> str | None:
    http = getattr(server, "http", None)
    if http is None:
        return None
    host, port = http.config.host, http.config.port
    for listener in getattr(http, "servers", []) or []:
        for sock in listener.sockets:
            host, port = sock.getsockname()[:2]
    if ":" in host:  # IPv6 literals need brackets in a URL
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _load(server, url: str, path: Path, settings, triggers, console: Console) -> None:
    """Post a file to our own intake, then report what the streams came to."""
    import httpx

    totals = {"received": 0, "accepted": 0, "duplicates": 0, "unconverted": 0, "rejected": 0}
    headers = {"content-type": "application/x-ndjson"}
    if settings.api.tokens:
        headers["authorization"] = f"Bearer {settings.api.tokens[0]}"
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as lines, httpx.Client(timeout=120) as client:
            batch: list[bytes] = []
            for line in lines:
                if line.strip():
                    batch.append(line.strip())
                if len(batch) >= LOAD_BATCH:
                    _post(client, url, batch, headers, totals)
                    batch = []
            if batch:
                _post(client, url, batch, headers, totals)
    except Exception as exc:  # noqa: BLE001 - a failed load is reported; the server keeps running
        console.print(f"error: loading {path} failed: {type(exc).__name__}: {exc}", markup=False)
        return
    console.print(f"loaded {path}: {totals['received']:,} notifications, {totals['accepted']:,} "
                  f"accepted, {totals['duplicates']:,} duplicates, {totals['unconverted']:,} "
                  f"unconverted, {totals['rejected']:,} rejected", markup=False)
    store = open_store(settings, triggers)
    clock = server.clock_for(store)
    try:
        # Let the worker catch up with what became due.
        for _ in range(600):
            clock.refresh()
            states = store.count_streams_by_state()
            running = states.get("firing", 0) + states.get("expiring", 0)
            if server._stopping.is_set() or (
                    not running and not store.count_due_streams(clock.now(), clock.now(),
                                                                store.late_event_grace)):
                break
            threading.Event().wait(0.1)
        verdicts = {name: count for name, count in store.count_events_by_type().items()
                    if name.startswith("compute.instance.exists.")}
    finally:
        store.close()
    table = Table(title="Streams by state", title_justify="left")
    table.add_column("state")
    table.add_column("streams", justify="right")
    for state, count in sorted(states.items()):
        table.add_row(state, f"{count:,}")
    console.print(table)
    for name, count in sorted(verdicts.items()):
        console.print(f"{name}: {count:,}", markup=False)
    console.print(f"look around: {url}/docs (API), {url}/healthz; `winchester streams list -c ...`;"
                  " Ctrl-C stops", markup=False)


def _post(client, url: str, batch: list[bytes], headers: dict, totals: dict) -> None:
    response = client.post(f"{url}/v1/notifications", content=b"\n".join(batch), headers=headers)
    response.raise_for_status()
    answer = response.json()
    for key in totals:
        totals[key] += answer.get(key, 0)
