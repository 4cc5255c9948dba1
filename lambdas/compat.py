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

from lambdas.common import response
from lambdas.submit import Queued, check, check_webhook, enqueue
from runtime.config import Settings
from runtime.contract import (
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
from runtime.contract.imagepaths import get_path, image_paths, set_path
from runtime.contract.images import ImageRefError, decode_inline
from runtime.contract.inputs import MAX_SIDE, Hires
from runtime.contract.sdupscale import SdUpscaleInputs, upscaled_size
from runtime.contract.webhook import Webhook
from runtime.contract.webui_answer import base64_bytes, png_bytes_bound

#: File name endings that make an alias look like what WebUI lists as a checkpoint's title.
_FILE_ENDINGS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def names(settings: Settings, default_model: str | None = None) -> Names:
    """The ids the API accepts, each under its own name and its aliases (``SPOTGEN_ALIASES``), by kind; the
    models' families and variants, where the settings say them (a Flux or SD 3.5 model reads a WebUI body as
    Forge does: ``runtime.contract.webui_families``)."""
    kinds = {"models": settings.models, "loras": settings.loras, "controlnets": settings.controlnets,
             "upscalers": settings.upscalers}
    by_kind: dict[str, dict[str, str]] = {kind: {i: i for i in ids} for kind, ids in kinds.items()}
    for alias, target in settings.aliases.items():
        for kind, ids in kinds.items():
            if target in ids:
                by_kind[kind][alias] = target
    families = {m: f for m, f in settings.model_families.items() if m in settings.models}
    variants = {m: v for m, v in settings.model_variants.items() if m in settings.models}
    return Names(**by_kind, default_model=default_model, families=families, variants=variants)


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
                 field_prefix: str | None = None, answer_limit: int | None = None, webhook: Webhook | None = None,
                 webhook_field: str = "webhook") -> Submitted:
    """Queue ``job`` (from ``body``) like a native request: ContractError naming the body's field (under
    ``field_prefix``), or ``submit.Rejected``. ``identity``: what else makes two requests with one id the same
    request (the sample's runtime and context); ``answer_limit``: the bytes a synchronous answer with the job's
    images may take (``check_answer_size``), checked before anything is written. ``webhook``: the route's extra
    field (docs/api.md "Webhooks"), at ``webhook_field`` in the route's body (its errors name that)."""
    try:
        request = JobRequest.model_validate({"id": job_id, "pipeline": job.pipeline, "model": job.model,
                                             "inputs": dict(job.inputs), "output_prefix": output_prefix,
                                             "webhook": webhook})
    except ValidationError as exc:
        raise_contract_error(exc)
    if webhook is not None:  # before the inputs, whose errors are WebUI's and prefixed
        check_webhook(dep.settings, webhook.url, f"{webhook_field}.url")
    try:
        inputs = check(dep, request, f"{webhook_field}.url")
    except ContractError as exc:
        error = webui_error(exc, body)
        raise prefixed(error, field_prefix) if field_prefix and error.field else error from None
    parameters, title = webui_parameters(body), titles(dep.settings).get(job.model, job.model)
    if answer_limit is not None:
        check_answer_size(job, inputs, body, parameters, title, answer_limit)
    digest = request_hash(request)
    if identity:
        digest = hashlib.sha256(json.dumps([digest, identity], sort_keys=True).encode()).hexdigest()
    sample = None if announce is None else (
        lambda _job_id, seed: announce(parameters, webui_info(job, body, seed, title)))
    queued = enqueue(dep, request, inputs, now=utcnow(), expires_at=None, digest=digest, sample=sample, pool=pool)
    return Submitted(queued, parameters, webui_info(job, body, queued.seed, title))


