"""The AWS EKS sample's envelopes (``runtime/contract/sample.py``): one test per rule and per refusal.

The v1alpha2 body's ``task``, its ``metadata`` (id, runtime, tasktype, prefix, context) and its ``content``, and the
v1alpha1 body's ``alwayson_scripts`` routing keys: each rule is tested by changing keys of the sample's own t2i.json
(``sample_cases``); a request that maps is validated as the pipeline's inputs (``validate_inputs``), so an envelope
the sample accepted that spotgen would refuse later fails here.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from runtime.contract import (
    MAX_CONTEXT_BYTES,
    ContractError,
    JobRequest,
    SampleRequest,
    parse_v1alpha1,
    parse_v1alpha2,
    validate_inputs,
)
from tests.contract.sample_cases import NAMES, RUNTIMES, V1ALPHA1_T2I_EKS, V1ALPHA2_T2I, parse2, refusal


def v2(metadata: dict[str, Any] | None = None, content: Any = None, **task: Any) -> dict[str, Any]:
    """The sample's t2i.json with ``metadata`` keys changed (None removes one) and another ``content``."""
    body = json.loads(V1ALPHA2_T2I)
    meta = {**body["task"]["metadata"], **(metadata or {})}
    body["task"]["metadata"] = {key: value for key, value in meta.items() if value is not None}
    if content is not None:
        body["task"]["content"] = content
    body["task"].update(task)
    return body


