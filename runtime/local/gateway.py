"""A local stand-in for API Gateway: HTTP requests become HTTP API (payload 2.0) events for the handlers.

Only the translation is local; the handlers are the production Lambda code, unchanged. With ``authorize`` (a
Lambda REQUEST authorizer, payload 2.0 with simple responses: ``lambdas.authorizer.handler``), the paths it guards
are authorized first, answering as API Gateway does: 401 without the identity header, 403 when refused, 500 when
the authorizer fails; an authorized request reaches the handler with the authorizer's context at
``requestContext.authorizer.lambda``.

It also keeps AWS's limits, answering as API Gateway does where AWS would (HTTP API quotas; Lambda quotas), so
that local tests see what a deployment does:

- a body over 10 MB (``MAX_PAYLOAD_BYTES``, HTTP API's payload quota): 413, ``HTTP content length exceeded
  10485760 bytes.``, without reading it;
- an event over 6 MB (``LAMBDA_REQUEST_BYTES``, Lambda's synchronous request quota): 413 ``{"message": "Request Too
  Long"}``, and the handler is not called;
- a handler's answer over 6 MB (``LAMBDA_RESPONSE_BYTES``, as Lambda serializes it): 502 ``{"message": "Internal
  Server Error"}``, although the handler ran;
- a handler still running after 30 s (``INTEGRATION_TIMEOUT_S``, HTTP API's integration timeout): 503
  ``{"message": "Service Unavailable"}``; the handler runs on, as the Lambda does until its own timeout. Where
  the synchronous WebUI routes are set to wait longer (``SPOTGEN_SYNC_WAIT_S``: ``spotgen dev`` waits 600 s for a
  CPU's slow jobs), the gateway waits that long and 5 s more (``integration_timeout``); set 25 s for AWS's;
- a ``Content-Length`` that is not a number of bytes, or two that differ: 400 ``{"message": "Bad Request"}``; a body
  shorter than announced, the client having gone: nothing runs;
- a method the API has no route for (HEAD, OPTIONS, ...): 404 ``{"message": "Not Found"}``;
- a repeated header reaches the handler (and the authorizer) as one, its values joined by commas (payload 2.0).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]
#: A websocket route: whether a request (path, headers) is its handshake, and what serves the upgraded connection.
Upgrade = tuple[Callable[[str, dict[str, str]], bool], Callable[[Any, str, dict[str, str], dict[str, Any]], None]]

log = logging.getLogger("spotgen.gateway")

#: API Gateway's own payload limit; larger bodies are refused before a handler sees them.
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
#: Lambda's synchronous invocation payload limits, the event and the answer as JSON: 6 MB each.
LAMBDA_REQUEST_BYTES = 6 * 1024 * 1024
LAMBDA_RESPONSE_BYTES = 6 * 1024 * 1024
#: An HTTP API's integration timeout (not configurable above 30 s).
INTEGRATION_TIMEOUT_S = 30.0
#: What a handler that waits ``SPOTGEN_SYNC_WAIT_S`` needs beyond it to answer.
SYNC_WAIT_MARGIN_S = 5.0
#: The methods the API's routes take; any other matches no route on API Gateway.
ROUTED_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")


def joined_headers(message: Any) -> dict[str, str]:
    """Header names lowercased, a repeated header's values joined with commas: what payload 2.0 gives a Lambda
    (``message``: an ``email.message.Message``, as ``BaseHTTPRequestHandler.headers`` is)."""
    joined: dict[str, list[str]] = {}
    for name, value in message.items():
        joined.setdefault(name.lower(), []).append(value)
    return {name: ",".join(values) for name, values in joined.items()}


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


def integration_timeout() -> float:
    """API Gateway's 30 s, or the synchronous routes' configured wait (``SPOTGEN_SYNC_WAIT_S``, read per request as
    the handlers read it) and ``SYNC_WAIT_MARGIN_S`` where that is longer: ``spotgen dev`` chose a long wait, and a
    gateway cutting it at 30 s would turn every slow CPU job into a 503."""
    try:
        wait = float(os.environ.get("SPOTGEN_SYNC_WAIT_S") or 0)
    except ValueError:
        wait = 0.0
    return max(INTEGRATION_TIMEOUT_S, wait + SYNC_WAIT_MARGIN_S)


def run_with_timeout(handler: Handler, event: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
    """The handler's answer, or None when it is still running after ``timeout_s`` (it is left to finish, as
    Lambda lets a function run on after API Gateway gave up); an exception propagates."""
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["answer"] = handler(event, None)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="lambda-invocation", daemon=True).start()
    if not done.wait(timeout_s):
        return None
    if "error" in outcome:
        raise outcome["error"]
    return outcome["answer"]


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
                guarded: re.Pattern[str] | None = None, identity_header: str = "x-api-key",
                integration_timeout_s: float | None = None, upgrade: Upgrade | None = None) -> ThreadingHTTPServer:
    """The gateway on ``host:port``. ``authorize`` runs first on the paths ``guarded`` matches (by default the
    compatibility routes, ``lambdas.authorizer.COMPAT_PATH_RE``); without it every path goes straight on.
    ``integration_timeout_s``: by default ``integration_timeout()`` (tests shorten it rather than wait).
    ``upgrade``: ``(is_upgrade, serve)`` for websocket handshakes (ComfyUI's ``/ws``: runtime/local/comfyws.py),
    authorized as the paths are; ``serve`` gets the connection and runs until the socket closes."""
    if authorize is not None and guarded is None:
        from lambdas.authorizer import COMPAT_PATH_RE

        guarded = COMPAT_PATH_RE

    class RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _refuse(self, status: int, message: str, close: bool = True) -> None:
            answer = gateway_error(status, message)
            self._send(status, answer["headers"], answer["body"].encode())
            self.close_connection = self.close_connection or close

        def _length(self) -> int | None:
            """The body's announced length; None (and a 400 sent) when it is not one number of bytes."""
            values = {value.strip() for value in self.headers.get_all("content-length") or []}
            if not values:
                return 0
            if len(values) > 1 or not all(value.isdigit() for value in values):
                self._refuse(400, "Bad Request")
                return None
            return int(values.pop())

        def _dispatch(self) -> None:
            length = self._length()
            if length is None:
                return
            if length > MAX_PAYLOAD_BYTES:
                self._send(413, {"content-type": "text/plain; charset=utf-8"},
                           f"HTTP content length exceeded {MAX_PAYLOAD_BYTES} bytes.".encode())
                self.close_connection = True
                return
            body = self.rfile.read(length) if length else b""
            if len(body) < length:  # the client went away mid-body: there is no request to run
                self.close_connection = True
                return
            if self.command not in ROUTED_METHODS:
                self._refuse(404, "Not Found", close=False)
                return
            event = to_event(self.command, self.path, joined_headers(self.headers), body, self.client_address[0])
            if len(json.dumps(event)) > LAMBDA_REQUEST_BYTES:
                self._refuse(413, "Request Too Long", close=False)
                return
            refused: dict[str, Any] | None = None
            if authorize is not None and guarded is not None and guarded.match(event["rawPath"]):
                event, refused = authorized(event, authorize, identity_header)
            if refused is None and upgrade is not None and upgrade[0](self.path, event["headers"]):
                self.close_connection = True
                upgrade[1](self.connection, self.path, event["headers"], event)
                return
            result = refused if refused is not None else self._invoke(event)
            if result is None:
                return
            payload = result.get("body") or ""
            data = base64.b64decode(payload) if result.get("isBase64Encoded") else payload.encode()
            self._send(int(result.get("statusCode", 200)), result.get("headers") or {}, data)

        def _invoke(self, event: dict[str, Any]) -> dict[str, Any] | None:
            """The handler's answer within API Gateway's limits; None when a refusal was sent instead."""
            timeout_s = integration_timeout_s if integration_timeout_s is not None else integration_timeout()
            try:
                result = run_with_timeout(handler, event, timeout_s)
            except Exception:  # noqa: BLE001 - as on AWS: a function error is a 500, and its log says why
                log.exception("the handler failed")
                self._refuse(500, "Internal Server Error", close=False)
                return None
            if result is None:
                log.error("the handler ran past the %g s integration timeout", timeout_s)
                self._refuse(503, "Service Unavailable", close=False)
                return None
            if len(json.dumps(result)) > LAMBDA_RESPONSE_BYTES:
                log.error("the handler's answer is over Lambda's %d-byte response limit", LAMBDA_RESPONSE_BYTES)
                self._refuse(502, "Internal Server Error", close=False)
                return None
            return result

        def _send(self, status: int, headers: dict[str, str], data: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
            pass

    server = ThreadingHTTPServer((host, port), RequestHandler)
    server.daemon_threads = True
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="api-gateway", daemon=True)
    thread.start()
    return thread
