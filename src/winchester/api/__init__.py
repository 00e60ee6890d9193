"""The HTTP API (FastAPI): intake of notifications and health, growing into the query API.

Build it with :func:`create_app` from the parts it serves; ``winchester
serve`` runs it with uvicorn.
"""

from winchester.api._app import create_app

__all__ = ["create_app"]
