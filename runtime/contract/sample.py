"""The AWS sample's request envelopes ("asynchronous image generation with Stable Diffusion on EKS"), as jobs.

spotgen descends from ``aws-samples/stable-diffusion-on-eks`` and its successor
``aws-solutions-library-samples/guidance-for-asynchronous-inference-with-stable-diffusion-on-aws``, and people
move over with the clients they wrote for it. Those clients POST one of two envelopes around an SD WebUI body:

* ``v1alpha2`` (``docs/api/v1alpha2.yaml``): ``{"task": {"metadata": {"id", "runtime", "tasktype", "prefix",
  "context"}, "content": <WebUI body>}}``;
* ``v1alpha1`` (``docs/api/v1alpha1.yaml``): the WebUI body itself, with the routing keys (``task``,
  ``id_task``, ``sd_model_checkpoint``, ``save_dir``, ...) inside ``alwayson_scripts``.

The rules are those of the sample's front Lambdas (``src/frontend/input_function/v1alpha{1,2}/app.py``: what is
required, which task types exist) and of its queue agent (``src/backend/queue_agent/src/runtimes/sdwebui.py``:
what the routing keys do to the WebUI body), so a request means here what it meant there. The identifiers are
checked with the job contract's own rules (``JobRequest``'s ``id`` and ``output_prefix``), since they become a
spotgen job's. The sample's answers and its notification are written here too, so clients read what they read
before. Errors name the envelope's own fields (``task.metadata.id``, ``alwayson_scripts.id_task``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from runtime.contract.errors import ContractError, json_type, prefixed, raise_contract_error
from runtime.contract.jobs import JOB_ID_RE, MAX_CONTEXT_BYTES, JobRequest, OutputPrefix
from runtime.contract.webhook import Webhook
from runtime.contract.webui import Names, Task, WebuiJob, from_webui

#: The shape of a runtime's name (which runtimes exist is configured, and given to ``parse_v1alpha2``).
RUNTIME_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

#: The sample's SD WebUI task types, and the WebUI task each is.
SAMPLE_TASKTYPES: Mapping[str, Task] = MappingProxyType({"text-to-image": "txt2img", "image-to-image": "img2img"})
#: The sample's upscaler task (v1alpha2 only): its ``content`` is WebUI's extras body, ``runtime.contract.extras``.
EXTRAS_TASKTYPE = "extra-single-image"
#: The sample's ComfyUI task (v1alpha2 only, its ``comfyui`` runtime): its ``content`` is an API-format graph, run
#: as ``POST /prompt`` runs one (``lambdas/sample.py``, ``runtime.contract.comfy``).
PIPELINE_TASKTYPE = "pipeline"
#: Task types the sample knows and spotgen does not run: WebUI's batch upscaler.
_UNSUPPORTED_TASKTYPES = MappingProxyType({"extra-batch-images": "WebUI's batch upscaler (extras)"})

#: ``alwayson_scripts`` keys that the queue agent takes out before calling WebUI (``ALWAYSON_SCRIPTS_EXCLUDE_KEYS``,
#: in either API version). ``sd_model_checkpoint`` stays: ``from_webui`` reads it, naming it where the client
#: wrote it.
_ROUTING_KEYS = ("task", "id_task", "uid", "image_link", "save_dir", "sd_vae", "override_settings", "webhook")
#: Those that change the picture: read in v1alpha2 content too (where the others mean nothing to the agent).
_EFFECTIVE_KEYS = ("image_link", "override_settings")

_JOB_FIELDS = JobRequest.model_fields  # the job's own rules, reused for the fields that become the job's


class _Metadata(BaseModel):
    """``task.metadata`` of v1alpha2, typed; required-ness is checked before (the job fields are optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = _JOB_FIELDS["id"]
    runtime: str = Field(pattern=RUNTIME_NAME_RE.pattern)
    tasktype: str
    prefix: OutputPrefix | None = _JOB_FIELDS["output_prefix"]
    context: Any = None
    #: spotgen's extra: the job's webhook, as ``POST /v1/jobs`` takes it (docs/api.md "Webhooks").
    webhook: Webhook | None = None


class _Routing(BaseModel):
    """v1alpha1's routing keys in ``alwayson_scripts``, typed, and those v1alpha2 content may carry too."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    task: str | None = None
    id_task: str | None = _JOB_FIELDS["id"]
    sd_model_checkpoint: str | None = Field(None, min_length=1)
    save_dir: OutputPrefix | None = _JOB_FIELDS["output_prefix"]
    uid: str | None = None
    #: spotgen's extra (v1alpha1): the job's webhook, beside the routing keys.
    webhook: Webhook | None = None
    image_link: str | None = Field(None, min_length=1)
    sd_vae: str | None = None
    override_settings: dict[str, Any] | None = None


class SampleRequest(BaseModel):
    """One request of the sample's API, either version, as what a spotgen job needs: the WebUI ``body`` and
    ``task`` for ``from_webui``, the job id, the output prefix and the context to echo."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_version: Literal["v1alpha1", "v1alpha2"]
    #: The job id: the sample's clients always name their task (``task.metadata.id``, ``id_task``).
    id: str = Field(pattern=JOB_ID_RE.pattern)
    #: The runtime the client asked for (v1alpha2); v1alpha1 names none (the sample routes it by checkpoint).
    runtime: str | None = None
    #: ``extras``: v1alpha2's ``extra-single-image``, whose body is WebUI's extras body; ``pipeline``: its ComfyUI
    #: graph (``lambdas/sample.py``).
    task: Task | Literal["extras", "pipeline"]
    #: The SD WebUI body, without the routing keys: what ``from_webui`` maps.
    body: dict[str, Any]
    #: Where the outputs go: ``{output_prefix}/{id}/``, as in the sample.
    output_prefix: str
    #: Echoed in the notification as the client sent it (any JSON value; the sample's own files send "").
    context: Any = Field(default_factory=dict)
    #: v1alpha1's ``alwayson_scripts.sd_model_checkpoint``, as given: its answer echoes it.
    sd_model_checkpoint: str | None = None
    #: spotgen's extra field: ``task.metadata.webhook`` (v1alpha2) or ``alwayson_scripts.webhook`` (v1alpha1).
    webhook: Webhook | None = None

    @property
    def webhook_field(self) -> str:
        return "task.metadata.webhook" if self.api_version == "v1alpha2" else "alwayson_scripts.webhook"

    def webui_job(self, names: Names) -> WebuiJob:
        """``from_webui`` of the body, its errors naming the field in the envelope (``task.content.steps``)."""
        if self.task in ("extras", "pipeline"):
            raise ContractError("unsupported_field", f"a {self.task} task is not a WebUI generation",
                                "task.metadata.tasktype")
        try:
            return from_webui(dict(self.body), self.task, names)
        except ContractError as exc:
            if self.api_version == "v1alpha1" or exc.field is None:
                raise
            raise prefixed(exc, "task.content") from None


def parse_v1alpha2(data: Any, runtimes: Collection[str]) -> SampleRequest:
    """A v1alpha2 body (``{"task": {"metadata", "content"}}``) for one of ``runtimes``, or a ``ContractError``."""
    envelope = _object(data, "body")
    _only(envelope, ("task",), "")
    task = _object(_required(envelope, "task", ""), "task")
    _only(task, ("metadata", "content"), "task.")
    metadata = _object(_required(task, "metadata", "task."), "task.metadata")
    for key in ("id", "runtime", "tasktype", "prefix"):  # the front Lambda's required keys (prefix: its KeyError)
        _required(metadata, key, "task.metadata.")
    meta = _validate(_Metadata, {**metadata, "prefix": _unslashed(metadata["prefix"])}, "task.metadata")
    if meta.runtime not in runtimes:
        known = ", ".join(sorted(runtimes)) or "none"
        raise ContractError("unknown_runtime", f"task.metadata.runtime: no runtime is called {meta.runtime!r}; "
                            f"the runtimes are: {known}", "task.metadata.runtime")
    whole = {EXTRAS_TASKTYPE: "extras", PIPELINE_TASKTYPE: "pipeline"}  # their content is taken whole
    webui_task: Task | Literal["extras", "pipeline"] = whole.get(meta.tasktype) or \
        _tasktype(meta.tasktype, "task.metadata.tasktype")  # type: ignore[assignment]
    context = metadata.get("context", {})  # the queue agent echoes {} when there is none
    _bounded(context, "task.metadata.context")
    content = _object(_required(task, "content", "task."), "task.content")
    body = dict(content) if webui_task in whole.values() else \
        _webui_body(content, webui_task, "task.content.alwayson_scripts", _EFFECTIVE_KEYS)[0]
    return SampleRequest(api_version="v1alpha2", id=str(meta.id), runtime=meta.runtime, task=webui_task, body=body,
                         output_prefix=str(meta.prefix), context=context, webhook=meta.webhook)


def parse_v1alpha1(data: Any) -> SampleRequest:
    """A v1alpha1 body (WebUI's, routed by ``alwayson_scripts``' keys), or a ``ContractError``."""
    body = _object(data, "body")
    scripts = _object(_required(body, "alwayson_scripts", ""), "alwayson_scripts")
    for key in ("task", "id_task", "sd_model_checkpoint", "save_dir"):  # the front Lambda's required keys
        _required(scripts, key, "alwayson_scripts.")
    webui_task = _tasktype(_typed_str(scripts["task"], "alwayson_scripts.task"), "alwayson_scripts.task")
    webui_body, routing = _webui_body(body, webui_task, "alwayson_scripts", (*_ROUTING_KEYS, "sd_model_checkpoint"))
    return SampleRequest(api_version="v1alpha1", id=str(routing.id_task), task=webui_task, body=webui_body,
                         output_prefix=str(routing.save_dir), sd_model_checkpoint=routing.sd_model_checkpoint,
                         webhook=routing.webhook)


def sample_output_location(request: SampleRequest, bucket: str) -> str:
    """Where the sample says a task's outputs are: ``s3://BUCKET/PREFIX/ID`` (the images lie under it)."""
    return f"s3://{bucket}/{request.output_prefix}/{request.id}"


def v1alpha2_answer(request: SampleRequest, bucket: str) -> dict[str, Any]:
    """The v1alpha2 front Lambda's 200 body, field for field."""
    return {"id": request.id, "runtime": request.runtime, "output_location": sample_output_location(request, bucket)}


def v1alpha1_answer(request: SampleRequest, bucket: str) -> dict[str, Any]:
    """The v1alpha1 front Lambda's 200 body, field for field (its OpenAPI file also lists ``task``, which the
    Lambda never sends)."""
    return {"id_task": request.id, "sd_model_checkpoint": request.sd_model_checkpoint,
            "output_location": sample_output_location(request, bucket)}


class SampleNotification(BaseModel):
    """The queue agent's message on the notification topic when a task ends, in its field order. ``output_url``
    is the task's output document (the sample's ``{id}-{rand}.out``, the runtime's whole answer as JSON): a
    spotgen job's is its status document."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    runtime: str
    id: str
    result: bool
    status: Literal["completed", "failed"]
    #: The images' ``s3://`` URLs; none when the task failed.
    image_url: list[str] = Field(default_factory=list)
    output_url: str
    context: Any = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> SampleNotification:
        if self.result != (self.status == "completed"):
            raise ValueError("result is true exactly when status is completed")
        if not self.result and self.image_url:
            raise ValueError("a failed task has no images")
        return self


def sample_notification(*, runtime: str, job_id: str, succeeded: bool, image_urls: Sequence[str], output_url: str,
                        context: Any) -> SampleNotification:
    """The sample's notification for a job that ended; a job that did not succeed (failed, cancelled, expired)
    is ``failed``, the sample's one other end, and carries no images."""
    return SampleNotification(runtime=runtime, id=job_id, result=succeeded,
                              status="completed" if succeeded else "failed",
                              image_url=list(image_urls) if succeeded else [], output_url=output_url,
                              context=context)


# -- the pieces ------------------------------------------------------------------------------------------------
def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        if field == "body":
            raise ContractError("invalid_body", "the request body must be a JSON object", "body")
        raise ContractError("invalid_field", f"{field}: must be an object, not {json_type(value)}", field)
    return value


def _required(container: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in container:
        raise ContractError("missing_field", f"'{path}{key}' is required", f"{path}{key}")
    if container[key] is None:
        raise ContractError("invalid_field", f"{path}{key}: must not be null", f"{path}{key}")
    return container[key]


def _only(container: Mapping[str, Any], keys: tuple[str, ...], path: str) -> None:
    for key in container:
        if key not in keys:
            raise ContractError("unknown_field", f"unknown field '{path}{key}'", f"{path}{key}")


def _typed_str(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise ContractError("invalid_field", f"{field}: must be a string, not {json_type(value)}", field)
    return value


def _unslashed(value: Any) -> Any:
    """A prefix without slashes at its ends: the sample's documentation writes "/output", its queue agent takes
    "output/" as "output"; an S3 key gets no empty segment from either."""
    return value.strip("/") if isinstance(value, str) and value.strip("/") else value


def _validate(model: type[BaseModel], data: dict[str, Any], prefix: str) -> Any:
    try:
        return model.model_validate_json(json.dumps(data), strict=True)
    except ValidationError as exc:
        raise_contract_error(exc, prefix)
        raise  # unreachable


def _tasktype(value: Any, field: str) -> Task:
    value = _typed_str(value, field)
    if value in SAMPLE_TASKTYPES:
        return SAMPLE_TASKTYPES[value]
    if value == EXTRAS_TASKTYPE:  # v1alpha2 takes it (parse_v1alpha2); v1alpha1 routes WebUI bodies only
        raise ContractError("unsupported_field", f"{field}: {value!r} is not supported in v1alpha1: send it as a "
                            "v1alpha2 task, or to /sdapi/v1/extra-single-image", field)
    if value in _UNSUPPORTED_TASKTYPES:
        raise ContractError("unsupported_field", f"{field}: {value!r} is not supported: spotgen does not run "
                            f"{_UNSUPPORTED_TASKTYPES[value]}; send text-to-image or image-to-image", field)
    raise ContractError("invalid_field", f"{field}: unknown task type {value!r}; choose text-to-image or "
                        "image-to-image", field)


def _bounded(context: Any, field: str) -> None:
    if len(json.dumps(context, separators=(",", ":"))) > MAX_CONTEXT_BYTES:
        raise ContractError("invalid_field", f"{field}: context is larger than {MAX_CONTEXT_BYTES} bytes of JSON",
                            field)


def _webui_body(body: dict[str, Any], task: Task, scripts_field: str, checked: Collection[str]
                ) -> tuple[dict[str, Any], _Routing]:
    """The WebUI body the queue agent would call WebUI with: the routing keys out of ``alwayson_scripts``, its
    ``override_settings`` over the body's, and for img2img its ``image_link`` as the one init image (for
    txt2img the agent drops it unread). ``sd_vae`` is dropped as by the agent, which never applies it. Only the
    ``checked`` keys are read (typed, and the job's identifiers checked as the job's); the others are dropped
    unread, as the agent drops them."""
    scripts = body.get("alwayson_scripts")
    if not isinstance(scripts, dict):  # v1alpha1 checked it already; from_webui refuses another value
        return dict(body), _Routing()
    given = {key: scripts[key] for key in checked if scripts.get(key) is not None}
    routing: _Routing = _validate(_Routing, {**given, "save_dir": _unslashed(given.get("save_dir"))}, scripts_field)
    out = {**body, "alwayson_scripts": {k: v for k, v in scripts.items() if k not in _ROUTING_KEYS}}
    base = body.get("override_settings")
    if routing.override_settings and (base is None or isinstance(base, dict)):
        out["override_settings"] = {**(base or {}), **routing.override_settings}
    if routing.image_link is not None and task == "img2img":
        out["init_images"] = [routing.image_link]
    return out, routing
