"""SD WebUI API bodies spotgen refuses (``runtime/contract/webui.py``): one test per refusal.

The bodies are what clients send (``webui_cases``), the ``webuiapi`` package's txt2img and img2img payloads with one
field changed: unknown fields, values of the wrong JSON type, samplers, schedules, checkpoints and LoRAs spotgen does
not know or cannot run, more images than a job makes, ControlNet units and WebUI features it does not support yet.
Each refusal names the field it comes from.
"""

from __future__ import annotations

from typing import Any

import pytest

from runtime.contract import MAX_IMAGES, SAMPLER_SCHEDULES, Names
from tests.contract.webui_cases import png, refused, unit, webuiapi_img2img, webuiapi_txt2img


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
    ("width", "abc", 'an integer, not a string ("abc")'), ("width", "64.0", 'an integer, not a string ("64.0")'),
    ("steps", [20], "an integer, not an array"), ("cfg_scale", "high", 'a number, not a string ("high")'),
    ("cfg_scale", {}, "a number, not an object"), ("prompt", ["a"], "a string, not an array"),
    ("restore_faces", 2, "a boolean, not a number (2)"), ("tiling", "maybe", 'a boolean, not a string ("maybe")'),
    ("width", None, "an integer, not null"), ("styles", "", 'an array, not a string ("")'),
    ("override_settings", 5, "an object, not a number (5)"), ("alwayson_scripts", "x", 'an object, not a string ("x")'),
])
def test_what_webuis_pydantic_v1_models_refuse_is_refused_naming_the_field(field: str, value: Any,
                                                                            wants: str) -> None:
    error = refused(webuiapi_txt2img(**{field: value}))
    assert (error.code, error.field, error.message) == ("invalid_field", field, f"{field}: must be {wants}")


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity"])
def test_a_number_that_is_not_finite_is_refused_though_pydantic_v1_reads_it(value: str) -> None:
    error = refused(webuiapi_txt2img(cfg_scale=value))
    assert (error.code, error.field) == ("invalid_number", "cfg_scale") and "not a finite number" in error.message


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
    ({"CLIP_stop_at_last_layers": "two"}, "override_settings.CLIP_stop_at_last_layers"),
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


def test_more_controlnet_or_ip_adapter_units_than_a_job_runs_are_refused_naming_the_first_too_many() -> None:
    scripts = {"controlnet": {"args": [unit(), unit(enabled=False), *[unit(weight=0.5)] * 4]}}
    error = refused(webuiapi_txt2img(alwayson_scripts=scripts))
    assert (error.code, error.field) == ("unsupported_field", "alwayson_scripts.controlnet.args.5.enabled")
    ip = unit(module="ip-adapter_clip_sd15", model="ip-adapter_sd15 [6a3f6166]")
    error = refused(webuiapi_txt2img(alwayson_scripts={"controlnet": {"args": [ip, unit(), ip, ip]}}))
    assert (error.code, error.field) == ("unsupported_field", "alwayson_scripts.controlnet.args.3.enabled")


@pytest.mark.parametrize(("change", "code", "field"), [
    ({"module": "reference_only"}, "unsupported_field", "module"), ({"module": "inpaint_only"}, "unsupported_field",
                                                                    "module"),
    ({"module": "ip-adapter_face_id_plus"}, "unsupported_field", "module"),
    ({"module": "ip-adapter_clip_sd15", "guidance_end": 0.5}, "unsupported_field", "guidance_end"),
    ({"module": "ip-adapter_clip_sd15", "model": "ip adapter?"}, "invalid_field", "model"),
    ({"module": "depth_midas", "processor_res": 32}, "invalid_field", "processor_res"),
    ({"module": "threshold", "threshold_a": 5000}, "invalid_field", "threshold_a"),
    ({"weight": 2.5}, "invalid_field", "weight"), ({"guidance_start": -0.1}, "invalid_field", "guidance_start"),
])
def test_a_unit_spotgen_cannot_run_as_the_extension_would_is_refused_naming_the_field(change: dict[str, Any],
                                                                                       code: str, field: str) -> None:
    error = refused(webuiapi_txt2img(alwayson_scripts={"controlnet": {"args": [unit(**change)]}}))
    assert (error.code, error.field) == (code, f"alwayson_scripts.controlnet.args.0.{field}")


@pytest.mark.parametrize(("change", "field"), [
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
    ([unit(enabled=2)], "invalid_field", "args.0.enabled"),
    ([unit(image="")], "missing_field", "args.0.image"), ([unit(model="None")], "missing_field", "args.0.model"),
    ([unit(image=None)], "missing_field", "args.0.image"), ([unit(weight="one")], "invalid_field", "args.0.weight"),
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


def test_controlnet_in_other_forms_is_refused() -> None:
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
    ("restore_faces", True), ("styles", ["cinematic"]),
    ("subseed_strength", 0.5), ("seed_resize_from_h", 512), ("script_name", "x/y/z plot"), ("send_images", False),
    ("save_images", True), ("s_churn", 0.5), ("s_noise", 1.003), ("s_min_uncond", 0.2), ("firstphase_width", 256),
    ("infotext", "a fox\nSteps: 20"), ("comments", {"a": 1}),
    ("override_settings_restore_afterwards", False), ("firstpass_image", png()),
])
def test_webui_features_at_other_values_than_their_defaults_are_refused(field: str, value: Any) -> None:
    error = refused(webuiapi_txt2img(**{field: value}))
    assert (error.code, error.field) == ("unsupported_field", field) and "is not supported yet" in error.message


@pytest.mark.parametrize(("field", "value"), [
    ("latent_mask", png()), ("initial_noise_multiplier", 0.9), ("include_init_images", True),
])
def test_img2img_features_at_other_values_than_their_defaults_are_refused(field: str, value: Any) -> None:
    error = refused(webuiapi_img2img(**{field: value}), "img2img")
    assert (error.code, error.field) == ("unsupported_field", field)


@pytest.mark.parametrize(("sampler", "eta", "runs"), [
    ("Euler a", 0.5, "eta 1, or eta 0 (which is Euler)"), ("DPM2 a", "0.67", "eta 1, or eta 0 (which is DPM2)"),
    ("DDIM", 1.0, "eta 0 (or"), ("DPM++ SDE", 0.0, "eta 1 (or"), ("DPM++ 2M SDE", 2, "eta 1, or eta 0 (which is "),
])
def test_eta_spotgens_samplers_do_not_take_is_refused_naming_it(sampler: str, eta: Any, runs: str) -> None:
    error = refused(webuiapi_txt2img(sampler_name=sampler, eta=eta))
    assert (error.code, error.field) == ("unsupported_field", "eta") and f"spotgen runs it at {runs}" in error.message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinities_are_refused_naming_the_field(value: float) -> None:
    """Not JSON (RFC 8259), so no route's parser lets them through (lambdas/body.py); a caller of the contract that
    parses otherwise still gets a refusal naming the field, not a KeyError (eta) or an OverflowError (int())."""
    for body, field in ((webuiapi_txt2img(sampler_name="Euler a", eta=value), "eta"),
                        (webuiapi_txt2img(cfg_scale=value), "cfg_scale"),
                        (webuiapi_txt2img(alwayson_scripts={"controlnet": {"args": [unit(
                            module="canny", threshold_a=value)]}}),
                         "alwayson_scripts.controlnet.args.0.threshold_a")):
        error = refused(body)
        assert (error.code, error.field) == ("invalid_number", field), error.as_dict()
