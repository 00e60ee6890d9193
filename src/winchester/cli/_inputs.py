"""Reading notification captures: JSON lines, plain or gzip, from a file or stdin."""

from __future__ import annotations

import gzip
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import click


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


def numbered_lines(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines with their 1-based line numbers."""
    for number, line in enumerate(stream, 1):
        if line.strip():
            yield number, line
