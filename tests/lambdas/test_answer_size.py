"""WebUI's synchronous answer fits Lambda's 6 MB response whenever ``/sdapi/v1`` queues the job: the PNG bound
(``png_bytes_bound``) holds for the worker's own encoder on incompressible pixels, and the largest request the
check lets through, answered with such PNGs, is within the limit the local gateway enforces as Lambda does.
"""

from __future__ import annotations

import base64
import json
import os

import pytest
from PIL import Image

from lambdas import compat
from runtime.contract import ContractError, Names, from_webui, webui_info, webui_parameters
from runtime.contract.formats import OutputOptions
from runtime.contract.webui_answer import LAMBDA_RESPONSE_BYTES, png_bytes_bound
from runtime.local import gateway
from runtime.worker.images import encode_output, encode_png

NAMES = Names(models={"tiny-sd": "tiny-sd"}, loras={}, controlnets={}, default_model="tiny-sd")


def noise(width: int, height: int) -> Image.Image:
    """Pixels no compressor can shrink: the worst case for a PNG's size."""
    return Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))


@pytest.mark.parametrize("size", [(8, 8), (64, 64), (333, 77), (1024, 768)])
def test_the_png_bound_holds_for_the_workers_encoder(size: tuple[int, int]) -> None:
    parameters = {"prompt": "ü" * 300, "seed": 4_000_000_000, "index": 7}
    text = len(json.dumps(parameters, sort_keys=True, separators=(",", ":")))
    actual = len(encode_png(noise(*size), parameters))
    assert actual <= png_bytes_bound(*size, text) <= actual * 1.2 + 2048  # sound, and not absurdly loose


OTHER_FORMATS = [OutputOptions(format="webp", lossless=True), OutputOptions(format="webp", quality=100),
                 OutputOptions(format="jpeg", quality=100)]


@pytest.mark.parametrize("size", [(8, 8), (333, 77)])
@pytest.mark.parametrize("options", OTHER_FORMATS, ids=["webp-lossless", "webp", "jpeg"])
def test_the_bound_holds_for_webp_and_jpeg_with_their_utf16_parameters(options: OutputOptions,
                                                                      size: tuple[int, int]) -> None:
    # check_answer_size counts the text twice: EXIF UserComment holds it as UTF-16. On a small image the text is
    # most of the file, and the PNG bound with the text counted once is too small for every one of these.
    parameters = {"prompt": "a fox " * 300, "seed": 4_000_000_000, "index": 7}
    text = len(json.dumps(parameters, sort_keys=True, separators=(",", ":")))
    actual = len(encode_output(noise(*size), parameters, options))
    assert actual <= png_bytes_bound(*size, compat.text_bound(text))


def fits(body: dict[str, object]) -> bool:
    job = from_webui(body, "txt2img", NAMES)
    try:
        compat.check_answer_size(job, job.inputs, body, webui_parameters(body), "tiny-sd", LAMBDA_RESPONSE_BYTES)
    except ContractError as exc:
        assert exc.code == "answer_too_large" and exc.field in ("batch_size", "n_iter", "width", "hr_scale"), \
            exc.as_dict()
        return False
    return True


@pytest.mark.parametrize("side", [1024, 512])
def test_the_largest_request_let_through_has_an_answer_within_lambdas_limit(side: int) -> None:
    body = {"prompt": "a fox " * 200, "width": side, "height": side, "seed": 4_000_000_000}
    count = max(n for n in range(1, 9) if fits({**body, "batch_size": n}))
    if count < 8:
        assert not fits({**body, "batch_size": count + 1})
    job = from_webui({**body, "batch_size": count}, "txt2img", NAMES)
    parameters = {"pipeline": "txt2img", "model": "tiny-sd", "seed": 4_000_000_000, **job.inputs}
    png = encode_png(noise(side, side), {**parameters, "index": count - 1})
    answer = compat.webui_answer([base64.b64encode(png).decode()] * count, webui_parameters(body),
                                 webui_info(job, body, 4_000_000_000, "tiny-sd"))
    assert len(json.dumps(answer)) <= LAMBDA_RESPONSE_BYTES == gateway.LAMBDA_RESPONSE_BYTES


def test_hires_fix_is_counted_at_its_second_passs_size() -> None:
    """WebUI's enable_hr answers images of the hires target, not of width x height."""
    body = {"prompt": "a fox", "seed": 1}
    hires = {**body, "width": 512, "height": 512, "enable_hr": True, "hr_scale": 2}
    for count in range(1, 9):
        assert fits({**hires, "batch_size": count}) == fits({**body, "width": 1024, "height": 1024,
                                                              "batch_size": count})
