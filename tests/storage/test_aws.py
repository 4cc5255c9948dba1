"""AWS clients retry throttling and server errors with backoff, against a real HTTP server on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from runtime.config import Settings
from runtime.storage import aws


class Flaky(BaseHTTPRequestHandler):
    """Answers the first ``failures`` requests with an S3 503 SlowDown, then succeeds."""

    failures = 0
    seen = 0

    def do_PUT(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Flaky.seen += 1
        if Flaky.seen <= Flaky.failures:
            body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
        else:
            body = b""
            self.send_response(200)
            self.send_header("ETag", '"abc"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Flaky.seen = 0
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def s3(endpoint: str) -> Any:
    return aws.client("s3", Settings(aws_endpoint_url=endpoint))


def test_throttling_is_retried_until_it_passes(endpoint: str) -> None:
    Flaky.failures = 2
    s3(endpoint).put_object(Bucket="b", Key="k", Body=b"x")
    assert Flaky.seen == 3
