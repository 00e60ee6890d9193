"""Options shared by several subcommands."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

import click

from winchester.events import to_naive_utc

CONFIG_ENV = "WINCHESTER_CONFIG"
# Stream ids are 64-bit integers on every store; a larger one is a usage error, not an overflow.
STREAM_ID = click.IntRange(1, 2**63 - 1)


def trait_filters(filters: tuple[str, ...]) -> str | None:
    """Repeated ``-t NAME:VALUE`` options as the API's traits parameter. Each ends with ``;``:
    without one, the API would split a lone filter's value at its commas (klugman's form)."""
    return "".join(f"{text};" for text in filters) or None

config_option = click.option(
    "-c", "--config", "config_file",
    envvar=CONFIG_ENV, show_envvar=True, default="winchester.yaml", show_default=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="Path to winchester.yaml; relative file names in it are looked up via config_path.",
)


metrics_port_option = click.option(
    "--metrics-port", type=click.IntRange(1, 65535), metavar="PORT",
    help="Serve Prometheus metrics at http://<api.host>:PORT/metrics (no token: keep the port "
         "to your monitoring network).")


def start_metrics(port: int | None, host: str, watch: Callable[[object], None]) -> None:
    """With a port: a Metrics for this process, ``watch(metrics)`` adding its sources, served."""
    if port is None:
        return
    from winchester.metrics import Metrics

    metrics = Metrics()
    watch(metrics)
    try:
        metrics.serve(port, host)
    except OSError as exc:
        raise click.UsageError(f"--metrics-port {port}: cannot listen on {host}:{port}: {exc}") from None


def utc_timestamp(_ctx, _param, value: str | None) -> datetime | None:
    """Click callback: an ISO 8601 timestamp (offsets converted) as naive UTC."""
    if value is None:
        return None
    try:
        return to_naive_utc(datetime.fromisoformat(value.strip()))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 timestamp "
                                 "(e.g. 2015-02-04T00:00:00 or 2015-02-04 00:00:00Z)") from None


@contextmanager
def stopped_by_signals(stop: Callable[[], object]) -> Iterator[None]:
    """SIGTERM and SIGINT call ``stop`` (a graceful stop) while inside; the old handlers come back after."""
    previous = {sig: signal.signal(sig, lambda *_: stop()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
