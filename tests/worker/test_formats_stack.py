"""Output formats on the wire: a WebP job through the whole stack (HTTP API -> SNS -> SQS -> worker -> S3 + SNS)
stores WebP bytes under a ``.webp`` key with its content type on the S3 object, in the status and in the
notification, and decodes to exactly the pixels of the same job in PNG. The encoders and the contract are tested
in process (tests/pipelines/test_formats.py, tests/contract/test_formats.py)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import spotgen
from spotgen.images import read_parameters
from tests.conftest import Stack
from tests.rest import call, download, wait_for

INPUTS = {"prompt": "a red fox", "width": 64, "height": 48, "steps": 3, "seed": 11}


def run(stack: Stack, inputs: dict[str, object]) -> dict[str, object]:
    status, answer = call("POST", f"{stack.api_url}/v1/jobs", {"pipeline": "txt2img", "model": "tiny-sd",
                                                                "inputs": inputs})
    assert status == 202, answer
    doc = wait_for(stack.api_url, answer["id"], timeout=120)
    assert doc["state"] == "succeeded", doc
    return doc


def test_a_lossless_webp_job_is_the_png_jobs_pixels_with_its_content_type_everywhere(stack: Stack) -> None:
    png_doc = run(stack, INPUTS)
    webp_doc = run(stack, {**INPUTS, "format": "webp", "lossless": True})
    (png_out,), (webp_out,) = png_doc["outputs"], webp_doc["outputs"]  # type: ignore[misc]
    assert png_out["key"].endswith("/0.png") and png_out["content_type"] == "image/png"
    assert webp_out["key"].endswith("/0.webp") and webp_out["content_type"] == "image/webp"

    png, webp = download(png_out["url"]), download(webp_out["url"])
    assert Image.open(io.BytesIO(webp)).format == "WEBP"
    pixels = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in (png, webp)]
    assert np.array_equal(*pixels)
    params = json.loads(read_parameters(webp) or "")
    assert (params["format"], params["lossless"], params["seed"], params["index"]) == ("webp", True, 11, 0)
    assert "format" not in json.loads(read_parameters(png) or "")  # a PNG job's parameters are as they were

    head = stack.s3.head_object(Bucket=stack.env["SPOTGEN_OUTPUT_BUCKET"], Key=webp_out["key"])
    assert head["ContentType"] == "image/webp"
    (note,) = stack.inbox.settled(webp_doc["id"])  # type: ignore[arg-type]
    assert note["outputs"][0].endswith(".webp") and note["content_types"] == ["image/webp"]
    (png_note,) = stack.inbox.settled(png_doc["id"])  # type: ignore[arg-type]
    assert png_note["content_types"] == ["image/png"]


def test_the_client_saves_each_output_with_its_formats_extension(stack: Stack, tmp_path: Path) -> None:
    with spotgen.Client(stack.api_url) as client:
        job = client.submit("txt2img", "tiny-sd", {**INPUTS, "format": "jpeg", "num_images": 2})
        status = job.wait(timeout=120, raise_on_failure=True)
        assert [output.content_type for output in status.outputs] == ["image/jpeg", "image/jpeg"]
        paths = job.save(tmp_path)
    assert [path.name for path in paths] == [f"{job.id}-0.jpg", f"{job.id}-1.jpg"]
    assert Image.open(paths[1]).format == "JPEG"


def test_a_bad_format_is_a_400_naming_the_field(stack: Stack) -> None:
    for inputs, field in (({"format": "gif"}, "inputs.format"), ({"format": "jpeg", "quality": 0}, "inputs.quality")):
        status, answer = call("POST", f"{stack.api_url}/v1/jobs", {"pipeline": "txt2img", "model": "tiny-sd",
                                                                    "inputs": {**INPUTS, **inputs}})
        assert status == 400, answer
        assert answer["error"]["field"] == field, answer


def test_a_plugins_images_get_the_jobs_format_from_the_output_stage(stack: Stack) -> None:
    """The output stage encodes whatever a pipeline returns (in process, against the stack's emulator): a plugin
    job's ``format`` is the runtime's to apply, and a message whose format never went through the API fails
    naming the field instead of storing a wrong image."""
    from runtime.config import Settings
    from runtime.contract import JobSpec, utcnow
    from runtime.storage.jobstore import JobStore
    from runtime.worker.errors import PermanentError
    from runtime.worker.outputs import Outputs

    settings = Settings.from_env(stack.env)
    outputs = Outputs(settings, JobStore(stack.s3, settings), stack.sns)

    def spec(inputs: dict[str, object]) -> JobSpec:
        return JobSpec(id=f"plugin-{time.time_ns()}", pipeline="myplugin", model="tiny-sd", inputs=inputs, seed=1,
                       output_prefix="outputs", submitted_at=utcnow(), request_hash="0" * 64)

    image = Image.new("RGBA", (16, 8), (10, 200, 30, 128))
    (key,) = outputs.store_outputs(spec({"text": "x", "format": "jpeg", "quality": 75}), [image])
    assert key.endswith("/0.jpg")
    obj = stack.s3.get_object(Bucket=settings.output_bucket, Key=key)
    assert obj["ContentType"] == "image/jpeg"
    data = obj["Body"].read()
    assert Image.open(io.BytesIO(data)).format == "JPEG"
    assert json.loads(read_parameters(data) or "")["pipeline"] == "myplugin"
    with pytest.raises(PermanentError) as caught:
        outputs.store_outputs(spec({"text": "x", "format": "bmp"}), [image])
    assert (caught.value.info.code, caught.value.info.field) == ("invalid_inputs", "inputs.format")
