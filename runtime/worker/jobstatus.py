"""The running job's status document, written with compare-and-swap so that it never goes backwards.

SQS delivers at least once, a cancel can arrive at any moment, and a worker that lost its lease may still be
writing. Every write is therefore conditional on the ETag last seen (S3 ``If-Match``). When the document
changed underneath: if it is now final (another delivery finished the job, or the client cancelled it while
queued), this worker stops (``JobEnded``); if a cancel was requested, that is noted for the job to see at
its next step; otherwise the write is retried on the new version.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from runtime.contract import JobSpec, JobState, StatusDoc, utcnow
from runtime.storage.jobstore import JobStore, StatusConflict

log = logging.getLogger("spotgen.status")

MAX_TRIES = 8


class JobEnded(Exception):  # noqa: N818 - a condition, not a failure
    """The job is already final: another delivery or the client ended it. Carries that final document."""

    def __init__(self, doc: StatusDoc) -> None:
        super().__init__(doc.id, doc.state)
        self.doc = doc


class StatusTracker:
    def __init__(self, store: JobStore, doc: StatusDoc, etag: str | None) -> None:
        self.store, self.doc, self.etag = store, doc, etag
        self.ended: StatusDoc | None = None
        self._claimed: object = None  # the claim time this delivery wrote, while it holds the claim
        self._deferred = False  # changes ``defer`` applied that no write has stored yet
        self._fresh_claim = False  # the claim the final status carried, until the first publish uses it
        self._lock = threading.Lock()

    @property
    def cancel_requested(self) -> bool:
        return self.doc.cancel_requested_at is not None

    @classmethod
    def open(cls, store: JobStore, spec: JobSpec) -> StatusTracker:
        """The job's document; a message that did not come through the API gets one of its own."""
        doc, etag = store.read_status_tagged(spec.id)
        if doc is None:
            now = utcnow()
            store.create_status(StatusDoc(
                id=spec.id, state=JobState.queued, pipeline=spec.pipeline, model=spec.model, seed=spec.seed,
                context=spec.context, request_hash=spec.request_hash, expires_at=spec.expires_at,
                sample=spec.sample, webhook=spec.webhook, created_at=now, updated_at=now))
            doc, etag = store.read_status_tagged(spec.id)
            assert doc is not None
        return cls(store, doc, etag)

    def defer(self, **changes: Any) -> None:
        """Apply ``changes`` now and write them with the next write (a progress report, a checkpoint's
        ``flush``, the final status): a short job's ``running`` then costs no PUT of its own."""
        with self._lock:
            self.doc = self.doc.model_copy(update={**changes, "updated_at": utcnow()})
            self._deferred = True

    def flush(self) -> None:
        """Write what ``defer`` holds, if anything (before a checkpoint: the attempt must be on record first)."""
        if self._deferred:
            self.write()

    def write(self, claim: bool = False, **changes: Any) -> StatusDoc:
        """Apply ``changes`` and write; ``JobEnded`` if someone else made the document final meanwhile.
        ``claim``: also claim the job's notification in the same write (the final status: one PUT less)."""
        with self._lock:
            for _ in range(MAX_TRIES):
                now = utcnow()
                extra = {"notify_claimed_at": now} if claim and self.doc.notified_at is None else {}
                new = self.doc.model_copy(update={**changes, **extra, "updated_at": now})
                try:
                    self.etag = self.store.write_status(new, if_match=self.etag)
                    self.doc, self._deferred = new, False
                    if extra:
                        self._claimed, self._fresh_claim = now, True
                    return new
                except StatusConflict:
                    self._reload()
            raise StatusConflict(self.doc.id)

    def _reload(self) -> None:
        current, etag = self.store.read_status_tagged(self.doc.id)
        if current is None:
            raise RuntimeError(f"the status document of job {self.doc.id} disappeared")
        self.etag = etag
        if current.state.final and not self.doc.state.final:
            self.ended, self.doc = current, current
            raise JobEnded(current)
        if current.cancel_requested_at and not self.doc.cancel_requested_at:
            log.info("job %s: cancel requested", self.doc.id)
        self.doc = self.doc.model_copy(update={"cancel_requested_at": current.cancel_requested_at,
                                               "notified_at": current.notified_at or self.doc.notified_at})

    def claim_notification(self, ttl_s: float) -> bool:
        """Claim the job's one notification, or renew this delivery's claim (compare-and-swap); call it right
        before each publish attempt. True: publish now. False: it went out already, or another delivery holds a
        claim younger than ``ttl_s`` (older ones belong to deliveries that gave up or died)."""
        with self._lock:
            for _ in range(MAX_TRIES):
                if self.doc.notified_at is not None:
                    return False
                claimed = self.doc.notify_claimed_at
                age = (utcnow() - claimed).total_seconds() if claimed is not None else None
                if age is not None and claimed != self._claimed and age < ttl_s:
                    return False  # another delivery's live claim
                if self._fresh_claim and claimed == self._claimed and age is not None and age < ttl_s / 2:
                    self._fresh_claim = False  # the final status just made it: the first publish needs no renewal
                    return True
                new = self.doc.model_copy(update={"notify_claimed_at": utcnow()})
                try:
                    self.etag = self.store.write_status(new, if_match=self.etag)
                    self.doc, self._claimed = new, new.notify_claimed_at
                    return True
                except StatusConflict:
                    current, etag = self.store.read_status_tagged(self.doc.id)
                    if current is None or current.created_at != self.doc.created_at:
                        log.info("job %s: the status document is no longer this job's; not claiming its "
                                 "notification", self.doc.id)  # see mark_notified
                        return False
                    self.doc, self.etag = current, etag
            raise StatusConflict(self.doc.id)

    def update(self, change: Callable[[StatusDoc], dict[str, Any] | None]) -> bool:
        """Compare-and-swap ``change(doc)`` (changes to write, or None: nothing to do) on the latest document:
        True once written (an empty change writes nothing), False when ``change`` declined or the document is no
        longer this job's. For what a final job's deliveries record (its webhook events)."""
        with self._lock:
            for _ in range(MAX_TRIES):
                changes = change(self.doc)
                if changes is None:
                    return False
                if not changes:
                    return True
                new = self.doc.model_copy(update={**changes, "updated_at": utcnow()})
                try:
                    self.etag = self.store.write_status(new, if_match=self.etag)
                    self.doc = new
                    return True
                except StatusConflict:
                    current, etag = self.store.read_status_tagged(self.doc.id)
                    if current is None or current.created_at != self.doc.created_at:
                        return False
                    self.doc, self.etag = current, etag
            raise StatusConflict(self.doc.id)

    def mark_notified(self) -> None:
        with self._lock:
            for _ in range(MAX_TRIES):
                if self.doc.notified_at is not None:
                    return
                new = self.doc.model_copy(update={"notified_at": utcnow()})
                try:
                    self.etag = self.store.write_status(new, if_match=self.etag)
                    self.doc = new
                    return
                except StatusConflict:
                    current, etag = self.store.read_status_tagged(self.doc.id)
                    if current is None or current.created_at != self.doc.created_at:
                        # Gone, or another job under the same id (its documents were removed and the id
                        # submitted again): the mark would tell the new job that its notification went out.
                        log.info("job %s: the status document is no longer this job's; not marking it notified",
                                 self.doc.id)
                        return
                    self.doc, self.etag = current, etag
