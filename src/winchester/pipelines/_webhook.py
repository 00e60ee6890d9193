"""``webhook``: POST a run's events as JSON to an HTTP(S) endpoint.

By default one POST per run::

    {"stream_id": 42, "stream_name": "instance_usage", "reason": "fire",
     "events": [{"message_id": "...", "event_type": "compute.instance.exists",
                 "timestamp": "2015-02-01T00:00:00Z", "instance_id": "...", ...}]}

or, with ``batch: false``, one POST per event with ``"event": {...}`` in place
of ``"events"``. Datetimes are ISO 8601 in UTC (``Z``).

Every request carries ``Idempotency-Key``: the SHA-256 (hex) of the stream id
and the message ids it holds. A stream run again (after a crash, or a failed
commit retried by an operator) sends the same key, so the receiver can drop
the duplicate.

Connection errors, timeouts, 429 and 5xx are retried with exponential backoff;
any other non-2xx answer fails at once (sending it again would not help).
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpcore
import httpx
import orjson

from winchester.distill import EventTypeMatcher
from winchester.errors import WinchesterError
from winchester.events import Event
from winchester.pipelines._handler import Handler

logger = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
# Events hold naive UTC datetimes: say so on the wire.
_JSON_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z
_EXCERPT = 200


class WebhookError(WinchesterError):
    """The endpoint did not accept a POST.

    ``url`` is the endpoint without credentials or query; ``status`` the last
    HTTP status (``None`` if no answer came); ``retried`` whether the retries
    were spent (False: the answer was one that is never retried).
    """

    def __init__(self, message: str, *, url: str, status: int | None, retried: bool):
        super().__init__(message)
        self.url = url
        self.status = status
        self.retried = retried


# --- parameter checks ----------------------------------------------------------------------

def _seconds(name: str, value: Any, *, allow_zero: bool = False) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not (value >= 0 if allow_zero else value > 0)):
        wanted = "a number of seconds >= 0" if allow_zero else "a positive number of seconds"
        raise ValueError(f"{name} must be {wanted}, not {value!r}")
    return float(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, not {value!r}")
    return value


def _header_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value or any(c in value for c in ": \t\r\n"):
        raise ValueError(f"{name} must be an HTTP header name, not {value!r}")
    return value


def _redacted(url: httpx.URL) -> str:
    """The URL as errors and logs show it: no user info, no query (tokens live there)."""
    return str(url.copy_with(username=None, password=None, query=None, fragment=None))


def _check_url(value: Any) -> httpx.URL:
    if not isinstance(value, str) or not value:
        raise TypeError(f"url must be a non-empty http:// or https:// URL, not {value!r}")
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise ValueError(f"url is not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"url must be an http:// or https:// URL with a host, "
                         f"not {_redacted(url)!r}")
    return url


class WebhookHandler(Handler):
    """POST the run's events to ``url`` on commit.

    Params:

    ``url`` (required)
        ``http://`` or ``https://``.
    ``timeout`` (10 s)
        Bounds each attempt as a whole: connecting, sending, and waiting for the
        status and headers end that long after the attempt began, and the
        answer's body is read only until then (a 2xx status already counts as
        delivered).
    ``retries`` (3) and ``backoff`` (0.5 s)
        Attempts after the first, and the wait before the first retry; each
        wait is twice the one before.
    ``headers``
        Extra request headers (a mapping of name to text).
    ``auth_header`` (``Authorization``) with ``auth_value`` or ``auth_value_env``
        A secret header. ``auth_value_env`` names the environment variable
        holding the value (``Bearer ...``), so the secret stays out of the YAML.
    ``event_types``
        Shell-glob patterns (``!glob`` excludes); only matching events are
        sent. A run with none to send posts nothing.
    ``batch`` (true)
        One POST per run; false: one POST per event.
    ``verify`` (true)
        Check the server's TLS certificate.
    """

    def __init__(self, *, url: str, timeout: float = 10.0, retries: int = 3, backoff: float = 0.5,
                 headers: Mapping[str, str] | None = None, auth_header: str | None = None,
                 auth_value: str | None = None, auth_value_env: str | None = None,
                 event_types: Sequence[str] | None = None, batch: bool = True,
                 verify: bool = True):
        super().__init__()
        self.url = _check_url(url)
        self.shown_url = _redacted(self.url)
        self.timeout = _seconds("timeout", timeout)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a whole number >= 0, not {retries!r}")
        self.retries = retries
        self.backoff = _seconds("backoff", backoff, allow_zero=True)
        self.batch = _flag("batch", batch)
        self.verify = _flag("verify", verify)
        self.headers = self._headers(headers, auth_header, auth_value, auth_value_env)
        if isinstance(event_types, str):
            event_types = [event_types]
        if event_types is not None and (
                not isinstance(event_types, Sequence)
                or not all(isinstance(p, str) and p for p in event_types)):
            raise TypeError(f"event_types must be a list of patterns, not {event_types!r}")
        self.event_types = None if event_types is None else tuple(event_types)
        self._matcher = EventTypeMatcher(list(event_types)) if event_types else None
        # (description, JSON body, idempotency key) of each POST commit() will make.
        self.pending: list[tuple[str, bytes, str]] = []

    @staticmethod
    def _headers(headers: Any, auth_header: Any, auth_value: Any,
                 auth_value_env: Any) -> dict[str, str]:
        result = {"Content-Type": "application/json", "User-Agent": "winchester-webhook"}
        if headers is not None:
            if not isinstance(headers, Mapping):
                raise TypeError(f"headers must be a mapping of header name to text, "
                                f"not {type(headers).__name__}")
            for name, value in headers.items():
                _header_name("headers", name)
                if not isinstance(value, str):
                    raise TypeError(f"headers: the value of {name!r} must be text, "
                                    f"not {type(value).__name__}")
                result[name] = value
        if auth_value is not None and auth_value_env is not None:
            raise ValueError("give auth_value or auth_value_env, not both")
        if auth_value_env is not None:
            if not isinstance(auth_value_env, str) or not auth_value_env:
                raise TypeError(f"auth_value_env must name an environment variable, "
                                f"not {auth_value_env!r}")
            auth_value = os.environ.get(auth_value_env)
            if not auth_value:
                raise ValueError(f"auth_value_env: the environment variable {auth_value_env!r} "
                                 "is not set or is empty")
        elif auth_value is not None and (not isinstance(auth_value, str) or not auth_value):
            # Never echo the value: it is a secret.
            raise TypeError("auth_value must be non-empty text")
        if auth_value is None:
            if auth_header is not None:
                raise ValueError("auth_header needs auth_value or auth_value_env")
            return result
        result[_header_name("auth_header", auth_header or "Authorization")] = auth_value
        return result

    # -- the run --------------------------------------------------------------------------

    def handle_events(self, events: list[Event], env: dict[str, Any]) -> list[Event]:
        chosen = [event for event in events
                  if self._matcher is None or self._matcher(event["event_type"])]
        stream = {"stream_id": env.get("stream_id"), "stream_name": env.get("stream_name"),
                  "reason": env.get("reason")}
        if not chosen:
            self.pending = []
        elif self.batch:
            self.pending = [(f"{len(chosen)} event(s)",
                             self._encode({**stream, "events": chosen}),
                             idempotency_key(stream["stream_id"], chosen))]
        else:
            self.pending = [(f"{event['event_type']} {event['message_id']}",
                             self._encode({**stream, "event": event}),
                             idempotency_key(stream["stream_id"], [event]))
                            for event in chosen]
        return events

    @staticmethod
    def _encode(body: dict[str, Any]) -> bytes:
        try:
            return orjson.dumps(body, option=_JSON_OPTIONS)
        except TypeError as exc:
            raise TypeError(f"the webhook body cannot be written as JSON: {exc}") from None

    def commit(self) -> None:
        pending, self.pending = self.pending, []
        if not pending:
            return
        client = _client(self.verify)
        failures: list[WebhookError] = []
        sent = 0
        for what, body, key in pending:
            try:
                self._post(client, what, body, key)
                sent += 1
            except WebhookError as exc:
                failures.append(exc)
                if exc.retried:
                    break  # the endpoint is down: the other events would only wait too
        if not failures:
            return
        if len(pending) == 1:
            raise failures[0]
        first = failures[0]
        raise WebhookError(f"{sent} of {len(pending)} POSTs to {self.shown_url} succeeded; "
                           f"{len(failures)} failed{', then gave up' if first.retried else ''}. "
                           f"First failure: {first}",
                           url=self.shown_url, status=first.status, retried=first.retried)

    def rollback(self) -> None:
        self.pending = []

    def describe_commit(self) -> str:
        """What commit() would send (for dry runs)."""
        if not self.pending:
            return "would POST nothing"
        return (f"would POST {len(self.pending)} request(s) to {self.shown_url}: "
                + "; ".join(what for what, _, _ in self.pending[:5])
                + (" ..." if len(self.pending) > 5 else ""))

    def _post(self, client: httpx.Client, what: str, body: bytes, key: str) -> None:
        headers = {**self.headers, IDEMPOTENCY_HEADER: key}
        attempts = self.retries + 1
        status: int | None = None
        last = ""
        for attempt in range(1, attempts + 1):
            # httpx's timeout bounds each socket operation; a receiver trickling its
            # headers or answer a byte at a time would keep the attempt going for
            # ever. The attempt's deadline bounds every one of its socket operations
            # (see _DeadlineBackend), and its answer's body is read only until then.
            try:
                status, reason, answer = self._attempt(client, body, headers)
            except httpx.TransportError as exc:  # connect errors, timeouts, dropped connections
                status, last = None, f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= status < 300:
                    logger.debug("POST %s (%s): HTTP %d", self.shown_url, what, status)
                    return
                last = f"HTTP {status} {reason}: {_excerpt(answer)}"
                if status != 429 and status < 500:
                    raise WebhookError(f"POST {self.shown_url} ({what}) was refused with {last} "
                                       "(not retried: sending it again would not help)",
                                       url=self.shown_url, status=status, retried=False)
            if attempt < attempts:
                delay = self.backoff * 2 ** (attempt - 1)
                logger.warning("POST %s (%s) failed (attempt %d of %d): %s; retrying in %.2fs",
                               self.shown_url, what, attempt, attempts, last, delay)
                time.sleep(delay)
        raise WebhookError(f"POST {self.shown_url} ({what}) failed {attempts} time(s); "
                           f"last status: {status if status is not None else 'no answer'}; "
                           f"last error: {last}",
                           url=self.shown_url, status=status, retried=True)

    def _attempt(self, client: httpx.Client, body: bytes,
                 headers: dict[str, str]) -> tuple[int, str, bytes]:
        """One POST: its status, reason phrase and the start of its answer."""
        deadline = time.monotonic() + self.timeout
        _this_attempt.deadline = deadline
        try:
            with client.stream("POST", self.url, content=body, headers=headers,
                               timeout=self.timeout) as response:
                try:
                    answer = _read_until(response, deadline)
                except httpx.TransportError:
                    if not 200 <= response.status_code < 300:
                        raise
                    answer = b""  # delivered: the status says so, the body does not matter
                return response.status_code, response.reason_phrase, answer
        finally:
            _this_attempt.deadline = None


def idempotency_key(stream_id: Any, events: Sequence[Event]) -> str:
    """SHA-256 hex of the stream id and the events' message ids, in order."""
    text = "\n".join([str(stream_id), *(str(event["message_id"]) for event in events)])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# Enough of an answer for an error message; the rest is not read.
