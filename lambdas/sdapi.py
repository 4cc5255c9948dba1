"""``/sdapi/v1/*``: SD WebUI's HTTP API (AUTOMATIC1111), for the scripts, bots and plugins written against it.

``txt2img`` and ``img2img`` are synchronous in WebUI, so here they submit a spotgen job and wait for it, up to
``SPOTGEN_SYNC_WAIT_S`` (below API Gateway's 30 s by default). A wait that runs out is a 504 whose body and
``Location`` name ``/sdapi/v1/spotgen/jobs/{id}``, the job's status under the same API key (``/v1/jobs/{id}`` takes
IAM): the job is not lost, only the answer moves. A request whose answer could exceed Lambda's 6 MB response
limit is refused before it is queued (``compat.check_answer_size``). The listings come from
the settings (the ids the API accepts and their aliases), and ``progress``/``interrupt`` act on the caller's
latest job, found through a small pointer document (``callers/{caller}.json``): the caller is the API key the
authorizer let through, else the client's address. WebUI's options are global and mutable, a default model
shared by all; spotgen keeps the ones that change how requests run per caller (``lambdas/webui_options.py``),
next to that pointer, and applies them to the caller's later requests beneath their ``override_settings``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError

from lambdas import compat, extras, telemetry, webui_listings, webui_options, webui_pnginfo
from lambdas import status as native
from lambdas.body import parse_json
from lambdas.cancel import cancel
from lambdas.common import Deployment, deployment, error, raw_body, response
from lambdas.submit import Rejected
from runtime.contract import (
    WEBUI_SAMPLERS,
    ContractError,
    JobState,
    StatusDoc,
    from_webui,
    raise_contract_error,
    utcnow,
)
from runtime.contract.webhook import Webhook
from runtime.contract.webui_answer import LAMBDA_RESPONSE_BYTES, SCHEDULE_LABELS

log = logging.getLogger("spotgen.api")

#: Seconds between two reads of the status while a sync request waits (S3 GETs: cheap, and a job takes seconds).
POLL_S = (0.1, 0.2, 0.5, 1.0)


def caller(event: dict[str, Any]) -> str:
    """Whose latest job ``progress`` and ``interrupt`` mean: the authorizer's caller, else the source address."""
    context = event.get("requestContext") or {}
    granted = ((context.get("authorizer") or {}).get("lambda") or {}).get("caller")
    if isinstance(granted, str) and granted.isalnum():
        return f"key-{granted[:32]}"
    address = str((context.get("http") or {}).get("sourceIp", ""))
    return "ip-" + hashlib.sha256(address.encode()).hexdigest()[:32]


def _pointer_key(who: str) -> str:
    return f"callers/{who}.json"


def webhook_of(body: Any) -> Webhook | None:
    """spotgen's one extra field in a WebUI body, taken out of it (WebUI has none of that name): ``webhook``,
    ``{url, events}`` as on ``POST /v1/jobs`` (docs/api.md "Webhooks"); ContractError naming it when invalid."""
    if not isinstance(body, dict) or body.get("webhook") is None:
        if isinstance(body, dict):
            body.pop("webhook", None)
        return None
    try:
        return Webhook.model_validate_json(json.dumps(body.pop("webhook")), strict=True)
    except ValidationError as exc:
        raise_contract_error(exc, "webhook")
        raise  # unreachable


