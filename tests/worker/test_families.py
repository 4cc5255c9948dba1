"""SDXL, Flux.1, SD 3.5 and LoRA adapters end to end: HTTP API -> SNS -> SQS -> a real worker -> diffusers -> S3.

The worker of the session stack is one process, so the three LoRA jobs run on the same worker in order.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
from PIL import Image

from runtime.contract import JobState, StatusDoc, utcnow
from runtime.contract.envelope import build_celery_message
from runtime.local.demo import edge_map
from tests.conftest import Stack
from tests.lambdas.test_api import png_bytes
from tests.rest import wait_for
from tests.worker.test_e2e import first_png, run

SDXL = {"width": 64, "height": 64, "steps": 4, "seed": 11}
LORA = [{"id": "tiny-lora-sdxl", "weight": 0.8}]


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def sdxl(pipeline: str, **inputs: Any) -> dict[str, Any]:
    return {"pipeline": pipeline, "model": "tiny-sdxl", "inputs": {"prompt": "a red fox in the snow", **SDXL,
                                                                   **inputs}}


def test_sdxl_txt2img_img2img_and_controlnet_end_to_end(stack: Stack) -> None:
    init = png_bytes(64, 64)
    bodies = [sdxl("txt2img", original_size=[1024, 1024], crops_coords_top_left=[0, 0]),
              sdxl("img2img", image=base64.b64encode(init).decode(), strength=0.7),
              sdxl("controlnet", controlnet="tiny-sdxl-controlnet",
                   control_image=base64.b64encode(edge_map(init)).decode())]
    for body in bodies:
        doc = run(stack, body)
        image = Image.open(io.BytesIO(first_png(doc)))
        assert image.size == (64, 64) and np.asarray(image).std() > 0, body["pipeline"]


#: Flux.1 and SD 3.5 sizes are multiples of 16; not square, so that a mix-up of width and height shows.
FLOW = {"prompt": "a red fox in the snow", "width": 80, "height": 48, "steps": 4, "seed": 11}


def test_flux_and_sd3_jobs_end_to_end(stack: Stack) -> None:
    """Flux.1 dev with its distilled guidance and a kohya LoRA, and SD 3.5 with skip-layer guidance, through the
    API and the session's worker: each succeeds with a PNG of the asked size that records what it ran."""
    flux = {"pipeline": "txt2img", "model": "tiny-flux",
            "inputs": {**FLOW, "guidance": 4.0, "loras": [{"id": "tiny-lora-flux-kohya", "weight": 0.7}]}}
    sd3 = {"pipeline": "txt2img", "model": "tiny-sd3",
           "inputs": {**FLOW, "skip_layer_guidance": {"layers": [7, 8, 9]}, "schedule": "karras"}}
    recorded = []
    for body in (flux, sd3):
        doc = run(stack, body)
        assert (doc["state"], doc["model"]) == ("succeeded", body["model"]), doc
        png = first_png(doc)
        image = Image.open(io.BytesIO(png))
        assert (image.format, image.size) == ("PNG", (80, 48)) and pixels(png).std() > 0, body["model"]
        recorded.append(json.loads(image.text["parameters"]))
    assert (recorded[0]["model"], recorded[0]["guidance"], recorded[0]["loras"]) == (
        "tiny-flux", 4.0, flux["inputs"]["loras"])
    assert (recorded[1]["model"], recorded[1]["skip_layer_guidance"]["layers"]) == ("tiny-sd3", [7, 8, 9])


def test_the_lora_request_of_the_issue_and_byte_identity_without_it(stack: Stack) -> None:
    """txt2img on tiny-sdxl with a LoRA at 0.8, DPM++ 2M Karras: it succeeds, its PNG differs from the same
    request without the LoRA, records the LoRA, and a job without LoRAs after it has the pixels of one before."""
    plain = sdxl("txt2img", scheduler="dpmpp_2m", schedule="karras")
    before = first_png(run(stack, plain))
    doc = run(stack, {**plain, "inputs": {**plain["inputs"], "loras": LORA}})
    with_lora = first_png(doc)
    after = first_png(run(stack, plain))
    assert not np.array_equal(pixels(with_lora), pixels(before))
    assert np.array_equal(pixels(after), pixels(before))
    params = json.loads(Image.open(io.BytesIO(with_lora)).text["parameters"])
    assert params["loras"] == LORA and (params["scheduler"], params["schedule"]) == ("dpmpp_2m", "karras")
    assert doc["loras"] == LORA


def test_a_lora_the_worker_cannot_apply_fails_the_job_naming_the_field(stack: Stack) -> None:
    """A queue message the API never saw (the queue is not trusted): the worker's catalog refuses an SD 1.x LoRA
    on an SDXL model, naming the field."""
    now = utcnow()
    job_id = "lora-of-another-family"
    queued = StatusDoc(id=job_id, state=JobState.queued, pipeline="txt2img", model="tiny-sdxl", seed=1,
                       created_at=now, updated_at=now)
    stack.s3.put_object(Bucket=stack.env["SPOTGEN_OUTPUT_BUCKET"], Key=f"jobs/{job_id}/status.json",
                        Body=queued.model_dump_json())
    spec = {"version": 1, "id": job_id, "pipeline": "txt2img", "model": "tiny-sdxl", "seed": 1,
            "inputs": {"prompt": "x", **SDXL, "loras": [{"id": "tiny-lora-sdxl"}, {"id": "tiny-lora-sd1-kohya"}]},
            "output_prefix": "outputs", "submitted_at": now.isoformat(), "request_hash": "0" * 64}
    stack.sqs.send_message(QueueUrl=stack.env["SPOTGEN_QUEUE_URL"],
                           MessageBody=build_celery_message(job_id, [spec], queue="x"),
                           MessageAttributes={"job_id": {"DataType": "String", "StringValue": job_id}})
    doc = wait_for(stack.api_url, job_id, timeout=60)
    assert doc["state"] == "failed", doc
    assert (doc["error"]["code"], doc["error"]["field"]) == ("incompatible_lora", "inputs.loras.1.id")