def v1(scripts: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    """The sample's v1alpha1 t2i.json with ``alwayson_scripts`` keys changed (None removes one)."""
    body = {**json.loads(V1ALPHA1_T2I_EKS), **changes}
    merged = {**body["alwayson_scripts"], **(scripts or {})}
    body["alwayson_scripts"] = {key: value for key, value in merged.items() if value is not None}
    return body


def validated(request: SampleRequest) -> Any:
    job = request.webui_job(NAMES)
    return job, validate_inputs(job.pipeline, job.inputs, input_bucket="inputs")


# -- v1alpha2: the envelope --------------------------------------------------------------------------------------
@pytest.mark.parametrize("data", [[], "x", None])
def test_v1alpha2_a_body_that_is_not_an_object_is_refused(data: Any) -> None:
    assert (refusal(parse2, data).code, refusal(parse2, data).field) == ("invalid_body", "body")


def test_v1alpha2_task_metadata_and_content_are_required_objects() -> None:
    assert refusal(parse2, {}).field == "task"
    assert refusal(parse2, {"task": "x"}).field == "task"
    no_meta = v2()
    del no_meta["task"]["metadata"]
    assert (refusal(parse2, no_meta).code, refusal(parse2, no_meta).field) == ("missing_field", "task.metadata")
    assert refusal(parse2, {"task": {"metadata": [], "content": {}}}).field == "task.metadata"
    no_content = v2()
    del no_content["task"]["content"]
    assert (refusal(parse2, no_content).code, refusal(parse2, no_content).field) == ("missing_field", "task.content")
    error = refusal(parse2, v2(content="A dog"))
    assert (error.field, error.message) == ("task.content", "task.content: must be an object, not a string")


def test_v1alpha2_unknown_fields_of_the_envelope_are_refused() -> None:
    assert refusal(parse2, {**v2(), "id": "x"}).field == "id"
    assert refusal(parse2, v2(extra={})).field == "task.extra"
    error = refusal(parse2, v2(metadata={"sd_model_checkpoint": "x"}))
    assert (error.code, error.field) == ("unknown_field", "task.metadata.sd_model_checkpoint")


@pytest.mark.parametrize("key", ["id", "runtime", "tasktype", "prefix"])
def test_v1alpha2_the_front_lambdas_required_metadata_is_required(key: str) -> None:
    data = v2()
    del data["task"]["metadata"][key]
    error = refusal(parse2, data)
    assert (error.code, error.field) == ("missing_field", f"task.metadata.{key}")
    data["task"]["metadata"][key] = None
    assert (refusal(parse2, data).code, refusal(parse2, data).field) == ("invalid_field", f"task.metadata.{key}")


# -- v1alpha2: the metadata --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("tasktype", "task"), [("text-to-image", "txt2img"), ("image-to-image", "img2img")])
def test_v1alpha2_tasktype_is_the_webui_task(tasktype: str, task: str) -> None:
    content = {"prompt": "x", "init_images": ["s3://inputs/a.png"]} if task == "img2img" else {"prompt": "x"}
    assert parse2(v2({"tasktype": tasktype}, content)).task == task


def test_v1alpha2_an_unknown_tasktype_is_refused() -> None:
    for tasktype in ("txt2img", "Text-To-Image", ""):
        error = refusal(parse2, v2({"tasktype": tasktype}))
        assert (error.code, error.field) == ("invalid_field", "task.metadata.tasktype")
    assert "must be a string" in refusal(parse2, v2({"tasktype": 1})).message


def assert_same_verdict(request_field: str, value: str, metadata_key: str, error_field: str, attribute: str) -> None:
    """The envelope accepts ``value`` exactly when the job contract's JobRequest does, keeping it as it is."""
    try:
        JobRequest.model_validate({request_field: value, "pipeline": "txt2img", "model": "sd15"}, strict=True)
        expected = True
    except ValueError:
        expected = False
    try:
        assert getattr(parse2(v2({metadata_key: value})), attribute) == value
        accepted = True
    except ContractError as exc:
        assert exc.field == error_field
        accepted = False
    assert accepted == expected


@pytest.mark.parametrize("job_id", ["test-t2i", "A_b-9", "x" * 64, "x" * 65, "a/b", "a b", "", "ü", "a.b"])
def test_v1alpha2_the_id_follows_the_job_contracts_id_rules(job_id: str) -> None:
    assert_same_verdict("id", job_id, "id", "task.metadata.id", "id")


def test_v1alpha2_an_id_keeps_its_json_type() -> None:
    error = refusal(parse2, v2({"id": 42}))
    assert (error.field, error.message) == ("task.metadata.id", "task.metadata.id: must be a string, not a number")


def test_v1alpha2_the_runtime_is_one_of_the_known_ones() -> None:
    assert parse2(v2({"runtime": "sdruntime-xl"})).runtime == "sdruntime-xl"
    error = refusal(parse2, v2({"runtime": "comfyui"}))
    assert (error.code, error.field) == ("unknown_runtime", "task.metadata.runtime")
    assert "sdruntime, sdruntime-xl" in error.message
    assert refusal(parse_v1alpha2, v2(), frozenset()).code == "unknown_runtime"


@pytest.mark.parametrize("runtime", ["", "-x", "sd runtime", "sd/runtime", "x" * 65, 7, True])
def test_v1alpha2_a_runtime_of_another_shape_is_refused(runtime: Any) -> None:
    error = refusal(parse_v1alpha2, v2({"runtime": runtime}), {runtime} if isinstance(runtime, str) else RUNTIMES)
    assert (error.code, error.field) == ("invalid_field", "task.metadata.runtime")


@pytest.mark.parametrize("prefix", ["output", "a/b/c", "out_put-1", "jobs", "checkpoints/x", "jobsx", "a/../b",
                                    "..", "a//b", "a b", "x" * 128, "x" * 129])
def test_v1alpha2_the_prefix_follows_the_job_contracts_output_prefix_rules(prefix: str) -> None:
    assert_same_verdict("output_prefix", prefix, "prefix", "task.metadata.prefix", "output_prefix")


def test_v1alpha2_a_reserved_or_traversing_prefix_is_refused_naming_it() -> None:
    error = refusal(parse2, v2({"prefix": "jobs/mine"}))
    assert error.field == "task.metadata.prefix" and "reserved" in error.message
    assert refusal(parse2, v2({"prefix": "../other"})).field == "task.metadata.prefix"
    assert refusal(parse2, v2({"prefix": ["output"]})).message == "task.metadata.prefix: must be a string, not an array"


def test_v1alpha2_slashes_at_the_ends_of_the_prefix_are_dropped() -> None:
    # The sample's OpenAPI file's example is "/output"; its queue agent reads "output/" as "output".
    for prefix in ("/output", "output/", "/output/"):
        assert parse2(v2({"prefix": prefix})).output_prefix == "output"
    for prefix in ("/", "//", "/jobs"):
        assert refusal(parse2, v2({"prefix": prefix})).field == "task.metadata.prefix"


@pytest.mark.parametrize("context", ["", {"abc": 123}, {"user": {"id": 7}, "tags": ["a"]}, None, 5, ["x"]])
def test_v1alpha2_the_context_is_echoed_as_sent(context: Any) -> None:
    data = v2()
    data["task"]["metadata"]["context"] = context
    assert parse2(data).context == context


def test_v1alpha2_a_missing_context_is_the_queue_agents_empty_object() -> None:
    assert parse2(v2({"context": None})).context == {}


def test_v1alpha2_a_context_over_the_contracts_bound_is_refused() -> None:
    fits = {"k": "x" * (MAX_CONTEXT_BYTES - 8)}
    assert len(json.dumps(fits, separators=(",", ":"))) == MAX_CONTEXT_BYTES
    assert parse2(v2({"context": fits})).context == fits
    error = refusal(parse2, v2({"context": {"k": "x" * (MAX_CONTEXT_BYTES - 7)}}))
    assert (error.code, error.field) == ("invalid_field", "task.metadata.context")
    assert refusal(parse2, v2({"context": "x" * MAX_CONTEXT_BYTES})).field == "task.metadata.context"


# -- v1alpha2: the content ---------------------------------------------------------------------------------------
def test_v1alpha2_contents_image_link_is_the_init_image_for_img2img_and_dropped_for_txt2img() -> None:
    content = {"prompt": "x", "init_images": ["s3://inputs/old.png"],
               "alwayson_scripts": {"image_link": "s3://inputs/cat.png"}}
    assert parse2(v2({"tasktype": "image-to-image"}, content)).body["init_images"] == ["s3://inputs/cat.png"]
    body = parse2(v2({"tasktype": "text-to-image"}, {"prompt": "x", "alwayson_scripts": {"image_link": "s3://a/b"}}))
    assert body.body == {"prompt": "x", "alwayson_scripts": {}}
    error = refusal(parse2, v2(content={"prompt": "x", "alwayson_scripts": {"image_link": ["s3://a/b"]}}))
    assert error.field == "task.content.alwayson_scripts.image_link"


def test_v1alpha2_contents_alwayson_override_settings_go_over_the_bodys() -> None:
    content = {"prompt": "x", "override_settings": {"CLIP_stop_at_last_layers": 1, "sd_model_checkpoint": "sd15"},
               "alwayson_scripts": {"override_settings": {"CLIP_stop_at_last_layers": 2}}}
    request = parse2(v2(content=content))
    assert request.body["override_settings"] == {"CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": "sd15"}
    assert validated(request)[0].inputs["clip_skip"] == 2
    error = refusal(parse2, v2(content={"prompt": "x", "alwayson_scripts": {"override_settings": "x"}}))
    assert error.field == "task.content.alwayson_scripts.override_settings"


def test_v1alpha2_contents_other_routing_keys_are_dropped_unread_as_by_the_queue_agent() -> None:
    scripts = {"task": 1, "id_task": "a/b", "uid": "u", "save_dir": "jobs", "sd_vae": "x.vae.pt"}
    assert parse2(v2(content={"prompt": "x", "alwayson_scripts": scripts})).body["alwayson_scripts"] == {}


def test_v1alpha2_contents_sd_model_checkpoint_picks_the_model_as_with_a_dynamic_model_runtime() -> None:
    content = {"prompt": "x", "alwayson_scripts": {"sd_model_checkpoint": "sd_xl_turbo_1.0.safetensors"}}
    job, _ = validated(parse2(v2(content=content)))
    assert job.model == "sdxl-turbo"


def test_v1alpha2_webui_errors_name_the_field_inside_task_content() -> None:
    error = refusal(parse2(v2(content={"prompt": "x", "steps": "sixteen"})).webui_job, NAMES)
    assert (error.field, error.message) == ("task.content.steps",
                                            'task.content.steps: must be an integer, not a string ("sixteen")')
    error = refusal(parse2(v2(content={"steps": 16})).webui_job, NAMES)
    assert (error.code, error.field, error.message) == ("missing_field", "task.content.prompt",
                                                        "'task.content.prompt' is required")
    error = refusal(parse2(v2(content={"prompt": "x", "alwayson_scripts": {"adetailer": {}}})).webui_job, NAMES)
    assert error.field == "task.content.alwayson_scripts.adetailer"


# -- v1alpha1 ----------------------------------------------------------------------------------------------------
def test_v1alpha1_a_body_that_is_not_an_object_is_refused() -> None:
    assert refusal(parse_v1alpha1, ["x"]).code == "invalid_body"


def test_v1alpha1_alwayson_scripts_is_a_required_object() -> None:
    data = v1()
    del data["alwayson_scripts"]
    assert (refusal(parse_v1alpha1, data).code, refusal(parse_v1alpha1, data).field) == ("missing_field",
                                                                                         "alwayson_scripts")
    assert refusal(parse_v1alpha1, {**v1(), "alwayson_scripts": []}).field == "alwayson_scripts"


@pytest.mark.parametrize("key", ["task", "id_task", "sd_model_checkpoint", "save_dir"])
def test_v1alpha1_the_front_lambdas_routing_keys_are_required(key: str) -> None:
    error = refusal(parse_v1alpha1, v1({key: None}))
    assert (error.code, error.field) == ("missing_field", f"alwayson_scripts.{key}")


@pytest.mark.parametrize(("key", "value"), [("task", 1), ("id_task", 42), ("sd_model_checkpoint", 3),
                                            ("sd_model_checkpoint", ""), ("save_dir", ["outputs"]), ("uid", 5),
                                            ("sd_vae", False), ("image_link", 1), ("override_settings", [])])
def test_v1alpha1_a_malformed_routing_key_is_refused_naming_it(key: str, value: Any) -> None:
    error = refusal(parse_v1alpha1, v1({key: value}))
    assert (error.code, error.field) == ("invalid_field", f"alwayson_scripts.{key}")


def test_v1alpha1_task_is_the_webui_task_and_extras_are_not_supported() -> None:
    request = parse_v1alpha1(v1({"task": "image-to-image", "image_link": "s3://inputs/cat.png"}))
    assert (request.task, request.body["init_images"]) == ("img2img", ["s3://inputs/cat.png"])
    error = refusal(parse_v1alpha1, v1({"task": "extra-single-image"}))
    assert (error.code, error.field) == ("unsupported_field", "alwayson_scripts.task")
    error = refusal(parse_v1alpha1, v1({"task": "text-to-video"}))
    assert (error.code, error.field) == ("invalid_field", "alwayson_scripts.task")


def test_v1alpha1_id_task_and_save_dir_follow_the_job_contracts_rules() -> None:
    assert refusal(parse_v1alpha1, v1({"id_task": "a/b"})).field == "alwayson_scripts.id_task"
    assert refusal(parse_v1alpha1, v1({"id_task": "x" * 65})).field == "alwayson_scripts.id_task"
    error = refusal(parse_v1alpha1, v1({"save_dir": "checkpoints"}))
    assert error.field == "alwayson_scripts.save_dir" and "reserved" in error.message
    assert refusal(parse_v1alpha1, v1({"save_dir": "../x"})).field == "alwayson_scripts.save_dir"
    assert parse_v1alpha1(v1({"save_dir": "outputs/"})).output_prefix == "outputs"


def test_v1alpha1_the_routing_keys_leave_the_webui_body_and_uid_and_sd_vae_are_dropped() -> None:
    request = parse_v1alpha1(v1({"uid": "user-1", "sd_vae": "vae.pt", "image_link": "s3://inputs/cat.png"}))
    assert request.body["alwayson_scripts"] == {"sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors"}
    assert "init_images" not in request.body  # txt2img: the queue agent drops the link unread
    validated(request)


def test_v1alpha1_alwayson_override_settings_go_over_the_bodys() -> None:
    request = parse_v1alpha1(v1({"override_settings": {"CLIP_stop_at_last_layers": 2}},
                                override_settings={"CLIP_stop_at_last_layers": 1}))
    assert request.body["override_settings"] == {"CLIP_stop_at_last_layers": 2}
    assert validated(request)[0].inputs["clip_skip"] == 2


def test_v1alpha1_an_unknown_checkpoint_is_refused_where_the_client_named_it() -> None:
    error = refusal(parse_v1alpha1(v1({"sd_model_checkpoint": "dreamshaper_8.safetensors"})).webui_job, NAMES)
    assert (error.code, error.field) == ("unknown_model", "alwayson_scripts.sd_model_checkpoint")


# -- the parsed request ---------------------------------------------------------------------------------------------
def test_a_parsed_request_is_frozen() -> None:
    request = parse2(json.loads(V1ALPHA2_T2I))
    with pytest.raises(ValueError):
        request.id = "other"  # type: ignore[misc]
