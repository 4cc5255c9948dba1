"""SD WebUI API bodies as jobs (``runtime/contract/webui.py``): one test per mapping rule and per refusal.

The bodies are what clients send: the ``webuiapi`` package's txt2img and img2img payloads with its defaults, and
the AWS "stable-diffusion-on-eks" v1alpha2 ``content``. Every job that maps is validated as the pipeline's inputs
(``validate_inputs``), so a mapping that spotgen would refuse later fails here.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from runtime.contract import (
    MAX_IMAGES,
    SAMPLER_SCHEDULES,
    SCHEDULERS,
    WEBUI_SAMPLERS,
    ContractError,
    Names,
    WebuiJob,
    from_webui,
    validate_inputs,
)

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


def mapped(body: dict[str, Any], task: str = "txt2img", names: Names = NAMES) -> WebuiJob:
    job = from_webui(body, task, names)  # type: ignore[arg-type]
    validate_inputs(job.pipeline, job.inputs, input_bucket="in")
    return job


def refused(body: Any, task: str = "txt2img", names: Names = NAMES) -> ContractError:
    with pytest.raises(ContractError) as caught:
        from_webui(body, task, names)  # type: ignore[arg-type]
    return caught.value


# -- what clients send ----------------------------------------------------------------------------------------
def test_webuiapis_txt2img_payload_maps_with_every_field_it_sends() -> None:
    job = mapped(webuiapi_txt2img())
    assert (job.pipeline, job.model, job.server_seed) == ("txt2img", "sd15", True)
    assert job.inputs == {"prompt": "a red fox", "negative_prompt": "", "width": 512, "height": 512, "steps": 20,
                          "guidance_scale": 7.0, "scheduler": "euler_a", "schedule": "default", "num_images": 1}


def test_webuiapis_img2img_payload_maps_with_every_field_it_sends() -> None:
    body = webuiapi_img2img()
    job = mapped(body, "img2img")
    assert job.pipeline == "img2img"
    assert (job.inputs["image"], job.inputs["strength"]) == (body["init_images"][0], 0.75)


def test_the_eks_samples_v1alpha2_content_maps() -> None:
    content = {"alwayson_scripts": {"sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors"}, "prompt": "A dog",
               "steps": 16, "width": 512, "height": 512}
    job = mapped(content)
    assert (job.model, job.inputs["steps"], job.inputs["scheduler"]) == ("sd15", 16, "euler")


# -- mapping rules ----------------------------------------------------------------------------------------------
def test_text_and_size_map_onto_the_inputs() -> None:
    job = mapped({"prompt": "a cat", "negative_prompt": "blurry", "width": 768, "height": 512, "steps": 12,
                  "cfg_scale": 5.5})
    assert {k: job.inputs[k] for k in ("prompt", "negative_prompt", "width", "height", "steps", "guidance_scale")} == {
        "prompt": "a cat", "negative_prompt": "blurry", "width": 768, "height": 512, "steps": 12,
        "guidance_scale": 5.5}


def test_what_a_body_leaves_out_is_webuis_default_not_spotgens() -> None:
    inputs = mapped({"prompt": "a cat"}).inputs
    assert (inputs["steps"], inputs["guidance_scale"], inputs["width"], inputs["height"]) == (50, 7.0, 512, 512)
    assert (inputs["scheduler"], inputs["schedule"], inputs["num_images"]) == ("euler", "default", 1)
    assert mapped({"prompt": "x", "init_images": [png()]}, "img2img").inputs["strength"] == 0.75


def test_a_seed_is_kept_and_minus_one_or_null_leaves_it_to_the_server() -> None:
    job = mapped(webuiapi_txt2img(seed=1234))
    assert (job.inputs["seed"], job.server_seed) == (1234, False)
    for body in (webuiapi_txt2img(seed=-1), webuiapi_txt2img(seed=None), {"prompt": "x"}):
        job = mapped(body)
        assert "seed" not in job.inputs and job.server_seed is True


@pytest.mark.parametrize("name", SCHEDULERS)
def test_webuis_sampler_names_map_onto_spotgens(name: str) -> None:
    body = {"prompt": "x", "sampler_name": WEBUI_SAMPLERS[name], "scheduler": "Uniform"}
    assert mapped(body).inputs["scheduler"] == name
    assert mapped({**body, "sampler_name": WEBUI_SAMPLERS[name].upper()}).inputs["scheduler"] == name


def test_every_sampler_has_one_webui_name() -> None:
    assert set(WEBUI_SAMPLERS) == set(SCHEDULERS)
    assert len({name.casefold() for name in WEBUI_SAMPLERS.values()}) == len(SCHEDULERS)


@pytest.mark.parametrize(("sampler", "expected"), [
    ("DPM++ 2M Karras", ("dpmpp_2m", "karras")), ("DPM++ SDE Karras", ("dpmpp_sde", "karras")),
    ("DPM++ 2M SDE Exponential", ("dpmpp_2m_sde", "exponential")), ("Euler SGM Uniform", ("euler", "sgm_uniform")),
    ("Euler a sgm_uniform", ("euler_a", "sgm_uniform")), ("DPM++ 2M Uniform", ("dpmpp_2m", "default")),
])
def test_a_schedule_suffix_in_the_sampler_name_is_the_schedule(sampler: str, expected: tuple[str, str]) -> None:
    inputs = mapped(webuiapi_txt2img(sampler_name=sampler)).inputs  # webuiapi also sends scheduler "automatic"
    assert (inputs["scheduler"], inputs["schedule"]) == expected
    inputs = mapped(webuiapi_txt2img(sampler_name=sampler, scheduler="Exponential")).inputs  # the suffix wins
    assert (inputs["scheduler"], inputs["schedule"]) == expected


@pytest.mark.parametrize(("scheduler", "schedule"), [
    ("Karras", "karras"), ("karras", "karras"), ("Exponential", "exponential"), ("SGM Uniform", "sgm_uniform"),
    ("sgm_uniform", "sgm_uniform"), ("Uniform", "default"), ("uniform", "default"),
])
def test_the_scheduler_field_is_the_schedule(scheduler: str, schedule: str) -> None:
    assert mapped({"prompt": "x", "sampler_name": "Euler", "scheduler": scheduler}).inputs["schedule"] == schedule


@pytest.mark.parametrize(("sampler", "schedule"), [
    ("DPM++ 2M", "karras"), ("DPM++ SDE", "karras"), ("DPM++ 2M SDE", "exponential"), ("Euler", "default"),
    ("Euler a", "default"), ("UniPC", "default"), ("LCM", "default"),
])
def test_automatic_is_the_samplers_own_schedule_as_in_webui(sampler: str, schedule: str) -> None:
    for scheduler in ("Automatic", "automatic", None, ""):
        body = {"prompt": "x", "sampler_name": sampler, "scheduler": scheduler, "steps": 20}
        assert mapped(body).inputs["schedule"] == schedule
    assert mapped({"prompt": "x", "sampler_name": sampler, "steps": 20}).inputs["schedule"] == schedule


def test_sampler_index_names_the_sampler_only_without_sampler_name() -> None:
    assert mapped({"prompt": "x", "sampler_index": "DPM++ SDE Karras"}).inputs["scheduler"] == "dpmpp_sde"
    assert mapped({"prompt": "x", "sampler_name": None, "sampler_index": "Heun"}).inputs["scheduler"] == "heun"
    # webuiapi sends its default sampler as sampler_index next to the one asked for: WebUI reads sampler_name.
    assert mapped(webuiapi_txt2img(sampler_name="DDIM", eta=0.0)).inputs["scheduler"] == "ddim"


def test_batch_size_times_n_iter_is_the_number_of_images() -> None:
    assert mapped(webuiapi_txt2img(batch_size=2, n_iter=3)).inputs["num_images"] == 6
    assert mapped(webuiapi_txt2img(batch_size=MAX_IMAGES)).inputs["num_images"] == MAX_IMAGES


def test_img2img_maps_the_init_image_and_denoising_strength() -> None:
    image = png(512, 512)
    job = mapped(webuiapi_img2img(init_images=[image], denoising_strength=0.4), "img2img")
    assert (job.pipeline, job.inputs["image"], job.inputs["strength"]) == ("img2img", image, 0.4)
    s3 = from_webui(webuiapi_img2img(init_images=["s3://in/uploads/a.png"]), "img2img", NAMES)
    assert s3.inputs["image"] == "s3://in/uploads/a.png"  # passed through; the contract's image check applies later
    validate_inputs(s3.pipeline, s3.inputs, input_bucket="in")


def test_override_settings_name_the_checkpoint_and_clip_skip() -> None:
    body = webuiapi_txt2img(override_settings={"sd_model_checkpoint": "sd_xl_base_1.0.safetensors",
                                               "CLIP_stop_at_last_layers": 2})
    job = mapped(body)
    assert (job.model, job.inputs["clip_skip"]) == ("sdxl-base", 2)


def test_alwayson_scripts_sd_model_checkpoint_names_the_checkpoint_as_in_the_eks_sample() -> None:
    body = webuiapi_txt2img(alwayson_scripts={"sd_model_checkpoint": "sd_xl_base_1.0.safetensors [31e35c80fc]"})
    assert mapped(body).model == "sdxl-base"
    both = {"sd_model_checkpoint": "sd_xl_base_1.0"}
    assert mapped(webuiapi_txt2img(override_settings=both, alwayson_scripts=both)).model == "sdxl-base"


@pytest.mark.parametrize("name", [
    "sd_xl_base_1.0.safetensors", "sd_xl_base_1.0.safetensors [31e35c80fc]", "sd_xl_base_1.0",
    "sd_xl_base_1.0 [31e35c80]", "SDXL/sd_xl_base_1.0.safetensors [31e35c80fc]", "SD_XL_Base_1.0.safetensors",
    "sdxl-base", "v1-5-pruned-emaonly.safetensors", "v1-5-pruned-emaonly.ckpt [cc6cb27103]",
])
def test_a_checkpoint_is_found_by_file_name_title_or_name_without_extension(name: str) -> None:
    job = mapped(webuiapi_txt2img(override_settings={"sd_model_checkpoint": name}))
    assert job.model == ("sd15" if name.startswith("v1-5") else "sdxl-base")


def test_names_make_every_id_its_own_alias_and_the_default_a_model() -> None:
    names = Names(models={"a.safetensors": "model-a"}, loras={"b": "lora-b"})
    assert names.models == {"a.safetensors": "model-a", "model-a": "model-a"} and names.loras["lora-b"] == "lora-b"
    with pytest.raises(ValueError, match="default_model 'other' is not one of the models"):
        Names(models={"a": "model-a"}, default_model="other")
    with pytest.raises(ValueError, match="a model id names a catalog entry"):
        Names(models={"a": "../etc"})


def test_a_body_naming_no_checkpoint_gets_the_default_model() -> None:
    assert mapped({"prompt": "x"}).model == "sd15"
    error = refused({"prompt": "x"}, names=Names(models={"a": "model-a"}))
    assert (error.code, error.field) == ("missing_field", "override_settings.sd_model_checkpoint")


def test_lora_tags_become_loras_and_are_cut_out_of_the_prompt() -> None:
    body = webuiapi_txt2img(prompt="<lora:LeoArmor:0.9>, 1boy <lyco:add_detail> golden", negative_prompt="<lora:x:1>")
    inputs = mapped(body).inputs
    assert inputs["prompt"] == ", 1boy  golden"  # only the tags, as WebUI cuts them
    assert inputs["loras"] == [{"id": "leo-armor", "weight": 0.9}, {"id": "add-detail", "weight": 1.0}]
    assert inputs["negative_prompt"] == "<lora:x:1>"  # WebUI reads tags in the prompt only
    assert mapped(webuiapi_txt2img(prompt="a <lora:leo-armor:-1.5>")).inputs["loras"] == [
        {"id": "leo-armor", "weight": -1.5}]


def test_disable_extra_networks_cuts_the_tags_and_applies_no_lora() -> None:
    inputs = mapped(webuiapi_txt2img(prompt="a <lora:nobody:3> <hypernet:x:1>fox", disable_extra_networks=True)).inputs
    assert inputs["prompt"] == "a  fox" and "loras" not in inputs


def test_an_enabled_controlnet_unit_makes_a_controlnet_job() -> None:
    image = png(512, 512)
    for scripts in ({"ControlNet": {"args": [unit(image=image, weight=0.6)]}},  # webuiapi's
                    {"controlnet": {"args": [unit(image=image, weight=0.6)]}},  # the EKS sample's
                    {"controlnet": [unit(image=image, weight=0.6)]}):
        job = mapped(webuiapi_txt2img(alwayson_scripts=scripts))
        assert job.pipeline == "controlnet"
        assert {k: job.inputs[k] for k in ("control_image", "controlnet", "controlnet_conditioning_scale")} == {
            "control_image": image, "controlnet": "openpose-sd15", "controlnet_conditioning_scale": 0.6}
    old = {k: v for k, v in unit(model="control_v11p_sd15_openpose [cab727d4]").items() if k != "image"}
    job = mapped(webuiapi_txt2img(alwayson_scripts={"controlnet": {"args": [{**old, "input_image": image}]}}))
    assert (job.inputs["control_image"], job.inputs["controlnet"]) == (image, "openpose-sd15")


def test_a_units_guidance_window_and_canny_module_map_onto_the_job() -> None:
    image = png(512, 512)
    scripts = {"controlnet": {"args": [unit(image=image, module="canny", threshold_a=80, threshold_b=160.0,
                                            guidance_start=0.1, guidance_end=0.6)]}}
    job = mapped(webuiapi_txt2img(alwayson_scripts=scripts))
    assert {k: job.inputs[k] for k in ("control_guidance_start", "control_guidance_end", "control_preprocessor",
                                       "canny_low", "canny_high")} == {
        "control_guidance_start": 0.1, "control_guidance_end": 0.6, "control_preprocessor": "canny",
        "canny_low": 80, "canny_high": 160}
    validate_inputs(job.pipeline, job.inputs, input_bucket="inputs")
    # the extension's -1: the module's own thresholds; module none: no preprocessor, thresholds ignored
    job = mapped(webuiapi_txt2img(alwayson_scripts={"controlnet": [unit(module="canny", threshold_a=-1,
                                                                        threshold_b=-1)]}))
    assert (job.inputs["canny_low"], job.inputs["canny_high"]) == (100, 200)
    job = mapped(webuiapi_txt2img(alwayson_scripts={"controlnet": [unit()]}))
    assert "control_preprocessor" not in job.inputs and job.inputs["control_guidance_end"] == 1.0
    with pytest.raises(ContractError) as caught:  # a window the contract refuses, named where the contract says
        bad = mapped(webuiapi_txt2img(alwayson_scripts={"controlnet": [unit(guidance_start=0.7, guidance_end=0.5)]}))
        validate_inputs(bad.pipeline, bad.inputs, input_bucket="inputs")
    assert caught.value.field == "inputs.control_guidance_end"


def test_disabled_controlnet_units_are_ignored() -> None:
    scripts = {"ControlNet": {"args": [unit(enabled=False, module="canny", model="nowhere"),
                                       unit(image=png(512, 512))]}}
    assert mapped(webuiapi_txt2img(alwayson_scripts=scripts)).pipeline == "controlnet"
    for scripts in ({"ControlNet": {"args": []}}, {"controlnet": {"args": [unit(enabled=False)]}}):
        assert mapped(webuiapi_txt2img(alwayson_scripts=scripts)).pipeline == "txt2img"


def test_crop_and_fill_resize_modes_are_accepted_for_an_image_of_the_outputs_shape() -> None:
    for mode in ("Crop and Resize", "Resize and Fill", 1, 2, "Just Resize", 0):
        scripts = {"controlnet": {"args": [unit(image=png(256, 128), resize_mode=mode)]}}
        assert mapped(webuiapi_txt2img(width=512, height=256, alwayson_scripts=scripts)).pipeline == "controlnet"
    for mode in (1, 2, 0):
        assert mapped(webuiapi_img2img(init_images=[png(64, 64)], resize_mode=mode), "img2img").pipeline == "img2img"


@pytest.mark.parametrize(("field", "value"), [
    ("hr_scale", 4), ("hr_upscaler", "R-ESRGAN 4x+"), ("hr_second_pass_steps", 30), ("hr_prompt", "more"),
    ("hr_sampler_name", "DDIM"), ("denoising_strength", 0.3), ("subseed", 42), ("s_tmin", 0.5), ("s_tmax", 10),
    ("refiner_switch_at", 0.8), ("script_args", [1, 2]), ("do_not_save_samples", True), ("do_not_save_grid", True),
    ("force_task_id", "task-1"), ("seed_resize_from_h", -1), ("styles", None), ("eta", None),
    ("sampler_name", ""), ("refiner_checkpoint", "None"), ("script_name", ""),
])
def test_fields_at_values_that_cannot_change_the_images_are_accepted(field: str, value: Any) -> None:
    assert mapped(webuiapi_txt2img(**{field: value})).pipeline == "txt2img"


@pytest.mark.parametrize(("field", "value"), [
    ("mask_blur", 8), ("mask_blur_x", 2), ("inpainting_fill", 1), ("inpaint_full_res", False),
    ("inpainting_mask_invert", 1), ("mask_round", False), ("image_cfg_scale", 1.0), ("mask", None),
])
def test_img2img_mask_settings_are_accepted_without_a_mask(field: str, value: Any) -> None:
    assert mapped(webuiapi_img2img(**{field: value}), "img2img").pipeline == "img2img"


def test_settings_at_webuis_defaults_are_accepted() -> None:
    settings = {"sd_vae": "Automatic", "eta_noise_seed_delta": 0, "img2img_fix_steps": False, "samples_format": "png",
                "always_discard_next_to_last_sigma": False, "token_merging_ratio": 0}
    assert mapped(webuiapi_txt2img(override_settings=settings)).model == "sd15"
    assert mapped(webuiapi_txt2img(override_settings={"sd_vae": "None"})).model == "sd15"


def test_eta_is_accepted_at_the_samplers_own_or_where_the_sampler_ignores_it() -> None:
    for sampler, eta in (("Euler a", 1.0), ("Euler a", 1), ("DPM++ SDE", 1.0), ("DDIM", 0), ("Euler", 0.3),
                         ("DPM++ 2M", 0.0)):
        assert mapped(webuiapi_txt2img(sampler_name=sampler, eta=eta)).pipeline == "txt2img"


# -- refusals -----------------------------------------------------------------------------------------------------
def test_a_body_that_is_not_an_object_is_refused() -> None:
    assert refused(["prompt"]).code == "invalid_body"


@pytest.mark.parametrize(("body", "task", "field"), [
    ({"prompt": "x", "guidance_scale": 7}, "txt2img", "guidance_scale"),  # spotgen's name, not WebUI's
    ({"prompt": "x", "init_images": [png()]}, "txt2img", "init_images"),  # an img2img field
    ({"prompt": "x", "init_images": [png()], "enable_hr": False}, "img2img", "enable_hr"),
    ({"prompt": "x", "controlnet_units": []}, "txt2img", "controlnet_units"),  # webuiapi's deprecated route
])
def test_a_field_webuis_schema_does_not_have_is_refused_as_unknown(body: dict[str, Any], task: str,
                                                                    field: str) -> None:
    error = refused(body, task)
    assert (error.code, error.field) == ("unknown_field", field)


@pytest.mark.parametrize(("field", "value", "wants"), [
    ("width", "64", "an integer, not a string"), ("steps", 20.0, "an integer, not a number"),
    ("cfg_scale", True, "a number, not a boolean"), ("seed", "7", "an integer, not a string"),
    ("prompt", 1, "a string, not a number"), ("restore_faces", 0, "a boolean, not a number"),
    ("width", None, "an integer, not null"), ("hr_scale", "2", "a number, not a string"),
    ("styles", "", "an array, not a string"), ("override_settings", [], "an object, not an array"),
])
def test_values_keep_their_json_types(field: str, value: Any, wants: str) -> None:
    error = refused(webuiapi_txt2img(**{field: value}))
    assert (error.code, error.field, error.message) == ("invalid_field", field, f"{field}: must be {wants}")


@pytest.mark.parametrize(("body", "field"), [
    ({"sampler_name": "DPM++ 3M SDE"}, "sampler_name"), ({"sampler_name": "Restart"}, "sampler_name"),
    ({"sampler_name": "DPM++ 2M Beta"}, "sampler_name"), ({"sampler_name": "k_euler_a"}, "sampler_name"),
    ({"sampler_name": None, "sampler_index": "DPM fast"}, "sampler_index"),
])
def test_an_unknown_sampler_is_refused_naming_its_field(body: dict[str, Any], field: str) -> None:
    error = refused(webuiapi_txt2img(**body))
    assert (error.field, error.code) == (field, "invalid_field") and "unknown sampler" in error.message


@pytest.mark.parametrize("scheduler", ["Align Your Steps", "Beta", "Polyexponential", "KL Optimal", "simple", "none"])
def test_a_schedule_type_spotgen_does_not_run_is_refused_naming_scheduler(scheduler: str) -> None:
    error = refused(webuiapi_txt2img(scheduler=scheduler))
    assert error.field == "scheduler" and "is not supported" in error.message


@pytest.mark.parametrize(("body", "field"), [
    ({"sampler_name": "Euler a Karras"}, "sampler_name"), ({"sampler_name": "Euler a", "scheduler": "Karras"},
                                                           "scheduler"),
    ({"sampler_name": "LCM", "scheduler": "SGM Uniform"}, "scheduler"), ({"sampler_name": "DDIM Exponential"},
                                                                         "sampler_name"),
])
def test_a_schedule_the_sampler_does_not_take_is_refused_naming_where_it_came_from(body: dict[str, Any],
                                                                                    field: str) -> None:
    error = refused(webuiapi_txt2img(**body))
    assert (error.code, error.field) == ("invalid_field", field) and "does not take schedule" in error.message
    sampler = {"Euler a": "euler_a", "LCM": "lcm", "DDIM": "ddim"}[body["sampler_name"].rsplit(" ", 1)[0]
                                                                  if field == "sampler_name" else body["sampler_name"]]
    assert f"it takes {', '.join(SAMPLER_SCHEDULES[sampler])}" in error.message


@pytest.mark.parametrize(("batch_size", "n_iter", "field"), [
    (MAX_IMAGES + 1, 1, "batch_size"), (4, 3, "n_iter"), (1, MAX_IMAGES + 1, "n_iter"), (0, 1, "batch_size"),
    (1, 0, "n_iter"), (-1, 4, "batch_size"),
])
def test_more_images_than_a_job_makes_are_refused_naming_the_field(batch_size: int, n_iter: int, field: str) -> None:
    error = refused(webuiapi_txt2img(batch_size=batch_size, n_iter=n_iter))
    assert (error.code, error.field) == ("invalid_field", field) and f"1 to {MAX_IMAGES}" in error.message


def test_img2img_refuses_more_or_fewer_than_one_init_image() -> None:
    error = refused(webuiapi_img2img(init_images=[png(), png()]), "img2img")
    assert (error.code, error.field) == ("unsupported_field", "init_images")
    for images in ([], None):
        error = refused(webuiapi_img2img(init_images=images), "img2img")
        assert (error.code, error.field) == ("missing_field", "init_images")
    assert refused(webuiapi_img2img(init_images=[7]), "img2img").field == "init_images.0"


@pytest.mark.parametrize(("mode", "image"), [(3, png(512, 512)), (1, png(512, 256)), (2, "s3://in/a.png")])
def test_img2img_refuses_resize_modes_that_would_crop_pad_or_resize_latents(mode: Any, image: str) -> None:
    error = refused(webuiapi_img2img(init_images=[image], resize_mode=mode), "img2img")
    assert (error.code, error.field) == ("unsupported_field", "resize_mode")
    assert "spotgen stretches the image to width x height (0)" in error.message


@pytest.mark.parametrize(("settings", "field"), [
    ({"sd_vae": "vae-ft-mse-840000-ema-pruned.safetensors"}, "override_settings.sd_vae"),
    ({"eta_noise_seed_delta": 31337}, "override_settings.eta_noise_seed_delta"),
    ({"sd_hypernetwork": "anime"}, "override_settings.sd_hypernetwork"),
    ({"samples_format": "jpg"}, "override_settings.samples_format"),
    ({"CLIP_stop_at_last_layers": "2"}, "override_settings.CLIP_stop_at_last_layers"),
    ({"img2img_fix_steps": 0}, "override_settings.img2img_fix_steps"),
])
def test_other_settings_are_refused_naming_the_key(settings: dict[str, Any], field: str) -> None:
    error = refused(webuiapi_txt2img(override_settings=settings))
    assert error.field == field
    assert error.code == ("invalid_field" if field.endswith("CLIP_stop_at_last_layers") else "unsupported_field")


@pytest.mark.parametrize(("body", "field"), [
    ({"override_settings": {"sd_model_checkpoint": "dreamshaper_8.safetensors"}},
     "override_settings.sd_model_checkpoint"),
    ({"alwayson_scripts": {"sd_model_checkpoint": "sd_xl_refiner_1.0"}}, "alwayson_scripts.sd_model_checkpoint"),
    ({"prompt": "a <lora:Unknown:0.5> fox"}, "prompt"),
    ({"alwayson_scripts": {"controlnet": {"args": [unit(model="control_v11p_sd15_canny")]}}},
     "alwayson_scripts.controlnet.args.0.model"),
    ({"override_settings": {"sd_model_checkpoint": "control_v11p_sd15_openpose"}},  # another kind's name
     "override_settings.sd_model_checkpoint"),
])
def test_unknown_names_are_refused_naming_the_field(body: dict[str, Any], field: str) -> None:
    error = refused(webuiapi_txt2img(**body))
    assert (error.code, error.field) == ("unknown_model", field)


def test_two_fields_naming_different_checkpoints_are_refused() -> None:
    body = webuiapi_txt2img(override_settings={"sd_model_checkpoint": "sd_xl_base_1.0"},
                            alwayson_scripts={"sd_model_checkpoint": "v1-5-pruned-emaonly"})
    assert refused(body).field == "alwayson_scripts.sd_model_checkpoint"


@pytest.mark.parametrize(("prompt", "code", "says"), [
    ("<hypernet:anime:1> a fox", "unsupported_field", "'<hypernet:anime:1>' is not supported yet"),
    ("<lora:LeoArmor:0.8:0.5> a fox", "unsupported_field", "one weight"),  # separate text-encoder and UNet weights
    ("<lora:LeoArmor:1:dyn=4> a fox", "unsupported_field", "one weight"),
    ("<lora:LeoArmor:te=0.5> a fox", "unsupported_field", "one weight"),
    ("<lora:LeoArmor:strong> a fox", "invalid_field", "the weight must be a number from -2.0 to 2.0"),
    ("<lora:LeoArmor:3> a fox", "invalid_field", "the weight must be a number"),
    ("<lora:LeoArmor:inf> a fox", "invalid_field", "the weight must be a number"),
    ("<lora:LeoArmor:0.5> <lora:leo-armor:1> a fox", "invalid_field", "LoRA 'leo-armor' is tagged twice"),
])
def test_lora_tags_spotgen_cannot_apply_are_refused_naming_prompt(prompt: str, code: str, says: str) -> None:
    error = refused(webuiapi_txt2img(prompt=prompt))
    assert (error.code, error.field) == (code, "prompt") and says in error.message


def test_more_loras_than_a_job_applies_are_refused_naming_prompt() -> None:
    names = Names(models={"m": "m"}, loras={f"l{i}": f"l{i}" for i in range(6)}, default_model="m")
    error = refused(webuiapi_txt2img(prompt="fox " + "".join(f"<lora:l{i}>" for i in range(6))), names=names)
    assert (error.field, error.message) == ("prompt", "prompt: 6 LoRAs; a job applies 5 at most")


def test_a_missing_or_empty_prompt_is_refused() -> None:
    error = refused({"steps": 20})
    assert (error.code, error.field) == ("missing_field", "prompt")
    for prompt in ("", "<lora:LeoArmor:1><lora:add_detail>"):  # WebUI takes an empty prompt; spotgen needs one
        error = refused(webuiapi_txt2img(prompt=prompt))
        assert (error.code, error.field, error.message) == ("invalid_field", "prompt",
                                                            "prompt: empty (without its tags)")


def test_more_than_one_enabled_controlnet_unit_is_refused() -> None:
    scripts = {"controlnet": {"args": [unit(), unit(enabled=False), unit(weight=0.5)]}}
    error = refused(webuiapi_txt2img(alwayson_scripts=scripts))
    assert (error.code, error.field) == ("unsupported_field", "alwayson_scripts.controlnet.args.2.enabled")


@pytest.mark.parametrize(("change", "field"), [
    ({"module": "openpose"}, "module"), ({"module": "None"}, "module"),
    ({"control_mode": "ControlNet is more important"}, "control_mode"), ({"control_mode": 2}, "control_mode"),
    ({"mask": png()}, "mask"), ({"input_mode": "batch"}, "input_mode"), ({"guidance": 0.5}, "guidance"),
])
def test_controlnet_settings_not_supported_yet_are_refused_naming_the_field(change: dict[str, Any],
                                                                             field: str) -> None:
    error = refused(webuiapi_txt2img(alwayson_scripts={"controlnet": {"args": [unit(**change)]}}))
    assert (error.code, error.field) == ("unsupported_field", f"alwayson_scripts.controlnet.args.0.{field}")
    assert "is not supported yet" in error.message


@pytest.mark.parametrize(("args", "code", "field"), [
    ([{k: v for k, v in unit().items() if k != "enabled"}], "missing_field", "args.0.enabled"),
    ([unit(enabled=1)], "invalid_field", "args.0.enabled"),
    ([unit(image="")], "missing_field", "args.0.image"), ([unit(model="None")], "missing_field", "args.0.model"),
    ([unit(image=None)], "missing_field", "args.0.image"), ([unit(weight="1")], "invalid_field", "args.0.weight"),
    ([unit(image={"image": png(), "mask": None})], "invalid_field", "args.0.image"),
    ([unit(input_image=png())], "invalid_field", "args.0.input_image"),
    ([unit(threshold_c=1)], "unknown_field", "args.0.threshold_c"), (["unit"], "invalid_field", "args.0"),
    ([unit(image=png(512, 256))], "unsupported_field", "args.0.resize_mode"),
    ([unit(image="s3://in/a.png", resize_mode="Crop and Resize")], "unsupported_field", "args.0.resize_mode"),
])
def test_a_controlnet_unit_spotgen_cannot_run_is_refused_naming_the_field(args: list[Any], code: str,
                                                                          field: str) -> None:
    error = refused(webuiapi_txt2img(alwayson_scripts={"controlnet": {"args": args}}))
    assert (error.code, error.field) == (code, f"alwayson_scripts.controlnet.{field}")


def test_controlnet_is_refused_with_img2img_and_in_other_forms() -> None:
    error = refused(webuiapi_img2img(alwayson_scripts={"controlnet": {"args": [unit()]}}), "img2img")
    assert (error.code, error.field) == ("unsupported_field", "alwayson_scripts.controlnet.args.0")
    assert refused(webuiapi_txt2img(alwayson_scripts={"controlnet": {"args": [], "x": 1}})).field == \
        "alwayson_scripts.controlnet.x"
    assert refused(webuiapi_txt2img(alwayson_scripts={"controlnet": "on"})).field == "alwayson_scripts.controlnet"
    error = refused(webuiapi_txt2img(alwayson_scripts={"controlnet": [], "ControlNet": []}))
    assert error.field == "alwayson_scripts.ControlNet"


def test_other_alwayson_scripts_are_refused_naming_the_script() -> None:
    for name, args in (("ADetailer", {"args": [True, {"ad_model": "face_yolov8n.pt"}]}), ("roop", {"args": []})):
        error = refused(webuiapi_txt2img(alwayson_scripts={name: args}))
        assert (error.code, error.field) == ("unsupported_field", f"alwayson_scripts.{name}")


@pytest.mark.parametrize(("field", "value"), [
    ("enable_hr", True), ("restore_faces", True), ("tiling", True), ("styles", ["cinematic"]),
    ("subseed_strength", 0.5), ("seed_resize_from_h", 512), ("script_name", "x/y/z plot"), ("send_images", False),
    ("save_images", True), ("s_churn", 0.5), ("s_noise", 1.003), ("s_min_uncond", 0.2), ("firstphase_width", 256),
    ("infotext", "a fox\nSteps: 20"), ("refiner_checkpoint", "sd_xl_refiner_1.0"), ("comments", {"a": 1}),
    ("override_settings_restore_afterwards", False), ("firstpass_image", png()),
])
def test_webui_features_at_other_values_than_their_defaults_are_refused(field: str, value: Any) -> None:
    error = refused(webuiapi_txt2img(**{field: value}))
    assert (error.code, error.field) == ("unsupported_field", field) and "is not supported yet" in error.message


@pytest.mark.parametrize(("field", "value"), [
    ("mask", png()), ("latent_mask", png()), ("initial_noise_multiplier", 0.9), ("include_init_images", True),
])
def test_img2img_features_at_other_values_than_their_defaults_are_refused(field: str, value: Any) -> None:
    error = refused(webuiapi_img2img(**{field: value}), "img2img")
    assert (error.code, error.field) == ("unsupported_field", field)


@pytest.mark.parametrize(("sampler", "eta"), [("Euler a", 0.5), ("DDIM", 1.0), ("DPM++ 2M SDE", 0.0)])
def test_eta_other_than_the_one_the_sampler_runs_at_is_refused(sampler: str, eta: float) -> None:
    error = refused(webuiapi_txt2img(sampler_name=sampler, eta=eta))
    assert (error.code, error.field) == ("unsupported_field", "eta")