def webui_answer(images: list[str], parameters: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """WebUI's 200 for a generation, as the Lambda returns it: base64 images, ``parameters``, ``info`` as text."""
    return response(200, {"images": images, "parameters": parameters, "info": json.dumps(info)})


#: Stands for what is known only once the job is queued: its seed (10 digits, the most a WebUI seed has) and the
#: S3 URI an inline image becomes (far longer than any).
_SEED_PLACEHOLDER = 4_000_000_000
_URI_PLACEHOLDER = "s3://" + "x" * 1019


def text_bound(characters: int) -> int:
    """The bytes the parameters text of ``characters`` takes in an output, in any format: twice the characters,
    because WebP and JPEG carry it as UTF-16 in EXIF (their pixels stay within the PNG bound: lossless WebP of
    noise is the raw size, the lossy codecs at quality 100 two thirds of it or less), plus the headers."""
    return 2 * characters + 128


def _sd_upscaled(inputs: Mapping[str, Any]) -> tuple[int, int]:
    """The size of SD upscale's answer: its init image's, upscaled; the largest a job makes when the image is not
    inline (an S3 reference, which the worker reads)."""
    try:
        image = decode_inline(str(inputs["image"]))
    except ImageRefError:
        return MAX_SIDE, MAX_SIDE
    return upscaled_size(SdUpscaleInputs.model_construct(**inputs), image.width, image.height)


def check_answer_size(job: WebuiJob, inputs: Mapping[str, Any], body: Mapping[str, Any],
                      parameters: dict[str, Any], title: str, limit: int) -> None:
    """ContractError naming ``batch_size`` (or ``n_iter``, or ``width`` for one image) when the answer with the
    job's images could exceed ``limit`` bytes: each PNG at its worst case (``png_bytes_bound``, incompressible
    pixels) in base64, plus the answer's JSON exactly as ``webui_answer`` builds it. Decided before queueing, so a
    job whose answer cannot be delivered never runs: on AWS a response over Lambda's limit is a 502 after the
    job has run."""
    count = int(inputs.get("num_images") or 1)
    width, height = int(inputs.get("width") or MAX_SIDE), int(inputs.get("height") or MAX_SIDE)
    if inputs.get("hires"):  # hires fix answers its second pass's size (WebUI's enable_hr)
        width, height = Hires.model_validate(inputs["hires"]).target(width, height)
    if job.pipeline == "sd_upscale":  # SD upscale answers the upscaled image, of the init image's size x scale
        width, height = _sd_upscaled(inputs)
    seed = _SEED_PLACEHOLDER if inputs.get("seed") is None else inputs["seed"]
    stored = dict(inputs)
    for path in image_paths(inputs):  # each becomes an S3 URI once queued (units' and adapters' too)
        stored = set_path(stored, path, _URI_PLACEHOLDER) if get_path(inputs, path) else stored
    text = {"pipeline": job.pipeline, "model": job.model, "seed": seed, "index": count - 1, **stored}
    text_bytes = text_bound(len(json.dumps(text, sort_keys=True, separators=(",", ":"))))
    image = base64_bytes(png_bytes_bound(width, height, text_bytes))

    def answer_bytes(images: int) -> int:
        info = webui_info(job, body, seed, title)
        return len(json.dumps(webui_answer([""] * images, parameters, info))) + images * image

    total = answer_bytes(count)
    if total <= limit:
        return
    fits = next((n for n in range(count - 1, 0, -1) if answer_bytes(n) <= limit), 0)
    single = "script_args.3" if job.pipeline == "sd_upscale" else "hr_scale" if inputs.get("hires") else "width"
    field = single if fits == 0 else \
        "n_iter" if (body.get("batch_size") or 1) == 1 else "batch_size"
    advice = (f"at most {fits} image{'s' if fits > 1 else ''} of this size fit: lower batch_size x n_iter"
              if fits else "not even one image of this size fits: lower width and height")
    raise ContractError("answer_too_large", (
        f"{field}: batch_size x n_iter = {count} images of width x height = {width} x {height} make an answer of "
        f"up to {total} bytes (a PNG's worst case, {image} bytes each in base64), over Lambda's {limit}-byte "
        f"response limit; {advice}"), field)