def generate(dep: Deployment, event: dict[str, Any], task: str) -> dict[str, Any]:
    settings = dep.settings
    runtime = settings.runtimes.get(settings.webui_runtime)
    try:
        body = parse_json(raw_body(event))
        hook = webhook_of(body)
        job = from_webui(with_kept_options(body, kept_options(dep, event)), task,  # type: ignore[arg-type]
                         compat.names(settings, runtime.model if runtime else None))
        submitted = compat.submit_webui(dep, job, body, pool=runtime.pool if runtime else None,
                                        answer_limit=LAMBDA_RESPONSE_BYTES, webhook=hook)
    except ContractError as exc:
        return error(400, exc.code, exc.message, exc.field)
    except Rejected as rejected:
        return rejected.response
    except (BotoCoreError, ClientError) as exc:  # the caller's options unread: running without them is not its job
        return error(503, "options_unavailable", f"the caller's options (POST /sdapi/v1/options) could not be read "
                     f"({exc}); nothing was queued, retry")
    job_id = submitted.queued.job_id
    url = compat_status_url(settings, job_id)
    try:  # the job is queued: from here an AWS error costs the answer (it names the job), never the job
        dep.store.put_json(_pointer_key(caller(event)), {"job_id": job_id, "submitted_at": utcnow().isoformat()})
    except (BotoCoreError, ClientError):
        log.warning("job %s: could not record it as the caller's latest (progress and interrupt will not see it)",
                    job_id, exc_info=True)
    doc = wait(dep, job_id, settings.sync_wait_s)
    if doc is None or not doc.state.final:
        return response(504, {"error": {"code": "still_running", "field": None, "message": (
            f"job {job_id} did not finish within {settings.sync_wait_s:g} s (SPOTGEN_SYNC_WAIT_S); it keeps running: "
            f"GET {url} for its status and images")}, "id": job_id, "status_url": url}, {"Location": url})
    if doc.state is not JobState.succeeded:
        info = doc.error.model_dump() if doc.error else {"code": doc.state.value, "message": f"the job {doc.state}"}
        status = 409 if doc.state in (JobState.cancelled, JobState.expired) else 500
        return error(status, str(info["code"]), f"job {job_id} {doc.state}: {info['message']}", info.get("field"))
    try:
        images = [base64.b64encode(dep.store.s3.get_object(Bucket=dep.store.output_bucket, Key=key)["Body"].read())
                  .decode("ascii") for key in doc.outputs]
    except (BotoCoreError, ClientError) as exc:
        return response(503, {"error": {"code": "images_unavailable", "field": None, "message": (
            f"job {job_id} succeeded, but its images could not be read ({exc}); GET {url} for them")},
            "id": job_id, "status_url": url}, {"Location": url})
    return compat.webui_answer(images, submitted.parameters, submitted.info)


def compat_status_url(settings: Any, job_id: str) -> str:
    """Where an API-key caller polls its job: ``GET /sdapi/v1/spotgen/jobs/{id}``, behind the same authorizer."""
    return f"{settings.public_url.rstrip('/')}/sdapi/v1/spotgen/jobs/{job_id}"