_ANSWER_LIMIT = 64 * 1024


def _read_until(response: httpx.Response, deadline: float) -> bytes:
    """The start of the answer's body, read until ``deadline`` at the latest (then the
    connection is dropped, not kept for the next request)."""
    received = bytearray()
    try:
        for chunk in response.iter_bytes():
            received += chunk
            if len(received) >= _ANSWER_LIMIT or time.monotonic() >= deadline:
                break
    except httpx.TimeoutException:
        if time.monotonic() < deadline:
            raise
        # Cut off at the deadline: what came is enough for an error message.
    return bytes(received)


def _excerpt(answer: bytes) -> str:
    text = " ".join(answer.decode("utf-8", "replace").split())
    return text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else "") if text else "(empty body)"


# --- shared clients ------------------------------------------------------------------------
# One client per process (and TLS setting) keeps connections alive between
# runs: a handler is built for every stream, and a TLS handshake per stream
# would cost more than the POST.

_clients_lock = threading.Lock()
_clients: dict[tuple[int, bool], httpx.Client] = {}


def _client(verify: bool) -> httpx.Client:
    key = (os.getpid(), verify)  # a forked worker must not share its parent's sockets
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            # Handlers for different receivers share the client: keep no cookies.
            cookies = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
            client = _clients[key] = httpx.Client(verify=verify, cookies=cookies,
                                                  follow_redirects=False)
            for transport in (client._transport, *client._mounts.values()):
                if transport is not None:  # None: a pattern that goes without a proxy
                    _bound_by_deadline(transport)
        return client


