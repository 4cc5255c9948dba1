"""``POST /sdapi/v1/png-info`` (issue 29, item 3): the parameters spotgen's worker and WebUI write into their images
(a PNG ``parameters`` text chunk, compressed or not; EXIF UserComment in WebP and JPEG) read back as WebUI's PNG
Info answers them, by the API's standard-library reader (the Lambda has no Pillow); a spotgen image's parameters
parse as the infotext its ``/sdapi/v1/txt2img`` answer reported. Bad input is a 400 naming ``image``. The route's
Lambda code runs in this process against ``spotgen dev``'s emulator, no worker (the images are made here by the
worker's own encoder)."""

from __future__ import annotations

import base64
import io
import json
import zlib
from typing import Any

import pytest
from PIL import Image, PngImagePlugin

from lambdas import compat, sdapi
from runtime.contract import from_webui
from runtime.contract.formats import OutputOptions
from runtime.contract.webui_answer import webui_info
from runtime.local.devstack import DevStack
from runtime.worker.images import encode_output
from tests.lambdas.sdapi_stack import api_fixture  # noqa: F401 - the fixture "api"

WEBUI_TEXT = ("a cat, (masterpiece:1.2)\nsecond line\nNegative prompt: ugly, blurry\nSteps: 20, Sampler: DPM++ 2M, "
              "Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x768, Model hash: 6ce0161689, "
              'Model: v1-5-pruned-emaonly, Lora hashes: "fox: 1a2b, owl: 3c4d", Version: v1.10.1')


def png_info(image: Any) -> tuple[int, dict[str, Any]]:
    event = {"body": json.dumps({"image": image}), "pathParameters": {"name": "png-info"},
             "requestContext": {"http": {"method": "POST", "sourceIp": "10.0.2.1"}}}
    answer = sdapi.handler(event)
    return answer["statusCode"], json.loads(answer["body"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_with(**chunks: tuple[str, str]) -> bytes:
    """A PNG with text chunks, ``name=(kind, text)``: ``tEXt``, ``zTXt`` or ``iTXt`` (compressed)."""
    info = PngImagePlugin.PngInfo()
    for key, (kind, text) in chunks.items():
        info.add_itxt(key, text, zip=True) if kind == "iTXt" else info.add_text(key, text, zip=kind == "zTXt")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def test_webuis_infotext_is_parsed_as_webui_parses_it(api: DevStack) -> None:
    for kind in ("tEXt", "zTXt", "iTXt"):
        status, answer = png_info(b64(png_with(parameters=(kind, WEBUI_TEXT), Software=("tEXt", "WebUI"))))
        assert status == 200 and answer["info"] == WEBUI_TEXT and answer["items"] == {"Software": "WebUI"}, kind
        parameters = answer["parameters"]
        assert parameters["Prompt"] == "a cat, (masterpiece:1.2)\nsecond line"
        assert parameters["Negative prompt"] == "ugly, blurry"
        assert {k: parameters[k] for k in ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size-1",
                                           "Size-2", "Model", "Lora hashes", "Version", "Clip skip", "RNG")} == {
            "Steps": "20", "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": "7", "Seed": "123",
            "Size-1": "512", "Size-2": "768", "Model": "v1-5-pruned-emaonly", "Lora hashes": "fox: 1a2b, owl: 3c4d",
            "Version": "v1.10.1", "Clip skip": "1", "RNG": "GPU"}


@pytest.mark.parametrize("fmt", ["png", "webp", "jpeg"])
def test_a_spotgen_image_reads_back_as_the_infotext_its_answer_reported(api: DevStack, fmt: str) -> None:
    body = {"prompt": "a red fox", "negative_prompt": "rain", "width": 64, "height": 48, "steps": 7, "seed": 40,
            "batch_size": 2, "cfg_scale": 5.5, "sampler_name": "DPM++ 2M", "scheduler": "Karras",
            "override_settings": {"CLIP_stop_at_last_layers": 2}}
    job = from_webui(body, "txt2img", compat.names(api.settings, "tiny-sd"))
    title = compat.titles(api.settings)[job.model]
    reported = webui_info(job, body, 40, title)["infotexts"]  # the answer's, for images 0 and 1
    parameters = {"pipeline": job.pipeline, "model": job.model, "seed": 40, **job.inputs}  # as the worker writes
    data = encode_output(Image.new("RGB", (64, 48)), {**parameters, "index": 1}, OutputOptions(format=fmt))
    status, answer = png_info(b64(data))
    assert status == 200 and json.loads(answer["info"])["prompt"] == "a red fox"
    from lambdas.webui_pnginfo import parse_infotext

    assert answer["parameters"] == parse_infotext(reported[1])
    assert {k: answer["parameters"][k] for k in ("Prompt", "Negative prompt", "Steps", "Seed", "Size-1", "Size-2",
                                                 "Sampler", "Schedule type", "Clip skip", "Model")} == {
        "Prompt": "a red fox", "Negative prompt": "rain", "Steps": "7", "Seed": "41", "Size-1": "64",
        "Size-2": "48", "Sampler": "DPM++ 2M", "Schedule type": "Karras", "Clip skip": "2", "Model": title}


def test_an_image_without_parameters_is_webuis_empty_info(api: DevStack) -> None:
    status, answer = png_info("data:image/png;base64," + b64(png_with()))
    assert status == 200 and answer["info"] == "" and answer["parameters"]["Prompt"] == ""
    bomb = png_with(parameters=("zTXt", "x"))  # a zTXt chunk inflating past the reader's bound is skipped
    chunk = b"parameters\x00\x00" + zlib.compress(b"\x00" * (4 << 20))
    at = bomb.index(b"zTXt") - 4
    crc = zlib.crc32(b"zTXt" + chunk).to_bytes(4, "big")
    bomb = bomb[:at] + len(chunk).to_bytes(4, "big") + b"zTXt" + chunk + crc + bomb[at + 4 + 4 + 13 + 4:]
    status, answer = png_info(b64(bomb))
    assert status == 200 and answer["info"] == "", answer


def test_bad_input_is_a_400_naming_image(api: DevStack) -> None:
    for image in (None, "", "not base64!", b64(b"GIF89a not ours"), 5):
        status, answer = png_info(image)
        assert status == 400 and answer["error"]["field"] == "image", (image, answer)
    event = {"body": "[]", "pathParameters": {"name": "png-info"}, "requestContext": {"http": {"method": "POST"}}}
    answer = sdapi.handler(event)
    assert answer["statusCode"] == 400 and json.loads(answer["body"])["error"]["field"] == "image"
