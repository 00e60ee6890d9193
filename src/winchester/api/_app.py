from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from winchester import __version__
from winchester.services.intake import DirectIntake
from winchester.store import Store, StoreError

logger = logging.getLogger(__name__)

# A request body larger than this is refused (413) before it is parsed.
MAX_BODY_BYTES = 64 * 2**20
MAX_NOTIFICATIONS = 10_000


def create_app(store: Store, intake: DirectIntake | None = None,
               tokens: Sequence[str] = ()) -> FastAPI:
    """The API over ``store``; ``intake`` enables ``POST /v1/notifications``.

    With ``tokens``, writes need ``Authorization: Bearer <token>``.
    """
    app = FastAPI(title="Winchester", version=__version__,
                  description="OpenStack notifications in, decisions out, through persistent streams.")
    app.state.unauthorised = 0
    allowed = [token.encode() for token in tokens]

    def require_token(request: Request) -> None:
        if not allowed:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.encode(), t) for t in allowed):
            app.state.unauthorised += 1
            raise HTTPException(401, "a valid 'Authorization: Bearer <token>' header is required",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.get("/healthz", tags=["operations"])
    def health() -> JSONResponse:
        """Whether the database answers."""
        try:
            store.count_streams_by_state()
        except StoreError as exc:
            return JSONResponse({"status": "unavailable", "database": str(exc)}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok", "version": __version__})

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
    if isinstance(parsed, list):
        return parsed
    return [parsed]
