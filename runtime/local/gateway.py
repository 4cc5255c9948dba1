"""A local stand-in for API Gateway: HTTP requests become HTTP API (payload 2.0) events for the handlers.

Only the translation is local; the handlers are the production Lambda code, unchanged. With ``authorize`` (a
Lambda REQUEST authorizer, payload 2.0 with simple responses: ``lambdas.authorizer.handler``), the paths it guards
are authorized first, answering as API Gateway does: 401 without the identity header, 403 when refused, 500 when
the authorizer fails; an authorized request reaches the handler with the authorizer's context at
``requestContext.authorizer.lambda``.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]

log = logging.getLogger("spotgen.gateway")

#: API Gateway's own payload limit; larger bodies are refused before a handler sees them.
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024


def to_event(method: str, target: str, headers: dict[str, str], body: bytes, source_ip: str) -> dict[str, Any]:
    parts = urlsplit(target)
    try:
        text, encoded = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(body).decode("ascii"), True
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": parts.path,
        "rawQueryString": parts.query,
        "headers": {k.lower(): v for k, v in headers.items()},
        "requestContext": {
            "http": {"method": method, "path": parts.path, "protocol": "HTTP/1.1", "sourceIp": source_ip},
            "requestId": uuid.uuid4().hex,
            "stage": "$default",
        },
        "body": text or None,
        "isBase64Encoded": encoded,
    }


def gateway_error(status: int, message: str) -> dict[str, Any]:
    """API Gateway's own answer (not a handler's): ``{"message": ...}``, as its clients see it."""
    return {"statusCode": status, "headers": {"content-type": "application/json"},
            "body": json.dumps({"message": message})}


def authorized(event: dict[str, Any], authorize: Handler,
               identity_header: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(``event`` with the authorizer's context, None) when authorized, else (``event``, API Gateway's refusal)."""
    key = event["headers"].get(identity_header, "")
    if not key.strip():  # API Gateway does not call the authorizer without its identity source
        return event, gateway_error(401, "Unauthorized")
    http = event["requestContext"]["http"]
    request = {**event, "type": "REQUEST", "identitySource": [key],
               "routeArn": f"arn:aws:execute-api:local:000000000000:local/$default/{http['method']}{event['rawPath']}"}
    try:
        answer = authorize(request, None)
    except Exception:  # noqa: BLE001 - as on AWS: a failed authorizer is a 500, and its log says why
        log.exception("the authorizer failed")
        return event, gateway_error(500, "Internal Server Error")
    if not isinstance(answer, dict) or not isinstance(answer.get("isAuthorized"), bool):
        log.error("the authorizer answered %r, not a simple response", answer)
        return event, gateway_error(500, "Internal Server Error")
    if not answer["isAuthorized"]:
        return event, gateway_error(403, "Forbidden")
    context = {**event["requestContext"], "authorizer": {"lambda": dict(answer.get("context") or {})}}
    return {**event, "requestContext": context}, None


def make_server(handler: Handler, host: str = "127.0.0.1", port: int = 8080, authorize: Handler | None = None,
                guarded: re.Pattern[str] | None = None, identity_header: str = "x-api-key") -> ThreadingHTTPServer:
    """The gateway on ``host:port``. ``authorize`` runs first on the paths ``guarded`` matches (by default the
    compatibility routes, ``lambdas.authorizer.COMPAT_PATH_RE``); without it every path goes straight on."""
    if authorize is not None and guarded is None:
        from lambdas.authorizer import COMPAT_PATH_RE

        guarded = COMPAT_PATH_RE

    class RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _dispatch(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_PAYLOAD_BYTES:
                self._send(413, {"content-type": "application/json"},
                           b'{"error":{"code":"payload_too_large","message":"request body over 10 MB","field":"body"}}')
                self.close_connection = True
                return
            body = self.rfile.read(length) if length else b""
            event = to_event(self.command, self.path, dict(self.headers), body, self.client_address[0])
            refused: dict[str, Any] | None = None
            if authorize is not None and guarded is not None and guarded.match(event["rawPath"]):
                event, refused = authorized(event, authorize, identity_header)
            result = refused if refused is not None else handler(event, None)
            payload = result.get("body") or ""
            data = base64.b64decode(payload) if result.get("isBase64Encoded") else payload.encode()
            self._send(int(result.get("statusCode", 200)), result.get("headers") or {}, data)

        def _send(self, status: int, headers: dict[str, str], data: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
            pass

    server = ThreadingHTTPServer((host, port), RequestHandler)
    server.daemon_threads = True
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="api-gateway", daemon=True)
    thread.start()
    return thread
