"""ComfyUI's HTTP API (``/prompt``, ``/history``, ``/view``, ``/object_info``, ``/queue``, ``/interrupt``,
``/system_stats``) for the scripts and tools written against a ComfyUI server, behind the same API key as
``/sdapi/v1``.

``POST /prompt`` checks the graph whole before anything is queued (``runtime.contract.comfy.check_graph``: a
ComfyUI 400 with ``node_errors`` by node id), resolves its model names to catalog ids and queues one ``comfyui``
job, whose id is the ``prompt_id``. What the client sent is kept beside the job (``comfy/prompts/{id}.json``) for
``/history``, with an index per caller (``comfy/callers/{caller}/{number}-{id}``) for ``/history``, ``/queue`` and
``/interrupt``: a ComfyUI server is one user's, a deployment serves many, and a caller sees only its own prompts.
Likewise its uploads: ``/view?type=input`` opens only the caller's own (``lambdas.comfy_images.view_upload``),
``/object_info``'s LoadImage lists only theirs (``lambdas.comfy_upload.uploaded_names``).
``/history`` answers ``{}`` until the job is final, as ComfyUI does until a prompt has run
(``lambdas/comfy_history.py``).
"""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any
from urllib.parse import parse_qs

from pydantic import ValidationError

from lambdas import compat, telemetry
from lambdas.body import parse_json
from lambdas.cancel import cancel
from lambdas.comfy_history import caller_prompts, history, prompt_key, view
from lambdas.comfy_images import LOADERS, annotation, resolve_images, view_upload
from lambdas.comfy_upload import uploaded_names
from lambdas.common import Deployment, deployment, raw_body, response
from lambdas.sdapi import caller
from lambdas.submit import Rejected, check, enqueue
from runtime.contract import ContractError, JobRequest, request_hash, utcnow
from runtime.contract.comfy.graph import GraphError, check_graph, not_run_yet
from runtime.contract.comfy.objectinfo import object_info
from runtime.contract.comfy.table import RUNS

#: The loaders whose model is the job's ``model`` (what routes it to a pool and what the worker checks first).
_MODEL_INPUTS = {"CheckpointLoaderSimple": "ckpt_name", "UNETLoader": "unet_name"}
#: How many of a caller's latest prompts ``/queue`` and ``/interrupt`` look at.
RECENT = 50


def invalid(message: str, details: str = "") -> dict[str, Any]:
    """ComfyUI's 400 for a body it cannot take as a prompt at all."""
    return response(400, {"error": {"type": "invalid_prompt", "message": message, "details": details,
                                    "extra_info": {}}, "node_errors": {}})


def job_model(graph: dict[str, Any]) -> str | None:
    """The first checkpoint or diffusion model the graph loads, in its order."""
    for node in graph.values():
        name = _MODEL_INPUTS.get(node["class_type"])
        if name is not None:
            return str(node["inputs"][name])
    return None


def submit_prompt(dep: Deployment, event: dict[str, Any]) -> dict[str, Any]:
    try:
        body = parse_json(raw_body(event))
    except (ContractError, ValueError) as exc:
        return invalid("Invalid prompt", str(exc))
    if not isinstance(body, dict) or "prompt" not in body:
        return invalid("No prompt provided", "the body must be a JSON object with a 'prompt' (an API-format graph)")
    try:
        graph = check_graph(body["prompt"], compat.names(dep.settings))
        not_run_yet(graph)
        graph = resolve_images(dep, caller(event), graph)
    except GraphError as exc:
        return response(400, exc.body())
    model = job_model(graph)
    if model is None:
        return invalid("Prompt has no model", "spotgen runs graphs that load a checkpoint (CheckpointLoaderSimple) "
                       "or a diffusion model (UNETLoader)")
    job_id, number = uuid.uuid4().hex, time.time_ns() // 1_000_000  # ComfyUI's numbers only grow
    try:
        request = JobRequest.model_validate({"id": job_id, "pipeline": "comfyui", "model": model,
                                             "inputs": {"graph": graph}})
        inputs = check(dep, request)
    except (ValidationError, ContractError) as exc:
        return invalid("Prompt outputs failed validation", str(exc))
    extra = body.get("extra_data") if isinstance(body.get("extra_data"), dict) else {}
    who = caller(event)
    # Written before the job is queued: a job always has what /history needs; a kept prompt without a job (the
    # queueing failed) has no status, which /history answers as a prompt that never ran.
    dep.store.put_json(prompt_key(job_id), {"caller": who, "number": number, "prompt": body["prompt"],
                                            "graph": graph, "extra_data": extra,
                                            "client_id": str(body.get("client_id") or "")})
    dep.store.put_json(f"comfy/callers/{who}/{number:016d}-{job_id}", {})
    try:
        enqueue(dep, request, inputs, now=utcnow(), expires_at=None, digest=request_hash(request))
    except Rejected as rejected:
        return rejected.response
    return response(200, {"prompt_id": job_id, "number": number, "node_errors": {}})


