"""Jobs: the request a client sends (``JobRequest``) and the job a queue message carries (``JobSpec``).

The submit Lambda parses a request with ``parse_request`` and ``validate_inputs``; the worker validates the
``JobSpec`` again when the message arrives (the queue is never trusted).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, ValidationError, field_validator, model_validator

from runtime.contract.builtin import BUILTIN_INPUTS, BUILTIN_PIPELINES
from runtime.contract.errors import ContractError, raise_contract_error
from runtime.contract.inputs import ModelId, Strict
from runtime.contract.outputcheck import output_options
from runtime.contract.webhook import Webhook

CONTRACT_VERSION = 1

MAX_CONTEXT_BYTES = 4096
MAX_BODY_BYTES = 6 * 1024 * 1024
MAX_PLUGIN_INPUT_BYTES = 64 * 1024
#: The longest a job may wait for a worker: the latest deadline a request may give, and the deadline of a job that
#: gives none (``expiry``). The input bucket keeps inputs this long (lambdas/template.yaml).
MAX_TTL_S = 7 * 24 * 3600
#: How long the work queue keeps a message: SQS's maximum, the template's MessageRetentionPeriod (tests check both
#: against MAX_TTL_S). SQS drops an older message unseen, so a job not ended by then never will be.
QUEUE_RETENTION_S = 14 * 24 * 3600
#: The format of the plugin schema file (``spotgen pipeline schema``, read by the submit API).
PLUGIN_SCHEMAS_VERSION = 1

JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PIPELINE_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
OUTPUT_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")


#: First segments of the output bucket's keys that the runtime owns (status documents, checkpoints with their
#: short lifecycle rule, the ``/sdapi/v1`` callers' latest jobs): outputs under them would be mixed with, or
#: expire like, those.
RESERVED_OUTPUT_PREFIXES = ("jobs", "checkpoints", "callers")


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


def _context_any(value: Any) -> Any:
    if len(json.dumps(value, separators=(",", ":"))) > MAX_CONTEXT_BYTES:
        raise ValueError(f"context is larger than {MAX_CONTEXT_BYTES} bytes of JSON")
    return value


class JobRequest(Strict):
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
    #: Where to POST the job's events (docs/api.md "Webhooks"); the host must be allowed (the submit API checks).
    webhook: Webhook | None = None

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


def expiry(now: datetime, deadline: datetime | None) -> datetime:
    """When a job submitted at ``now`` expires: its own deadline, or ``MAX_TTL_S`` from now. Every job gets one,
    so that none waits for a worker past its queue message's retention: a worker that receives it late ends it
    ``expired``, and the status shows ``expired`` when none ever does (``StatusDoc.as_of``)."""
    return deadline if deadline is not None else now + timedelta(seconds=MAX_TTL_S)


#: Bytes of JSON a sample job's ``parameters`` and ``info`` may take each (WebUI's echo of the request, images
#: left out), so that the queue message stays far below SQS's 256 KiB.
MAX_SAMPLE_ECHO_BYTES = 32 * 1024


def _bounded_echo(value: Any) -> Any:
    if len(json.dumps(value, separators=(",", ":"))) > MAX_SAMPLE_ECHO_BYTES:
        raise ValueError(f"larger than {MAX_SAMPLE_ECHO_BYTES} bytes of JSON")
    return value


class SampleJob(Strict):
    """How a job that came in through the AWS sample's API (``/v1alpha1``, ``/v1alpha2``) ends: the sample's
    notification instead of spotgen's, and its ``.out`` document under ``location``. Everything in it is decided
    by the API (the seed too), so the worker writes it without knowing WebUI's rules."""

    api_version: str = Field(pattern=r"^v1alpha[12]$")
    #: The notification's ``runtime``.
    runtime: str = Field(min_length=1, max_length=64)
    #: Echoed in the notification as the client sent it: any JSON value (the sample's own files send "").
    context: Annotated[Any, AfterValidator(_context_any)] = Field(default_factory=dict)
    #: ``PREFIX/ID``: the images and the ``.out`` document lie under it (``output_url`` is ``location/ID.out``).
    location: str = Field(max_length=200, pattern=OUTPUT_PREFIX_RE.pattern)
    #: WebUI's ``parameters`` and ``info`` of the request, for the ``.out`` document.
    parameters: Annotated[dict[str, Any], AfterValidator(_bounded_echo)] = Field(default_factory=dict)
    info: Annotated[dict[str, Any], AfterValidator(_bounded_echo)] = Field(default_factory=dict)


class JobSpec(Strict):
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
    #: Set for a job of the AWS sample's API: it ends with the sample's notification and ``.out`` document.
    sample: SampleJob | None = None
    #: A plugin job the API validated against a schema of ``spotgen pipeline schema``: that schema's digest
    #: (``schema_digest``). A worker whose pipeline ``Inputs`` have another digest fails the job (``schema_mismatch``)
    #: instead of judging the inputs by rules the API did not apply. None: built-ins, and plugins without a schema.
    schema_digest: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    #: The request's webhook (the worker sends its events; the status document has it too).
    webhook: Webhook | None = None

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


def request_hash(request: JobRequest) -> str:
    """Hash of what the client asked for (not the id), to tell a true resubmission from a reused id."""
    body = request.model_dump(mode="json", exclude={"id"})
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def schema_digest(schema: dict[str, Any]) -> str:
    """sha256 of a JSON schema as canonical JSON (sorted keys, no spaces), so that the API's schema file and a
    worker's ``Inputs`` name the same schema with the same digest however either was formatted."""
    return hashlib.sha256(json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def parse_request(data: Any) -> JobRequest:
    """The request, validated as strict JSON: every number, boolean and string must have its JSON type ("64"
    for an integer, true for an integer or 1 for a string is refused, naming the field). pydantic's JSON mode
    is what keeps ISO dates and enum values, which JSON can only send as strings, valid in strict mode."""
    if not isinstance(data, dict):
        raise ContractError("invalid_body", "the request body must be a JSON object", "body")
    try:
        return JobRequest.model_validate_json(json.dumps(data), strict=True)
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
            return BUILTIN_INPUTS[pipeline].model_validate_json(json.dumps(inputs), strict=True,
                                                               context={"input_bucket": input_bucket})
        except ValidationError as exc:
            raise_contract_error(exc, "inputs")
    if pipeline in extra_pipelines:
        if len(json.dumps(inputs)) > MAX_PLUGIN_INPUT_BYTES:
            raise ContractError("invalid_field", f"inputs are larger than {MAX_PLUGIN_INPUT_BYTES} bytes", "inputs")
        output_options(inputs)  # the runtime encodes every pipeline's outputs: its fields are checked here
        return inputs
    known = ", ".join(sorted(set(BUILTIN_PIPELINES) | extra_pipelines))
    raise ContractError("unknown_pipeline", f"unknown pipeline {pipeline!r}; known pipelines: {known}", "pipeline")
