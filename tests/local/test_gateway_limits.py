"""The local gateway keeps API Gateway's and Lambda's limits and answers as they do (runtime/local/gateway.py):
request and response sizes, the integration timeout, malformed ``Content-Length`` headers, methods no route
takes, repeated headers. The gateway is the real one on loopback; the handlers behind it are small stand-ins that
record what reaches them, since what is tested is what the gateway lets through.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from runtime.local.gateway import (
    LAMBDA_RESPONSE_BYTES,
    MAX_PAYLOAD_BYTES,
    integration_timeout,
    make_server,
    serve_in_thread,
)


class Recorder:
    """A handler that records each event, answers what ``answer`` says, and can be held until released."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.release = threading.Event()
        self.release.set()
        self.finished = threading.Event()
        self.answer: dict[str, Any] = {"statusCode": 200, "headers": {"content-type": "application/json"},
                                       "body": "{}"}

    def __call__(self, event: dict[str, Any], context: Any = None) -> dict[str, Any]:
        self.events.append(event)
        self.release.wait(60)
        self.finished.set()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class Behind:
    """What the module's one gateway calls: the current test's ``Recorder``."""

    recorder = Recorder()

    def __call__(self, event: dict[str, Any], context: Any = None) -> dict[str, Any]:
        return self.recorder(event, context)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Behind, tuple[str, int]]]:
    """One gateway for the module (stopping one waits out its 0.5 s poll), in front of each test's recorder."""
    behind = Behind()
    running = make_server(behind, port=0, integration_timeout_s=0.5)
    serve_in_thread(running)
    yield behind, ("127.0.0.1", running.server_port)
    running.shutdown()
    running.server_close()


@pytest.fixture
def gateway(server: tuple[Behind, tuple[str, int]]) -> Iterator[tuple[Recorder, tuple[str, int]]]:
    behind, address = server
    behind.recorder = Recorder()
    yield behind.recorder, address
    behind.recorder.release.set()


def exchange(address: tuple[str, int], request: bytes, half_close: bool = False) -> bytes:
    """What the gateway sends back on a fresh connection until it closes it or its answer is whole (a HEAD's
    answer is its head alone)."""
    with socket.create_connection(address, timeout=30) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            if request.startswith(b"HEAD ") and b"\r\n\r\n" in data:
                break
            if length is not None and len(body) >= length and not half_close:
                break
        return data


def status_and_body(data: bytes) -> tuple[int, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def request(method: str, headers: list[tuple[str, str]], body: bytes = b"", path: str = "/v1/jobs") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: local", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize("length", ["-1", "abc", "+5", "5, 6"])
def test_a_malformed_content_length_is_a_400_and_runs_nothing(gateway: Any, length: str) -> None:
    handler, address = gateway
    data = exchange(address, request("POST", [("Content-Length", length)], b"{}"))
    assert status_and_body(data) == (400, b'{"message": "Bad Request"}') and handler.events == []


def test_two_different_content_lengths_are_a_400(gateway: Any) -> None:
    handler, address = gateway
    data = exchange(address, request("POST", [("Content-Length", "2"), ("Content-Length", "3")], b"{}"))
    assert status_and_body(data)[0] == 400 and handler.events == []


def test_a_body_cut_short_runs_nothing(gateway: Any) -> None:
    """The client announces 100 bytes, sends 2 and gives up: the gateway closes without running the request."""
    handler, address = gateway
    assert exchange(address, request("POST", [("Content-Length", "100")], b"{}"), half_close=True) == b""
    assert handler.events == []


def test_a_body_over_10_mb_is_refused_unread(gateway: Any) -> None:
    handler, address = gateway
    data = exchange(address, request("POST", [("Content-Length", str(MAX_PAYLOAD_BYTES + 1))]))
    assert status_and_body(data) == (413, f"HTTP content length exceeded {MAX_PAYLOAD_BYTES} bytes.".encode())
    assert handler.events == []


def test_an_event_over_lambdas_6_mb_is_refused(gateway: Any) -> None:
    handler, address = gateway
    body = b"x" * (6 * 1024 * 1024)  # with the event's other fields, over Lambda's request limit
    data = exchange(address, request("POST", [("Content-Length", str(len(body)))], body))
    assert status_and_body(data) == (413, b'{"message": "Request Too Long"}') and handler.events == []


def test_an_answer_over_lambdas_6_mb_is_a_502(gateway: Any) -> None:
    handler, address = gateway
    handler.answer = {"statusCode": 200, "body": "x" * LAMBDA_RESPONSE_BYTES}
    data = exchange(address, request("GET", []))
    assert status_and_body(data) == (502, b'{"message": "Internal Server Error"}') and len(handler.events) == 1


def test_a_handler_error_is_a_500(gateway: Any) -> None:
    handler, address = gateway
    handler.answer = RuntimeError("boom")  # type: ignore[assignment]
    assert status_and_body(exchange(address, request("GET", []))) == (500, b'{"message": "Internal Server Error"}')


def test_a_handler_past_the_integration_timeout_is_a_503_and_runs_on(gateway: Any) -> None:
    """API Gateway gives up at 30 s (here 0.5 s, ``integration_timeout_s``) and answers 503; the Lambda runs on."""
    handler, address = gateway
    handler.release.clear()
    data = exchange(address, request("GET", []))
    assert status_and_body(data) == (503, b'{"message": "Service Unavailable"}')
    assert not handler.finished.is_set()
    handler.release.set()
    assert handler.finished.wait(30)


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
def test_a_method_no_route_takes_is_a_404(gateway: Any, method: str) -> None:
    handler, address = gateway
    data = exchange(address, request(method, []))
    head, _, body = data.partition(b"\r\n\r\n")
    assert status_and_body(data)[0] == 404 and handler.events == []
    assert body == (b"" if method == "HEAD" else b'{"message": "Not Found"}')


def test_a_repeated_header_reaches_the_handler_joined_with_commas(gateway: Any) -> None:
    handler, address = gateway
    exchange(address, request("GET", [("X-Api-Key", "one"), ("x-api-key", "two"), ("X-Other", "3")]))
    assert handler.events[0]["headers"]["x-api-key"] == "one,two"
    assert handler.events[0]["headers"]["x-other"] == "3"
    assert json.loads(json.dumps(handler.events[0]))["body"] is None


@pytest.mark.parametrize(("wait", "timeout"), [(None, 30.0), ("25", 30.0), ("600", 605.0), ("soon", 30.0)])
def test_the_integration_timeout_is_api_gateways_unless_the_sync_wait_is_longer(
        monkeypatch: pytest.MonkeyPatch, wait: str | None, timeout: float) -> None:
    """AWS's 30 s for a deployment's 25 s wait; ``spotgen dev``'s 600 s wait (slow CPU jobs) gets its 5 s margin."""
    if wait is None:
        monkeypatch.delenv("SPOTGEN_SYNC_WAIT_S", raising=False)
    else:
        monkeypatch.setenv("SPOTGEN_SYNC_WAIT_S", wait)
    assert integration_timeout() == timeout
