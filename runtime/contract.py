"""The job contract: one schema shared by the HTTP API, the queue message and the worker.

It imports pydantic and the standard library only, so the Lambda producers validate requests with exactly
the rules the worker applies again when a message arrives (the queue is never trusted). Bump
``CONTRACT_VERSION`` when a change is not backwards compatible; workers refuse versions they do not know.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from runtime.images import ImageRefError, check_ref

CONTRACT_VERSION = 1

MAX_SIDE = 2048
MAX_PIXELS = 1536 * 1536
MAX_STEPS = 150
MAX_IMAGES = 8
MAX_GUIDANCE = 30.0
MAX_PROMPT_CHARS = 2000
MAX_CONTEXT_BYTES = 4096
MAX_BODY_BYTES = 6 * 1024 * 1024
MAX_PLUGIN_INPUT_BYTES = 64 * 1024
MAX_TTL_S = 7 * 24 * 3600

#: Scheduler names a request may ask for; the worker maps each to a diffusers scheduler class.
SCHEDULERS = ("ddim", "euler", "euler_a", "dpmpp_2m", "unipc", "pndm", "lms")
Scheduler = Literal["ddim", "euler", "euler_a", "dpmpp_2m", "unipc", "pndm", "lms"]
BUILTIN_PIPELINES = ("txt2img", "img2img", "controlnet")

JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MODEL_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
PIPELINE_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
OUTPUT_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")


class ContractError(ValueError):
    """A request or message that breaks the contract: a code, a message and the field at fault."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "field": self.field}


def _model_id(value: str) -> str:
    if "/" in value or "\\" in value or ".." in value or value.startswith("."):
        raise ValueError("a model id names a catalog entry, not a path")
    if not MODEL_ID_RE.match(value):
        raise ValueError("a model id is 1-64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter "
                         "or digit")
    return value


ModelId = Annotated[str, AfterValidator(_model_id)]


def _image_ref(value: str, info: ValidationInfo) -> str:
    bucket = (info.context or {}).get("input_bucket")
    try:
        return check_ref(value, bucket)
    except ImageRefError as exc:
        raise ValueError(str(exc)) from None


