"""ComfyUI's ``/history`` and ``/view`` over spotgen's jobs (``lambdas/comfyui.py`` keeps the prompts).

``/history/{id}`` is ``{}`` until the job is final, then ComfyUI's entry: the prompt as the client sent it, each
output node's images (``runtime.contract.comfy.outputs``: the job's list mapped back to nodes) and a ``status``
whose messages are ComfyUI's execution events. ``/view`` answers an image with a redirect to a presigned URL (the
clients' ``urllib``, ``requests`` and browsers follow it), and only for an output of one of the caller's prompts:
no path a client writes is opened unless it is one of those keys.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs

from lambdas.common import Deployment, error, response
from runtime.contract import JobState, StatusDoc
from runtime.contract.comfy.outputs import history_outputs

#: A prompt id is a job id the API made (32 hex digits).
PROMPT_ID = re.compile(r"^[0-9a-f]{32}$")
#: The most entries ``GET /history`` returns without ``max_items`` (ComfyUI returns all it keeps).
MAX_HISTORY = 200


def prompt_key(job_id: str) -> str:
    return f"comfy/prompts/{job_id}.json"


def kept_prompt(dep: Deployment, who: str, job_id: str) -> dict[str, Any] | None:
    """What ``POST /prompt`` kept for ``job_id``, if it is ``who``'s prompt."""
    if not PROMPT_ID.match(job_id):
        return None
    kept = dep.store.get_json(dep.store.output_bucket, prompt_key(job_id))
    return kept if isinstance(kept, dict) and kept.get("caller") == who else None


def caller_prompts(dep: Deployment, who: str, limit: int) -> list[tuple[dict[str, Any], StatusDoc | None]]:
    """The caller's ``limit`` latest prompts, oldest first, each with its job's status (None: never queued)."""
    keys: list[str] = []
    pages = dep.store.s3.get_paginator("list_objects_v2").paginate(Bucket=dep.store.output_bucket,
                                                                    Prefix=f"comfy/callers/{who}/")
    for page in pages:
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    found = []
    for key in sorted(keys)[-limit:]:
        job_id = key.rsplit("-", 1)[-1]
        kept = kept_prompt(dep, who, job_id)
        if kept is not None:
            found.append((kept, dep.store.read_status(job_id)))
    return found


def entry(kept: dict[str, Any], doc: StatusDoc) -> dict[str, Any]:
    """One final prompt as ComfyUI's history holds it."""
    stamp = int(doc.updated_at.timestamp() * 1000)
    started = ["execution_start", {"prompt_id": doc.id, "timestamp": stamp}]
    if doc.state is JobState.succeeded:
        messages = [started, ["execution_cached", {"nodes": [], "prompt_id": doc.id, "timestamp": stamp}],
                    ["execution_success", {"prompt_id": doc.id, "timestamp": stamp}]]
    elif doc.state is JobState.cancelled:
        messages = [started, ["execution_interrupted", {"prompt_id": doc.id, "node_id": None, "node_type": None,
                                                        "executed": [], "timestamp": stamp}]]
    else:
        problem = doc.error.message if doc.error else f"the job ended {doc.state.value}"
        messages = [started, ["execution_error", {
            "prompt_id": doc.id, "node_id": None, "node_type": None, "executed": [],
            "exception_message": problem, "exception_type": doc.error.code if doc.error else doc.state.value,
            "traceback": [], "current_inputs": {}, "current_outputs": {}, "timestamp": stamp}]]
    graph = kept["graph"]
    outputs = history_outputs(graph, doc.outputs) if doc.state is JobState.succeeded else {}
    return {"prompt": [kept["number"], doc.id, kept["prompt"], kept["extra_data"], list(outputs or graph)],
            "outputs": outputs,
            "status": {"status_str": "success" if doc.state is JobState.succeeded else "error",
                       "completed": doc.state is JobState.succeeded, "messages": messages},
            "meta": {key: {"node_id": key, "display_node": key, "parent_node": None, "real_node_id": key}
                     for key in outputs}}


def history(dep: Deployment, event: dict[str, Any], who: str, job_id: str | None) -> dict[str, Any]:
    """``GET /history/{id}``, or ``GET /history?max_items=N``: the caller's final prompts by id."""
    if job_id is not None:
        kept = kept_prompt(dep, who, job_id)
        doc = dep.store.read_status(job_id) if kept is not None else None
        return response(200, {job_id: entry(kept, doc)} if kept and doc and doc.state.final else {})
    query = parse_qs(event.get("rawQueryString") or "")
    try:
        limit = min(MAX_HISTORY, max(1, int(query.get("max_items", [MAX_HISTORY])[0])))
    except ValueError:
        return error(400, "invalid_field", "max_items: must be a whole number", "max_items")
    return response(200, {doc.id: entry(kept, doc) for kept, doc in caller_prompts(dep, who, limit)
                          if doc is not None and doc.state.final})


def view(dep: Deployment, event: dict[str, Any], who: str) -> dict[str, Any]:
    """``GET /view?filename=&subfolder=&type=``: a redirect to the image, if it is an output of the caller's."""
    query = {k: v[0] for k, v in parse_qs(event.get("rawQueryString") or "").items()}
    filename, subfolder = query.get("filename", ""), query.get("subfolder", "")
    job_id = subfolder.rstrip("/").rsplit("/", 1)[-1]
    kept = kept_prompt(dep, who, job_id)
    doc = dep.store.read_status(job_id) if kept is not None else None
    key = f"{subfolder}/{filename}"
    if doc is None or key not in doc.outputs:
        return error(404, "not_found", f"no image {filename!r} in {subfolder!r} among your prompts' outputs",
                     "filename")
    url = dep.store.presign(key)
    return response(302, {"location": url}, {"Location": url})