def job_status(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """``GET /sdapi/v1/spotgen/jobs/{id}``: what ``GET /v1/jobs/{id}`` answers, for the compatibility routes'
    callers (an API key, not IAM); any key reads any job by its id, as the sample's output location is shared."""
    with telemetry.span("spotgen.sdapi.status", "SERVER", event.get("headers")):
        return native.status(deployment(), (event.get("pathParameters") or {}).get("id", ""), compat_status_url)


def wait(dep: Deployment, job_id: str, seconds: float) -> StatusDoc | None:
    """The job's status once final, or as last read when ``seconds`` ran out; a read that fails (S3 throttles,
    blinks) is only a poll missed."""
    deadline = time.monotonic() + seconds
    tick, doc = 0, None
    while True:
        try:
            doc = dep.store.read_status(job_id)
        except (BotoCoreError, ClientError):
            log.warning("job %s: reading its status failed; polling on", job_id, exc_info=True)
        left = deadline - time.monotonic()
        if (doc is not None and doc.state.final) or left <= 0:
            return doc
        time.sleep(min(POLL_S[min(tick, len(POLL_S) - 1)], left))
        tick += 1


def _latest(dep: Deployment, event: dict[str, Any]) -> StatusDoc | None:
    pointer = dep.store.get_json(dep.store.output_bucket, _pointer_key(caller(event)))
    job_id = pointer.get("job_id") if isinstance(pointer, dict) else None
    return dep.store.read_status(job_id) if isinstance(job_id, str) else None


def progress(dep: Deployment, event: dict[str, Any]) -> dict[str, Any]:
    """WebUI's ``ProgressResponse`` for the caller's job: fraction done, seconds left (from the pace so far)."""
    doc = _latest(dep, event)
    running = doc is not None and not doc.state.final
    step, total = (doc.progress.step, doc.progress.total) if running and doc else (0, 0)
    done = step / total if total else 0.0
    eta = 0.0
    if running and doc and doc.started_at and done > 0:
        elapsed = (utcnow() - doc.started_at).total_seconds()
        eta = max(0.0, elapsed * (1 - done) / done)
    state = {"skipped": False, "interrupted": bool(running and doc and doc.cancel_requested_at), "stopping_generation":
             False, "job": doc.id if running and doc else "", "job_count": 1 if running else 0,
             "job_timestamp": doc.created_at.strftime("%Y%m%d%H%M%S") if running and doc else "0", "job_no": 0,
             "sampling_step": step, "sampling_steps": total}
    return response(200, {"progress": round(done, 4), "eta_relative": round(eta, 3), "state": state,
                          "current_image": None, "textinfo": None})


def interrupt(dep: Deployment, event: dict[str, Any]) -> dict[str, Any]:
    """Cancel the caller's running job (as ``POST /v1/jobs/{id}/cancel``); like WebUI, 200 when there is none."""
    doc = _latest(dep, event)
    if doc is not None and not doc.state.final:
        answer = cancel(dep, doc.id)
        if answer["statusCode"] >= 500:
            return answer
    return response(200, {})


def sd_models(dep: Deployment) -> list[dict[str, Any]]:
    titles = compat.titles(dep.settings)
    return [{"title": titles[m], "model_name": m, "hash": None, "sha256": None, "filename": titles[m],
             "config": None} for m in dep.settings.models]


def loras(dep: Deployment) -> list[dict[str, Any]]:
    titles = compat.titles(dep.settings)
    return [{"name": titles[lora], "alias": lora, "path": titles[lora], "metadata": {}} for lora in dep.settings.loras]


def embeddings(dep: Deployment) -> dict[str, Any]:
    """WebUI's listing of textual-inversion embeddings: their names, which a prompt uses as words. The sizes WebUI
    reads from the files are the worker's to know (``null`` here): the API never opens model files."""
    empty = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None, "vectors": None}
    return {"loaded": {name: dict(empty) for name in dep.settings.embeddings}, "skipped": {}}


def samplers() -> list[dict[str, Any]]:
    return [{"name": webui, "aliases": [name], "options": {}} for name, webui in WEBUI_SAMPLERS.items()]


def schedulers() -> list[dict[str, Any]]:
    return [{"name": label.lower().replace(" ", "_"), "label": label, "aliases": None, "default_rho": -1,
             "need_inner_model": False} for label in SCHEDULE_LABELS.values()]


def _options_key(who: str) -> str:
    return f"callers/{who}.options.json"


def kept_options(dep: Deployment, event: dict[str, Any] | None) -> dict[str, Any]:
    """The options the caller set (``webui_options.APPLIED``), as WebUI keeps its own: for its later requests."""
    if event is None:
        return {}
    kept = dep.store.get_json(dep.store.output_bucket, _options_key(caller(event)))
    return kept if isinstance(kept, dict) else {}


def options(dep: Deployment, event: dict[str, Any] | None = None) -> dict[str, Any]:
    """WebUI 1.10's options document as the caller sees it: the ``/sdapi/v1`` runtime's model unless it set one."""
    runtime = dep.settings.runtimes.get(dep.settings.webui_runtime)
    model = compat.titles(dep.settings).get(runtime.model) if runtime else None
    return webui_options.document(model, kept_options(dep, event))


