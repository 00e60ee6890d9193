"""The long-running parts: ingest, intake, replay, worker and the persistor."""

from __future__ import annotations

import gc

# CPython's default collects the youngest generation every 700 net allocations.
YOUNG_COLLECTION_THRESHOLD = 50_000


def tune_garbage_collection() -> None:
    """Run the cycle collector less often, in a process about to stream notifications.

    Ingest allocates and frees (by reference counting) millions of small
    dicts and tuples; at CPython's default thresholds the collector scanned
    them every few events, 5% of ingest time (bench/ingest.py). Winchester
    makes almost no reference cycles, so collecting less often leaves memory
    flat (the bench's RSS columns).
    """
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)