# --- the attempt's deadline ----------------------------------------------------------------
# httpx has no timeout for a whole request (encode/httpx#1450): its timeouts bound
# each socket operation. The shared client's network streams cut every operation
# short at the deadline of the attempt running in this thread.

_this_attempt = threading.local()


def _left(timeout: float | None, expired: type[Exception]) -> float | None:
    deadline = getattr(_this_attempt, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the attempt's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream):
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname,
                                                      _left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend):
        self._backend = backend

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None, socket_options: Any = None
                    ) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_tcp(
            host, port, _left(timeout, httpcore.ConnectTimeout), local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_unix_socket(
            path, _left(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _bound_by_deadline(transport: Any) -> None:
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if backend is None:
        # A transport shaped otherwise (another httpx): each socket operation stays
        # bounded by the timeout, and the answer's body by the deadline.
        logger.warning("webhook: cannot bound whole requests by their deadline with this httpx "
                       "(%s); a receiver trickling its headers could hold a worker",
                       httpx.__version__)
        return
    if not isinstance(backend, _DeadlineBackend):
        pool._network_backend = _DeadlineBackend(backend)


def close_clients() -> None:
    """Close this process's shared HTTP clients (idempotent; later POSTs open new ones)."""
    with _clients_lock:
        mine = [key for key in _clients if key[0] == os.getpid()]
        clients = [_clients.pop(key) for key in mine]
    for client in clients:
        client.close()


atexit.register(close_clients)
