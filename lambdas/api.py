"""One entry point for all routes: what API Gateway's routing does in production, for the local stack
and for deployments that prefer a single function. Unknown paths get 404, known paths with another
method 405, both as JSON errors like every other.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from lambdas import cancel, comfy_upload, comfyui, controlnet_api, sample, sdapi, status, submit
from lambdas.common import error

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]

ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    ("POST", re.compile(r"^/v1/jobs/?$"), submit.handler),
    ("GET", re.compile(r"^/v1/jobs/(?P<id>[^/]+)$"), status.handler),
    ("POST", re.compile(r"^/v1/jobs/(?P<id>[^/]+)/cancel$"), cancel.handler),
    # the compatibility routes (an API key, not IAM, in the deployed stack): the AWS sample's, SD WebUI's
    ("POST", re.compile(r"^/v1alpha2/?$"), sample.v1alpha2_handler),
    ("POST", re.compile(r"^/v1alpha1/?$"), sample.v1alpha1_handler),
    ("GET", re.compile(r"^/sdapi/v1/spotgen/jobs/(?P<id>[^/]+)$"), sdapi.job_status),  # a job's status, by key
    ("GET", re.compile(r"^/sdapi/v1/(?P<name>[a-z0-9-]+)/?$"), sdapi.handler),
    ("POST", re.compile(r"^/sdapi/v1/(?P<name>[a-z0-9-]+)/?$"), sdapi.handler),
    # the ControlNet extension's own routes (version, model_list, module_list, detect), by the same key
    ("GET", re.compile(r"^/controlnet/(?P<name>[a-z_]+)/?$"), controlnet_api.handler),
    ("POST", re.compile(r"^/controlnet/(?P<name>[a-z_]+)/?$"), controlnet_api.handler),
    # ComfyUI's routes (lambdas/comfyui.py), by the same key
    *((method, re.compile(rf"^/{path}/?$"), comfyui.handler) for method, path in (
        ("POST", "prompt"), ("GET", "prompt"), ("POST", "interrupt"), ("GET", "history"), ("GET", "view"),
        ("GET", "object_info"), ("GET", "queue"), ("GET", "system_stats"))),
    ("GET", re.compile(r"^/history/(?P<id>[^/]+)$"), comfyui.handler),
    ("GET", re.compile(r"^/object_info/(?P<name>[^/]+)$"), comfyui.handler),
    ("POST", re.compile(r"^/upload/image/?$"), comfy_upload.handler),
]


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    method = event.get("requestContext", {}).get("http", {}).get("method", "GET").upper()
    path = event.get("rawPath") or "/"
    allowed = []
    for route_method, pattern, route in ROUTES:
        match = pattern.match(path)
        if match is None:
            continue
        if route_method == method:
            event = {**event, "pathParameters": {**(event.get("pathParameters") or {}), **match.groupdict()}}
            return route(event, context)
        allowed.append(route_method)
    if allowed:
        return error(405, "method_not_allowed", f"{method} is not allowed on {path}; use {', '.join(allowed)}",
                     Allow=", ".join(allowed))
    return error(404, "not_found", f"no route for {path}")
