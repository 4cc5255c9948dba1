"""SD WebUI API bodies as jobs (``runtime/contract/webui.py``): one test per mapping rule.

The bodies are what clients send (``webui_cases``): the ``webuiapi`` package's txt2img and img2img payloads with its
defaults, and the AWS "stable-diffusion-on-eks" v1alpha2 ``content``. Text, size, seed, sampler and schedule, image
count, img2img, checkpoints, LoRA tags and ControlNet units map onto spotgen's inputs, and fields at values that
cannot change the images are accepted. Every job that maps is validated as the pipeline's inputs
(``validate_inputs``), so a mapping that spotgen would refuse later fails here.
"""

from __future__ import annotations

from typing import Any

import pytest

from runtime.contract import (
    MAX_IMAGES,
    SCHEDULERS,
    WEBUI_SAMPLERS,
    ContractError,
    Names,
    from_webui,
    validate_inputs,
)
from runtime.contract.webui_answer import webui_info
from tests.contract.webui_cases import NAMES, mapped, png, refused, unit, webuiapi_img2img, webuiapi_txt2img


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
    with pytest.raises(ContractError) as caught:  # a window the contract refuses, named in the body
        mapped(webuiapi_txt2img(alwayson_scripts={"controlnet": [unit(guidance_start=0.7, guidance_end=0.5)]}))
    assert caught.value.field == "alwayson_scripts.controlnet.0.guidance_end"


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


@pytest.mark.parametrize(("body", "sampler", "schedule"), [
    ({"sampler_index": "Euler a", "eta": 0}, "euler", "default"),
    ({"sampler_name": "Euler a", "scheduler": "Karras", "eta": "0"}, "euler", "karras"),  # Euler takes Karras
    ({"sampler_name": "DPM2 a", "eta": 0.0}, "dpm2", "default"),
    ({"sampler_name": "DPM++ 2M SDE", "eta": False}, "dpmpp_2m", "exponential"),  # 2M SDE's Automatic, not 2M's
    ({"sampler_name": "DPM++ 2M SDE Karras", "eta": 0}, "dpmpp_2m", "karras"),
    ({"sampler_name": "Euler a", "eta": None}, "euler_a", "default"),  # WebUI's eta_ancestral: 1
])
def test_eta_0_on_an_ancestral_sampler_is_the_sampler_without_its_noise(body: dict[str, Any], sampler: str,
                                                                         schedule: str) -> None:
    inputs = mapped({"prompt": "x", **body}).inputs
    assert (inputs["scheduler"], inputs["schedule"]) == (sampler, schedule)


def test_the_answer_names_the_sampler_the_body_named_with_its_eta() -> None:
    """WebUI's answer says "Euler a" with "Eta: 0" (its sampler adds an eta that is not its default), whichever
    sampler spotgen runs for it; at the default eta nothing is added."""
    job = mapped({"prompt": "x", "sampler_index": "Euler a", "eta": "0"})
    info = webui_info(job, {}, 5, "tiny")
    assert info["sampler_name"] == "Euler a" and info["extra_generation_params"]["Eta"] == 0
    assert "Sampler: Euler a," in info["infotexts"][0] and ", Eta: 0," in info["infotexts"][0]
    plain = webui_info(mapped({"prompt": "x", "sampler_index": "Euler a"}), {}, 5, "tiny")
    assert plain["sampler_name"] == "Euler a" and "Eta" not in plain["extra_generation_params"]
    assert webui_info(mapped({"prompt": "x", "sampler_index": "Euler", "eta": 0}), {}, 5, "tiny")[
        "sampler_name"] == "Euler"  # a sampler that takes no eta ignores it, as WebUI's


def test_eta_0_makes_euler_a_run_on_flux_where_the_ancestral_sampler_is_refused() -> None:
    names = NAMES.model_copy(update={"models": {**NAMES.models, "flux-dev": "flux-dev"},
                                     "families": {"flux-dev": "flux"}})
    body = {"prompt": "x", "sampler_index": "Euler a", "override_settings": {"sd_model_checkpoint": "flux-dev"}}
    assert refused(body, names=names).field == "sampler_index"
    assert mapped({**body, "eta": 0}, names=names).inputs["scheduler"] == "euler"


@pytest.mark.parametrize("prompt", [
    "a [fox:cat:0.5] in snow", "a [fox|cat|dog] in snow", "[fox::0.3] snow", "a (red:1.2) fox, [blurry]",
    "a fox BREAK snow", "a fox, tiny-emb-sd1", "a \\(fox\\) [cat:10]",
])
def test_prompt_editing_alternation_weights_and_embeddings_reach_the_prompt_as_written(prompt: str) -> None:
    assert mapped(webuiapi_txt2img(prompt=prompt, negative_prompt=f"[{prompt}]")).inputs["prompt"] == prompt
