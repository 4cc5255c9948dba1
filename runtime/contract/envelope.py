"""Celery protocol-2 messages in kombu's SQS body format, written and read without importing Celery.

The submit Lambda publishes through SNS (raw delivery), so the SNS message body becomes the SQS body
byte for byte and must be exactly what kombu's SQS transport would have sent: base64 of a JSON envelope
whose ``body`` is base64 of ``[args, kwargs, embed]``. A stock Celery worker then consumes it.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import Any

TASK_NAME = "spotgen.run_job"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def build_celery_message(
    task_id: str,
    args: list[Any],
    kwargs: dict[str, Any] | None = None,
    *,
    queue: str,
    task: str = TASK_NAME,
    expires: datetime | None = None,
    origin: str = "spotgen-api",
    extra_headers: dict[str, str] | None = None,
) -> str:
    """The SQS message body for one Celery task call (``extra_headers``: e.g. a W3C ``traceparent``)."""
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = json.dumps([args, kwargs or {}, embed], separators=(",", ":")).encode()
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": expires.isoformat() if expires else None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": f"({task_id!r},)",
        "kwargsrepr": "{}",
        "origin": origin,
        "ignore_result": True,
        **(extra_headers or {}),
    }
    envelope = {
        "body": _b64(body),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return _b64(json.dumps(envelope, separators=(",", ":")).encode())


def read_celery_message(sqs_body: str) -> tuple[dict[str, Any], list[Any], dict[str, Any]]:
    """Headers, args and kwargs of a message built above; ValueError when it is not one."""
    try:
        envelope = json.loads(base64.b64decode(sqs_body, validate=True))
        args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"], validate=True))
        headers = envelope["headers"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a Celery protocol-2 SQS message: {exc}") from None
    if not isinstance(headers, dict) or not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError("not a Celery protocol-2 SQS message: wrong shapes")
    return headers, args, kwargs
