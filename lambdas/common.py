"""What every handler shares: JSON responses, errors that name the field, and the deployment's clients."""

from __future__ import annotations

import base64
import functools
import json
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


@functools.lru_cache(maxsize=1)
def deployment() -> Deployment:
    """Clients built on first use (not at import) and reused across warm invocations."""
    settings = Settings.from_env()
    return Deployment(settings, JobStore(aws.client("s3", settings), settings), aws.client("sns", settings))


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
