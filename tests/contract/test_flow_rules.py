"""The rules Flux and SD 3.5 requests meet once the model's family (and variant) is known, as the API and the worker
apply them (``runtime.contract.families.for_family``): each refusal names its field, and the defaults are the
family's."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.contract import ContractError, InpaintInputs, Txt2ImgInputs, for_family

BUCKET = "inputs"


def inputs(**fields: Any) -> Txt2ImgInputs:
    return Txt2ImgInputs.model_validate({"prompt": "a fox", **fields}, context={"input_bucket": BUCKET})


def refused(family: str, variant: str | None = None, **fields: Any) -> ContractError:
    with pytest.raises(ContractError) as caught:
        for_family(inputs(**fields), family, variant=variant)
    return caught.value


@pytest.mark.parametrize(("family", "variant", "guidance_scale", "guidance"), [
    ("sd1", None, 7.5, None), ("sdxl", None, 7.5, None), ("flux", None, 1.0, 3.5), ("flux", "schnell", 1.0, None),
    ("sd3", None, 4.5, None), ("sd3", "turbo", 1.0, None)])
def test_guidance_left_out_is_the_familys(family: str, variant: str | None, guidance_scale: float,
                                          guidance: float | None) -> None:
    done = for_family(inputs(), family, variant=variant)
    assert (done.guidance_scale, done.guidance) == (guidance_scale, guidance)
    assert (done.width, done.height) == ((512, 512) if family == "sd1" else (1024, 1024))


def test_flux_fill_defaults_to_its_own_distilled_guidance() -> None:
    mask = {"image": f"s3://{BUCKET}/a.png", "mask": f"s3://{BUCKET}/m.png"}
    done = for_family(InpaintInputs.model_validate({"prompt": "x", **mask}, context={"input_bucket": BUCKET}),
                      "flux", variant="inpainting")
    assert done.guidance == 30.0 and done.guidance_scale == 1.0


def test_a_request_keeps_its_own_guidance() -> None:
    done = for_family(inputs(guidance=2.0, guidance_scale=3.0), "flux")
    assert (done.guidance, done.guidance_scale) == (2.0, 3.0)


@pytest.mark.parametrize(("variant", "fields", "field"), [
    ("schnell", {"guidance": 3.5}, "inputs.guidance"), ("schnell", {"guidance_scale": 4.0}, "inputs.guidance_scale"),
    ("turbo", {"guidance_scale": 7.0}, "inputs.guidance_scale")])
def test_guidance_on_a_timestep_distilled_model_is_refused(variant: str, fields: dict[str, Any], field: str) -> None:
    error = refused("flux" if variant == "schnell" else "sd3", variant, **fields)
    assert error.field == field and "timestep-distilled" in str(error)


@pytest.mark.parametrize("family", ["flux", "sd3"])
@pytest.mark.parametrize(("fields", "field", "phrase"), [
    ({"width": 72, "height": 64}, "inputs.width", "multiples of 16"),
    ({"width": 64, "height": 40}, "inputs.height", "multiples of 16"),
    ({"scheduler": "lms"}, "inputs.scheduler", "flow-matching samplers euler, dpmpp_2m, unipc"),
    ({"scheduler": "unipc", "schedule": "karras"}, "inputs.schedule", "sampler 'unipc' takes the schedules default"),
    ({"scheduler": "euler_a"}, "inputs.scheduler", "outside the job's seed"),
    ({"schedule": "sgm_uniform"}, "inputs.schedule", "takes the schedules default, karras, exponential"),
    ({"clip_skip": 2}, "inputs.clip_skip", "clip_skip is for SD and SDXL"),
    ({"tiling": True}, "inputs.tiling", "seamless tiling"),
    ({"hires": {"scale": 1.5}}, "inputs.hires", "hires fix runs on SD and SDXL"),
    ({"original_size": [64, 64]}, "inputs.original_size", "only SDXL models take size conditioning"),
])
def test_what_a_flow_family_cannot_run_is_refused_naming_the_field(family: str, fields: dict[str, Any], field: str,
                                                                  phrase: str) -> None:
    error = refused(family, **fields)
    assert error.field == field and phrase in str(error), str(error)


@pytest.mark.parametrize(("family", "fields", "field"), [
    ("sd1", {"guidance": 3.5}, "inputs.guidance"), ("sdxl", {"shift": 3.0}, "inputs.shift"),
    ("sd1", {"max_sequence_length": 256}, "inputs.max_sequence_length"),
    ("flux", {"skip_layer_guidance": {}}, "inputs.skip_layer_guidance"),
    ("sd3", {"guidance": 3.5}, "inputs.guidance")])
def test_an_input_of_another_family_is_refused_naming_it(family: str, fields: dict[str, Any], field: str) -> None:
    error = refused(family, **fields)
    assert error.field == field and f"this is a {family} model" in str(error)


def test_flow_families_take_their_own_inputs() -> None:
    done = for_family(inputs(shift=2.0, max_sequence_length=128, width=80, height=48,
                             schedule="karras"), "flux")
    assert (done.shift, done.max_sequence_length, done.width, done.height) == (2.0, 128, 80, 48)
    slg = for_family(inputs(skip_layer_guidance={"layers": [1, 2]}), "sd3").skip_layer_guidance
    assert (slg.layers, slg.scale, slg.start, slg.stop) == ([1, 2], 2.8, 0.01, 0.2)


@pytest.mark.parametrize("scheduler", ["dpmpp_2m", "unipc"])
def test_the_multistep_solvers_run_flux_txt2img_only(scheduler: str) -> None:
    assert for_family(inputs(scheduler=scheduler), "flux").scheduler == scheduler
    assert refused("flux", scheduler=scheduler, controlnets=[{"id": "c", "image": f"s3://{BUCKET}/c.png"}]).field \
        == "inputs.scheduler"
    mask = {"image": f"s3://{BUCKET}/a.png", "mask": f"s3://{BUCKET}/m.png", "scheduler": scheduler}
    with pytest.raises(ContractError, match="runs text-to-image without ControlNet units only") as caught:
        for_family(InpaintInputs.model_validate({"prompt": "x", **mask}, context={"input_bucket": BUCKET}), "flux")
    assert caught.value.field == "inputs.scheduler"
    assert for_family(inputs(scheduler=scheduler), "sd3").scheduler == scheduler
    assert refused("sd3", scheduler=scheduler, controlnets=[{"id": "c", "image": f"s3://{BUCKET}/c.png"}]).field \
        == "inputs.scheduler"


def test_heun_runs_on_sd3_only() -> None:
    """diffusers' Flux pipelines pass their own sigmas, which FlowMatchHeun does not take."""
    assert for_family(inputs(scheduler="heun"), "sd3").scheduler == "heun"
    assert refused("flux", scheduler="heun").field == "inputs.scheduler"


def test_sd_sizes_stay_multiples_of_8() -> None:
    assert for_family(inputs(width=72, height=40), "sd1").width == 72
