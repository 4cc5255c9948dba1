"""What every handler shares: JSON responses, errors that name the field, and the deployment's clients."""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass
from typing import Any

from runtime.config import Settings
from runtime.storage import aws
from runtime.storage.jobstore import JobStore


@dataclass(frozen=True)
class Deployment:
    settings: Settings
    store: JobStore
    sns: Any


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
