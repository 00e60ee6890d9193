"""Reading notification captures: JSON lines, plain or gzip, from a file or stdin."""

from __future__ import annotations

import gzip
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import click
import orjson

from winchester.errors import InputError


@contextmanager
def open_lines(source: str) -> Iterator[BinaryIO]:
    """Open ``source`` (a path, or ``-`` for stdin) for reading bytes, un-gzipping if needed."""
    if source == "-":
        yield sys.stdin.buffer
        return
    try:
        raw = open(source, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise click.BadParameter(f"{source}: {exc.strerror}", param_hint="FILE") from None
    try:
        if raw.read(2) == b"\x1f\x8b":
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw) as unzipped:
                yield unzipped  # type: ignore[misc]
        else:
            raw.seek(0)
            yield raw
    finally:
        raw.close()


def numbered_lines(stream: BinaryIO, name: str = "-") -> Iterator[tuple[int, bytes]]:
    """Non-blank lines with their 1-based line numbers.

    A stream that breaks off (a gzip file cut short or damaged, a read error)
    raises InputError naming ``name`` and the last good line, after every
    line before it was yielded: those are good and worth keeping.
    """
    number = 0
    lines = iter(stream)
    while True:
        try:
            line = next(lines)
        except StopIteration:
            return
        except (EOFError, OSError, zlib.error) as exc:
            # gzip raises EOFError for a file cut short, BadGzipFile (an
            # OSError) or zlib.error for damaged data.
            reason = str(exc) or type(exc).__name__
            raise InputError(f"{name}: cannot be read past line {number:,} ({reason}): the file is "
                             "truncated or damaged; the lines before it were read") from None
        number += 1
        # isspace() stops at the first visible byte; strip() would copy the line.
        if line and not line.isspace():
            yield number, line


CAPTURE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz")


def capture_files(source: str) -> list[Path]:
    """The files a capture ``source`` names: itself, or for a directory every capture file
    below it (``*.jsonl``, ``*.jsonl.gz``, ``*.ndjson``...), in path order."""
    path = Path(source)
    if not path.is_dir():
        return [path]
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(CAPTURE_SUFFIXES))
    if not found:
        raise click.BadParameter(f"{source}: no capture files in this directory (looked for "
                                 f"{', '.join('*' + s for s in CAPTURE_SUFFIXES)})",
                                 param_hint="SOURCE")
    return found


def capture_bytes(source: str) -> int | None:
    """Uncompressed bytes to read, for a progress bar (None: unknown, e.g. gzip or stdin)."""
    if source == "-":
        return None
    total = 0
    for path in capture_files(source):
        try:
            with open(path, "rb") as handle:
                if handle.read(2) == b"\x1f\x8b":
                    return None
        except OSError:
            return None
        total += path.stat().st_size
    return total


def capture_lines(source: str) -> Iterator[tuple[str, int, bytes]]:
    """(file, line number, line) of every non-blank line of a capture: a file, a directory of
    them, or ``-`` for stdin."""
    files = ["-"] if source == "-" else [str(path) for path in capture_files(source)]
    for position, name in enumerate(files):
        with open_lines(name) as stream:
            try:
                for number, line in numbered_lines(stream, name):
                    yield name, number, line
            except InputError as exc:
                later = len(files) - position - 1
                if not later:
                    raise
                # Stopped rather than skipped: event time must not jump past what is missing.
                raise InputError(f"{exc}; the {later} capture file(s) after it were not read "
                                 "(mend or move it, then run again)") from None


def unwrapped(line: bytes, key: str):
    """The notification under ``key`` (captures stored with metadata, e.g. `archive export`);
    the raw line when it has none (it is then rejected, with the reason)."""
    try:
        wrapper = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    if isinstance(wrapper, dict) and key in wrapper:
        return wrapper[key]
    return line
