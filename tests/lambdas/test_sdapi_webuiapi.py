"""The real ``webuiapi`` client's calls for the listing routes and PNG Info (issue 29, item 3) against the
compatibility modules' ``spotgen dev`` (a real worker, the tiny models): what a client calls at start-up answers
instead of raising, and an image txt2img made reads back through ``png_info`` as its answer's infotext said. The
routes' shapes and rules are tested in ``test_sdapi_listings.py`` and ``test_sdapi_pnginfo.py``; the client's
options calls in ``test_webuiapi.py``."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import webuiapi

from tests.conftest import Stack


@pytest.fixture(scope="module")
def api(own_stack: Stack) -> webuiapi.WebUIApi:
    url = urlsplit(own_stack.api_url)
    return webuiapi.WebUIApi(host=url.hostname, port=url.port, steps=4)


def test_the_start_up_listings_answer_the_client(api: webuiapi.WebUIApi) -> None:
    upscalers = [u["name"] for u in api.get_upscalers()]
    assert upscalers[:3] == ["None", "Lanczos", "Nearest"] and len(upscalers) > 3
    assert [m["name"] for m in api.get_latent_upscale_modes()][0] == "Latent"
    for empty in (api.get_face_restorers, api.get_realesrgan_models, api.get_prompt_styles, api.get_hypernetworks,
                  api.get_sd_vae):
        assert empty() == [], empty.__name__
    assert api.get_cmd_flags()["api"] is True and "controlnet" in api.get_scripts()["txt2img"]
    assert "tiny-emb-sd1" in api.get_embeddings()["loaded"]


def test_png_info_reads_back_what_txt2img_reported(api: webuiapi.WebUIApi) -> None:
    result = api.txt2img(prompt="a red fox", negative_prompt="rain", width=64, height=48, seed=9,
                         alwayson_scripts={})
    read = api.png_info(result.image)  # the client sends the PNG with its parameters chunk
    assert read.info["prompt"] == "a red fox" and read.info["seed"] == 9  # spotgen's JSON, parsed by the client
    infotext = result.info["infotexts"][0]
    assert read.parameters["Prompt"] == "a red fox" and read.parameters["Negative prompt"] == "rain"
    assert f"Seed: {read.parameters['Seed']}," in infotext and f"Steps: {read.parameters['Steps']}," in infotext
    assert (read.parameters["Size-1"], read.parameters["Size-2"]) == ("64", "48")
    assert read.parameters["Sampler"] == result.info["sampler_name"]