ImageRef = Annotated[str, Field(min_length=1), AfterValidator(_image_ref)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GenerationInputs(_Strict):
    """Inputs every built-in diffusers pipeline takes."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    width: int = Field(512, ge=8, le=MAX_SIDE)
    height: int = Field(512, ge=8, le=MAX_SIDE)
    steps: int = Field(30, ge=1, le=MAX_STEPS)
    guidance_scale: float = Field(7.5, ge=0.0, le=MAX_GUIDANCE)
    seed: int | None = Field(None, ge=0, lt=2**32)
    scheduler: Scheduler = "euler"
    num_images: int = Field(1, ge=1, le=MAX_IMAGES)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be a multiple of 8")
        return value

    @model_validator(mode="after")
    def _pixel_budget(self) -> GenerationInputs:
        if self.width * self.height > MAX_PIXELS:
            raise ValueError(f"width x height is {self.width * self.height} pixels, above the budget of "
                             f"{MAX_PIXELS}")
        return self


class Txt2ImgInputs(GenerationInputs):
    pass


class Img2ImgInputs(GenerationInputs):
    image: ImageRef
    strength: float = Field(0.75, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _runs_a_step(self) -> Img2ImgInputs:
        # img2img denoises int(steps * strength) steps; zero steps is an error deep inside diffusers.
        if int(self.steps * self.strength) < 1:
            raise ValueError(f"steps x strength must be at least 1 (it is {self.steps} x {self.strength})")
        return self


class ControlNetInputs(GenerationInputs):
    control_image: ImageRef
    controlnet: ModelId
    controlnet_conditioning_scale: float = Field(1.0, ge=0.0, le=2.0)


BUILTIN_INPUTS: dict[str, type[GenerationInputs]] = {
    "txt2img": Txt2ImgInputs,
    "img2img": Img2ImgInputs,
    "controlnet": ControlNetInputs,
}
#: Fields of built-in inputs that hold image references (moved to S3 by the submit Lambda).
IMAGE_FIELDS = ("image", "control_image")


#: First segments of the output bucket's keys that the runtime owns (status documents, checkpoints with their
#: short lifecycle rule): outputs under them would be mixed with, or expire like, those.
RESERVED_OUTPUT_PREFIXES = ("jobs", "checkpoints")


def _output_prefix(value: str | None) -> str | None:
    if value is not None and value.split("/", 1)[0] in RESERVED_OUTPUT_PREFIXES:
        raise ValueError(f"'{value.split('/', 1)[0]}/' is reserved for the runtime's own documents; choose another "
                         "first directory")
    return value


OutputPrefix = Annotated[str, AfterValidator(_output_prefix)]


def _context(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None and len(json.dumps(value, separators=(",", ":"))) > MAX_CONTEXT_BYTES:
        raise ValueError(f"context is larger than {MAX_CONTEXT_BYTES} bytes of JSON")
    return value


class JobRequest(_Strict):
    """The body of ``POST /v1/jobs``."""

    id: str | None = Field(None, pattern=JOB_ID_RE.pattern)
    pipeline: str = Field(pattern=PIPELINE_NAME_RE.pattern)
    model: ModelId
    inputs: dict[str, Any] = Field(default_factory=dict)
    output_prefix: OutputPrefix | None = Field(None, max_length=128, pattern=OUTPUT_PREFIX_RE.pattern)
    context: Annotated[dict[str, Any] | None, AfterValidator(_context)] = None
    #: A deadline: a job that reaches a worker after it ends as ``expired`` without running.
    expires_at: datetime | None = None
    ttl_seconds: int | None = Field(None, ge=1, le=MAX_TTL_S)

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-01-01T12:00:00Z")
        return value

    @model_validator(mode="after")
    def _one_deadline(self) -> JobRequest:
        if self.expires_at is not None and self.ttl_seconds is not None:
            raise ValueError("give expires_at or ttl_seconds, not both")
        return self

    def deadline(self, now: datetime) -> datetime | None:
        """When the job expires, or None; ContractError if that is already past or too far away."""
        if self.ttl_seconds is not None:
            return now + timedelta(seconds=self.ttl_seconds)
        if self.expires_at is None:
            return None
        if self.expires_at <= now:
            raise ContractError("invalid_field", "expires_at: the deadline is already past", "expires_at")
        if self.expires_at > now + timedelta(seconds=MAX_TTL_S):
            raise ContractError("invalid_field", f"expires_at: the deadline is more than {MAX_TTL_S} s away",
                                "expires_at")
        return self.expires_at


class JobSpec(_Strict):
    """The normalized job as it travels on the queue: validated, images in S3, seed chosen."""

    version: int = CONTRACT_VERSION
    id: str = Field(pattern=JOB_ID_RE.pattern)
    pipeline: str = Field(pattern=PIPELINE_NAME_RE.pattern)
    model: ModelId
    inputs: dict[str, Any]
    seed: int = Field(ge=0, lt=2**32)
    output_prefix: OutputPrefix = Field(max_length=128, pattern=OUTPUT_PREFIX_RE.pattern)
    context: Annotated[dict[str, Any] | None, AfterValidator(_context)] = None
    submitted_at: datetime
    request_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    expires_at: datetime | None = None

    def fingerprint(self) -> str:
        """What a checkpoint must have been made from: this job, these inputs, this model and seed."""
        body = self.model_dump(mode="json", include={"id", "pipeline", "model", "inputs", "seed", "version"})
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != CONTRACT_VERSION:
            raise ValueError(f"contract version {value} is not supported (this code speaks {CONTRACT_VERSION})")
        return value


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    expired = "expired"

    @property
    def final(self) -> bool:
        return self not in (JobState.queued, JobState.running)


class Progress(BaseModel):
    step: int = 0
    total: int = 0


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
    #: The request's trace (W3C trace id, 32 hex digits): look it up in the tracing backend, grep the logs for it.
    trace_id: str | None = None


class Notification(BaseModel):
    """What the results topic receives when a job ends."""

    id: str
    state: JobState
    outputs: list[str]
    error: JobErrorInfo | None = None
    context: dict[str, Any] | None = None


def utcnow() -> datetime:
    return datetime.now(UTC)


def request_hash(request: JobRequest) -> str:
    """Hash of what the client asked for (not the id), to tell a true resubmission from a reused id."""
    body = request.model_dump(mode="json", exclude={"id"})
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _field_path(prefix: str, loc: tuple[Any, ...]) -> str:
    parts = [prefix] if prefix else []
    parts += [str(p) for p in loc if p != "__root__"]
    return ".".join(parts) or "body"


def raise_contract_error(exc: ValidationError, prefix: str = "") -> None:
    """Turn pydantic's first error into a ContractError naming the field."""
    err = exc.errors(include_url=False)[0]
    loc = err.get("loc", ())
    field = _field_path(prefix, loc)
    if err["type"] == "extra_forbidden":
        raise ContractError("unknown_field", f"unknown field {field!r}", field) from None
    if err["type"] == "missing":
        raise ContractError("missing_field", f"{field!r} is required", field) from None
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "literal_error" and loc and loc[-1] == "scheduler":
        message = f"unknown scheduler; choose one of {', '.join(SCHEDULERS)}"
    raise ContractError("invalid_field", f"{field}: {message}", field) from None


def parse_request(data: Any) -> JobRequest:
    if not isinstance(data, dict):
        raise ContractError("invalid_body", "the request body must be a JSON object", "body")
    try:
        return JobRequest.model_validate(data)
    except ValidationError as exc:
        raise_contract_error(exc)
        raise  # unreachable


def validate_inputs(
    pipeline: str,
    inputs: dict[str, Any],
    *,
    input_bucket: str | None,
    extra_pipelines: frozenset[str] = frozenset(),
) -> BaseModel | dict[str, Any]:
    """Validate inputs for a built-in pipeline; a plugin's inputs are only bounded here (its worker checks them)."""
    if pipeline in BUILTIN_INPUTS:
        try:
            return BUILTIN_INPUTS[pipeline].model_validate(inputs, context={"input_bucket": input_bucket})
        except ValidationError as exc:
            raise_contract_error(exc, "inputs")
    if pipeline in extra_pipelines:
        if len(json.dumps(inputs)) > MAX_PLUGIN_INPUT_BYTES:
            raise ContractError("invalid_field", f"inputs are larger than {MAX_PLUGIN_INPUT_BYTES} bytes", "inputs")
        return inputs
    known = ", ".join(sorted(set(BUILTIN_PIPELINES) | extra_pipelines))
    raise ContractError("unknown_pipeline", f"unknown pipeline {pipeline!r}; known pipelines: {known}", "pipeline")
