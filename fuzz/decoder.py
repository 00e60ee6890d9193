"""Coverage-guided fuzzing of the notification decoder with atheris (not part of CI).

Whatever bytes a broker or an HTTP client hands Winchester, decoding them
must end in one of three ways: an event that round-trips through the store's
JSON form, "no definition" (None), or NotificationRejected with one of the
documented reasons. Anything else (another exception, a NUL in a text trait,
a non-finite float) is a crash, and atheris keeps the input that caused it.
Each input goes through the persistor's archive row too, which must never
raise, and through the distillers of the example definitions, Ceilometer's
definitions (from ../shared/data/real, when present) and the catch-all.

    pip install -e '.[fuzz]'
    python fuzz/decoder.py                      # until stopped, seeded from the real samples
    python fuzz/decoder.py -runs=200000         # a bounded run; any libFuzzer flag works
    python fuzz/decoder.py -max_total_time=600 my-corpus/

With no corpus directory given, a temporary one is seeded with the sample
notifications under ../shared/data/real (legacy JSON lines, oslo wire
samples, nova's versioned samples) and a built-in notification.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("WINCHESTER_REAL_DATA", ROOT.parent / "shared" / "data" / "real"))

import orjson

from winchester._yaml import parse_yaml
from winchester.distill import Distiller, NotificationRejected, available_plugins, load_definitions
from winchester.events import dumps_event, loads_event, make_event
from winchester.services.intake import archive_row

REASONS = {"not_json", "not_an_object", "bad_envelope", "no_event_type", "no_message_id",
           "no_timestamp", "bad_timestamp", "bad_identifier"}
BUILT_IN = orjson.dumps({
    "event_type": "compute.instance.update", "message_id": "m-1",
    "timestamp": "2014-08-01 01:00:00.123456", "publisher_id": "compute.host-1",
    "_context_request_id": "req-1",
    "payload": {"instance_id": "i-1", "tenant_id": "t-1", "memory_mb": 512, "state": "active",
                "launched_at": "2014-07-31T23:00:00Z", "deleted_at": ""}})


def _distillers() -> list[Distiller]:
    plugins, _ = available_plugins()
    sources = [ROOT / "etc" / "event_definitions.yaml", REAL / "ceilometer" / "event_definitions.yaml"]
    found = []
    for path in sources:
        if path.is_file():
            data, _ = parse_yaml(path.read_text(encoding="utf-8"), path.name)
            found.append(Distiller(load_definitions(data, path.name, plugins), catch_all=True))
    return found


DISTILLERS = _distillers()
# Dropped traits are logged as warnings: millions of lines, and slower runs.
logging.disable(logging.CRITICAL)
NOW = datetime(2026, 1, 1)


def check_event(event: dict) -> None:
    assert make_event(event) == event
    assert loads_event(dumps_event(event)) == event
    for name, value in event.items():
        if isinstance(value, float):
            assert math.isfinite(value), name
        elif isinstance(value, str):
            assert "\x00" not in value, name


def check_input(data: bytes) -> None:
    row = archive_row(data, NOW)
    assert row["body"] == data and row["status"] in ("archived", "rejected"), row
    for distiller in DISTILLERS:
        try:
            event = distiller.distill_raw(data)
        except NotificationRejected as rejection:
            assert rejection.reason in REASONS, rejection.reason
            continue
        if event is not None:
            check_event(event)


def _samples() -> list[bytes]:
    """The real notifications of ../shared/data/real, as a broker would deliver them."""
    found = [BUILT_IN]
    documents = []
    for path in sorted(REAL.glob("legacy/*.jsonl")):
        if path.name.startswith("golden_"):  # distiller output, not notifications
            continue
        for line in path.read_bytes().splitlines():
            if line.strip():
                row = orjson.loads(line)
                documents.append(row.get("notification", row))
    for path in sorted(REAL.glob("nova_versioned/**/*.json")):
        documents.append(orjson.loads(path.read_bytes()))
    for number, document in enumerate(documents):
        if isinstance(document, dict):
            # Documentation samples leave out what the notifier adds on the wire.
            document.setdefault("message_id", f"seed-{number}")
            document.setdefault("timestamp", "2015-02-01 00:00:00.000000")
        found.append(orjson.dumps(document))
    wire = REAL / "oslo_wire_samples.jsonl"
    if wire.is_file():  # whole oslo.messaging envelopes, as they are
        found += [line for line in wire.read_bytes().splitlines() if line.strip()]
    return found


def seed_corpus(directory: Path) -> int:
    samples = _samples()
    for number, sample in enumerate(samples):
        (directory / f"seed-{number:05d}").write_bytes(sample)
    return len(samples)


def main() -> None:
    arguments = list(sys.argv)
    if not any(not argument.startswith("-") for argument in arguments[1:]):
        corpus = Path(tempfile.mkdtemp(prefix="winchester-fuzz-decoder-"))
        count = seed_corpus(corpus)
        print(f"seeded {corpus} with {count} sample notifications", file=sys.stderr)
        arguments.append(str(corpus))
    # Every function loaded so far, Winchester's included: an editable install
    # imports through a loader that atheris.instrument_imports() cannot see into.
    atheris.instrument_all()
    atheris.Setup(arguments, check_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
