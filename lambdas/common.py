"""What every handler shares: JSON responses, errors that name the field, and the deployment's clients."""

from __future__ import annotations

import base64
import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtime.config import Settings
from runtime.storage import aws
from runtime.storage.jobstore import JobStore

#: ``fetch(url, field, timeout_s)``: an image URL's bytes, or ContractError naming ``field``.
Fetcher = Callable[[str, str, float], bytes]


@dataclass(frozen=True)
class Deployment:
    settings: Settings
    store: JobStore
    sns: Any
    #: None: ``lambdas.fetch.fetch_image`` under the settings' allow-list (tests give one that reaches loopback).
    fetcher: Fetcher | None = None

    def fetch(self, url: str, field: str, timeout_s: float) -> bytes:
        if self.fetcher is not None:
            return self.fetcher(url, field, timeout_s)
        from lambdas.fetch import fetch_image  # httpcore and certifi load only for a request with a URL

        return fetch_image(url, self.settings, field, timeout_s=timeout_s)


#: The function's timeout in seconds, as its template sets it (``Timeout``): Lambda does not tell a function its
#: timeout before an invocation, so the template passes it on, and tests/infra keeps the two equal.
TIMEOUT_VARIABLE = "FUNCTION_TIMEOUT_S"
#: Without the variable (``spotgen dev``, tests): the template's default function timeout.
DEFAULT_TIMEOUT_S = 15.0


def function_timeout_s() -> float:
    try:
        timeout = float(os.environ.get(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT_S))
    except ValueError:
        raise SystemExit(f"invalid {TIMEOUT_VARIABLE}: {os.environ[TIMEOUT_VARIABLE]!r} is not a number") from None
    if timeout <= 0:
        raise SystemExit(f"invalid {TIMEOUT_VARIABLE}: {timeout:g} is not positive")
    return timeout


@functools.lru_cache(maxsize=1)
def deployment() -> Deployment:
    """Clients built on first use (not at import) and reused across warm invocations. Their timeouts and attempts
    fit in the function's timeout (``aws.bounded``): a call that hangs fails in time for the handler to answer."""
    settings = Settings.from_env()
    config = aws.bounded(function_timeout_s())
    return Deployment(settings, JobStore(aws.client("s3", settings, config=config), settings),
                      aws.client("sns", settings, config=config))


def response(status: int, body: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json", **(headers or {})},
        "body": json.dumps(body, default=str),
    }


def error(status: int, code: str, message: str, field: str | None = None, **headers: str) -> dict[str, Any]:
    return response(status, {"error": {"code": code, "message": message, "field": field}}, headers or None)


def raw_body(event: dict[str, Any]) -> bytes:
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        return base64.b64decode(body)
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


def status_url(settings: Settings, job_id: str) -> str:
    return f"{settings.public_url.rstrip('/')}/v1/jobs/{job_id}"
