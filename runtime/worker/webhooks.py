"""Per-request webhooks, sent by the worker: signed (Standard Webhooks), once per event, never at the job's cost.

Where: ``completed`` on the output stage's thread, after the final status and the SNS notification
(``runtime.worker.outputs``), so it never holds the device and a receiver that hears of the job finds it final;
``started`` on a thread of its own when a job first runs, best effort (retried within the budget on that thread,
but not claimed, and not sent again by a later delivery).

Once per event, as the notification: the event is claimed in the status document (``webhooks[event]``, with this
delivery's token; the final status write carries the ``completed`` claim, so a job with a webhook costs no extra
PUT for it), then sent, then settled (``settled_at``) with each attempt's outcome in ``webhook_attempts``. A
redelivery finds it settled and sends nothing; one that finds a live claim of another delivery leaves the message
to come back (``NotifyingElsewhere``), and one that finds a stale claim (its sender died) sends it. The
``webhook-id`` is derived from the job and the event, so a receiver that got a POST whose answer was lost
deduplicates the next.

Never at the job's cost: the final status is written first; the POSTs of one event get ``SPOTGEN_WEBHOOK_RETRY_S``
in all (each at most ``SPOTGEN_WEBHOOK_TIMEOUT_S``), with exponential backoff and full jitter; a 4xx other than
408 and 429 and a 3xx (redirects are never followed) end the delivery at once; past the budget it is given up
(``delivered`` false), and nothing about it fails the job.

Targets are checked again at each POST with the submit API's rules (``runtime.storage.egress``): the allow-list,
then DNS with every address public, then a connection to exactly those addresses.
"""

from __future__ import annotations

import logging
import random
import secrets as tokens
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpcore

from runtime.config import Settings
from runtime.contract import StatusDoc, utcnow
from runtime.contract.webhook import (
    MAX_RECORDED_ATTEMPTS,
    WebhookAttempt,
    WebhookDelivery,
    WebhookNotification,
    signature_header,
    webhook_id,
)
from runtime.storage import egress
from runtime.storage.jobstore import JobStore

log = logging.getLogger("spotgen.webhooks")

#: 4xx answers that say "later" rather than "never".
RETRIED_4XX = frozenset({408, 429})
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.5, 8.0
MAX_BODY_CHARS = 256


class SecretSource:
    """The signing secret(s), space separated: the setting's text, else the Secrets Manager secret, else the SSM
    parameter, read at most once per ``SPOTGEN_WEBHOOK_SECRET_CACHE_S``. While rotating, the value holds the new
    secret and the old one: the sender signs with both, and the old is dropped once receivers have the new."""

    def __init__(self, settings: Settings, client: Callable[[str], Any]) -> None:
        self.settings, self.client = settings, client
        self._cached: tuple[float, list[str]] | None = None
        self._lock = threading.Lock()

    def current(self) -> list[str]:
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < self.settings.webhook_secret_cache_s:
                return self._cached[1]
            value = self._read()
            found = value.split()
            if not found:
                raise RuntimeError("no webhook signing secret is configured (SPOTGEN_WEBHOOK_SECRET_ARN or "
                                   "SPOTGEN_WEBHOOK_SECRET_PARAMETER)")
            self._cached = (time.monotonic(), found)
            return found

    def _read(self) -> str:
        s = self.settings
        if s.webhook_secret:
            return s.webhook_secret
        if s.webhook_secret_arn:
            return str(self.client("secretsmanager").get_secret_value(SecretId=s.webhook_secret_arn)["SecretString"])
        if s.webhook_secret_parameter:
            answer = self.client("ssm").get_parameter(Name=s.webhook_secret_parameter, WithDecryption=True)
            return str(answer["Parameter"]["Value"])
        return ""


