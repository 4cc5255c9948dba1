"""``POST /v1/jobs``: validate, store inline images, write the ``queued`` status, publish to SNS.

The order matters for "nothing lost or half-written": every check runs before the first write; the status
document is created atomically (If-None-Match) so an id is used once; if publishing fails the status
document is removed again, so the client can simply retry.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from lambdas import schemas, telemetry
from lambdas.common import Deployment, deployment, error, raw_body, response, status_url
from runtime.config import Settings
from runtime.contract import (
    BUILTIN_PIPELINES,
    IMAGE_FIELDS,
    MAX_BODY_BYTES,
    ContractError,
    GenerationInputs,
    JobRequest,
    JobSpec,
    JobState,
    SampleJob,
    StatusDoc,
    for_family,
    parse_request,
    request_hash,
    utcnow,
    validate_inputs,
)
from runtime.contract.envelope import build_celery_message
from runtime.contract.images import decode_inline
from runtime.contract.jobs import expiry
from runtime.storage.jobstore import status_key


def parse(body: bytes, dep: Deployment) -> tuple[JobRequest, dict[str, Any]]:
    """The request and its validated inputs (as plain JSON), or ContractError."""
    if len(body) > MAX_BODY_BYTES:
        raise ContractError("body_too_large", f"the request body is larger than {MAX_BODY_BYTES} bytes", "body")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ContractError("invalid_json", "the request body is not valid JSON", "body") from None
    request = parse_request(data)
    return request, check(dep, request)


def check(dep: Deployment, request: JobRequest) -> dict[str, Any]:
    """The request's inputs, validated as the pipeline's (image URLs fetched where allowed), or ContractError."""
    settings = dep.settings
    if request.model not in settings.models:
        raise ContractError("unknown_model", f"unknown model {request.model!r}; available: "
                            f"{', '.join(settings.models)}", "model")
    raw = fetch_image_urls(dep, request.inputs) if request.pipeline in BUILTIN_PIPELINES else request.inputs
    inputs = validate_inputs(request.pipeline, raw, input_bucket=settings.input_bucket,
                             extra_pipelines=frozenset(settings.extra_pipelines))
    if isinstance(inputs, dict):  # a plugin's: checked against its schema where the deployment ships one
        document = plugin_schemas(settings)
        if document is not None:
            document.validate(request.pipeline, inputs)
        return inputs
    controlnet = getattr(inputs, "controlnet", None)
    if controlnet is not None and controlnet not in settings.controlnets:
        raise ContractError("unknown_model", f"unknown ControlNet model {controlnet!r}; available: "
                            f"{', '.join(settings.controlnets)}", "inputs.controlnet")
    check_family(settings, request.model, inputs)
    return inputs.model_dump(mode="json")


def plugin_schemas(settings: Settings) -> schemas.PluginSchemas | None:
    """The deployment's plugin schema file (None when it ships none); ``Rejected`` with a 500 naming
    ``SPOTGEN_PLUGIN_SCHEMAS`` when it cannot be used: the deployment is wrong, and a retry will not help."""
    try:
        return schemas.plugin_schemas(settings)
    except schemas.Unavailable as exc:
        raise Rejected(error(500, "plugin_schemas_unavailable", str(exc))) from None


def fetch_image_urls(dep: Deployment, inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` with each ``https://`` image fetched into inline base64, when hosts are allowed (else the URL
    stays, and the contract refuses it as before). The images of one request share one time budget."""
    urls = {name: ref for name in IMAGE_FIELDS if isinstance(ref := inputs.get(name), str)
            and ref[:8].lower() == "https://"}
    if not urls or not dep.settings.fetch_allowed_hosts:
        return inputs
    deadline = time.monotonic() + dep.settings.fetch_timeout_s
    fetched = dict(inputs)
    for name, url in urls.items():
        data = dep.fetch(url, f"inputs.{name}", max(0.001, deadline - time.monotonic()))
        fetched[name] = base64.b64encode(data).decode("ascii")
    return fetched


def check_family(settings: Settings, model: str, inputs: GenerationInputs) -> None:
    """What depends on the model's family, where the settings say it (the worker checks the rest): sizes and
    SDXL-only inputs, the ControlNet's and each LoRA's family, and LoRA ids the API accepts."""
    families = settings.model_families
    family = families.get(model)
    if family is not None:
        for_family(inputs, family)
    controlnet = getattr(inputs, "controlnet", None)
    if family and controlnet in families and families[controlnet] != family:
        raise ContractError("incompatible_controlnet", f"ControlNet {controlnet!r} is for {families[controlnet]} "
                            f"models and {model!r} is a {family} model", "inputs.controlnet")
    for i, ref in enumerate(inputs.loras):
        field = f"inputs.loras.{i}.id"
        if ref.id not in settings.loras:
            raise ContractError("unknown_model", f"unknown LoRA {ref.id!r}; available: "
                                f"{', '.join(settings.loras) or 'none'}", field)
        if family and ref.id in families and families[ref.id] != family:
            raise ContractError("incompatible_lora", f"LoRA {ref.id!r} is for {families[ref.id]} models and "
                                f"{model!r} is a {family} model", field)


class Rejected(Exception):
    """The request cannot be queued (now); ``response`` says why, as every route answers errors."""

    def __init__(self, response: dict[str, Any]) -> None:
        super().__init__(response.get("body"))
        self.response = response


@dataclass(frozen=True)
class Queued:
    """A job that is queued, or was already: its id and seed, and whether this request created it."""

    job_id: str
    seed: int
    existing: bool
    state: JobState = JobState.queued


