"""Distiller throughput: JSON bytes -> event, on one core.

Converts the StackTach nova notification sequences (the notigen templates,
rendered) with the example definitions in etc/, and again with Ceilometer 27's
full definitions file. JSON parsing (orjson) is included, as in production.

    python bench/distill.py [--count 200000]
"""

from __future__ import annotations

import argparse
import gc
import time

import orjson
from _common import ROOT, real_data_dir

from winchester._yaml import parse_yaml
from winchester.distill import Distiller, available_plugins, load_definitions


def load_bodies() -> list[bytes]:
    path = real_data_dir() / "legacy" / "notigen_rendered.jsonl"
    return [orjson.dumps(orjson.loads(line)["notification"]) for line in path.open("rb")]


def make_distiller(path) -> Distiller:
    data, _ = parse_yaml(path.read_text(), str(path))
    plugins, _ = available_plugins()
    return Distiller(load_definitions(data, str(path), plugins))


def measure(distiller: Distiller, bodies: list[bytes], count: int, rounds: int) -> float:
    batch = (bodies * (count // len(bodies) + 1))[:count]
    best = 0.0
    for _ in range(rounds):
        gc.collect()
        started = time.perf_counter()
        for body in batch:
            distiller.distill_raw(body)
        best = max(best, count / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bodies = load_bodies()
    average = sum(map(len, bodies)) / len(bodies)
    print(f"{len(bodies)} distinct nova notifications (StackTach notigen templates), "
          f"{average:,.0f} bytes on average; {args.count:,} per round, best of {args.rounds}")
    cases = [
        ("etc/event_definitions.yaml (example)", ROOT / "etc" / "event_definitions.yaml"),
        ("Ceilometer 27 event_definitions.yaml", real_data_dir() / "ceilometer" / "event_definitions.yaml"),
    ]
    print(f"{'definitions':<42}{'notifications/s':>18}{'us each':>10}")
    for label, path in cases:
        rate = measure(make_distiller(path), bodies, args.count, args.rounds)
        print(f"{label:<42}{rate:>18,.0f}{1e6 / rate:>10.1f}")


if __name__ == "__main__":
    main()
