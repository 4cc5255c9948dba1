"""``POST /sdapi/v1/extra-single-image`` and ``extra-batch-images``: SD WebUI's extras, answered synchronously.

Each image becomes an ``upscale`` job (``runtime.contract.extras``), checked and queued as ``POST /v1/jobs``
queues one; every image of a batch is checked before the first is queued, so a bad one queues nothing. The
answer waits for the jobs as ``/sdapi/v1/txt2img`` does (``sdapi.wait``, up to ``SPOTGEN_SYNC_WAIT_S``; a wait
that runs out is a 504 naming the jobs' status URLs), and is refused before anything is queued when its images
could exceed Lambda's 6 MB response (``upscaling_resize``, or ``imageList`` for a batch, named). The jobs do not
become the caller's latest job for ``progress``/``interrupt``: they are short and have no steps.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError

from lambdas import compat
from lambdas.body import parse_json
from lambdas.common import Deployment, error, raw_body, response
from lambdas.submit import Queued, Rejected, check, enqueue
from runtime.contract import ContractError, JobRequest, JobState, StatusDoc, raise_contract_error, request_hash, utcnow
from runtime.contract.edits import UpscaleInputs, upscale_size
from runtime.contract.extras import ExtrasJob, extras_error, extras_html_info, extras_jobs, upscaler_names
from runtime.contract.images import decode_inline
from runtime.contract.webui_answer import LAMBDA_RESPONSE_BYTES, base64_bytes, png_bytes_bound

#: The routes, under ``/sdapi/v1/`` (POST), and whether each takes a batch.
ROUTES = {"extra-single-image": False, "extra-batch-images": True}
#: Stands for the S3 URI an inline image becomes in the output's parameters text (far longer than any).
_URI_PLACEHOLDER = "s3://" + "x" * 1019
Wait = Callable[[Deployment, str, float], "StatusDoc | None"]


def names(dep: Deployment) -> dict[str, str]:
    """The WebUI upscaler names this deployment serves (``runtime.contract.extras.upscaler_names``)."""
    return upscaler_names(dep.settings.upscalers, dep.settings.aliases)


def _checked(dep: Deployment, job: ExtrasJob) -> tuple[JobRequest, dict[str, Any]]:
    try:
        request = JobRequest.model_validate({"pipeline": "upscale", "model": job.model, "inputs": dict(job.inputs)})
    except ValidationError as exc:
        raise_contract_error(exc)
    try:
        return request, check(dep, request)
    except ContractError as exc:
        raise extras_error(exc, job) from None


def _answer_bytes(job: ExtrasJob, inputs: dict[str, Any]) -> int:
    """The most bytes the job's image takes in the answer: its PNG's worst case in base64, with the parameters
    text the worker writes into it. An ``s3://`` image (spotgen's, not WebUI's) is not read here: not counted."""
    ref = job.inputs["image"]
    if ref.lower().startswith("s3://"):
        return 0
    image = decode_inline(ref)
    width, height = upscale_size(UpscaleInputs.model_construct(**inputs), image.width, image.height)
    text = {"pipeline": "upscale", "model": job.model, "seed": 4_000_000_000, "index": 0,
            **inputs, "image": _URI_PLACEHOLDER}
    return base64_bytes(png_bytes_bound(width, height, compat.text_bound(len(json.dumps(text)))))


def _check_answer_size(jobs: list[ExtrasJob], checked: list[dict[str, Any]], batch: bool) -> None:
    total = 256 + sum(_answer_bytes(job, inputs) + 4 for job, inputs in zip(jobs, checked, strict=True))
    if total > LAMBDA_RESPONSE_BYTES:
        field = "imageList" if batch and len(jobs) > 1 else \
            "upscaling_resize_w" if "width" in jobs[0].inputs else "upscaling_resize"
        raise ContractError("answer_too_large", (
            f"{field}: the {len(jobs)} upscaled image(s) make an answer of up to {total} bytes (a PNG's worst case "
            f"in base64), over Lambda's {LAMBDA_RESPONSE_BYTES}-byte response limit; upscale less, or send fewer "
            "images per request"), field)


def submit(dep: Deployment, body: Any, batch: bool) -> tuple[list[Queued], str]:
    """Queue one job per image: ContractError naming the body's field, or ``Rejected``; and WebUI's html_info."""
    jobs, request = extras_jobs(body, batch, names(dep))
    checked = [_checked(dep, job) for job in jobs]  # every image before the first is queued
    _check_answer_size(jobs, [inputs for _, inputs in checked], batch)
    now = utcnow()
    queued = [enqueue(dep, job_request, inputs, now=now, expires_at=None, digest=request_hash(job_request))
              for job_request, inputs in checked]
    return queued, extras_html_info(request)


def collect(dep: Deployment, queued: list[Queued], wait: Wait, what: str = "image") -> list[str] | dict[str, Any]:
    """The jobs' output images in base64, in order, once each is final (``wait``: ``sdapi.wait``), or the error
    answer: a 504 naming a job still running after ``SPOTGEN_SYNC_WAIT_S`` (its status URL; ``ids``: them all), a
    job's failure, or a 503 when its outputs cannot be read."""
    base = dep.settings.public_url.rstrip("/")
    images: list[str] = []
    for job in queued:
        url = f"{base}/sdapi/v1/spotgen/jobs/{job.job_id}"
        doc = wait(dep, job.job_id, dep.settings.sync_wait_s)
        if doc is None or not doc.state.final:
            return response(504, {"error": {"code": "still_running", "field": None, "message": (
                f"job {job.job_id} did not finish within {dep.settings.sync_wait_s:g} s (SPOTGEN_SYNC_WAIT_S); it "
                f"keeps running: GET {url} for its status and {what}")}, "id": job.job_id, "status_url": url,
                "ids": [q.job_id for q in queued]}, {"Location": url})
        if doc.state is not JobState.succeeded:
            info = doc.error.model_dump() if doc.error else {"code": doc.state.value, "message": f"the job {doc.state}"}
            status = 409 if doc.state in (JobState.cancelled, JobState.expired) else 500
            return error(status, str(info["code"]), f"job {job.job_id} {doc.state}: {info['message']}",
                         info.get("field"))
        try:
            images += [base64.b64encode(dep.store.s3.get_object(Bucket=dep.store.output_bucket, Key=key)["Body"]
                                        .read()).decode("ascii") for key in doc.outputs]
        except (BotoCoreError, ClientError) as exc:
            return response(503, {"error": {"code": "images_unavailable", "field": None, "message": (
                f"job {job.job_id} succeeded, but its {what} could not be read ({exc}); GET {url} for it")},
                "id": job.job_id, "status_url": url}, {"Location": url})
    return images


def handler(dep: Deployment, event: dict[str, Any], name: str, wait: Wait) -> dict[str, Any]:
    """The answer to one extras request; ``wait(dep, job_id, seconds)``: the status once final (``sdapi.wait``)."""
    batch = ROUTES[name]
    try:
        queued, html_info = submit(dep, parse_json(raw_body(event)), batch)
    except ContractError as exc:
        return error(400, exc.code, exc.message, exc.field)
    except Rejected as rejected:
        return rejected.response
    images = collect(dep, queued, wait)
    if isinstance(images, dict):
        return images
    if batch:
        return response(200, {"html_info": html_info, "images": images})
    return response(200, {"html_info": html_info, "image": images[0]})
