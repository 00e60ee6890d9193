"""Bus URLs and the kombu connections made from them."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from kombu import Connection
from kombu.utils.url import maybe_sanitize_url

from winchester.bus import _memory

MEMORY_SCHEME = "memory"
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
# Short, because it bounds how stale a reply or a delivery can be on memory://,
# where there is no socket to wait on; a poll is a few dictionary look-ups.
MEMORY_POLLING_INTERVAL = 0.01
# Consumers need heartbeats to notice a broker that vanished without closing
# the socket; the publisher is not drained, so it goes without and relies on
# publish retries instead.
CONSUMER_HEARTBEAT = 30


def check_url(url: Any) -> str:
    """``url`` if the bus can use it; the error never repeats it (it may hold a password)."""
    if not isinstance(url, str) or not url:
        raise TypeError("the bus url must be a non-empty string such as memory:// or "
                        "amqp://user:password@host:5672//")
    scheme = urlsplit(url).scheme
    if scheme != MEMORY_SCHEME and scheme not in AMQP_SCHEMES:
        known = ", ".join(f"{s}://" for s in (MEMORY_SCHEME, *AMQP_SCHEMES))
        raise ValueError(f"the bus url must start with one of {known}; its scheme is {scheme!r}")
    return url


def safe_url(url: str) -> str:
    """``url`` with its password masked, for messages and logs."""
    return maybe_sanitize_url(url)


def is_memory(url: str) -> bool:
    return urlsplit(url).scheme == MEMORY_SCHEME


def open_connection(url: str, *, connect_timeout: float, consumer: bool) -> Connection:
    """A new, not yet connected, kombu connection for one thread's use."""
    if is_memory(url):
        return Connection(url, transport=_memory.Transport,
                          transport_options={"polling_interval": MEMORY_POLLING_INTERVAL})
    return Connection(url, connect_timeout=connect_timeout,
                      heartbeat=CONSUMER_HEARTBEAT if consumer else 0,
                      transport_options={"confirm_publish": not consumer})
