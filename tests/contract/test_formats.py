"""Output formats in the contract (``runtime/contract/formats.py``): what a request may ask, the errors that name
the field, the WebUI and sample mappings onto it, and content types. The encoders are tested on a real pipeline's
images in tests/pipelines/test_formats.py, and one job through the stack in tests/worker/test_formats_stack.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runtime.contract import ContractError, OutputLink, from_webui, validate_inputs
from runtime.contract.formats import OutputOptions, content_type_of
from runtime.contract.outputcheck import output_options
from runtime.contract.webui_answer import webui_error
from tests.contract.webui_cases import NAMES, webuiapi_txt2img

PROMPT = {"prompt": "a red fox"}


def checked(inputs: dict[str, Any], pipeline: str = "txt2img") -> Any:
    return validate_inputs(pipeline, inputs, input_bucket="in", extra_pipelines=frozenset({"plugin"}))


def refused(inputs: dict[str, Any], pipeline: str = "txt2img") -> ContractError:
    with pytest.raises(ContractError) as caught:
        checked(inputs, pipeline)
    return caught.value


def test_a_request_without_a_format_dumps_the_inputs_it_had_before_formats() -> None:
    """The submit API queues ``model_dump``: the new fields at their defaults must not appear, or every existing
    client's job would get other parameters in its PNG, another fingerprint, and other bytes."""
    dumped = checked(PROMPT).model_dump(mode="json")
    assert not {"format", "quality", "lossless"} & set(dumped)
    assert checked({**PROMPT, "format": "png"}).model_dump(mode="json") == dumped


def test_a_chosen_format_travels_in_the_inputs() -> None:
    dumped = checked({**PROMPT, "format": "webp", "quality": 60}).model_dump(mode="json")
    assert (dumped["format"], dumped["quality"]) == ("webp", 60)
    assert checked({**PROMPT, "format": "webp", "lossless": True}).model_dump(mode="json")["lossless"] is True


@pytest.mark.parametrize(("options", "quality"), [
    ({}, None), ({"format": "webp"}, 80), ({"format": "jpeg"}, 90), ({"format": "jpeg", "quality": 100}, 100),
    ({"format": "webp", "lossless": True}, None)])
def test_each_format_has_its_default_quality(options: dict[str, Any], quality: int | None) -> None:
    assert output_options(options).effective_quality == quality


@pytest.mark.parametrize(("options", "field", "words"), [
    ({"format": "gif"}, "inputs.format", "'png', 'webp' or 'jpeg'"),
    ({"format": "WEBP"}, "inputs.format", "'png', 'webp' or 'jpeg'"),
    ({"format": "webp", "quality": 0}, "inputs.quality", "greater than or equal to 1"),
    ({"format": "jpeg", "quality": 101}, "inputs.quality", "less than or equal to 100"),
    ({"format": "jpeg", "quality": 90.0}, "inputs.quality", "an integer"),
    ({"format": "jpeg", "quality": "90"}, "inputs.quality", "an integer"),
    ({"quality": 80}, "inputs.quality", "png is lossless"),
    ({"format": "jpeg", "lossless": True}, "inputs.lossless", "webp only"),
    ({"format": "webp", "quality": 90, "lossless": True}, "inputs.lossless", "no quality"),
    ({"format": "webp", "lossless": 1}, "inputs.lossless", "a boolean"),
])
@pytest.mark.parametrize("pipeline", ["txt2img", "plugin"])
def test_a_bad_format_or_quality_is_refused_naming_the_field(options: dict[str, Any], field: str, words: str,
                                                            pipeline: str) -> None:
    """Built-ins and plugins alike: the runtime encodes every pipeline's outputs, so the API checks the fields of
    a plugin's inputs too (a plugin job would otherwise run on the GPU and fail at its output stage)."""
    error = refused({**PROMPT, **options}, pipeline)
    assert (error.code, error.field) == ("invalid_field", field)
    assert words in error.message


def test_a_plugin_job_keeps_its_inputs_as_sent() -> None:
    assert checked({"text": "x", "format": "webp"}, "plugin") == {"text": "x", "format": "webp"}


@pytest.mark.parametrize(("key", "content_type"), [
    ("out/j/0.png", "image/png"), ("out/j/0.webp", "image/webp"), ("out/j/1.jpg", "image/jpeg"),
    ("out/j/0", "application/octet-stream")])
def test_content_type_of_a_key(key: str, content_type: str) -> None:
    assert content_type_of(key) == content_type


