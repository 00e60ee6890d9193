"""The webhook handler, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from winchester.errors import WinchesterError
from winchester.events import make_event
from winchester.pipelines._webhook import WebhookError, WebhookHandler, close_clients

ENV = {"stream_id": 7, "stream_name": "instance_usage", "reason": "fire",
       "distinguishing_traits": {}, "pipeline": "usage_pipeline"}


class Receiver(ThreadingHTTPServer):
    """Records every request; answers from a script of statuses (then 200)."""

    # Joined on close, so no request thread outlives the test.
    daemon_threads = False

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _RecordingHandler)
        self.requests: list[dict[str, Any]] = []
        self.script: deque[int | float] = deque()  # an int is a status, a float a delay (s)
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def answer(self, *actions: int | float) -> None:
        self.script.extend(actions)

    def next_action(self) -> int | float:
        with self.lock:
            return self.script.popleft() if self.script else 200

    def handle_error(self, request, client_address):
        pass  # a client that timed out has gone; writing to it fails, as it should

    def bodies(self) -> list[Any]:
        return [orjson.loads(request["body"]) for request in self.requests]


class _RecordingHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.requests.append({
                "path": self.path, "body": body,
                "headers": {name.lower(): value for name, value in self.headers.items()}})
        action = self.server.next_action()
        status = 200
        if isinstance(action, float):
            time.sleep(action)
        else:
            status = action
        reply = b'{"error": "bad event"}' if status == 400 else b"ok"
        self.send_response(status)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format, *args):
        pass


@pytest.fixture
def receiver():
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        close_clients()  # first: the server's close waits for open connections
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def _no_client_outlives_a_test():
    yield
    close_clients()


def event(event_type: str = "compute.instance.exists", **traits: Any) -> dict[str, Any]:
    traits.setdefault("message_id", str(uuid.uuid4()))
    traits.setdefault("timestamp", datetime(2015, 2, 1))
    return make_event({"event_type": event_type, **traits})


def run(handler: WebhookHandler, events: list[dict[str, Any]], env: dict[str, Any] | None = None):
    returned = handler.handle_events(events, dict(ENV) if env is None else env)
    assert returned is events
    handler.commit()


def sha256(*parts: Any) -> str:
    return hashlib.sha256("\n".join(str(p) for p in parts).encode()).hexdigest()


def test_a_run_is_posted_as_one_json_body(receiver):
    """Batch mode: one POST with the stream, the reason and every event, datetimes ISO 8601."""
    first = event(message_id="m1", timestamp=datetime(2015, 2, 1, 12, 30, 5, 123456),
                  instance_id="abc", memory_mb=512, ratio=0.5,
                  launched_at=datetime(2015, 1, 31, 22, 10))
    second = event("compute.instance.delete.end", message_id="m2")
    run(WebhookHandler(url=receiver.url), [first, second])
    [request] = receiver.requests
    assert request["path"] == "/hook"
    assert request["headers"]["content-type"] == "application/json"
    assert request["headers"]["idempotency-key"] == sha256(7, "m1", "m2")
    assert orjson.loads(request["body"]) == {
        "stream_id": 7, "stream_name": "instance_usage", "reason": "fire",
        "events": [
            {"message_id": "m1", "event_type": "compute.instance.exists",
             "timestamp": "2015-02-01T12:30:05.123456Z", "instance_id": "abc",
             "memory_mb": 512, "ratio": 0.5, "launched_at": "2015-01-31T22:10:00Z"},
            {"message_id": "m2", "event_type": "compute.instance.delete.end",
             "timestamp": "2015-02-01T00:00:00Z"},
        ]}


def test_the_auth_header_comes_from_the_params(receiver):
    """auth_value goes into Authorization by default, next to any extra headers."""
    handler = WebhookHandler(url=receiver.url, auth_value="Bearer t0ken",
                             headers={"X-Source": "winchester"})
    run(handler, [event()])
    headers = receiver.requests[0]["headers"]
    assert headers["authorization"] == "Bearer t0ken"
    assert headers["x-source"] == "winchester"


def test_the_auth_header_can_come_from_the_environment(receiver, monkeypatch):
    """auth_value_env names a variable holding the secret, under the chosen header."""
    monkeypatch.setenv("WINCHESTER_TEST_HOOK_KEY", "s3cr3t")
    handler = WebhookHandler(url=receiver.url, auth_header="X-Api-Key",
                             auth_value_env="WINCHESTER_TEST_HOOK_KEY")
    run(handler, [event()])
    assert receiver.requests[0]["headers"]["x-api-key"] == "s3cr3t"
    assert "authorization" not in receiver.requests[0]["headers"]


def test_server_errors_and_429_are_retried_until_accepted(receiver):
    """5xx and 429 are retried with the same body and Idempotency-Key."""
    receiver.answer(500, 503, 429)
    run(WebhookHandler(url=receiver.url, retries=3, backoff=0.01), [event()])
    assert len(receiver.requests) == 4
    assert len({r["body"] for r in receiver.requests}) == 1
    assert len({r["headers"]["idempotency-key"] for r in receiver.requests}) == 1


def test_commit_gives_up_after_the_retries_naming_url_and_status(receiver):
    """When every attempt fails, a WinchesterError names the url and the last status."""
    receiver.answer(500, 500, 502)
    handler = WebhookHandler(url=receiver.url, retries=2, backoff=0.01)
    handler.handle_events([event()], dict(ENV))
    with pytest.raises(WebhookError) as failure:
        handler.commit()
    assert isinstance(failure.value, WinchesterError)
    assert len(receiver.requests) == 3
    assert failure.value.status == 502 and failure.value.retried
    assert receiver.url in str(failure.value) and "502" in str(failure.value)


def test_client_errors_are_not_retried(receiver):
    """A 400 fails at once, quoting the receiver's answer."""
    receiver.answer(400)
    handler = WebhookHandler(url=receiver.url, retries=3, backoff=0.01)
    handler.handle_events([event()], dict(ENV))
    with pytest.raises(WebhookError, match="400.*bad event") as failure:
        handler.commit()
    assert len(receiver.requests) == 1
    assert failure.value.status == 400 and not failure.value.retried


