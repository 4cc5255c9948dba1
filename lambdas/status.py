"""``GET /v1/jobs/{id}``: the status document, with presigned URLs for the outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lambdas.common import Deployment, deployment, error, response, status_url
from runtime.contract import JOB_ID_RE, StatusDoc, utcnow
from runtime.contract.formats import content_type_of


def bad_id(job_id: str) -> dict[str, Any] | None:
    """The 400 for an id that cannot name a job (also keeps arbitrary text out of S3 keys), else None."""
    if JOB_ID_RE.match(job_id):
        return None
    return error(400, "invalid_field", "a job id is 1-64 characters of A-Z, a-z, 0-9, '_' and '-'", "id")


def not_found(job_id: str) -> dict[str, Any]:
    return error(404, "not_found", f"no job with id {job_id!r}", "id")


#: ``url(settings, job_id)``: where a client polls a job (the route it can call: IAM's or an API key's).
StatusUrl = Callable[[Any, str], str]


def status_body(dep: Deployment, doc: StatusDoc, url: StatusUrl = status_url) -> dict[str, Any]:
    """What clients see of a status document (every route that returns one uses this shape)."""
    body = doc.model_dump(mode="json", exclude={"request_hash"})
    body["outputs"] = [{"key": key, "url": dep.store.presign(key), "content_type": content_type_of(key)}
                       for key in doc.outputs]
    body["status_url"] = url(dep.settings, doc.id)
    return body


def status(dep: Deployment, job_id: str, url: StatusUrl = status_url) -> dict[str, Any]:
    if (invalid := bad_id(job_id)) is not None:
        return invalid
    doc = dep.store.read_status(job_id)
    if doc is None:
        return not_found(job_id)
    return response(200, status_body(dep, doc.as_of(utcnow()), url))  # a job past its deadline unseen: expired


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return status(deployment(), (event.get("pathParameters") or {}).get("id", ""))
