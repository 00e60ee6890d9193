"""The bus's errors, all under :class:`winchester.errors.WinchesterError`::

    WinchesterError
    └── BusError                 the bus refused or could not do something
        ├── BusClosed            the bus is not running (not started yet, or closed)
        ├── BusConnectionError   the broker could not be reached, or refused an operation
        ├── BusTimeout           no reply to a request within its timeout (also a TimeoutError)
        ├── BusRemoteError       the server's handler raised; carries its address and error
        └── DriverStopped        a data-source driver was asked to publish while stopped

Messages name the broker by its URL with the password masked.
"""

from __future__ import annotations

from winchester.errors import WinchesterError


class BusError(WinchesterError):
    """Base class of the bus's errors."""


class BusClosed(BusError):
    """The bus is not running: start it first (or use it as a context manager)."""


class BusConnectionError(BusError):
    """The broker could not be reached, or refused to declare, publish or consume."""


class BusTimeout(BusError, TimeoutError):
    """No server replied to a request within its timeout."""


class BusRemoteError(BusError):
    """The handler serving a request raised; ``server`` and ``error`` say where and what."""

    def __init__(self, address: str, server: str, error: str):
        self.address = address
        self.server = server
        self.error = error
        super().__init__(f"request to {address!r} failed on {server}: {error}")


class DriverStopped(BusError):
    """A data-source driver was asked to publish while it is stopped."""
