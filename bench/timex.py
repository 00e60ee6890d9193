"""Evaluations per second of compiled time expressions, and the uncached parse rate.

Run with ``python bench/timex.py``. Uses the installed ``winchester`` package,
or the source tree next to this file when it is not installed. Each figure
is the best of several runs, to hide scheduler noise.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

try:
    from winchester import timex
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from winchester import timex

REPEATS = 5
TARGET_SECONDS_PER_RUN = 0.2
REQUIRED_RATE = 300_000  # evaluations/s of '$last + 1h' that stream expiry needs

FIRST = datetime(2014, 8, 1, 1, 0)
LAST = datetime(2014, 8, 5, 3, 30)
VARIABLES = {"first": FIRST, "last": LAST, "timestamp": LAST}


def rate(action: Callable[[], object]) -> float:
    """Best calls/second of ``action`` over REPEATS timed runs."""
    loops = 1
    while True:  # size a run so the clock's resolution does not matter
        started = time.perf_counter()
        for _ in range(loops):
            action()
        elapsed = time.perf_counter() - started
        if elapsed >= TARGET_SECONDS_PER_RUN / 10:
            break
        loops *= 4
    loops = max(1, int(loops * TARGET_SECONDS_PER_RUN / elapsed))
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        for _ in range(loops):
            action()
        best = min(best, time.perf_counter() - started)
    return loops / best


def cases() -> list[tuple[str, Callable[[], object]]]:
    last_plus_hour = timex.parse("$last + 1h")
    whole_day = timex.parse("day($timestamp)")
    next_midnight = timex.parse("($timestamp + 1d) @ 0h 0m 0s")
    window = timex.parse("$first + 2d to $last")
    uncached_parse = timex.parse.__wrapped__
    return [
        ("$last + 1h  (call)", lambda: last_plus_hour(first=FIRST, last=LAST)),
        ("$last + 1h  (evaluate)", lambda: last_plus_hour.evaluate(VARIABLES)),
        ("day($timestamp)", lambda: whole_day(timestamp=LAST)),
        ("($timestamp + 1d) @ 0h 0m 0s", lambda: next_midnight(timestamp=LAST)),
        ("$first + 2d to $last", lambda: window(first=FIRST, last=LAST)),
        (
            "parse, uncached: ($timestamp + 1d) @ 0h 0m 0s",
            lambda: uncached_parse("($timestamp + 1d) @ 0h 0m 0s"),
        ),
    ]


def main() -> int:
    results = [(name, rate(action)) for name, action in cases()]
    width = max(len(name) for name, _ in results)
    print(f"{'case':<{width}}  {'per second':>12}  {'us each':>8}")
    for name, per_second in results:
        print(f"{name:<{width}}  {per_second:>12,.0f}  {1e6 / per_second:>8.2f}")
    call_rate = results[0][1]
    verdict = "ok" if call_rate >= REQUIRED_RATE else "TOO SLOW"
    print(f"\n'$last + 1h' via call: {call_rate:,.0f}/s, required {REQUIRED_RATE:,}/s: {verdict}")
    return 0 if call_rate >= REQUIRED_RATE else 1


if __name__ == "__main__":
    sys.exit(main())
