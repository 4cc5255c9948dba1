"""``POST /v1alpha2`` and ``POST /v1alpha1``: the AWS sample's task API, served by spotgen's.

A client of the sample (``aws-samples/stable-diffusion-on-eks`` and its successor guidance) posts its task
unchanged and gets the sample's 200 answer; the job then runs as any spotgen job, interruption-proof, and ends
with the sample's notification and ``.out`` document (``runtime.contract.jobs.SampleJob``) under the sample's
key layout, ``PREFIX/ID/``. The envelopes' rules are ``runtime.contract.sample``'s; the body's, ``webui``'s.
v1alpha2's ``extra-single-image`` task is WebUI's extras body: one ``upscale`` job (``runtime.contract.extras``),
whose notification and ``.out`` document are the sample's too (``parameters``: the body without its image); its
``pipeline`` task is a ComfyUI graph: one ``comfyui`` job (``lambdas/comfyui.py``), announced the same way.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lambdas import compat, extras, telemetry
from lambdas.body import parse_json
from lambdas.common import Deployment, deployment, error, raw_body, response
from lambdas.submit import Rejected, check, check_webhook, enqueue
from runtime.contract import (
    ContractError,
    JobRequest,
    SampleJob,
    SampleRequest,
    parse_v1alpha1,
    parse_v1alpha2,
    request_hash,
    utcnow,
    v1alpha1_answer,
    v1alpha2_answer,
)
from runtime.contract.errors import prefixed
from runtime.contract.extras import extras_error, extras_jobs


def v1alpha2(dep: Deployment, body: bytes) -> dict[str, Any]:
    try:
        request = parse_v1alpha2(parse_json(body), dep.settings.runtimes)
        runtime = dep.settings.runtimes[str(request.runtime)]
        if request.task == "extras":
            _queue_extras(dep, request, runtime.pool)
        elif request.task == "pipeline":
            _queue_graph(dep, request, runtime.pool)
        else:
            job = request.webui_job(compat.names(dep.settings, default_model=runtime.model))
            _queue(dep, request, job, str(request.runtime), runtime.pool, "task.content")
    except ContractError as exc:
        return error(400, exc.code, exc.message, exc.field)
    except Rejected as rejected:
        return rejected.response
    return response(200, v1alpha2_answer(request, dep.settings.output_bucket))


def v1alpha1(dep: Deployment, body: bytes) -> dict[str, Any]:
    """The older flat format: no runtime is named, the checkpoint routes it (as the sample's runtimes were
    chosen by model); the notification names the runtime that runs the model, else the model itself."""
    try:
        request = parse_v1alpha1(parse_json(body))
        job = request.webui_job(compat.names(dep.settings))
        runtime = next((name for name, rt in dep.settings.runtimes.items() if rt.model == job.model), None)
        pool = dep.settings.runtimes[runtime].pool if runtime else None
        _queue(dep, request, job, runtime or job.model, pool, None)
    except ContractError as exc:
        return error(400, exc.code, exc.message, exc.field)
    except Rejected as rejected:
        return rejected.response
    return response(200, v1alpha1_answer(request, dep.settings.output_bucket))


def _queue(dep: Deployment, request: SampleRequest, job: Any, runtime: str, pool: str | None,
           field_prefix: str | None) -> None:
    location = f"{request.output_prefix}/{request.id}"

    def announce(parameters: dict[str, Any], info: dict[str, Any]) -> SampleJob:
        return SampleJob(api_version=request.api_version, runtime=runtime, context=request.context,
                         location=location, parameters=parameters, info=info)

    compat.submit_webui(dep, job, request.body, job_id=request.id, output_prefix=request.output_prefix,
                        announce=announce, pool=pool, field_prefix=field_prefix,
                        identity={"api": request.api_version, "runtime": runtime, "context": request.context},
                        webhook=request.webhook, webhook_field=request.webhook_field)


def _queue_extras(dep: Deployment, request: SampleRequest, pool: str | None) -> None:
    """v1alpha2's ``extra-single-image``: the extras body's one ``upscale`` job, checked as ``POST /v1/jobs`` checks
    one (errors name ``task.content.*``), announced as the sample's task."""
    try:
        (found,), _ = extras_jobs(request.body, False, extras.names(dep))
        job = JobRequest.model_validate({"id": request.id, "pipeline": "upscale", "model": found.model,
                                         "inputs": dict(found.inputs), "output_prefix": request.output_prefix,
                                         "webhook": request.webhook})
        if request.webhook is not None:
            check_webhook(dep.settings, request.webhook.url, f"{request.webhook_field}.url")
        try:
            inputs = check(dep, job, f"{request.webhook_field}.url")
        except ContractError as exc:
            raise extras_error(exc, found) from None
    except ContractError as exc:
        raise prefixed(exc, "task.content") if exc.field and not exc.field.startswith("task.") else exc from None
    _announced(dep, request, job, inputs, pool, {key: value for key, value in request.body.items() if key != "image"})


def _announced(dep: Deployment, request: SampleRequest, job: JobRequest, inputs: dict[str, Any], pool: str | None,
               parameters: dict[str, Any]) -> None:
    """Queue a v1alpha2 task that is one spotgen job as it is (extras, a graph), announced as the sample's task:
    its notification and ``.out`` with ``parameters``; the same task posted again is the job already queued."""
    location = f"{request.output_prefix}/{request.id}"
    identity = {"api": request.api_version, "runtime": request.runtime, "context": request.context}
    digest = hashlib.sha256(json.dumps([request_hash(job), identity], sort_keys=True).encode()).hexdigest()
    enqueue(dep, job, inputs, now=utcnow(), expires_at=None, digest=digest, pool=pool,
            sample=lambda _job_id, _seed: SampleJob(api_version=request.api_version, runtime=str(request.runtime),
                                                    context=request.context, location=location,
                                                    parameters=parameters, info={}))


def _queue_graph(dep: Deployment, request: SampleRequest, pool: str | None) -> None:
    """v1alpha2's ``pipeline``: its content, a ComfyUI graph, checked and queued as ``POST /prompt`` queues one
    (errors name ``task.content.{node}.inputs.{input}``), announced as the sample's task."""
    from lambdas.comfyui import job_model  # the node table, imported when a graph comes
    from runtime.contract.comfy.graph import GraphError, check_graph, not_run_yet

    try:
        graph = check_graph(request.body, compat.names(dep.settings))
        not_run_yet(graph)
    except GraphError as exc:
        raise exc.contract_error("task.content") from None
    model = job_model(graph)
    if model is None:
        raise ContractError("invalid_field", "task.content: the graph loads no checkpoint (CheckpointLoaderSimple) "
                            "or diffusion model (UNETLoader)", "task.content")
    job = JobRequest.model_validate({"id": request.id, "pipeline": "comfyui", "model": model,
                                     "inputs": {"graph": graph}, "output_prefix": request.output_prefix,
                                     "webhook": request.webhook})
    _announced(dep, request, job, check(dep, job, f"{request.webhook_field}.url"), pool, {})


def _handler(route: Any) -> Any:
    def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
        """API Gateway HTTP API (payload 2.0) entry point."""
        try:
            body = raw_body(event)
        except ValueError:
            return error(400, "invalid_body", "the request body is not valid base64", "body")
        with telemetry.span(f"spotgen.{route.__name__}", "SERVER", event.get("headers")):
            return route(deployment(), body)

    return handler


v1alpha2_handler = _handler(v1alpha2)
v1alpha1_handler = _handler(v1alpha1)
