"""The job contract, image checks, settings and the Celery envelope, without any server."""

from __future__ import annotations

import base64
import io
import json
from typing import get_args

import pytest
from PIL import Image

from runtime.config import Family, Settings
from runtime.contract import (
    FAMILIES,
    SAMPLER_SCHEDULES,
    SCHEDULERS,
    SCHEDULES,
    ContractError,
    JobRequest,
    Txt2ImgInputs,
    parse_request,
    request_hash,
    validate_inputs,
)
from runtime.contract.envelope import TASK_NAME, build_celery_message, read_celery_message
from runtime.contract.images import ImageRefError, check_ref, decode_inline, sniff


def encoded(fmt: str, size: tuple[int, int] = (40, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_sniff_reads_format_and_size_from_the_header(fmt: str) -> None:
    assert sniff(encoded(fmt)) == (fmt.lower(), 40, 24)


def test_sniff_refuses_other_formats() -> None:
    with pytest.raises(ImageRefError, match="not a PNG, JPEG or WebP"):
        sniff(encoded("GIF"))


def test_data_url_prefix_is_accepted() -> None:
    image = decode_inline("data:image/png;base64," + base64.b64encode(encoded("PNG")).decode())
    assert (image.format, image.width, image.height) == ("png", 40, 24)


@pytest.mark.parametrize("ref", ["http://x/a.png", "HTTPS://x/a.png", "file:///etc/passwd", "ftp://x/y"])
def test_urls_are_refused(ref: str) -> None:
    with pytest.raises(ImageRefError, match="URLs are not accepted"):
        check_ref(ref, "in")


def test_s3_refs_only_inside_the_input_bucket() -> None:
    assert check_ref("s3://in/a/b.png", "in") == "s3://in/a/b.png"
    for bad in ("s3://other/a.png", "s3://in/", "s3://in/a/../b.png", "s3://in//etc"):
        with pytest.raises(ImageRefError):
            check_ref(bad, "in")


def test_defaults_and_seed_bounds() -> None:
    inputs = Txt2ImgInputs(prompt="x")
    assert (inputs.width, inputs.height, inputs.scheduler, inputs.num_images) == (None, None, "euler", 1)
    assert (inputs.schedule, inputs.clip_skip, inputs.loras) == ("default", 1, [])
    with pytest.raises(ContractError) as info:
        validate_inputs("txt2img", {"prompt": "x", "seed": 2**32}, input_bucket="in")
    assert info.value.field == "inputs.seed"


def test_request_hash_ignores_the_id_but_not_the_inputs() -> None:
    a = JobRequest(id="a", pipeline="txt2img", model="m", inputs={"prompt": "x"})
    b = JobRequest(id="b", pipeline="txt2img", model="m", inputs={"prompt": "x"})
    c = JobRequest(id="a", pipeline="txt2img", model="m", inputs={"prompt": "y"})
    assert request_hash(a) == request_hash(b) != request_hash(c)


def test_plugin_inputs_are_bounded_but_passed_through() -> None:
    assert validate_inputs("solid", {"anything": 1}, input_bucket="in", extra_pipelines=frozenset({"solid"})) == {
        "anything": 1}
    with pytest.raises(ContractError, match="larger than"):
        validate_inputs("solid", {"x": "y" * 70000}, input_bucket="in", extra_pipelines=frozenset({"solid"}))
    with pytest.raises(ContractError) as info:
        validate_inputs("solid", {}, input_bucket="in")
    assert (info.value.code, info.value.field) == ("unknown_pipeline", "pipeline")


def test_parse_request_names_the_field() -> None:
    with pytest.raises(ContractError) as info:
        parse_request({"pipeline": "txt2img", "model": "m", "inputs": {}, "extra": 1})
    assert (info.value.code, info.value.field) == ("unknown_field", "extra")


def test_every_sampler_takes_the_default_schedule_and_only_known_ones() -> None:
    assert set(SAMPLER_SCHEDULES) == set(SCHEDULERS)
    for sampler, schedules in SAMPLER_SCHEDULES.items():
        assert schedules[0] == "default" and set(schedules) <= set(SCHEDULES), sampler


def test_the_settings_know_the_contracts_families() -> None:
    assert set(get_args(Family)) == set(FAMILIES)
    with pytest.raises(SystemExit, match="SPOTGEN_MODEL_FAMILIES"):
        Settings.from_env({"SPOTGEN_MODEL_FAMILIES": "x=sd4"})
    assert Settings.from_env({"SPOTGEN_MODEL_FAMILIES": "x=sdxl, y=sd1"}).model_families == {"x": "sdxl", "y": "sd1"}


def test_settings_from_env() -> None:
    settings = Settings.from_env({"SPOTGEN_MODELS": "a, b", "SPOTGEN_PROGRESS_INTERVAL_S": "0.5"})
    assert settings.models == ["a", "b"] and settings.progress_interval_s == 0.5
    assert Settings.from_env(settings.to_env()) == settings
    with pytest.raises(SystemExit, match="SPOTGEN_POLL_WAIT_S"):
        Settings.from_env({"SPOTGEN_POLL_WAIT_S": "forever"})


def test_envelope_has_the_kombu_sqs_shape() -> None:
    body = build_celery_message("job-1", [{"id": "job-1"}], queue="q")
    envelope = json.loads(base64.b64decode(body))
    assert envelope["content-type"] == "application/json"
    assert envelope["properties"]["body_encoding"] == "base64"
    assert envelope["properties"]["delivery_info"]["routing_key"] == "q"
    headers, args, kwargs = read_celery_message(body)
    assert (headers["task"], headers["id"], headers["root_id"]) == (TASK_NAME, "job-1", "job-1")
    assert args == [{"id": "job-1"}] and kwargs == {}
    with pytest.raises(ValueError, match="not a Celery"):
        read_celery_message("aGVsbG8=")


def test_lambdas_import_no_worker_dependencies() -> None:
    """The Lambda package must stay thin: boto3, pydantic, the standard library and the contract."""
    import subprocess
    import sys

    code = ("import sys, lambdas.api, lambdas.submit, lambdas.status; "
            "print(','.join(m for m in ('torch', 'diffusers', 'celery', 'kombu', 'PIL', 'transformers', 'numpy')"
            " if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


@pytest.mark.parametrize(("pipeline", "extra", "field"), [
    ("txt2img", {"steps": 51}, "inputs.scheduler"),
    ("img2img", {"steps": 41, "image": "s3://in/a.png", "strength": 0.8}, "inputs"),
])
def test_lcm_is_refused_more_steps_than_it_was_distilled_on(pipeline: str, extra: dict[str, object],
                                                             field: str) -> None:
    """diffusers' LCM fails deep inside the pipeline past 50 steps (x strength); the contract says so first."""
    with pytest.raises(ContractError) as info:
        validate_inputs(pipeline, {"prompt": "x", "scheduler": "lcm", **extra}, input_bucket="in")
    assert info.value.field == field and "lcm" in info.value.message and "50" in info.value.message
    fitting = {**extra, "steps": 50 if pipeline == "txt2img" else 40}
    assert validate_inputs(pipeline, {"prompt": "x", "scheduler": "lcm", **fitting}, input_bucket="in")
