"""``/controlnet/*``: the ControlNet extension's own routes (``version``, ``model_list``, ``module_list``,
``control_types``, ``settings``, ``detect``), behind the same API key as ``/sdapi/v1``, for the WebUI clients that
call them before sending units.

The listings come from the settings and the contract (``runtime.contract.controlnet_ext``); ``detect`` queues a
``controlnet_detect`` job per image, checked as ``POST /v1/jobs`` checks one (every image before the first is
queued), and answers the extension's ``{"info": "Success", "images": [...]}`` once they are done, waiting as
``/sdapi/v1/txt2img`` waits (``sdapi.wait``, ``SPOTGEN_SYNC_WAIT_S``; then a 504 naming the jobs).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from lambdas import compat, extras, telemetry
from lambdas.body import parse_json
from lambdas.common import Deployment, deployment, error, raw_body, response
from lambdas.sdapi import wait
from lambdas.submit import Rejected, check, enqueue
from runtime.contract import ContractError, JobRequest, raise_contract_error, request_hash, utcnow
from runtime.contract.controlnet_ext import (
    DETECT_MODEL,
    EXTENSION_API_VERSION,
    control_types,
    detect_error,
    detect_jobs,
    module_list,
)
from runtime.contract.images import decode_inline
from runtime.contract.inputs import MAX_CONTROLNETS, MAX_SIDE
from runtime.contract.webui_answer import LAMBDA_RESPONSE_BYTES, base64_bytes, png_bytes_bound

#: The routes under ``/controlnet/``, by method.
ROUTES = {"GET": ("version", "model_list", "module_list", "control_types", "settings"), "POST": ("detect",)}


def model_list(dep: Deployment) -> dict[str, Any]:
    """The ControlNets a unit's ``model`` may name, by their WebUI titles (an alias, else the id)."""
    return {"model_list": _titles(dep)}


def _titles(dep: Deployment) -> list[str]:
    titles = compat.titles(dep.settings)
    return [titles[model] for model in dep.settings.controlnets]


def _map_bytes(inputs: dict[str, Any]) -> int:
    """The most bytes one map takes in the answer: a PNG's worst case in base64 at the larger of the image's own
    size and its size with the short side at ``resolution`` (which of them a module keeps is the worker's)."""
    ref = inputs["image"]
    if ref.lower().startswith("s3://"):
        return 0  # spotgen's own reference: not read here
    image = decode_inline(ref)
    short = min(image.width, image.height)
    scaled = (image.width * inputs["resolution"] / short) * (image.height * inputs["resolution"] / short)
    pixels = max(image.width * image.height, min(scaled, MAX_SIDE * MAX_SIDE))
    side = int(pixels ** 0.5) + 1
    return base64_bytes(png_bytes_bound(side, side, 4096))


def detect(dep: Deployment, event: dict[str, Any]) -> dict[str, Any]:
    try:
        jobs = detect_jobs(parse_json(raw_body(event)))
        checked = []
        for inputs, field in jobs:  # every image before the first is queued
            try:
                request = JobRequest.model_validate({"pipeline": "controlnet_detect", "model": DETECT_MODEL,
                                                     "inputs": inputs})
            except ValidationError as exc:
                raise_contract_error(exc)
            try:
                checked.append((request, check(dep, request)))
            except ContractError as exc:
                raise detect_error(exc, field) from None
        total = sum(_map_bytes(inputs) for inputs, _ in jobs)
        if total > LAMBDA_RESPONSE_BYTES:
            field = jobs[0][1].rsplit(".", 1)[0] if len(jobs) > 1 else "controlnet_processor_res"
            raise ContractError("answer_too_large", f"{field}: the maps make an answer of up to {total} bytes, over "
                                f"Lambda's {LAMBDA_RESPONSE_BYTES}-byte response limit; send fewer or smaller "
                                "images, or a lower controlnet_processor_res", field)
        now = utcnow()
        queued = [enqueue(dep, request, inputs, now=now, expires_at=None, digest=request_hash(request))
                  for request, inputs in checked]
    except ContractError as exc:
        return error(400, exc.code, exc.message, exc.field)
    except Rejected as rejected:
        return rejected.response
    images = extras.collect(dep, queued, wait, "map")
    if isinstance(images, dict):
        return images
    return response(200, {"info": "Success", "images": images})


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Every ``/controlnet`` route (``pathParameters.name``: the part after ``/controlnet/``, from the router)."""
    name = (event.get("pathParameters") or {}).get("name", "")
    method = event.get("requestContext", {}).get("http", {}).get("method", "GET").upper()
    dep = deployment()
    with telemetry.span(f"spotgen.controlnet.{name}", "SERVER", event.get("headers")):
        if (method, name) == ("GET", "version"):
            return response(200, {"version": EXTENSION_API_VERSION})
        if (method, name) == ("GET", "model_list"):
            return response(200, model_list(dep))
        if (method, name) == ("GET", "module_list"):
            return response(200, module_list())
        if (method, name) == ("GET", "control_types"):
            return response(200, control_types(_titles(dep)))
        if (method, name) == ("GET", "settings"):  # the extension's setting of how many units a job may have
            return response(200, {"control_net_unit_count": MAX_CONTROLNETS})
        if (method, name) == ("POST", "detect"):
            return detect(dep, event)
    allowed = [m for m, names in ROUTES.items() if name in names]
    if allowed:
        return error(405, "method_not_allowed", f"{method} is not allowed on /controlnet/{name}; use "
                     f"{', '.join(allowed)}", Allow=", ".join(allowed))
    served = sorted(route for names in ROUTES.values() for route in names)
    return error(404, "not_found", f"/controlnet/{name} is not served: spotgen serves {', '.join(served)}")
