from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError

from winchester import __version__
from winchester._json import dumps_received
from winchester.services.intake import DirectIntake
from winchester.store import Store, StoreError

logger = logging.getLogger(__name__)

# The cookie the dashboard's sign-in sets (see require_token).
TOKEN_COOKIE = "winchester_token"
# A request body larger than this is refused (413) before it is parsed.
MAX_BODY_BYTES = 64 * 2**20
MAX_NOTIFICATIONS = 10_000


def create_app(store: Store, intake: DirectIntake | None = None,
               tokens: Sequence[str] = (), *, triggers: Any = None, protect_reads: bool = False,
               clock: Any = None, checks: Mapping[str, Callable[[], str | None]] | None = None,
               counters: Callable[[], Mapping[str, Mapping[str, int]]] | None = None,
               metrics: Any = None) -> FastAPI:
    """The API over ``store``; ``intake`` enables ``POST /v1/notifications``.

    With ``tokens``, writes need ``Authorization: Bearer <token>``, and with
    ``protect_reads`` reads too. ``triggers`` (the definitions) enables the
    query API and explain; ``clock`` is what "now" is for explain (expiry
    times); ``checks`` are extra health checks (name -> None or the problem,
    e.g. the bus); ``counters`` gives this process's per-trigger counters.
    ``metrics`` (a :class:`winchester.metrics.Metrics`) is what ``/metrics``
    serves; without it, the database's figures alone.
    """
    app = FastAPI(title="Winchester", version=__version__,
                  description="OpenStack notifications in, decisions out, through persistent streams.")
    app.state.unauthorised = 0
    allowed = [token.encode() for token in tokens]

    def require_token(request: Request) -> None:
        if not allowed:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" and TOKEN_COOKIE in request.cookies:
            # The dashboard's sign-in keeps the token in a SameSite=Strict,
            # HttpOnly cookie: browsers cannot add headers to page loads (and
            # one behind a proxy's Basic auth sends that header on every request).
            scheme, token = "bearer", request.cookies.get(TOKEN_COOKIE, "")
        # Every token is compared (in constant time each), so timing says nothing about which.
        matches = [hmac.compare_digest(token.encode(), t) for t in allowed]
        if scheme.lower() != "bearer" or not any(matches):
            app.state.unauthorised += 1
            raise HTTPException(401, "a valid 'Authorization: Bearer <token>' header is required",
                                headers={"WWW-Authenticate": "Bearer"})

    def require_token_for_reads(request: Request) -> None:
        if protect_reads:
            require_token(request)

    app.state.require_token = require_token
    app.state.require_token_for_reads = require_token_for_reads
    extra_checks = dict(checks or {})
    if metrics is None:
        from winchester.metrics import Metrics

        metrics = Metrics()
        metrics.watch_store(store)
    metrics.watch_unauthorised(lambda: app.state.unauthorised)
    app.state.metrics = metrics

    @app.get("/metrics", tags=["operations"], dependencies=[Depends(require_token_for_reads)],
             response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus metrics of this process (and the database's streams by trigger and state)."""
        body, content_type = await run_in_threadpool(metrics.exposition)
        return Response(body, media_type=content_type)

    @app.get("/healthz", tags=["operations"])
    def health() -> JSONResponse:
        """Whether the database (and the bus, when there is one) answers."""
        report: dict[str, Any] = {"status": "ok", "version": __version__}
        try:
            store.count_streams_by_state()
            report["database"] = "ok"
        except (StoreError, SQLAlchemyError) as exc:
            report.update(status="unavailable", database=str(exc))
        for name, check in extra_checks.items():
            try:
                problem = check()
            except Exception as exc:  # noqa: BLE001 - a failing check is a finding, not a crash
                problem = f"{type(exc).__name__}: {exc}"
            report[name] = problem or "ok"
            if problem:
                report["status"] = "unavailable"
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    if triggers is not None:
        from winchester.api._v1 import build_router
        from winchester.clock import WallClock

        reading_clock = clock or WallClock()

        def now():
            reading_clock.refresh()
            return reading_clock.now()

        app.include_router(build_router(store, triggers, read_guard=require_token_for_reads,
                                        write_guard=require_token, now=now, counters=counters))

        from winchester.api._dashboard import build_dashboard

        app.include_router(build_dashboard(
            store, triggers, now=now, read_guard=require_token_for_reads, write_guard=require_token,
            tokens=tuple(tokens), counters=counters))

    @app.post("/v1/notifications", tags=["intake"], dependencies=[Depends(require_token)])
    async def post_notifications(request: Request) -> dict[str, Any]:
        """Ingest notifications: a JSON object, a JSON array of them, or JSON lines.

        Everything is stored (archived, and turned into events) before the
        answer, which counts what was accepted, duplicate (already stored),
        unconverted (no event definition) and rejected (with each
        rejection's index and reason; rejected ones are kept as dead letters).
        """
        if intake is None:
            raise HTTPException(404, "this server does not take notifications")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise HTTPException(413, f"request body over {MAX_BODY_BYTES} bytes")
        # Counted as it arrives: a chunked upload has no Content-Length to check first.
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise HTTPException(413, f"request body over {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        bodies = split_notifications(body)
        if len(bodies) > MAX_NOTIFICATIONS:
            raise HTTPException(413, f"{len(bodies)} notifications in one request; at most "
                                     f"{MAX_NOTIFICATIONS} are taken")
        if not bodies:
            raise HTTPException(400, "the body holds no notification (send a JSON object, an array "
                                     "of them, or JSON lines)")
        try:
            return await run_in_threadpool(intake.accept, bodies)
        except StoreError as exc:
            logger.error("HTTP intake could not store %d notification(s): %s", len(bodies), exc)
            raise HTTPException(503, f"the store is unavailable and the notifications may not all be "
                                     f"stored; post them again (duplicates are recognised): {exc}") from None

    return app


def split_notifications(body: bytes) -> list[Any]:
    """A JSON object -> [it]; an array -> its items; otherwise one item per non-empty line.

    Items that are not valid JSON are passed on as raw bytes, to be rejected
    (and dead-lettered) with the reason like any other bad notification.
    """
    stripped = body.strip()
    if not stripped:
        return []
    try:
        parsed = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        return [line for line in (raw.strip() for raw in stripped.split(b"\n")) if line]
    items = parsed if isinstance(parsed, list) else [parsed]
    # Anything but an object goes on as its own JSON text: a string must not
    # be decoded a second time (a JSON string holding an object is not a
    # notification), and the rejection then names what was actually sent.
    return [item if isinstance(item, dict) else dumps_received(item) for item in items]
