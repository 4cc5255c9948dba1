"""What SD WebUI 1.10's API accepts: its request fields by JSON type, the values that change nothing, a
ControlNet unit's fields, and the names of its samplers and schedule types (``runtime.contract.webui`` maps a
body with them). Data only: the rules are in ``webui``.
"""

from __future__ import annotations

import re
from typing import Any

from runtime.contract.inputs import WEBUI_SAMPLERS


def _by_name(types: dict[str, str]) -> dict[str, str]:
    return {name: kind for kind, names in types.items() for name in names.split()}


#: The fields of WebUI 1.10's request models (``modules/api/models.py``) by type, as ``webui_coerce`` reads them;
#: "?": null allowed (WebUI's model takes it, and the field's default applies).
_COMMON = {
    "str": "prompt negative_prompt sampler_index", "int": "batch_size n_iter steps width height",
    "str?": "sampler_name scheduler refiner_checkpoint firstpass_image infotext script_name force_task_id",
    "int?": "seed subseed seed_resize_from_h seed_resize_from_w", "num": "cfg_scale",
    "num?": "eta subseed_strength s_min_uncond s_churn s_noise s_tmin s_tmax refiner_switch_at "
            "distilled_cfg_scale",  # Forge's, Flux's distilled guidance (``webui_families``)
    "bool": "send_images save_images", "list": "script_args", "list?": "styles", "dict": "alwayson_scripts",
    "bool?": "restore_faces tiling do_not_save_samples do_not_save_grid override_settings_restore_afterwards "
             "disable_extra_networks", "dict?": "override_settings comments",
}
_TYPES = {
    "txt2img": _by_name(_COMMON) | _by_name({
        "bool?": "enable_hr", "num?": "denoising_strength hr_scale hr_cfg hr_distilled_cfg",  # hr_*cfg*: Forge's
        "int?": "firstphase_width firstphase_height hr_second_pass_steps hr_resize_x hr_resize_y",
        "str?": "hr_upscaler hr_checkpoint_name hr_sampler_name hr_scheduler hr_prompt hr_negative_prompt"}),
    "img2img": _by_name(_COMMON) | _by_name({
        "list?": "init_images", "num": "denoising_strength", "str?": "mask latent_mask", "bool": "include_init_images",
        "int?": "resize_mode mask_blur mask_blur_x mask_blur_y inpainting_fill inpaint_full_res_padding "
                "inpainting_mask_invert", "num?": "initial_noise_multiplier image_cfg_scale",
        "bool?": "mask_round inpaint_full_res"}),
}
#: The values accepted of fields spotgen does not implement: WebUI's defaults (``()``: null only). The fields
#: neither here nor read into the job (``webui``, ``webui_passes``) change nothing while what they tune is off or
#: refused: subseed (subseed_strength), s_tmin and s_tmax (s_churn), script_args (script_name, ``webui_scripts``),
#: mask_round (WebUI rounds an inpainting mask it has blurred; spotgen's inpainting keeps the blur), image_cfg_scale
#: (instruct-pix2pix models only), force_task_id, do_not_save_* (WebUI's API sets them from save_images), and
#: Forge's hr_cfg and hr_distilled_cfg.
_ONLY: dict[str, tuple[Any, ...]] = {
    "styles": ([],), "subseed_strength": (0,), "seed_resize_from_h": (-1, 0), "seed_resize_from_w": (-1, 0),
    "restore_faces": (False,), "s_min_uncond": (0,), "s_churn": (0,), "s_noise": (1,),
    "override_settings_restore_afterwards": (True,),  # false would keep the settings for later requests
    "comments": ({},), "firstpass_image": (), "infotext": (),
    "send_images": (True,), "save_images": (False,),
    "firstphase_width": (0,), "firstphase_height": (0,), "latent_mask": (),
    "initial_noise_multiplier": (1,), "include_init_images": (False,),
}
#: Settings clients send at WebUI's defaults, which are what spotgen does; any other setting is refused.
_SETTINGS: dict[str, tuple[Any, ...]] = {
    "sd_vae": ("Automatic", "None"), "eta_noise_seed_delta": (0,), "img2img_fix_steps": (False,),
    "always_discard_next_to_last_sigma": (False,), "token_merging_ratio": (0,),
}
#: A ControlNet unit's fields (sd-webui-controlnet's ``ControlNetUnit``, old aliases too): the values accepted,
#: None where the field is read into the job (``webui_units``), ``()`` where no value matters: it tunes memory,
#: the extension's own hires and inpainting options, or only what the API returns.
_UNIT: dict[str, tuple[Any, ...] | None] = {
    **dict.fromkeys(("enabled", "image", "input_image", "model", "weight", "resize_mode")),
    **dict.fromkeys(("guidance_start", "guidance_end", "threshold_a", "threshold_b", "module", "processor_res",
                     "pixel_perfect")),
    "guidance": (1,),
    "control_mode": ("Balanced", 0), "mask": (None, ""), "mask_image": (None, ""), "input_mode": ("simple",),
    "batch_images": (None, ""), "output_dir": ("",), "loopback": (False,), "is_ui": (False,),
    **dict.fromkeys(("advanced_weighting", "effective_region_mask", "ipadapter_input"), (None,)),
    **dict.fromkeys(("low_vram", "lowvram", "hr_option", "save_detected_map", "inpaint_crop_input_image",
                     "pulid_mode"), ()),
}
#: Resize modes that stretch an image to width x height, as spotgen does, and ones that crop or pad it, which
#: do the same to an image of the output's aspect ratio: ControlNet's, then img2img's.
_CONTROL_RESIZE = (("Just Resize", 0), ("Crop and Resize", "Resize and Fill", 1, 2, "Inner Fit (Scale to Fit)",
                    "Outer Fit (Shrink to Fit)", "Scale to Fit (Inner Fit)", "Envelope (Outer Fit)"))
