"""Trigger matches per second: the usage_audit trigger of etc/triggers.yaml on nova events.

Run with ``python bench/triggers.py``. Each event goes through what ingest
does per trigger: ``match``, then the stream key and the fire increments of
a match. The mix is a day of a busy compute cell: mostly updates and other
lifecycle events, audit records, and types the trigger does not take.
Figures are the best of several runs, to hide scheduler noise.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

try:
    import _common  # noqa: F401  (puts src/ on sys.path when not installed)
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from winchester._yaml import parse_yaml
from winchester.triggers import load_triggers

ROOT = Path(__file__).resolve().parents[1]
REPEATS = 5
REQUIRED_RATE = 20_000  # events/s per trigger that ingest needs

START = datetime(2014, 8, 1, 0, 0)


def events() -> list[dict]:
    """1,000 events: the instance, day and type vary as in real traffic."""
    kinds = (
        ["compute.instance.update"] * 50
        + ["compute.instance.create.start", "compute.instance.create.end",
           "compute.instance.resize.start", "compute.instance.resize.end",
           "compute.instance.power_off.end", "compute.instance.delete.end"] * 3
        + ["compute.instance.exists"] * 12
        + ["compute.instance.exists.verified", "scheduler.select_destinations.end",
           "image.upload", "volume.create.end", "network.create.end", "port.update.end"] * 2
    )
    made = []
    for number in range(1000):
        kind = kinds[number % len(kinds)]
        timestamp = START + timedelta(seconds=number * 173)
        event = {
            "message_id": f"m-{number}",
            "event_type": kind,
            "timestamp": timestamp,
            "instance_id": f"i-{number % 97}",
            "tenant_id": f"t-{number % 13}",
            "memory_mb": 512 * (1 + number % 8),
            "state": "active",
        }
        if kind == "compute.instance.exists":
            day = datetime(timestamp.year, timestamp.month, timestamp.day)
            # One in four is a mid-day audit (a resize), the rest end-of-day.
            beginning = day - timedelta(days=1)
            ending = day if number % 4 else day - timedelta(hours=7)
            event["audit_period_beginning"] = beginning
            event["audit_period_ending"] = ending
        made.append(event)
    return made


def main() -> int:
    path = ROOT / "etc" / "triggers.yaml"
    data, _ = parse_yaml(path.read_text(), str(path))
    trigger = load_triggers(data, str(path)).by_name["usage_audit"]
    sample = events()

    def run() -> int:
        matched = 0
        for event in sample:
            found = trigger.match(event)
            if found is not None:
                found.key  # noqa: B018 - computing it is the point
                found.fire_increments  # noqa: B018
                matched += 1
        return matched

    matched = run()
    loops = 20
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        for _ in range(loops):
            run()
        best = min(best, time.perf_counter() - started)
    per_second = loops * len(sample) / best
    match_only = min(_time(lambda: [trigger.match(e) for e in sample], loops)
                     for _ in range(REPEATS))
    print(f"events: {len(sample)} per run, {matched} matched usage_audit")
    print(f"match only:                  {loops * len(sample) / match_only:>12,.0f} events/s")
    print(f"match + key + increments:    {per_second:>12,.0f} events/s")
    verdict = "ok" if per_second >= REQUIRED_RATE else "TOO SLOW"
    print(f"required {REQUIRED_RATE:,}/s per trigger: {verdict}")
    return 0 if per_second >= REQUIRED_RATE else 1


def _time(action, loops: int) -> float:
    started = time.perf_counter()
    for _ in range(loops):
        action()
    return time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
