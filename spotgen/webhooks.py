"""Checking a spotgen webhook on the receiving side: ``verify(headers, body, secret)``.

spotgen signs webhooks as the Standard Webhooks specification says (https://www.standardwebhooks.com), so any of
its libraries verifies them too; this one needs nothing but the standard library::

    from spotgen.webhooks import verify, WebhookVerificationError

    try:
        event = verify(request.headers, request.body, "whsec_...")   # the parsed JSON body
    except WebhookVerificationError:
        return 400
    if seen(request.headers["webhook-id"]):                          # the same id on every retry: deduplicate
        return 200

The signature is ``v1,`` and the base64 HMAC-SHA256 of ``{webhook-id}.{webhook-timestamp}.{body}`` under the
secret's bytes; the header may carry several (space separated, while spotgen's secret is being rotated), and one
that matches is enough. The timestamp must be within ``tolerance_s`` of now, so that a captured request cannot be
replayed later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

#: How far a webhook's timestamp may be from the receiver's clock (the specification's libraries use 5 minutes).
TOLERANCE_S = 5 * 60


class WebhookVerificationError(ValueError):
    """The request is not a genuine, current webhook: a header is missing, the timestamp is too old or too new,
    or no signature matches."""


def verify(headers: Mapping[str, str], body: bytes | str, secret: str, *, tolerance_s: float = TOLERANCE_S,
           now: float | None = None) -> Any:
    """The webhook's JSON body if its signature is one ``secret`` made and its timestamp is within
    ``tolerance_s`` of ``now``; else ``WebhookVerificationError`` saying which. ``headers``: any mapping (names
    compared case-insensitively); ``body``: the raw bytes as received (verify before parsing)."""
    lower = {str(name).lower(): str(value) for name, value in headers.items()}
    try:
        msg_id, stamp, signatures = (lower[name] for name in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    except KeyError as exc:
        raise WebhookVerificationError(f"the {exc.args[0]} header is missing") from None
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp {stamp!r} is not a whole number of seconds") from None
    clock = time.time() if now is None else now
    if abs(clock - timestamp) > tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp is {clock - timestamp:+.0f} s from now, more than "
                                       f"{tolerance_s:g} s: a replay, or a clock that is off")
    raw = body.encode() if isinstance(body, str) else bytes(body)
    expected = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest()
    for signature in signatures.split():
        version, _, value = signature.partition(",")
        try:
            given = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        if version == "v1" and hmac.compare_digest(given, expected):
            return json.loads(raw)
    raise WebhookVerificationError("no signature matches: a wrong secret, or a body changed on the way")


def _key(secret: str) -> bytes:
    encoded = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the secret is whsec_ followed by base64 (as spotgen dev prints it)") from None