def queue(dep: Deployment, event: dict[str, Any]) -> dict[str, Any]:
    """The caller's prompts not yet final: running, and waiting in the queue."""
    running, pending = [], []
    for kept, doc in caller_prompts(dep, caller(event), RECENT):
        if doc is not None and not doc.state.final:
            entry = [kept["number"], doc.id, kept["prompt"], kept["extra_data"], list(kept["graph"])]
            (running if doc.state.value == "running" else pending).append(entry)
    return response(200, {"queue_running": running, "queue_pending": pending})


def interrupt(dep: Deployment, event: dict[str, Any]) -> dict[str, Any]:
    """Cancel the caller's running prompt (``prompt_id`` in the body: that one, if it is the caller's); like
    ComfyUI, 200 when there is none."""
    try:
        body = parse_json(raw_body(event)) if raw_body(event) else {}
    except (ContractError, ValueError):
        body = {}
    wanted = body.get("prompt_id") if isinstance(body, dict) else None
    for _kept, doc in caller_prompts(dep, caller(event), RECENT):
        if doc is not None and not doc.state.final and (wanted is None and doc.state.value == "running"
                                                        or doc.id == wanted):
            answer = cancel(dep, doc.id)
            if answer["statusCode"] >= 500:
                return answer
    return response(200, {})


def view_any(dep: Deployment, event: dict[str, Any]) -> dict[str, Any]:
    """``/view`` by ``type`` (or the filename's ComfyUI annotation): ``output`` (the default) an output of the
    caller's prompts, ``input`` the caller's upload, ``temp`` a PreviewImage's output (as ``/history`` lists
    them), else the caller's temp upload."""
    query = parse_qs(event.get("rawQueryString") or "")
    kind = annotation(query.get("filename", [""])[0]) or query.get("type", ["output"])[0] or "output"
    if kind == "output":
        return view(dep, event, caller(event))
    if kind == "temp":
        answer = view(dep, event, caller(event))
        if answer["statusCode"] != 404:
            return answer
    return view_upload(dep, event, caller(event), kind)


def system_stats() -> dict[str, Any]:
    """What the API knows: it is not where the images are made (the workers' devices are theirs: ``/readyz``)."""
    return {"system": {"os": "posix", "python_version": sys.version, "embedded_python": False,
                       "comfyui_version": "spotgen", "pytorch_version": "", "argv": [], "ram_total": 0,
                       "ram_free": 0}, "devices": []}


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Every ComfyUI route, by the path's first part (``pathParameters``: ``id`` or ``name`` where it has one)."""
    params = event.get("pathParameters") or {}
    route = (event.get("rawPath") or "/").strip("/").split("/")[0]
    method = event.get("requestContext", {}).get("http", {}).get("method", "GET").upper()
    dep = deployment()
    with telemetry.span(f"spotgen.comfyui.{route}", "SERVER", event.get("headers")):
        if route == "prompt" and method == "POST":
            return submit_prompt(dep, event)
        if route == "prompt":  # GET: ComfyUI's queue count
            count = sum(doc is not None and not doc.state.final
                        for _kept, doc in caller_prompts(dep, caller(event), RECENT))
            return response(200, {"exec_info": {"queue_remaining": count}})
        if route == "history":
            return history(dep, event, caller(event), params.get("id"))
        if route == "view":
            return view_any(dep, event)
        if route == "object_info":
            name = params.get("name")
            uploads = uploaded_names(dep, caller(event)) if name is None or name in LOADERS else None
            info = {key: value for key, value in object_info(compat.names(dep.settings), uploads).items()
                    if key in RUNS}
            return response(200, info if name is None else {name: info[name]} if name in info else {})
        if route == "queue":
            return queue(dep, event)
        if route == "interrupt":
            return interrupt(dep, event)
        return response(200, system_stats())

