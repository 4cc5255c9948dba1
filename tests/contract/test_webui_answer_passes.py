"""WebUI's ``info`` and errors for hires fix, the refiner, tiling and inpainting (``runtime/contract/webui_answer.py``).

WebUI clients read ``info`` and the infotext (png-info reads it back); an error found in the job names the body's
field, as for every other field.
"""

from __future__ import annotations

from runtime.contract import ContractError, webui_error, webui_info
from tests.contract.webui_cases import mapped, png, webuiapi_img2img, webuiapi_txt2img


def test_hires_fix_is_in_info_and_the_infotext_as_webui_writes_it() -> None:
    body = webuiapi_txt2img(enable_hr=True, hr_scale=2, hr_upscaler="Latent (nearest)", denoising_strength=0.5,
                            hr_second_pass_steps=6)
    info = webui_info(mapped(body), body, 7, "v1-5-pruned-emaonly")
    assert info["denoising_strength"] == 0.5
    assert info["extra_generation_params"] == {"Hires upscale": 2.0, "Hires upscaler": "Latent (nearest)",
                                               "Hires steps": 6}
    assert "Denoising strength: 0.5, Hires upscale: 2.0, Hires upscaler: Latent (nearest), Hires steps: 6" in \
        info["infotexts"][0]
    resized = webuiapi_txt2img(enable_hr=True, hr_resize_x=1024)
    assert "Hires resize: 1024x0" in webui_info(mapped(resized), resized, 7, "m")["infotexts"][0]
    plain = webuiapi_txt2img()
    assert webui_info(mapped(plain), plain, 7, "m")["extra_generation_params"] == {}


def test_inpainting_and_tiling_are_in_the_infotext() -> None:
    body = webuiapi_img2img(mask=png(512, 512), mask_blur=8, tiling=True)
    info = webui_info(mapped(body, "img2img"), body, 7, "m")
    assert info["extra_generation_params"] == {"Tiling": True, "Mask blur": 8} and info["denoising_strength"] == 0.75


def test_an_error_in_a_hires_or_inpainting_input_names_the_bodys_field() -> None:
    for job_field, body_field in (("inputs.hires.scale", "hr_scale"), ("inputs.hires", "enable_hr"),
                                  ("inputs.hires.upscaler", "hr_upscaler"), ("inputs.switch_at", "refiner_switch_at"),
                                  ("inputs.fill", "inpainting_fill"), ("inputs.mask", "mask")):
        error = webui_error(ContractError("invalid_field", f"{job_field}: bad", job_field))
        assert (error.field, error.message) == (body_field, f"{body_field}: bad")