def existing_job(dep: Deployment, job_id: str, digest: str) -> Queued:
    doc = dep.store.read_status(job_id)
    if doc is None:  # created and rolled back between our two reads; the client may retry
        raise Rejected(error(409, "conflict", f"job {job_id!r} is being submitted concurrently; retry", "id"))
    if doc.request_hash != digest:
        raise Rejected(error(409, "id_conflict", f"job id {job_id!r} was already used for a different request",
                             "id"))
    return Queued(job_id, doc.seed, existing=True, state=doc.as_of(utcnow()).state)


def enqueue(dep: Deployment, request: JobRequest, inputs: dict[str, Any], *, now: datetime,
            expires_at: datetime | None, digest: str, sample: Callable[[str, int], SampleJob] | None = None,
            pool: str | None = None) -> Queued:
    """Store the inline images, create the ``queued`` status and publish the job; ``Rejected`` when it cannot be.
    A reused id with the same request (``digest``) is the job already queued. ``sample(id, seed)``: how a job of
    the AWS sample's API is announced, once its id and seed are known; ``pool``: the ``pool`` attribute. Without
    ``expires_at`` the job expires ``MAX_TTL_S`` after ``now`` (``expiry``)."""
    job_id = request.id or uuid.uuid4().hex
    expires_at = expiry(now, expires_at)  # every job has a deadline, inside its queue message's retention
    if request.id and dep.store.read_status(job_id) is not None:
        return existing_job(dep, job_id, digest)
    seed = inputs.get("seed")
    if seed is None:
        seed = secrets.randbelow(2**32)
    if request.pipeline in BUILTIN_PIPELINES:
        inputs["seed"] = seed
    for name in IMAGE_FIELDS:
        ref = inputs.get(name)
        if isinstance(ref, str) and not ref.startswith("s3://"):
            inputs[name] = dep.store.put_input(job_id, name, decode_inline(ref))
    announce = sample(job_id, seed) if sample is not None else None
    document = None if request.pipeline in BUILTIN_PIPELINES else plugin_schemas(dep.settings)
    spec = JobSpec(id=job_id, pipeline=request.pipeline, model=request.model, inputs=inputs, seed=seed,
                   output_prefix=request.output_prefix or "outputs", context=request.context,
                   submitted_at=now, request_hash=digest, expires_at=expires_at, sample=announce,
                   schema_digest=document.digest(request.pipeline) if document is not None else None)
    doc = StatusDoc(id=job_id, state=JobState.queued, pipeline=spec.pipeline, model=spec.model, seed=seed,
                    context=spec.context, loras=inputs.get("loras", []) if spec.pipeline in BUILTIN_PIPELINES else [],
                    request_hash=digest, created_at=now, updated_at=now, sample=announce,
                    expires_at=expires_at, trace_id=telemetry.trace_id())
    if not dep.store.create_status(doc):
        return existing_job(dep, job_id, digest)
    try:
        publish(dep, spec, pool)
    except (BotoCoreError, ClientError) as exc:
        dep.store.s3.delete_object(Bucket=dep.store.output_bucket, Key=status_key(job_id))
        raise Rejected(error(503, "enqueue_failed", f"could not enqueue the job, nothing was kept; retry ({exc})")) \
            from None
    return Queued(job_id, seed, existing=False)


def submit(dep: Deployment, body: bytes) -> dict[str, Any]:
    now = utcnow()
    try:
        request, inputs = parse(body, dep)
        expires_at = request.deadline(now)  # a deadline already past is refused before anything is written
    except ContractError as exc:
        return error(400, exc.code, exc.message, exc.field)
    except Rejected as rejected:
        return rejected.response
    try:
        queued = enqueue(dep, request, inputs, now=now, expires_at=expires_at, digest=request_hash(request))
    except Rejected as rejected:
        return rejected.response
    answer = {"id": queued.job_id, "status": "queued", "seed": queued.seed,
              "status_url": status_url(dep.settings, queued.job_id)}
    if queued.existing:
        return response(200, {**answer, "status": queued.state, "existing": True})
    return response(202, answer)


def publish(dep: Deployment, spec: JobSpec, pool: str | None = None) -> None:
    """One SNS message: a Celery task message as body, routing attributes for the subscription filters. The
    message headers carry the trace (``traceparent``), which the worker's Celery instrumentation continues."""
    with telemetry.span("spotgen.publish", "PRODUCER", job_id=spec.id, pipeline=spec.pipeline, model=spec.model):
        # Without a digest the field is left out, so that workers of the version before it (which refuse fields
        # they do not know) still take every job while an upgrade rolls out.
        job = spec.model_dump(mode="json", exclude={"schema_digest"} if spec.schema_digest is None else None)
        body = build_celery_message(spec.id, [job], queue=dep.settings.queue_name, extra_headers=telemetry.carrier())
        attributes = {
            "pipeline": {"DataType": "String", "StringValue": spec.pipeline},
            "model": {"DataType": "String", "StringValue": spec.model},
            "job_id": {"DataType": "String", "StringValue": spec.id},
            "contract_version": {"DataType": "Number", "StringValue": str(spec.version)},
        }
        if pool:  # a runtime's own worker pool: an SNS filter policy on it routes the job (docs/deploy.md)
            attributes["pool"] = {"DataType": "String", "StringValue": pool}
        dep.sns.publish(TopicArn=dep.settings.jobs_topic_arn, Message=body, MessageAttributes=attributes)


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """API Gateway HTTP API (payload 2.0) entry point."""
    try:
        body = raw_body(event)
    except ValueError:
        return error(400, "invalid_body", "the request body is not valid base64", "body")
    with telemetry.span("spotgen.submit", "SERVER", event.get("headers")):
        return submit(deployment(), body)
