"""JSON writing that never refuses what was read.

orjson reads documents nested up to 1024 levels but writes at most 255, so a
notification that was decoded fine can fail to be written back (archived,
dead-lettered, exported). Everything that writes back a received document goes
through here and falls back to the standard library, which has no such limit
below Python's recursion limit.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import orjson


_deep_writing = threading.Lock()


def dumps_received(value: Any, option: int | None = None) -> bytes:
    """``value`` (decoded from JSON, or holding datetimes) as compact JSON bytes.

    Values orjson cannot write (too deep, an int past 64 bits) are written by
    the standard library; objects neither knows become their ``str``.
    """
    try:
        return orjson.dumps(value, default=str, option=option)
    except TypeError:
        pass
    # The recursion limit is the process's: one thread at a time raises and restores it.
    with _deep_writing:
        limit = sys.getrecursionlimit()
        try:
            # orjson's reader accepts 1024 levels; the standard writer needs a
            # few frames per level.
            sys.setrecursionlimit(max(limit, 5000))
            return json.dumps(value, default=str, ensure_ascii=False,
                              separators=(",", ":")).encode("utf-8", "surrogatepass")
        except (RecursionError, ValueError):
            # Past even that (a self-referencing object, never decoded JSON):
            # its repr, so the bytes are kept rather than lost.
            return repr(value).encode("utf-8", "surrogatepass")
        finally:
            sys.setrecursionlimit(limit)


def body_bytes(body: Any) -> bytes:
    """A notification body as the bytes to keep: raw bytes as they came, text as UTF-8,
    anything decoded as JSON."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8", "surrogatepass")
    return dumps_received(body)
