"""``POST /v1/jobs``: validate, store inline images and the message, write the ``queued`` status, publish to SNS.

The order matters for "nothing lost, nothing run twice": every check runs before the first write; inline images
and the message go under keys of this submission alone, so a concurrent request reusing the id overwrites nothing;
the status document is created atomically (If-None-Match) so an id is used once; if SNS surely has no message the
status document is removed again, so the client can simply retry; wherever the function dies, a retry with the
same id or the sweep publishes the job (``lambdas/outbox.py``, docs/api.md "Retrying a submit").
"""

from __future__ import annotations

import base64
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from lambdas import edits, outbox, schemas, steering, telemetry
from lambdas.body import parse_json
from lambdas.common import Deployment, deployment, error, raw_body, response, status_url
from lambdas.outbox import publish  # noqa: F401 - where callers found it before lambdas/outbox.py
from lambdas.sweep import SWEEP_BOUND_S
from runtime.config import Settings
from runtime.contract import (
    BUILTIN_INPUTS,
    BUILTIN_PIPELINES,
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
from runtime.contract.imagepaths import field_name, get_path, image_paths, key_name, set_path
from runtime.contract.images import decode_inline
from runtime.contract.jobs import expiry

log = logging.getLogger("spotgen.api")


def parse(body: bytes, dep: Deployment) -> tuple[JobRequest, dict[str, Any]]:
    """The request and its validated inputs (as plain JSON), or ContractError."""
    request = parse_request(parse_json(body))  # lambdas.body: the one parser every route shares
    return request, check(dep, request)


def check(dep: Deployment, request: JobRequest, webhook_field: str = "webhook.url") -> dict[str, Any]:
    """The request's inputs, validated as the pipeline's (image URLs fetched where allowed), or ContractError; the
    webhook's target checked first (an error names ``webhook_field``: where the route's body has it)."""
    settings = dep.settings
    edits.check_model(settings, request.pipeline, request.model)
    if request.webhook is not None:
        check_webhook(settings, request.webhook.url, webhook_field)
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
    if isinstance(inputs, GenerationInputs):  # an upscale job's model is an upscaler: no family, no LoRAs
        check_family(settings, request.model, inputs)
        steering.check(settings, request.model, inputs)
    edits.check_edits(settings, request.model, inputs)
    return inputs.model_dump(mode="json")


def check_webhook(settings: Settings, url: str, field: str = "webhook.url", resolve: Any = None) -> None:
    """ContractError naming ``field`` unless a webhook may go to ``url``: the allow-list and URL rules, and every
    address the host has now public (``runtime.storage.egress``, the rules of image URLs). The worker checks
    again when it sends (DNS may have changed since, and it connects only to the addresses it checked then), and
    never follows a redirect: a 3xx answer is a failed delivery (docs/api.md "Webhooks")."""
    from runtime.storage import egress  # httpcore loads only for a request with a webhook

    def refuse(why: str) -> ContractError:
        return ContractError("url_not_allowed", f"{field}: {why}", field)

    if not settings.webhook_allowed_hosts and not settings.webhook_loopback:
        raise refuse("webhooks are not accepted here (SPOTGEN_WEBHOOK_ALLOWED_HOSTS is empty)")
    try:
        parts = egress.webhook_target(url, settings.webhook_allowed_hosts, loopback=settings.webhook_loopback)
        host = str(parts.hostname)
        egress.vetted_addresses(host, parts.port or 443, resolve or egress.resolve_host,
                                time.monotonic() + settings.webhook_timeout_s,
                                allow_loopback=settings.webhook_loopback and host in egress.LOOPBACK_HOSTS)
    except egress.TargetRefused as exc:
        raise refuse(str(exc)) from None
    except egress.AddressRefused as exc:
        raise refuse(f"{exc}; webhooks must lead to public addresses only") from None
    except (OSError, egress.httpcore.TimeoutException) as exc:
        raise ContractError("invalid_field", f"{field}: could not resolve the host: {exc}", field) from None


def plugin_schemas(settings: Settings) -> schemas.PluginSchemas | None:
    """The deployment's plugin schema file (None when it ships none); ``Rejected`` with a 500 naming
    ``SPOTGEN_PLUGIN_SCHEMAS`` when it cannot be used: the deployment is wrong, and a retry will not help."""
    try:
        return schemas.plugin_schemas(settings)
    except schemas.Unavailable as exc:
        raise Rejected(error(500, "plugin_schemas_unavailable", str(exc))) from None


def fetch_image_urls(dep: Deployment, inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` with each ``https://`` image (a unit's and an adapter's too: ``image_paths``) fetched into inline
    base64, when hosts are allowed (else the URL stays, and the contract refuses it as before). The images of one
    request share one time budget."""
    urls = [path for path in image_paths(inputs) if get_path(inputs, path)[:8].lower() == "https://"]
    if not urls or not dep.settings.fetch_allowed_hosts:
        return inputs
    deadline = time.monotonic() + dep.settings.fetch_timeout_s
    fetched = inputs
    for path in urls:
        data = dep.fetch(get_path(inputs, path), field_name(path), max(0.001, deadline - time.monotonic()))
        fetched = set_path(fetched, path, base64.b64encode(data).decode("ascii"))
    return fetched


def check_family(settings: Settings, model: str, inputs: GenerationInputs) -> None:
    """What depends on the model's family (and variant), where the settings say it (the worker checks the rest):
    sizes, samplers, guidance and family-only inputs, the ControlNet's and each LoRA's family, and LoRA ids the API
    accepts."""
    family = settings.model_families.get(model)
    if family is not None:  # with the variant, so that guidance on Flux schnell is a 400 too
        for_family(inputs, family, variant=settings.model_variants.get(model))
    controlnet = getattr(inputs, "controlnet", None)
    if controlnet is not None:
        steering.same_family(settings, model, controlnet, "ControlNet", "incompatible_controlnet", "inputs.controlnet")
    for i, ref in enumerate(getattr(inputs, "loras", [])):
        field = f"inputs.loras.{i}.id"
        if ref.id not in settings.loras:
            raise ContractError("unknown_model", f"unknown LoRA {ref.id!r}; available: "
                                f"{', '.join(settings.loras) or 'none'}", field)
        steering.same_family(settings, model, ref.id, "LoRA", "incompatible_lora", field)


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


def existing_job(dep: Deployment, job_id: str, digest: str, now: datetime) -> Queued:
    """The job already created with this id. One that its submit never published is published here, once that
    submit cannot be running any more; before that, this request is told to retry (503 ``in_progress``, with
    Retry-After: a temporary state, which clients retry like any 503, spotgen's own included)."""
    doc, etag = dep.store.read_status_tagged(job_id)
    if doc is None:  # created and rolled back between our two reads; the client may retry
        raise Rejected(error(409, "conflict", f"job {job_id!r} is being submitted concurrently; retry", "id"))
    if doc.request_hash != digest:
        raise Rejected(error(409, "id_conflict", f"job id {job_id!r} was already used for a different request",
                             "id"))
    if doc.state is JobState.queued and doc.maybe_unpublished and outbox.pending(dep, doc) is not None:
        if not outbox.stranded(doc, now):
            # usually published within moments; at the latest (its submit died) by a retry after the window
            wait = min(5, max(1, int(outbox.WINDOW_S - (now - doc.created_at).total_seconds()) + 1))
            raise Rejected(error(503, "in_progress", f"job {job_id!r} is being submitted by another request; "
                                 f"retry with the same id in {wait} s", "id", **{"retry-after": str(wait)}))
        doc = outbox.recover(dep, doc, etag, now)
    return Queued(job_id, doc.seed, existing=True, state=doc.as_of(now).state)


def enqueue(dep: Deployment, request: JobRequest, inputs: dict[str, Any], *, now: datetime,
            expires_at: datetime | None, digest: str, sample: Callable[[str, int], SampleJob] | None = None,
            pool: str | None = None) -> Queued:
    """Store the inline images, create the ``queued`` status and publish the job; ``Rejected`` when it cannot be.
    A reused id with the same request (``digest``) is the job already queued. ``sample(id, seed)``: how a job of
    the AWS sample's API is announced, once its id and seed are known; ``pool``: the ``pool`` attribute. Without
    ``expires_at`` the job expires ``MAX_TTL_S`` after ``now`` (``expiry``)."""
    job_id = request.id or uuid.uuid4().hex
    try:
        return _enqueue(dep, request, job_id, inputs, now=now, expires_at=expires_at, digest=digest, sample=sample,
                        pool=pool)
    except (BotoCoreError, ClientError) as exc:
        raise Rejected(error(503, "enqueue_failed", f"could not store or queue job {job_id!r}; retry with the same "
                             f"id ({exc})")) from None


def _enqueue(dep: Deployment, request: JobRequest, job_id: str, inputs: dict[str, Any], *, now: datetime,
             expires_at: datetime | None, digest: str, sample: Callable[[str, int], SampleJob] | None,
             pool: str | None) -> Queued:
    # The order (docs/architecture.md): inputs and the message under this submission's own keys, then the status
    # (created atomically: one submission wins an id), then SNS, then the message deleted. Death after any step leaves
    # either nothing that can run, or a job a retry with the same id or the sweep publishes (lambdas/outbox.py).
    expires_at = expiry(now, expires_at)  # every job has a deadline, inside its queue message's retention
    if request.id and dep.store.read_status(job_id) is not None:
        return existing_job(dep, job_id, digest, now)
    submission = secrets.token_hex(8)
    seed = inputs.get("seed")
    if seed is None:
        seed = secrets.randbelow(2**32)
    if "seed" in getattr(BUILTIN_INPUTS.get(request.pipeline), "model_fields", {}):  # upscale takes no seed
        inputs["seed"] = seed
    stored = inputs
    for path in image_paths(inputs):  # the top-level images, each unit's and each adapter's
        ref = get_path(inputs, path)
        if not ref.startswith("s3://"):
            stored = set_path(stored, path, dep.store.put_input(job_id, key_name(path), decode_inline(ref), submission))
    inputs.update(stored)  # in place, as callers read the stored references back
    announce = sample(job_id, seed) if sample is not None else None
    document = None if request.pipeline in BUILTIN_PIPELINES else plugin_schemas(dep.settings)
    spec = JobSpec(id=job_id, pipeline=request.pipeline, model=request.model, inputs=inputs, seed=seed,
                   output_prefix=request.output_prefix or "outputs", context=request.context,
                   submitted_at=now, request_hash=digest, expires_at=expires_at, sample=announce,
                   schema_digest=document.digest(request.pipeline) if document is not None else None,
                   webhook=request.webhook)
    doc = StatusDoc(id=job_id, state=JobState.queued, pipeline=spec.pipeline, model=spec.model, seed=seed,
                    context=spec.context, loras=inputs.get("loras", []) if spec.pipeline in BUILTIN_PIPELINES else [],
                    request_hash=digest, created_at=now, updated_at=now, sample=announce,
                    expires_at=expires_at, trace_id=telemetry.trace_id(), submission=submission,
                    webhook=request.webhook)
    outbox.keep(dep, spec, pool, submission)
    etag = dep.store.create_status_tagged(doc)
    if etag is None:
        found, etag = dep.store.read_status_tagged(job_id)
        if found is None or found.submission != submission:  # another request's (ours: a create retried by botocore)
            dep.store.delete_pending(job_id, submission)
            return existing_job(dep, job_id, digest, now)
    published, exc = outbox.publish_tracked(dep, spec, pool)
    if published is outbox.Published.yes:
        try:
            outbox.finish(dep, doc)
        except (BotoCoreError, ClientError) as late:  # the job is queued; the sweep removes what is left
            log.warning("job %s: queued, but its pending message was not deleted (%s)", job_id, late)
        return Queued(job_id, seed, existing=False)
    if published is outbox.Published.unknown:
        raise Rejected(error(503, "enqueue_failed", f"could not confirm that job {job_id!r} was queued; retry "
                             f"with the same id: it runs once either way ({exc})"))
    try:  # SNS has no message: undo, so that the id is free and nothing runs
        dep.store.delete_status(job_id)
    except (BotoCoreError, ClientError):  # the undo may have happened all the same (its answer lost)
        raise Rejected(error(503, "enqueue_failed", f"could not queue job {job_id!r}, nor undo it; retry with the "
                             f"same id and it runs once (kept, it is queued within {SWEEP_BOUND_S} s even without) "
                             f"({exc})")) from None
    with contextlib.suppress(BotoCoreError, ClientError):  # else the sweep removes it
        dep.store.delete_pending(job_id, submission)
    raise Rejected(error(503, "enqueue_failed", f"could not enqueue the job, nothing was kept; retry ({exc})"))


def submit(dep: Deployment, body: bytes, now: datetime | None = None) -> dict[str, Any]:
    """The answer to one request (``now``: when it arrived, the function's start)."""
    now = now or utcnow()
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


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """API Gateway HTTP API (payload 2.0) entry point."""
    try:
        body = raw_body(event)
    except ValueError:
        return error(400, "invalid_body", "the request body is not valid base64", "body")
    with telemetry.span("spotgen.submit", "SERVER", event.get("headers")):
        return submit(deployment(), body)