def set_options(dep: Deployment, event: dict[str, Any]) -> dict[str, Any]:
    """Keeps the options that change how the caller's later requests run, checked as ``override_settings`` would
    be; accepts and ignores the rest of WebUI's document; refuses, naming it, what spotgen cannot do."""
    try:
        body = parse_json(raw_body(event))
    except ContractError as exc:
        return error(400, exc.code, exc.message, exc.field)
    if not isinstance(body, dict):
        return error(400, "invalid_body", "the request body must be a JSON object of options", "body")
    for key, value in body.items():
        why = webui_options.unchangeable(key, value)
        if why is not None:
            return error(400, "unsupported_option", f"options.{key}: {why}", f"options.{key}")
    kept = kept_options(dep, event)
    applied = {**kept, **{k: v for k, v in body.items() if k in webui_options.APPLIED}}
    if applied == kept:
        return response(200, None)
    runtime = dep.settings.runtimes.get(dep.settings.webui_runtime)
    try:  # what a later body will carry, checked now by the very rules it will meet
        from_webui({"prompt": "options", "override_settings": dict(applied)}, "txt2img",
                   compat.names(dep.settings, runtime.model if runtime else None))
    except ContractError as exc:
        field = (exc.field or "").replace("override_settings.", "options.", 1) or None
        return error(400, exc.code, exc.message.replace("override_settings.", "options.", 1), field)
    dep.store.put_json(_options_key(caller(event)), applied)
    return response(200, None)


def with_kept_options(body: Any, kept: dict[str, Any]) -> Any:
    """``body`` with the caller's options under its ``override_settings`` (the body's own win), as WebUI applies its
    options beneath a request's override_settings."""
    if not kept or not isinstance(body, dict) or not isinstance(body.get("override_settings") or {}, dict):
        return body
    return {**body, "override_settings": {**kept, **(body.get("override_settings") or {})}}


#: The routes, by method.
ROUTES = {"GET": ("sd-models", "loras", "embeddings", "samplers", "schedulers", "options", "progress",
                *webui_listings.NAMES),
          "POST": ("txt2img", "img2img", "interrupt", "options", "png-info", *extras.ROUTES)}


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Every ``/sdapi/v1`` route (``pathParameters.name``: the part after ``/sdapi/v1/``, from the router)."""
    name = (event.get("pathParameters") or {}).get("name", "")
    method = event.get("requestContext", {}).get("http", {}).get("method", "GET").upper()
    dep = deployment()
    with telemetry.span(f"spotgen.sdapi.{name}", "SERVER", event.get("headers")):
        if (method, name) in (("POST", "txt2img"), ("POST", "img2img")):
            return generate(dep, event, name)
        listings = {"sd-models": lambda: sd_models(dep), "loras": lambda: loras(dep),
                    "embeddings": lambda: embeddings(dep), "samplers": samplers,
                    "schedulers": schedulers, "options": lambda: options(dep, event)}
        if method == "GET" and name in listings:
            return response(200, listings[name]())
        if method == "GET" and name in webui_listings.NAMES:
            return response(200, webui_listings.listing(name, dep.settings))
        if method == "GET" and name == "progress":
            return progress(dep, event)
        if method == "POST" and name == "interrupt":
            return interrupt(dep, event)
        if method == "POST" and name == "options":
            return set_options(dep, event)
        if method == "POST" and name == "png-info":
            return webui_pnginfo.png_info(dep, event)
        if method == "POST" and name in extras.ROUTES:  # extra-single-image, extra-batch-images
            return extras.handler(dep, event, name, wait)
    allowed = [m for m, names in ROUTES.items() if name in names]
    if allowed:
        return error(405, "method_not_allowed", f"{method} is not allowed on /sdapi/v1/{name}; use "
                     f"{', '.join(allowed)}", Allow=", ".join(allowed))
    served = sorted({route for names in ROUTES.values() for route in names})
    return error(404, "not_found", f"/sdapi/v1/{name} is not served: spotgen serves {', '.join(served)}")
