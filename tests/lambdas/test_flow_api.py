"""The API's side of Flux and SD 3.5 (issue 28, item 6): what the settings say of a model (its family and variant)
is enough to answer 400, naming the field, for a size not a multiple of 16, a sampler the family cannot use,
guidance on a timestep-distilled model, or a LoRA or ControlNet of another family; nothing is stored or queued.
Over HTTP through the local gateway, the production handler on the real emulator, no worker."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.local.devstack import DevStack
from tests.lambdas import test_edits_api
from tests.lambdas.test_edits_api import Emulator, queued, refused

# The editing tests' stack (the submit handler on the real emulator, no worker), one per module.
api, emu = test_edits_api.api, test_edits_api.emu


def job(model: str = "tiny-flux", pipeline: str = "txt2img", **inputs: Any) -> dict[str, Any]:
    return {"pipeline": pipeline, "model": model,
            "inputs": {"prompt": "a fox", "steps": 4, "width": 64, "height": 48, **inputs}}


REFUSED = [
    ("size", job(width=72), "invalid_field", "inputs.width"),
    ("sampler", job("tiny-sd3", scheduler="dpm2"), "invalid_field", "inputs.scheduler"),
    ("heun on flux", job(scheduler="heun"), "invalid_field", "inputs.scheduler"),
    ("euler a", job(scheduler="euler_a"), "invalid_field", "inputs.scheduler"),
    ("schnell guidance", job("tiny-flux-schnell", guidance=3.5), "invalid_field", "inputs.guidance"),
    ("schnell cfg", job("tiny-flux-schnell", guidance_scale=5.0), "invalid_field", "inputs.guidance_scale"),
    ("turbo cfg", job("tiny-sd3-turbo", guidance_scale=5.0), "invalid_field", "inputs.guidance_scale"),
    ("sd guidance", job("tiny-sd", guidance=3.5), "invalid_field", "inputs.guidance"),
    ("lora family", job(loras=[{"id": "tiny-lora-sdxl"}]), "incompatible_lora", "inputs.loras.0.id"),
    ("controlnet family", job(pipeline="controlnet", controlnet="tiny-sd3-controlnet",
                              control_image="s3://spotgen-inputs/x.png"), "incompatible_controlnet",
     "inputs.controlnet"),
    ("clip skip", job(clip_skip=2), "invalid_field", "inputs.clip_skip"),
]


@pytest.mark.parametrize(("case", "body", "code", "field"), REFUSED, ids=[c[0] for c in REFUSED])
def test_what_a_flow_model_cannot_run_is_400_naming_the_field(api: DevStack, emu: Emulator, case: str,
                                                               body: dict[str, Any], code: str, field: str) -> None:
    refused(api, emu, case, body, code, field)


def test_a_flux_job_is_queued_with_the_familys_defaults_left_to_the_worker(api: DevStack, emu: Emulator) -> None:
    inputs = queued(api, emu, job(guidance=4.0, shift=2.0, max_sequence_length=128))["inputs"]
    assert (inputs["guidance"], inputs["shift"], inputs["max_sequence_length"]) == (4.0, 2.0, 128)
    assert inputs["width"] == 64
