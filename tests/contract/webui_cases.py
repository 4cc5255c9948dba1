"""The SD WebUI API bodies that ``test_webui_*.py`` send, and the names and refusal helper they share.

The bodies are what clients send: the ``webuiapi`` package's txt2img and img2img payloads with its defaults and its
ControlNet unit, built here with one field changed at a time; ``NAMES`` maps the checkpoints, LoRAs and ControlNets
they name onto spotgen's model ids.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from runtime.contract import ContractError, Names, WebuiJob, from_webui, validate_inputs

NAMES = Names(
    models={"sd_xl_base_1.0.safetensors": "sdxl-base", "v1-5-pruned-emaonly": "sd15"},
    loras={"LeoArmor": "leo-armor", "add_detail.safetensors": "add-detail"},
    controlnets={"control_v11p_sd15_openpose": "openpose-sd15"},
    default_model="sd15",
)


def png(width: int = 64, height: int = 64) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (9, 8, 7)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def webuiapi_txt2img(**changes: Any) -> dict[str, Any]:
    """``webuiapi.WebUIApi().txt2img(prompt=...)``'s payload, with its defaults (webuiapi 0.9)."""
    body = {
        "enable_hr": False, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_resize_x": 0,
        "hr_resize_y": 0, "hr_checkpoint_name": None, "hr_sampler_name": None, "hr_scheduler": None,
        "hr_prompt": "", "hr_negative_prompt": "", "denoising_strength": 0.7, "firstphase_width": 0,
        "firstphase_height": 0, "prompt": "a red fox", "styles": [], "seed": -1, "subseed": -1,
        "subseed_strength": 0.0, "seed_resize_from_h": 0, "seed_resize_from_w": 0, "batch_size": 1, "n_iter": 1,
        "steps": 20, "cfg_scale": 7.0, "width": 512, "height": 512, "restore_faces": False, "tiling": False,
        "do_not_save_samples": False, "do_not_save_grid": False, "negative_prompt": "", "eta": 1.0, "s_churn": 0,
        "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "override_settings": {}, "override_settings_restore_afterwards": True,
        "sampler_name": "Euler a", "scheduler": "automatic", "sampler_index": "Euler a", "script_name": None,
        "script_args": [], "send_images": True, "save_images": False, "alwayson_scripts": {},
    }
    return {**body, **changes}


def webuiapi_img2img(**changes: Any) -> dict[str, Any]:
    """``webuiapi.WebUIApi().img2img(images=[image], prompt=...)``'s payload, with its defaults."""
    body = {
        "init_images": [png(512, 512)], "resize_mode": 0, "denoising_strength": 0.75, "mask_blur": 4,
        "inpainting_fill": 0, "inpaint_full_res": True, "inpaint_full_res_padding": 0, "inpainting_mask_invert": 0,
        "initial_noise_multiplier": 1, "prompt": "a red fox", "styles": [], "seed": -1, "subseed": -1,
        "subseed_strength": 0, "seed_resize_from_h": 0, "seed_resize_from_w": 0, "batch_size": 1, "n_iter": 1,
        "steps": 20, "cfg_scale": 7.0, "image_cfg_scale": 1.5, "width": 512, "height": 512, "restore_faces": False,
        "tiling": False, "do_not_save_samples": False, "do_not_save_grid": False, "negative_prompt": "", "eta": 1.0,
        "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "override_settings": {},
        "override_settings_restore_afterwards": True, "sampler_name": "Euler a", "scheduler": "automatic",
        "sampler_index": "Euler a", "include_init_images": False, "script_name": None, "script_args": [],
        "send_images": True, "save_images": False, "alwayson_scripts": {},
    }
    return {**body, **changes}


def unit(**changes: Any) -> dict[str, Any]:
    """``webuiapi.ControlNetUnit(image=..., model=...).to_dict()``."""
    return {"image": png(512, 512), "mask": None, "module": "none", "model": "control_v11p_sd15_openpose",
            "weight": 1.0, "resize_mode": "Resize and Fill", "low_vram": False, "processor_res": 512,
            "threshold_a": 64, "threshold_b": 64, "guidance_start": 0.0, "guidance_end": 1.0,
            "control_mode": "Balanced", "pixel_perfect": False, "hr_option": "Both", "enabled": True, **changes}


def refused(body: Any, task: str = "txt2img", names: Names = NAMES) -> ContractError:
    with pytest.raises(ContractError) as caught:
        from_webui(body, task, names)  # type: ignore[arg-type]
    return caught.value


def mapped(body: dict[str, Any], task: str = "txt2img", names: Names = NAMES) -> WebuiJob:
    """The job of ``body``, its inputs validated as the pipeline's (a mapping spotgen would refuse later fails)."""
    job = from_webui(body, task, names)  # type: ignore[arg-type]
    validate_inputs(job.pipeline, job.inputs, input_bucket="in")
    return job
