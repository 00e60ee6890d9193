"""`winchester serve`: the services in one process.

For the embedded default (SQLite, ``memory://`` bus) that is the HTTP API
with its intake plus a pipeline worker; against RabbitMQ and PostgreSQL any
subset of api, ingest, persistor and worker, each also runnable on its own
(``winchester ingest``, ``persistor``, ``worker``). Each part runs in its own
thread with its own store connection pool; a stop request stops intake first,
lets in-flight batches commit, then stops the worker after its current stream.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from winchester.clock import Clock, WallClock
from winchester.errors import WinchesterError
from winchester.store import Store

logger = logging.getLogger(__name__)

PARTS = ("api", "ingest", "persistor", "worker")
# On the bus: the server answers status requests here, and publishes the
# number of streams in each state as a table (snapshot, then changes).
BUS_NAME = "winchester"  # every part and client must use it to share the bus's exchanges
STATUS_ADDRESS = "winchester.status"
STREAMS_TABLE = "winchester.streams.by_state"
# Stopped in this order: nothing new comes in while the rest drains.
STOP_ORDER = ("api", "ingest", "persistor", "worker")


def default_parts(bus_url: str) -> tuple[str, ...]:
    """Without a broker there is nothing to consume: the API is the way in."""
    if bus_url.startswith("memory://"):
        return ("api", "worker")
    return PARTS


@dataclass
class Part:
    name: str
    run: Callable[[], Any]
    stop: Callable[[], Any]
    ready: Callable[[], bool] = lambda: True
    thread: threading.Thread | None = None
    failure: BaseException | None = None


@dataclass
class Server:
    """Runs parts in threads; :meth:`stop` is safe from a signal handler."""

    parts: list[Part] = field(default_factory=list)
    stores: list[Store] = field(default_factory=list)
    # Builds the clock a part reads, given the part's store.
    clock_for: Callable[[Store], Clock] = field(default=lambda store: WallClock())
    bus: Any = None
    drivers: list[Any] = field(default_factory=list)
    metrics: Any = None
    _stopping: threading.Event = field(default_factory=threading.Event)

    def add(self, part: Part) -> None:
        self.parts.append(part)

    def start(self) -> None:
        if self.bus is not None:
            from winchester.bus import BusConnectionError
            from winchester.bus._connect import safe_url

            try:
                self.bus.start()
            except BusConnectionError as exc:
                # The API and the database parts need no broker (ingest and the persistor
                # reconnect on their own): they go on, and /healthz names the problem.
                logger.error("the bus at %s cannot be reached (%s); the parts start without it: "
                             "status over the bus and the stream-state table are off until the "
                             "server is restarted", safe_url(self.bus.url), exc)
            else:
                self.bus.serve(STATUS_ADDRESS, lambda _request: self.status())
                for driver in self.drivers:
                    driver.start()
        for part in self.parts:
            part.thread = threading.Thread(target=self._run, args=(part,), name=f"winchester-{part.name}",
                                           daemon=True)
            part.thread.start()
            logger.info("started %s", part.name)

    def _run(self, part: Part) -> None:
        try:
            part.run()
        except BaseException as exc:  # noqa: BLE001 - one part failing stops the server, loudly
            part.failure = exc
            logger.critical("%s stopped with %s: %s; stopping the server", part.name,
                            type(exc).__name__, exc, exc_info=True)
            self.stop()

    def wait_ready(self, timeout: float = 30.0) -> bool:
        deadline = threading.Event()
        for _ in range(int(timeout * 10)):
            if all(part.ready() for part in self.parts) or self._stopping.is_set():
                return all(part.ready() for part in self.parts)
            deadline.wait(0.1)
        return False

    def stop(self) -> None:
        """Ask the server to stop (signal-safe); :meth:`wait` does the stopping, in order."""
        self._stopping.set()

    def not_ready(self) -> list[str]:
        return [part.name for part in self.parts if not part.ready()]

    def wait(self) -> None:
        """Block until asked to stop, then stop the parts one after another and join them.

        Intake stops (and commits what it holds) before the worker is told to
        stop, so nothing taken in is left waiting for a worker that is gone.
        """
        while not self._stopping.wait(0.5):
            pass
        alive = False
        for name in STOP_ORDER:
            for part in self.parts:
                if part.name != name:
                    continue
                part.stop()
                if part.thread is not None:
                    part.thread.join(60)
                    if part.thread.is_alive():
                        alive = True
                        logger.error("%s did not stop within 60s", part.name)
        for driver in self.drivers:
            driver.stop()
        if self.bus is not None:
            self.bus.close()
        if not alive:  # a part still running may be using its store
            for store in self.stores:
                store.close()

    def status(self) -> dict[str, Any]:
        """What ``winchester.status`` answers on the bus: each part, alive and ready."""
        return {"parts": {part.name: {"alive": bool(part.thread and part.thread.is_alive()),
                                      "ready": bool(part.ready()),
                                      "failure": None if part.failure is None else str(part.failure)}
                          for part in self.parts},
                "stopping": self._stopping.is_set()}

    @property
    def failures(self) -> list[tuple[str, BaseException]]:
        return [(part.name, part.failure) for part in self.parts if part.failure is not None]


def build_server(settings: Any, triggers: Any, pipelines: Any, distiller: Any, open_store: Callable[[], Store],
                 parts: Iterable[str], clock: Clock | str | None = None, *, host: str | None = None,
                 port: int | None = None, worker_name: str = "serve") -> Server:
    """Assemble the requested parts; each gets its own store (connection pool).

    ``clock`` is ``wall`` or ``event`` (None: the ``clock`` setting), each part
    then reading its own clock (event time shared through the store); or one
    clock object for every part (tests).
    """
    from datetime import timedelta

    from winchester.clock import clock_from_settings

    from winchester.bus import Bus

    def clock_for(part_store: Store) -> Clock:
        if clock is None or isinstance(clock, str):
            return clock_from_settings(settings, part_store, clock)
        return clock

    grace = timedelta(seconds=settings.late_event_grace)
    server = Server(clock_for=clock_for)
    server.bus = Bus(settings.bus_url, name=BUS_NAME)
    from winchester.metrics import Metrics

    server.metrics = metrics = Metrics()
    metrics.watch_bus(server.bus)
    wanted = list(parts)
    unknown = [name for name in wanted if name not in PARTS]
    if unknown:
        raise ValueError(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")

    # Before anything is opened: a port in use is the commonest reason not to start.
    listener = None
    if "api" in wanted:
        listener = listen(host if host is not None else settings.api.host,
                          port if port is not None else settings.api.port)
    try:
        _add_parts(server, settings, triggers, pipelines, distiller, open_store, wanted,
                   clock_for, grace, worker_name, listener)
    except BaseException:
        if listener is not None:
            listener.close()
        for opened in server.stores:
            opened.close()
        raise
    return server


def _add_parts(server: Server, settings: Any, triggers: Any, pipelines: Any, distiller: Any,
               open_store: Callable[[], Store], wanted: list[str], clock_for: Callable[[Store], Clock],
               grace: Any, worker_name: str, listener: socket.socket | None) -> None:
    from winchester.services.ingest import Ingester
    from winchester.services.intake import DirectIntake, IngestService, Persistor
    from winchester.services.worker import build_worker

    from winchester.bus import PollingDataSourceDriver

    metrics = server.metrics

    def store() -> Store:
        opened = open_store()
        server.stores.append(opened)
        return opened

    class StreamStates(PollingDataSourceDriver):
        """Streams by state, for dashboards and other parts listening on the bus."""

        def __init__(self, bus: Any, store: Store, interval: float):
            super().__init__(bus, STREAMS_TABLE, interval=interval, name="stream-states")
            self.store = store

        def poll(self) -> dict[str, Any]:
            return {state: {"streams": count} for state, count in self.store.count_streams_by_state().items()}

    states_store = store()
    server.drivers.append(StreamStates(server.bus, states_store, settings.statistics_period))
    metrics.watch_store(states_store)
    # Whatever keeps per-trigger counts: the ingesters, and the worker for generated events.
    counted: list[Any] = []
    if "worker" in wanted:
        worker_store = store()
        worker = build_worker(settings, worker_store, triggers, pipelines, name=worker_name,
                              clock=clock_for(worker_store))
        counted.append(worker)
        metrics.watch_worker(worker)
        metrics.watch_clock(worker.clock, "worker")
        server.add(Part("worker", worker.run, worker.stop))
    if "persistor" in wanted:
        persistor = Persistor(settings.bus_url, settings.intake, settings.persistor, store(),
                              retention=settings.archive_retention)
        metrics.watch_persistor(persistor)
        server.add(Part("persistor", persistor.run, persistor.stop, persistor.consumer.ready.is_set))
    if "ingest" in wanted:
        ingest_store = store()
        ingester = Ingester(ingest_store, triggers, distiller, clock_for(ingest_store), grace)
        counted.append(ingester)
        service = IngestService(settings.bus_url, settings.intake, ingester)
        metrics.watch_ingester(ingester, "ingest")
        metrics.watch_consumer(service.consumer, "ingest")
        server.add(Part("ingest", service.run, service.stop, service.consumer.ready.is_set))
    if "api" in wanted:
        import uvicorn

        from winchester.api import create_app

        api_store = store()
        # With the persistor running, it archives what the broker brings; the
        # HTTP intake archives what it takes itself, so the archive stays complete.
        http_ingester = Ingester(api_store, triggers, distiller, clock_for(api_store), grace)
        counted.append(http_ingester)
        metrics.watch_ingester(http_ingester, "http")
        intake = DirectIntake(http_ingester, api_store)
        bus = server.bus

        def bus_problem() -> str | None:
            # A round trip to our own status address: the broker carried it both ways.
            if not bus.running:
                return "the bus is not running"
            try:
                bus.request(bus.address, None, timeout=2.0)
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                return f"no answer over the bus: {type(exc).__name__}: {exc}"
            return None

        app = create_app(api_store, intake, tokens=settings.api.tokens, triggers=triggers,
                         protect_reads=settings.api.protect_reads, clock=clock_for(api_store),
                         checks={"bus": bus_problem},
                         counters=lambda: trigger_counters(counted), metrics=metrics)
        assert listener is not None  # bound by build_server whenever the API is wanted
        bound_host, bound_port = listener.getsockname()[:2]
        config = uvicorn.Config(app, host=bound_host, port=bound_port, log_level="warning",
                                lifespan="off")
        http = uvicorn.Server(config)

        def stop_http() -> None:
            http.should_exit = True

        def serve_http() -> None:
            try:
                http.run(sockets=[listener])
            finally:
                listener.close()

        server.add(Part("api", serve_http, stop_http, lambda: http.started))
        server.http = http  # type: ignore[attr-defined]


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host``:``port`` for the API; WinchesterError naming the
    address and the settings when it cannot be had (most often: the port is taken)."""
    # As uvicorn binds: IPv6 for an address with a colon, else IPv4 (so "localhost"
    # is 127.0.0.1, whatever /etc/hosts lists first).
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(2048)  # uvicorn's default backlog
    except OSError as exc:
        listener.close()
        taken = exc.errno == errno.EADDRINUSE
        raise WinchesterError(
            f"the API cannot listen on {host}:{port}: {exc.strerror or exc}"
            + ("; another process has that port (a second `winchester serve`?): stop it, or "
               "choose another with api.port (or --port)" if taken else
               "; check api.host and api.port (or --host and --port)")) from None
    return listener


def trigger_counters(counted: Iterable[Any]) -> dict[str, dict[str, int]]:
    """Per trigger, what this process counted since start (the original's debugger).

    ``counted``: ingesters, and workers (what their pipelines' generated
    events matched and opened); each has ``stats.matched``, ``new_streams``
    and ``ready``.
    """
    found: dict[str, dict[str, int]] = {}
    for source in counted:
        stats = source.stats
        for name in set(stats.matched) | set(stats.new_streams) | set(stats.ready):
            entry = found.setdefault(name, {"matched": 0, "new_streams": 0, "ready_to_fire": 0})
            entry["matched"] += stats.matched[name]
            entry["new_streams"] += stats.new_streams[name]
            entry["ready_to_fire"] += stats.ready[name]
    return found
