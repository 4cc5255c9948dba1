"""What the compatibility routes share: the catalog's WebUI names from the settings, and a WebUI body queued as a
spotgen job through the same checks and the same ``enqueue`` as ``POST /v1/jobs``.

The AWS sample's routes (``lambdas/sample.py``) and SD WebUI's (``lambdas/sdapi.py``) only translate: what a
request may ask for, how an id is reused and what is written in which order are the native API's rules.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from lambdas.submit import Queued, check, enqueue
from runtime.config import Settings
from runtime.contract import (
    MAX_BODY_BYTES,
    ContractError,
    JobRequest,
    Names,
    SampleJob,
    WebuiJob,
    raise_contract_error,
    request_hash,
    utcnow,
    webui_error,
    webui_info,
    webui_parameters,
)
from runtime.contract.errors import prefixed

#: File name endings that make an alias look like what WebUI lists as a checkpoint's title.
_FILE_ENDINGS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def json_body(body: bytes) -> Any:
    """The request body as JSON, or the ContractError every route gives for one that is not."""
    if len(body) > MAX_BODY_BYTES:
        raise ContractError("body_too_large", f"the request body is larger than {MAX_BODY_BYTES} bytes", "body")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ContractError("invalid_json", "the request body is not valid JSON", "body") from None


def names(settings: Settings, default_model: str | None = None) -> Names:
    """The ids the API accepts, each under its own name and its aliases (``SPOTGEN_ALIASES``), by kind."""
    kinds = {"models": settings.models, "loras": settings.loras, "controlnets": settings.controlnets}
    by_kind: dict[str, dict[str, str]] = {kind: {i: i for i in ids} for kind, ids in kinds.items()}
    for alias, target in settings.aliases.items():
        for kind, ids in kinds.items():
            if target in ids:
                by_kind[kind][alias] = target
    return Names(**by_kind, default_model=default_model)


def titles(settings: Settings) -> dict[str, str]:
    """Each accepted id's WebUI title: its first alias that looks like a file name, else its first alias, else
    the id itself; what ``/sdapi/v1/sd-models`` lists and ``info`` names."""
    aliases: dict[str, list[str]] = {}
    for alias, target in settings.aliases.items():
        aliases.setdefault(target, []).append(alias)
    out = {}
    for model_id in (*settings.models, *settings.loras, *settings.controlnets):
        mine = aliases.get(model_id, [])
        files = [a for a in mine if a.lower().endswith(_FILE_ENDINGS)]
        out[model_id] = (files or mine or [model_id])[0]
    return out


@dataclass(frozen=True)
class Submitted:
    """A WebUI body queued as a job: the job, and WebUI's ``parameters`` and ``info`` for it."""

    queued: Queued
    parameters: dict[str, Any]
    info: dict[str, Any]


#: ``announce(parameters, info)``: the ``SampleJob`` of a job of the AWS sample's API.
Announce = Callable[[dict[str, Any], dict[str, Any]], SampleJob]


def submit_webui(dep: Any, job: WebuiJob, body: Mapping[str, Any], *, job_id: str | None = None,
                 output_prefix: str | None = None, announce: Announce | None = None,
                 identity: Mapping[str, Any] | None = None, pool: str | None = None,
                 field_prefix: str | None = None) -> Submitted:
    """Queue ``job`` (from ``body``) like a native request: ContractError naming the body's field (under
    ``field_prefix``), or ``submit.Rejected``. ``identity``: what else makes two requests with one id the same
    request (the sample's runtime and context)."""
    try:
        request = JobRequest.model_validate({"id": job_id, "pipeline": job.pipeline, "model": job.model,
                                             "inputs": dict(job.inputs), "output_prefix": output_prefix})
    except ValidationError as exc:
        raise_contract_error(exc)
    try:
        inputs = check(dep, request)
    except ContractError as exc:
        error = webui_error(exc)
        raise prefixed(error, field_prefix) if field_prefix and error.field else error from None
    parameters, title = webui_parameters(body), titles(dep.settings).get(job.model, job.model)
    digest = request_hash(request)
    if identity:
        digest = hashlib.sha256(json.dumps([digest, identity], sort_keys=True).encode()).hexdigest()
    sample = None if announce is None else (
        lambda _job_id, seed: announce(parameters, webui_info(job, body, seed, title)))
    queued = enqueue(dep, request, inputs, now=utcnow(), expires_at=None, digest=digest, sample=sample, pool=pool)
    return Submitted(queued, parameters, webui_info(job, body, queued.seed, title))
