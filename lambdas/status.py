"""``GET /v1/jobs/{id}``: the status document, with presigned URLs for the outputs."""

from __future__ import annotations

from typing import Any

from lambdas.common import Deployment, deployment, error, response, status_url
from runtime.contract import JOB_ID_RE


def status(dep: Deployment, job_id: str) -> dict[str, Any]:
    if not JOB_ID_RE.match(job_id):
        return error(400, "invalid_field", "a job id is 1-64 characters of A-Z, a-z, 0-9, '_' and '-'", "id")
    doc = dep.store.read_status(job_id)
    if doc is None:
        return error(404, "not_found", f"no job with id {job_id!r}", "id")
    body = doc.model_dump(mode="json", exclude={"request_hash"})
    body["outputs"] = [{"key": key, "url": dep.store.presign(key)} for key in doc.outputs]
    body["status_url"] = status_url(dep.settings, job_id)
    return response(200, body)


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return status(deployment(), (event.get("pathParameters") or {}).get("id", ""))