def test_connection_errors_are_retried_then_reported():
    """Nobody listening: every attempt fails to connect, and the error says so."""
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    handler = WebhookHandler(url=f"http://127.0.0.1:{port}/hook", retries=2, backoff=0.01,
                             timeout=2)
    handler.handle_events([event()], dict(ENV))
    with pytest.raises(WebhookError, match="ConnectError") as failure:
        handler.commit()
    assert failure.value.status is None and "no answer" in str(failure.value)


def test_a_timeout_is_retried(receiver):
    """An answer slower than the timeout counts as a failure and is retried."""
    receiver.answer(1.0)
    run(WebhookHandler(url=receiver.url, timeout=0.2, retries=1, backoff=0.01), [event()])
    assert len(receiver.requests) == 2


@contextmanager
def answering(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A server on 127.0.0.1 whose requests ``handler`` answers (misbehaving receivers): its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def test_an_answer_trickled_byte_by_byte_is_read_only_until_the_attempts_deadline():
    """httpx's timeout bounds each read; a receiver that sends its answer a byte at a time, each
    within it, is cut off at the attempt's deadline instead of holding the worker for ever."""
    sent: list[int] = []
    hung_up = threading.Event()

    class Trickle(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            try:
                for _ in range(100):  # 20 s in all, each byte well within the timeout
                    self.wfile.write(b".")
                    self.wfile.flush()
                    sent.append(1)
                    time.sleep(0.2)
            except OSError:
                hung_up.set()

        def log_message(self, format, *args):
            pass

    with answering(Trickle) as url:
        run(WebhookHandler(url=url, timeout=1.0, retries=0), [event()])  # a 2xx status: delivered
        assert hung_up.wait(10)
        assert len(sent) < 100


def test_headers_trickled_byte_by_byte_are_cut_off_at_the_attempts_deadline():
    """A receiver that sends its status line and headers a byte at a time, each within the
    timeout, fails the attempt at its deadline (and is retried), instead of holding the worker."""
    attempts: list[float] = []
    hung_up = threading.Event()

    class TrickledHeaders(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            attempts.append(time.monotonic())
            try:
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" + b"X" * 200:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.1)  # 24 s in all, each byte well within the timeout
            except OSError:
                hung_up.set()
            self.close_connection = True

        def log_message(self, format, *args):
            pass

    with answering(TrickledHeaders) as url:
        handler = WebhookHandler(url=url, timeout=0.6, retries=1, backoff=0.01)
        handler.handle_events([event()], dict(ENV))
        with pytest.raises(WebhookError, match="ReadTimeout") as failure:
            handler.commit()
        assert failure.value.status is None and failure.value.retried
        assert len(attempts) == 2
        assert hung_up.wait(10)


def test_a_2xx_whose_body_breaks_off_is_delivered_not_posted_again():
    """The receiver said 200, then its connection dropped mid-body: the events were delivered;
    posting them again would only make the receiver drop a duplicate."""
    posts: list[int] = []

    class CutShort(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            posts.append(1)
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"ok")  # then the connection closes, 98 bytes short
            self.close_connection = True

        def log_message(self, format, *args):
            pass

    with answering(CutShort) as url:
        run(WebhookHandler(url=url, retries=2, backoff=0.01), [event()])
        assert posts == [1]


def test_nothing_is_posted_before_commit_or_on_rollback(receiver):
    """handle_events only prepares; rollback forgets; a later commit posts nothing."""
    handler = WebhookHandler(url=receiver.url)
    handler.handle_events([event()], dict(ENV))
    assert receiver.requests == []
    handler.rollback()
    handler.commit()
    assert receiver.requests == []


def test_per_event_mode_posts_each_event_with_its_own_key(receiver):
    """batch: false sends one POST per event, keyed by the stream and that event."""
    events = [event(message_id="m1"), event("compute.instance.delete.end", message_id="m2")]
    run(WebhookHandler(url=receiver.url, batch=False), events)
    assert [r["headers"]["idempotency-key"] for r in receiver.requests] == [
        sha256(7, "m1"), sha256(7, "m2")]
    assert receiver.bodies() == [
        {"stream_id": 7, "stream_name": "instance_usage", "reason": "fire",
         "event": {"message_id": message_id, "event_type": event_type,
                   "timestamp": "2015-02-01T00:00:00Z"}}
        for message_id, event_type in [("m1", "compute.instance.exists"),
                                       ("m2", "compute.instance.delete.end")]]


def test_per_event_mode_sends_the_rest_after_a_refused_event(receiver):
    """One refused event does not keep the others from being sent; commit still fails."""
    receiver.answer(400)
    handler = WebhookHandler(url=receiver.url, batch=False, backoff=0.01)
    handler.handle_events([event(), event(), event()], dict(ENV))
    with pytest.raises(WebhookError, match="2 of 3 POSTs") as failure:
        handler.commit()
    assert len(receiver.requests) == 3
    assert failure.value.status == 400


def test_per_event_mode_stops_when_the_endpoint_is_down(receiver):
    """Once an event has used up its retries, the others are not tried."""
    receiver.answer(500, 500)
    handler = WebhookHandler(url=receiver.url, batch=False, retries=1, backoff=0.01)
    handler.handle_events([event(), event(), event()], dict(ENV))
    with pytest.raises(WebhookError, match="0 of 3 POSTs.*gave up"):
        handler.commit()
    assert len(receiver.requests) == 2


def test_event_types_select_what_is_posted(receiver):
    """Only matching events are sent, and a run with none to send posts nothing."""
    events = [event("compute.instance.exists.verified"), event("compute.instance.create.end"),
              event("compute.instance.exists.failed")]
    run(WebhookHandler(url=receiver.url, event_types=["compute.instance.exists.*", "!*.failed"]),
        events)
    assert [e["event_type"] for e in receiver.bodies()[0]["events"]] == [
        "compute.instance.exists.verified"]
    run(WebhookHandler(url=receiver.url, event_types="image.*"), events)
    assert len(receiver.requests) == 1


def test_the_idempotency_key_is_the_same_when_a_stream_runs_again(receiver):
    """The same stream and events give the same key; another stream gives another."""
    events = [event(), event()]
    run(WebhookHandler(url=receiver.url), events)
    run(WebhookHandler(url=receiver.url), events)
    run(WebhookHandler(url=receiver.url), events, {**ENV, "stream_id": 8})
    keys = [r["headers"]["idempotency-key"] for r in receiver.requests]
    assert keys[0] == keys[1] != keys[2]
    assert keys[0] == sha256(7, *(e["message_id"] for e in events))


def test_errors_show_the_url_without_credentials_or_query(receiver):
    """Passwords and query tokens in the url never reach an error message."""
    receiver.answer(400)
    url = receiver.url.replace("http://", "http://user:pa55@") + "?token=t0k3n"
    handler = WebhookHandler(url=url)
    handler.handle_events([event()], dict(ENV))
    with pytest.raises(WebhookError) as failure:
        handler.commit()
    message = str(failure.value)
    assert "pa55" not in message and "t0k3n" not in message
    assert f"127.0.0.1:{receiver.server_address[1]}/hook" in message
    assert receiver.requests[0]["path"] == "/hook?token=t0k3n"


@pytest.mark.parametrize(("params", "named"), [
    ({}, "url"),
    ({"url": "ftp://example.com/"}, "url"),
    ({"url": "http:///nohost"}, "url"),
    ({"timeout": 0}, "timeout"),
    ({"retries": -1}, "retries"),
    ({"retries": 1.5}, "retries"),
    ({"backoff": -0.1}, "backoff"),
    ({"headers": ["X-A: b"]}, "headers"),
    ({"headers": {"X-A": 1}}, "headers"),
    ({"headers": {"Bad Name": "x"}}, "headers"),
    ({"auth_header": "X-Api-Key"}, "auth_header"),
    ({"auth_value": "a", "auth_value_env": "B"}, "auth_value_env"),
    ({"auth_value_env": "WINCHESTER_TEST_SURELY_UNSET"}, "WINCHESTER_TEST_SURELY_UNSET"),
    ({"auth_value": "a", "auth_header": "Bad:Name"}, "auth_header"),
    ({"batch": "no"}, "batch"),
    ({"event_types": [1]}, "event_types"),
])
def test_bad_params_are_refused_naming_the_param(params, named, monkeypatch):
    """Every invalid param is refused at construction with its name in the message."""
    monkeypatch.delenv("WINCHESTER_TEST_SURELY_UNSET", raising=False)
    params = {"url": "https://hooks.example.com/winchester", **params} if params else params
    with pytest.raises((TypeError, ValueError), match=named):
        WebhookHandler(**params)