_INIT_RESIZE = ((0,), (1, 2))
#: WebUI's schedule types (labels, names, aliases; casefolded) -> spotgen's schedule; None: the sampler's own.
#: "simple" (Forge's, for Flux and SD 3.5) is read once the model's family is known (``webui_families``).
_SCHEDULE_TYPES: dict[str, str | None] = {
    "automatic": None, "uniform": "default", "karras": "karras", "exponential": "exponential",
    "sgm uniform": "sgm_uniform", "sgm_uniform": "sgm_uniform", "sgmuniform": "sgm_uniform", "simple": "simple",
}
#: WebUI's label of each schedule (its "Schedule type"); the sampler's own is "Automatic".
SCHEDULE_LABELS = {"default": "Automatic", "karras": "Karras", "exponential": "Exponential",
                   "sgm_uniform": "SGM Uniform"}
#: "Automatic" in WebUI 1.9+: the schedule a sampler declares; the others run on the model's own sigmas.
_OWN_SCHEDULE = {"dpmpp_2m": "karras", "dpmpp_sde": "karras", "dpmpp_2m_sde": "exponential"}
_BY_WEBUI_NAME = {webui.casefold(): name for name, webui in WEBUI_SAMPLERS.items()}
#: The eta each sampler runs at here; WebUI passes eta only to samplers that take one (the others ignore it).
_ETA = {"euler_a": 1.0, "dpm2_a": 1.0, "dpmpp_sde": 1.0, "dpmpp_2m_sde": 1.0, "ddim": 0.0}
#: The sampler an ancestral or SDE one is at eta 0 (DPM++ SDE at eta 0 is none of spotgen's: refused).
_WITHOUT_NOISE = {"euler_a": "euler", "dpm2_a": "dpm2", "dpmpp_2m_sde": "dpmpp_2m"}
_EXTRA_NETWORK_RE = re.compile(r"<(\w+):([^>]+)>")  # WebUI's extra_networks.re_extra_net
_NUMBER_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_HASH_RE = re.compile(r"\s*\[[0-9a-fA-F]{6,64}\]$")
_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
