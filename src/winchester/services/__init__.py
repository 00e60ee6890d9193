"""The long-running parts: ingest, intake, replay, worker and the persistor."""

from __future__ import annotations

import gc

# CPython's default collects the youngest generation every 700 net allocations.
YOUNG_COLLECTION_THRESHOLD = 50_000


def tune_garbage_collection() -> None:
    """Run the cycle collector less often, in a command about to read a file of notifications.

    Ingest allocates and frees (by reference counting) millions of small
    dicts and tuples; at CPython's default thresholds the collector scanned
    them every few events, 5% of `ingest-file`'s time (bench/ingest.py),
    whose memory stays flat either way. Not for the services reading the
    bus: their AMQP messages leave cycles, and collecting less often kept
    20 MB more in each ingest process of bench/soak.py for no gain in rate.
    """
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)
