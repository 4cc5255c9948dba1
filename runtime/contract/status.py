"""What a client reads back: the status document, its parts, and the notification on the results topic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from runtime.contract.formats import content_type_of
from runtime.contract.inputs import LoraRef
from runtime.contract.jobs import CONTRACT_VERSION, QUEUE_RETENTION_S, SampleJob
from runtime.contract.webhook import Webhook, WebhookAttempt, WebhookDelivery

#: How long after its deadline a job still ``queued`` is shown ``expired``: a worker that took it just before the
#: deadline shows it ``running`` within moments; after that no worker starts it (the worker's own deadline check).
EXPIRY_GRACE_S = 15 * 60


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    #: An attempt failed for a reason that may pass (storage, a model file, memory, the device): the job waits for
    #: its next delivery; ``error`` says why.
    retrying = "retrying"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    expired = "expired"

    @property
    def final(self) -> bool:
        return self not in (JobState.queued, JobState.running, JobState.retrying)


class Progress(BaseModel):
    """Steps done of all the job's steps. A job of several passes (hires fix, the refiner) counts one total over
    them all, and ``phase`` names the pass the steps are in (``base``, ``refiner``, ``hires``, or a plugin's own
    names); None for a job of one pass, and then left out of the document, as it was before passes existed."""

    step: int = 0
    total: int = 0
    phase: str | None = None

    @model_serializer(mode="wrap")
    def _without_no_phase(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("phase") is None:
            data.pop("phase", None)
        return data


class JobErrorInfo(BaseModel):
    code: str
    message: str
    field: str | None = None


class ResumeInfo(BaseModel):
    """How the latest attempt started: where it picked up, and why there if not at the last step done."""

    attempt: int
    from_step: int
    note: str = ""


class StatusDoc(BaseModel):
    """The status document kept at ``jobs/{id}/status.json`` in the output bucket."""

    model_config = ConfigDict(extra="ignore")

    version: int = CONTRACT_VERSION
    id: str
    state: JobState
    pipeline: str
    model: str
    seed: int
    progress: Progress = Field(default_factory=Progress)
    outputs: list[str] = Field(default_factory=list)
    error: JobErrorInfo | None = None
    context: dict[str, Any] | None = None
    #: The LoRA adapters the job applies, with their weights (built-in pipelines; also in each PNG's parameters).
    loras: list[LoraRef] = Field(default_factory=list)
    #: While running: ``loading_model`` until the model is in memory, then ``generating``.
    phase: str | None = None
    #: ``hit`` when the job's model was already loaded in the worker's memory (tier 2), ``miss`` otherwise.
    model_cache: str | None = None
    #: Deliveries that ran the job (an interruption makes one more).
    attempts: int = 0
    interruptions: int = 0
    resume: ResumeInfo | None = None
    request_hash: str = ""
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = None
    #: Set by ``POST /v1/jobs/{id}/cancel`` on a running job; the worker stops within one step.
    cancel_requested_at: datetime | None = None
    #: Set once the results topic has the job's notification (so a redelivery never sends a second).
    notified_at: datetime | None = None
    #: Set by the delivery that is about to notify: another delivery of the same job (SQS delivers at least
    #: once) leaves the notification to it, unless this claim is older than the claimer could need.
    notify_claimed_at: datetime | None = None
    #: A job of the AWS sample's API: how it is announced (``runtime.contract.jobs.SampleJob``).
    sample: SampleJob | None = None
    #: The request's trace (W3C trace id, 32 hex digits): look it up in the tracing backend, grep the logs for it.
    trace_id: str | None = None
    #: The submit request that created the job (a random token): its inline inputs are under
    #: ``inputs/{id}/{submission}/``, its message under ``pending/{id}/{submission}.json`` until it is published.
    submission: str | None = None
    #: The request's webhook; ``webhooks`` says where each of its events stands (by event), ``webhook_attempts``
    #: what each POST got (the latest ``MAX_RECORDED_ATTEMPTS``).
    webhook: Webhook | None = None
    webhooks: dict[str, WebhookDelivery] = Field(default_factory=dict)
    webhook_attempts: list[WebhookAttempt] = Field(default_factory=list)

    @property
    def maybe_unpublished(self) -> bool:
        """Created by a submit that may have died before SNS took its message (docs/architecture.md), and no worker
        has had it yet (a worker's first write records an attempt). Whether it was published is told by its
        pending message (``pending/{id}/{submission}.json``), which its submit deletes once SNS has the message."""
        return self.submission is not None and self.attempts == 0

    def as_of(self, now: datetime) -> StatusDoc:
        """The document as the API shows it at ``now``. A job can end without any worker writing so: one whose
        deadline passed while it was ``queued`` never starts (a worker that receives it ends it ``expired``, and in
        a spot drought none may before SQS drops its message), and one not ended ``QUEUE_RETENTION_S`` after its
        submission has no message left to run it. Both are shown ``expired`` instead of waiting for ever."""
        if self.state.final:
            return self
        if self.state is JobState.queued and self.expires_at is not None and \
                now >= self.expires_at + timedelta(seconds=EXPIRY_GRACE_S):
            message = f"the job's deadline {self.expires_at.isoformat()} passed before a worker could start it"
            ended = self.expires_at
        elif now >= self.created_at + timedelta(seconds=QUEUE_RETENTION_S):
            message = (f"the job did not end within {QUEUE_RETENTION_S // 86400} days of its submission, how long the "
                       "work queue keeps its message")
            ended = self.created_at + timedelta(seconds=QUEUE_RETENTION_S)
        else:
            return self
        return self.model_copy(update={"state": JobState.expired, "phase": None, "finished_at": ended,
                                       "error": JobErrorInfo(code="expired", message=message, field="expires_at")})


class Notification(BaseModel):
    """What the results topic receives when a job ends."""

    id: str
    state: JobState
    outputs: list[str]
    #: Each output's content type, in the order of ``outputs`` (``image/png``, ``image/webp``, ``image/jpeg``).
    content_types: list[str] = Field(default_factory=list)
    error: JobErrorInfo | None = None
    context: dict[str, Any] | None = None


def utcnow() -> datetime:
    return datetime.now(UTC)


class OutputLink(BaseModel):
    """One output as the API answers it: its key in the output bucket, a presigned URL to download it, and its
    content type (answers of older deployments have none: it is then the key's, ``content_type_of``)."""

    key: str
    url: str
    content_type: str = ""

    @model_validator(mode="after")
    def _typed(self) -> OutputLink:
        if not self.content_type:
            object.__setattr__(self, "content_type", content_type_of(self.key))
        return self


class JobStatus(StatusDoc):
    """A status document as ``GET /v1/jobs/{id}`` (and cancel) answer it: outputs as links, and where to ask
    again. Clients parse answers with this, so they read exactly the fields the worker writes."""

    outputs: list[OutputLink] = Field(default_factory=list)  # type: ignore[assignment]
    status_url: str = ""