def post(settings: Settings, url: str, body: bytes, headers: dict[str, str]) -> tuple[int | None, str | None]:
    """One POST of a webhook: (HTTP status, None) when an answer came, (None, why) when none did or the target is
    refused. The target's rules are checked first, its addresses are pinned, and the whole POST gets
    ``webhook_timeout_s``."""
    deadline = time.monotonic() + settings.webhook_timeout_s
    try:
        parts = egress.webhook_target(url, settings.webhook_allowed_hosts, loopback=settings.webhook_loopback)
        host, scheme = str(parts.hostname), parts.scheme
        port = parts.port or (443 if scheme == "https" else 80)
        backend = egress.PinnedBackend(deadline)
        backend.vetted[(host, port)] = egress.vetted_addresses(
            host, port, egress.resolve_host, deadline,
            allow_loopback=settings.webhook_loopback and host in egress.LOOPBACK_HOSTS)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request_url = httpcore.URL(scheme=scheme.encode(), host=host.encode(), port=parts.port,
                                   target=target.encode())
        timeout = dict.fromkeys(("connect", "read", "write", "pool"), settings.webhook_timeout_s)
        with httpcore.ConnectionPool(ssl_context=egress.tls_context(), network_backend=backend, retries=0) as pool:
            response = pool.request("POST", request_url, headers=list(headers.items()), content=body,
                                    extensions={"timeout": timeout})
        return response.status, None
    except (egress.TargetRefused, egress.AddressRefused) as exc:
        return None, f"refused: {exc}"
    except httpcore.TimeoutException:
        return None, f"no answer within {settings.webhook_timeout_s:g} s"
    except (OSError, httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
        return None, f"{type(exc).__name__}: {exc}"[:MAX_BODY_CHARS]


Poster = Callable[[Settings, str, bytes, dict[str, str]], tuple[int | None, str | None]]


class Webhooks:
    """Sends a job's webhook events and records them in its status (``StatusTracker``)."""

    def __init__(self, settings: Settings, store: JobStore, secrets: SecretSource, poster: Poster = post,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings, self.store, self.secrets, self.poster, self.sleep = settings, store, secrets, poster, sleep
        self.token = tokens.token_hex(6)  # this worker's claims (one delivery of a job per worker at a time)

    @staticmethod
    def wants(doc: StatusDoc, event: str) -> bool:
        return doc.webhook is not None and event in doc.webhook.events

    def claim_with_final(self, doc: StatusDoc) -> dict[str, Any]:
        """The ``completed`` claim, as changes for the final status write (none for a job without one)."""
        state = doc.webhooks.get("completed")
        if not self.wants(doc, "completed") or (state is not None and state.settled_at is not None):
            return {}
        if state is not None and self._live(state):
            return {}
        claim = WebhookDelivery(claimed_at=utcnow(), claimed_by=self.token)
        return {"webhooks": {**doc.webhooks, "completed": claim}}

    def _live(self, state: WebhookDelivery) -> bool:
        """Another delivery's claim, young enough that its sender may still be at it."""
        ttl = max(self.settings.lease_s, self.settings.webhook_retry_s + 2 * self.settings.webhook_timeout_s)
        return (state.claimed_by != self.token and state.claimed_at is not None
                and utcnow() - state.claimed_at < timedelta(seconds=ttl))

    def pending(self, doc: StatusDoc, event: str) -> bool:
        state = doc.webhooks.get(event)
        return self.wants(doc, event) and (state is None or state.settled_at is None)

    def deliver(self, tracker: Any, event: str = "completed", retry: Any = None) -> bool | None:
        """Send ``event`` of the tracker's job once: True delivered, False given up, None when another delivery
        holds a live claim (the caller leaves the message to come back). ``retry(fn, what)``: how the claim and
        the record are written through an outage (the output stage's budget); the POSTs are not repeated for it."""
        write = retry or (lambda fn, what: fn())
        def claim(doc: StatusDoc) -> dict[str, Any] | None:
            state = doc.webhooks.get(event)
            if state is not None and (state.settled_at is not None or self._live(state)):
                return None
            if state is not None and state.claimed_by == self.token:
                return {}  # ours already (the final status carried it)
            return {"webhooks": {**doc.webhooks, event: WebhookDelivery(claimed_at=utcnow(), claimed_by=self.token)}}

        if not write(lambda: tracker.update(claim), f"job {tracker.doc.id}: claiming its {event} webhook"):
            return True if tracker.doc.webhooks.get(event, WebhookDelivery()).settled_at else None
        attempts = self.send(tracker.doc, event, self.settings.webhook_retry_s)
        delivered = bool(attempts) and attempts[-1].error is None

        def settle(doc: StatusDoc) -> dict[str, Any] | None:
            state = doc.webhooks.get(event) or WebhookDelivery()
            done = state.model_copy(update={"settled_at": utcnow(), "delivered": delivered})
            return {"webhooks": {**doc.webhooks, event: done},
                    "webhook_attempts": [*doc.webhook_attempts, *attempts][-MAX_RECORDED_ATTEMPTS:]}

        write(lambda: tracker.update(settle), f"job {tracker.doc.id}: recording its {event} webhook")
        return delivered

    def started(self, tracker: Any) -> None:
        """``started`` of a job that first runs, on a thread of its own, retried within the same budget (best
        effort: not claimed, not sent again by a later delivery; its outcome rides on the job's next status
        write, if one comes after it)."""
        doc = tracker.doc

        def run() -> None:
            try:
                attempts = self.send(doc, "started", self.settings.webhook_retry_s)
                state = WebhookDelivery(settled_at=utcnow(), delivered=bool(attempts) and attempts[-1].error is None)
                tracker.defer(webhooks={**tracker.doc.webhooks, "started": state},
                              webhook_attempts=[*tracker.doc.webhook_attempts, *attempts][-MAX_RECORDED_ATTEMPTS:])
            except Exception:  # noqa: BLE001 - best effort, and never the job's problem
                log.warning("job %s: the started webhook failed", doc.id, exc_info=True)

        threading.Thread(target=run, name=f"webhook {doc.id} started", daemon=True).start()

    def body(self, doc: StatusDoc, event: str) -> bytes:
        ttl = self.settings.webhook_url_ttl_s
        urls = [self.store.s3.generate_presigned_url("get_object", Params={"Bucket": self.store.output_bucket,
                                                                          "Key": key}, ExpiresIn=ttl)
                for key in doc.outputs] if event == "completed" else []
        now = utcnow()
        note = WebhookNotification(type=f"job.{event}", event=event, id=doc.id, state=doc.state.value,  # type: ignore[arg-type]
                                   outputs=urls, output_keys=list(doc.outputs) if event == "completed" else [],
                                   outputs_expire_at=now + timedelta(seconds=ttl) if urls else None,
                                   error=doc.error.model_dump() if doc.error else None, context=doc.context,
                                   timestamp=now)
        return note.model_dump_json().encode()

    def send(self, doc: StatusDoc, event: str, budget_s: float) -> list[WebhookAttempt]:
        """POST the event until an answer settles it or ``budget_s`` is spent; the attempts, the last deciding."""
        assert doc.webhook is not None
        body, msg_id = self.body(doc, event), webhook_id(doc.id, event)
        deadline, attempts = time.monotonic() + budget_s, []
        for n in range(1000):
            now = utcnow()
            try:
                stamp = int(now.timestamp())
                headers = {"content-type": "application/json", "user-agent": "spotgen-webhook",
                           "webhook-id": msg_id, "webhook-timestamp": str(stamp),
                           "webhook-signature": signature_header(self.secrets.current(), msg_id, stamp, body)}
            except Exception as exc:  # noqa: BLE001 - a secret that cannot be read: recorded, never raised
                attempts.append(WebhookAttempt(event=event, at=now, error=f"signing secret: {exc}"[:MAX_BODY_CHARS]))  # type: ignore[arg-type]
                return attempts
            status, error = self.poster(self.settings, doc.webhook.url, body, headers)
            if status is not None and not 200 <= status < 300:
                error = f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")
            attempts.append(WebhookAttempt(event=event, at=now, status=status, error=error))  # type: ignore[arg-type]
            final = error is None or (status is not None and status < 500 and status not in RETRIED_4XX) or \
                (error or "").startswith("refused")
            pause = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** n))
            if final or time.monotonic() + pause >= deadline:
                break
            self.sleep(pause)
        log.info("job %s: webhook %s %s after %d attempt(s)", doc.id, event,
                 "delivered" if attempts[-1].error is None else "given up", len(attempts))
        return attempts
