"""The dashboard: server-rendered pages at / (being built)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from fastapi import APIRouter


def build_dashboard(store: Any, triggers: Any, *, now: Callable[[], datetime],
                    read_guard: Callable[..., None], write_guard: Callable[..., None],
                    tokens: tuple[str, ...] = (),
                    counters: Callable[[], Mapping[str, Mapping[str, int]]] | None = None) -> APIRouter:
    return APIRouter()
