"""Per-request webhooks: what a request asks for (``Webhook``), what the receiver gets (``WebhookNotification``,
signed as the Standard Webhooks specification says), and what the status document records of each delivery.

The signature (``signature_header``) is the specification's: ``v1,`` and the base64 HMAC-SHA256 of
``{webhook-id}.{webhook-timestamp}.{body}`` under the secret's bytes (``whsec_`` and base64). While a secret is
being rotated the sender holds several and signs with each, space separated, as the specification allows, so a
receiver that still has the old secret verifies as well as one that has the new. ``webhook_id`` derives the id
from the job and the event, so every retry and every redelivery of one event carries the same id: a receiver
deduplicates on it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from runtime.contract.inputs import Strict

#: ``started``: a worker began the job (best effort: sent once, not retried across deliveries); ``completed``: the
#: job reached a final state, whichever (succeeded, failed, cancelled, expired).
WebhookEvent = Literal["started", "completed"]
EVENTS: tuple[str, ...] = ("started", "completed")
MAX_WEBHOOK_URL_CHARS = 2048
#: Attempts the status document keeps (the latest), so that a receiver down for long cannot grow it.
MAX_RECORDED_ATTEMPTS = 20
SECRET_PREFIX = "whsec_"


class Webhook(Strict):
    """``webhook`` of a request: where to POST the job's events, and which."""

    url: str = Field(min_length=1, max_length=MAX_WEBHOOK_URL_CHARS)
    events: list[WebhookEvent] = Field(default_factory=lambda: ["completed"], min_length=1, max_length=2)

    @field_validator("events")
    @classmethod
    def _once_each(cls, events: list[str]) -> list[str]:
        if len(set(events)) != len(events):
            raise ValueError("name each event once")
        return events


class WebhookAttempt(BaseModel):
    """One POST of one event: its HTTP status (None when none came back) and, when it failed, why."""

    event: WebhookEvent
    at: datetime
    status: int | None = None
    error: str | None = None


class WebhookDelivery(BaseModel):
    """Where one event stands. ``claimed_at``/``claimed_by``: a delivery of the job is sending it (another leaves it
    to that one while the claim is young); ``settled_at``: sent, or given up on (``delivered`` says which), never
    sent again."""

    claimed_at: datetime | None = None
    claimed_by: str | None = None
    settled_at: datetime | None = None
    delivered: bool = False


class WebhookNotification(BaseModel):
    """The body a receiver gets: the notification (``runtime.contract.status.Notification``'s fields) with the
    event, and outputs as presigned HTTPS URLs valid until ``outputs_expire_at``."""

    type: str  # "job.started" | "job.completed"
    event: WebhookEvent
    id: str
    state: str
    outputs: list[str] = Field(default_factory=list)
    output_keys: list[str] = Field(default_factory=list)
    outputs_expire_at: datetime | None = None
    error: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    timestamp: datetime


def webhook_id(job_id: str, event: str) -> str:
    """The ``webhook-id`` of a job's event: the same for every retry and redelivery."""
    return f"msg_{job_id}_{event}"


def secret_bytes(secret: str) -> bytes:
    """The key of a secret: base64, after the prefix ``whsec_`` when it has one (the stack's generated secret has
    none, as the specification's libraries accept); ValueError for anything else."""
    encoded = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise ValueError("a webhook secret is base64 (whsec_ and base64, or base64 alone)") from None
    if len(key) < 24:
        raise ValueError("a webhook secret must hold at least 24 bytes")
    return key


def signature_header(secrets: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """``webhook-signature``: ``v1,<base64>`` under each secret, space separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(secret_bytes(s), signed, hashlib.sha256).digest()).decode()
                    for s in secrets)