def test_an_output_link_of_an_older_answer_gets_its_keys_content_type() -> None:
    """Clients parse answers with ``OutputLink``: a deployment that does not send content types yet still parses."""
    assert OutputLink(key="o/j/0.webp", url="u").content_type == "image/webp"
    assert OutputLink(key="o/j/0.png", url="u", content_type="image/png").content_type == "image/png"


# -- WebUI's override_settings (the /sdapi/v1 routes and the AWS sample's, whose bodies are WebUI's) ---------------
def webui(settings: dict[str, Any]) -> dict[str, Any]:
    job = from_webui(webuiapi_txt2img(override_settings=settings), "txt2img", NAMES)
    validate_inputs(job.pipeline, job.inputs, input_bucket="in")
    return {key: job.inputs[key] for key in ("format", "quality", "lossless") if key in job.inputs}


@pytest.mark.parametrize(("settings", "options"), [
    ({}, {}), ({"samples_format": "png", "jpeg_quality": 50}, {}),
    ({"samples_format": "jpg"}, {"format": "jpeg", "quality": 80}),  # WebUI's jpeg_quality default, not ours
    ({"samples_format": "JPEG", "jpeg_quality": 95}, {"format": "jpeg", "quality": 95}),
    ({"samples_format": "webp", "jpeg_quality": 70}, {"format": "webp", "quality": 70}),
    ({"samples_format": "webp", "webp_lossless": True, "jpeg_quality": 70}, {"format": "webp", "lossless": True}),
    ({"samples_format": "jpg", "webp_lossless": True}, {"format": "jpeg", "quality": 80}),  # WebUI ignores it
])
def test_webuis_samples_format_maps_onto_the_format(settings: dict[str, Any], options: dict[str, Any]) -> None:
    assert webui(settings) == options


@pytest.mark.parametrize(("settings", "field"), [
    ({"samples_format": "gif"}, "override_settings.samples_format"),
    ({"samples_format": 1}, "override_settings.samples_format"),
    ({"samples_format": "webp", "jpeg_quality": "80"}, "override_settings.jpeg_quality"),
    ({"samples_format": "webp", "webp_lossless": "yes"}, "override_settings.webp_lossless"),
])
def test_a_bad_webui_format_setting_is_refused_naming_it(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ContractError) as caught:
        webui(settings)
    assert caught.value.field == field


def test_a_webui_quality_out_of_range_is_named_as_the_client_wrote_it() -> None:
    """The range is the job's rule (``validate_inputs``); the error is renamed to the WebUI setting."""
    job = from_webui(webuiapi_txt2img(override_settings={"samples_format": "jpg", "jpeg_quality": 0}), "txt2img",
                     NAMES)
    with pytest.raises(ContractError) as caught:
        validate_inputs(job.pipeline, job.inputs, input_bucket="in")
    assert webui_error(caught.value).field == "override_settings.jpeg_quality"


def test_the_output_options_model_is_what_plugins_subclass() -> None:
    """A plugin's ``Inputs`` subclass it to accept the fields (spotgen.OutputOptions, docs/plugins.md)."""
    import spotgen

    class Inputs(spotgen.OutputOptions):
        text: str

    assert spotgen.OutputOptions is OutputOptions
    assert Inputs.model_validate({"text": "x", "format": "jpeg"}).format == "jpeg"
    assert Inputs.model_validate({"text": "x"}).model_dump() == {"text": "x"}


# -- the AWS sample's envelopes: WebUI bodies, with the queue agent's override_settings in alwayson_scripts ---------
def test_the_samples_envelopes_take_the_format_from_override_settings() -> None:
    """v1alpha2 ``content`` is a WebUI body; the agent's ``alwayson_scripts.override_settings`` are merged over it
    (``runtime/contract/sample.py``): either place chooses the format."""
    from tests.contract.sample_cases import NAMES as SAMPLE_NAMES
    from tests.contract.sample_cases import V1ALPHA2_T2I, parse2

    body = json.loads(V1ALPHA2_T2I)
    body["task"]["content"]["override_settings"] = {"samples_format": "jpg"}
    assert parse2(body).webui_job(SAMPLE_NAMES).inputs["format"] == "jpeg"
    body["task"]["content"]["alwayson_scripts"]["override_settings"] = {"samples_format": "webp",
                                                                         "webp_lossless": True}
    job = parse2(body).webui_job(SAMPLE_NAMES)
    assert (job.inputs["format"], job.inputs["lossless"]) == ("webp", True)
    body["task"]["content"]["alwayson_scripts"]["override_settings"] = {"samples_format": "tiff"}
    with pytest.raises(ContractError) as caught:
        parse2(body).webui_job(SAMPLE_NAMES)
    assert caught.value.field == "task.content.override_settings.samples_format"
