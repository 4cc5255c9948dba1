"""Loopback servers the client tests talk to: a proxy in front of the API that loses the first submit's answer,
and API Gateway's side of IAM auth, which recomputes SigV4 signatures with botocore."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Stack


class _DropFirstSubmit(http.server.BaseHTTPRequestHandler):
    """Forwards to the API; the first POST /v1/jobs reaches it, but its answer is lost: the connection is cut
    (``fault = "cut"``) or a 503 comes back instead (``fault = "503"``), as from a gateway that timed out."""

    api_url = ""
    fault = "cut"
    dropped: list[str] = []

    def _forward(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else None
        request = urllib.request.Request(f"{self.api_url}{self.path}", data=body, method=self.command,
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                status, data = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, data = exc.code, exc.read()
        if self.command == "POST" and self.path == "/v1/jobs" and not self.dropped:
            self.dropped.append(json.loads(body or b"{}").get("id", ""))
            if self.fault == "cut":
                self.connection.shutdown(2)  # the server accepted the job; the client never hears of it
                return
            status, data = 503, b'{"message": "Service Unavailable"}'
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _forward

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(params=["cut", "503"])
def dropping_proxy(stack: Stack, request: pytest.FixtureRequest) -> Iterator[str]:
    """The proxy's address, once for each way of losing the answer."""
    handler = type("Handler", (_DropFirstSubmit,), {"api_url": stack.api_url, "fault": request.param, "dropped": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


KEY_ID, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


class _SigV4Check(http.server.BaseHTTPRequestHandler):
    """API Gateway's side of IAM auth: recompute the signature with botocore from what arrived; 403 if it
    differs, 200 with a status document if it matches."""

    def do_GET(self) -> None:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        auth = self.headers.get("authorization", "")
        fields = dict(part.strip().split("=", 1) for part in auth.removeprefix("AWS4-HMAC-SHA256 ").split(","))
        signed = fields.get("SignedHeaders", "").split(";")
        request = AWSRequest(method="GET", url=f"http://{self.headers['host']}{self.path}", data=b"",
                             headers={name: self.headers[name] for name in signed if name in self.headers})
        request.context["timestamp"] = self.headers.get("x-amz-date", "")
        signer = SigV4Auth(Credentials(KEY_ID, SECRET), "execute-api", "eu-west-1")
        expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        ok = fields.get("Credential", "").startswith(f"{KEY_ID}/") and fields.get("Signature") == expected
        now = "2026-01-01T00:00:00Z"
        body = json.dumps({"id": "j", "state": "queued", "pipeline": "txt2img", "model": "m", "seed": 1,
                           "created_at": now, "updated_at": now} if ok else {
            "error": {"code": "forbidden", "message": "signature mismatch", "field": None}}).encode()
        self.send_response(200 if ok else 403)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def iam_api() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SigV4Check)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()




def use_credentials(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    """The standard chain finds exactly ``KEY_ID``/``secret`` in the environment, and no profile."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
