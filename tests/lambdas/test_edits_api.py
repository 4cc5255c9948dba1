"""The API's checks of the editing jobs (issue 26, item 6): inpainting, outpainting, hires fix, the refiner and
upscaling. Each bad request is a 400 naming the field, with nothing stored or queued (over HTTP through the local
gateway, the production handler on the real emulator, no worker); each good one is queued with its inline images
moved to the input bucket. And the standard-library PNG reader that finds an empty mask without Pillow, checked
against Pillow's own decoding as the worker sees it."""

from __future__ import annotations

import base64
import io
import struct
import subprocess
import sys
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageOps

from pipelines import masks
from runtime.config import Settings
from runtime.contract import ContractError, pngmask, validate_inputs
from runtime.contract.edits import mask_fits
from runtime.contract.envelope import read_celery_message
from runtime.contract.pngmask import MAX_RAW_BYTES, REPAINTS, BrokenPng, mask_extrema
from runtime.local.devstack import DevStack
from runtime.worker.images import decode_image
from tests.conftest import dev_stack
from tests.rest import call


@pytest.mark.parametrize(("image", "mask", "fits"), [
    ((64, 48), (64, 48), True),
    ((64, 48), (128, 96), True),  # twice the size, same shape
    ((100, 75), (33, 25), True),  # 33.33 rounded: one pixel of rounding
    ((75, 100), (25, 33), True),
    ((100, 100), (101, 100), True),
    ((100, 100), (102, 100), False),  # two pixels: stretched
    ((64, 48), (48, 64), False),  # turned
    ((64, 64), (64, 48), False),
    ((64, 48), (0, 48), False),
])
def test_a_mask_fits_an_image_of_its_aspect_ratio_up_to_a_pixel(image: tuple[int, int], mask: tuple[int, int],
                                                               fits: bool) -> None:
    assert mask_fits(image, mask) is fits


# == the PNG reader ===========================================================================================
def encoded(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def as_the_worker_reads_it(data: bytes, invert: bool = False) -> tuple[int, int]:
    """The mask's range as the worker reads it: decoded by Pillow, then the inpaint pipeline's own rule
    (``pipelines.masks.read_mask``: WebUI's), inverted as it inverts."""
    mask = masks.read_mask(decode_image(data))
    return (ImageOps.invert(mask) if invert else mask).getextrema()


def noise(mode: str, size: tuple[int, int] = (37, 23), seed: int = 0) -> Image.Image:
    """Random pixels in ``mode``, so that every filter type and every value turns up."""
    bands = len(Image.new(mode, (1, 1)).getbands())
    data = bytes((i * 2654435761 + seed * 97) >> 7 & 0xFF for i in range(size[0] * size[1] * bands))
    return Image.frombytes(mode, size, data)


def mask_images() -> dict[str, bytes]:
    rgb = noise("RGB")
    rgba = noise("RGBA")
    opaque = rgba.copy()
    opaque.putalpha(255)
    palette = rgb.quantize(16)
    holes = Image.new("RGBA", (40, 30), (255, 255, 255, 255))
    holes.paste((0, 0, 0, 0), (5, 5, 20, 20))
    return {
        "L": encoded(noise("L")),
        "RGB": encoded(rgb),
        "RGBA with transparency": encoded(rgba),
        "RGBA opaque": encoded(opaque),
        "RGBA transparent hole": encoded(holes),
        "LA": encoded(noise("LA")),
        "P": encoded(palette),
        "P with transparency": encoded(palette, transparency=3),
        "P 2-bit": encoded(rgb.quantize(4), bits=2),
        "1-bit": encoded(noise("L").point(lambda v: 255 if v > 127 else 0).convert("1")),
        "L with tRNS": encoded(noise("L"), transparency=7),
        "RGB with tRNS": encoded(rgb, transparency=(1, 2, 3)),
        "L black": encoded(Image.new("L", (64, 48), 0)),
        "L white": encoded(Image.new("L", (64, 48), 255)),
        "RGB black": encoded(Image.new("RGB", (64, 48), 0)),
        "RGB one dim red pixel": encoded(_with_pixel(Image.new("RGB", (64, 48), 0), (1, 0, 0))),
        "RGBA transparent white": encoded(Image.new("RGBA", (64, 48), (255, 255, 255, 0))),
        "LA transparent": encoded(Image.new("LA", (64, 48), (255, 0))),
        "1-bit black": encoded(Image.new("1", (64, 48), 0)),
        "wide L": encoded(noise("L", (1000, 3))),
        "L just below half": encoded(Image.new("L", (64, 48), 127)),
        "L at half": encoded(Image.new("L", (64, 48), 128)),
        "RGBA alpha at half": encoded(Image.new("RGBA", (64, 48), (255, 255, 255, 128))),
        "RGBA alpha above half": encoded(Image.new("RGBA", (64, 48), (0, 0, 0, 129))),
    }


def _with_pixel(image: Image.Image, value: tuple[int, ...]) -> Image.Image:
    image.putpixel((3, 4), value)
    return image


MASKS = mask_images()


@pytest.mark.parametrize("name", list(MASKS))
@pytest.mark.parametrize("invert", [False, True], ids=["", "inverted"])
def test_the_png_reader_sees_the_mask_the_worker_sees(name: str, invert: bool) -> None:
    assert mask_extrema(MASKS[name], invert) == as_the_worker_reads_it(MASKS[name], invert)


@pytest.mark.parametrize(("color", "mode"), [(0, "L"), (4, "LA"), (2, "RGB"), (6, "RGBA")])
def test_every_row_filter_unfilters_to_pillows_pixels(color: int, mode: str) -> None:
    """Any bytes are valid filtered rows: random ones under each filter type (0-4, each row another), decoded
    here and by Pillow, pixel for pixel (the extrema alone would hide a wrong predictor)."""
    width, height, channels = 29, 20, len(mode)
    rows = [bytes([y % 5]) + noise("L", (width * channels, 1), seed=y).tobytes() for y in range(height)]
    data = png_of(zlib.compress(b"".join(rows)), width, height, color)
    png = pngmask._parse(data)
    assert png is not None
    assert b"".join(pngmask._rows(png)) == Image.open(io.BytesIO(data)).tobytes()


@pytest.mark.parametrize("name", list(MASKS))
@pytest.mark.parametrize("invert", [False, True], ids=["", "inverted"])
def test_the_api_calls_a_mask_empty_exactly_when_the_worker_refuses_it(name: str, invert: bool) -> None:
    mask = decode_image(MASKS[name])
    try:
        masks.canvas(Image.new("RGB", mask.size), mask, None, invert, 0)
        refused = False
    except ContractError as exc:
        assert exc.field == "inputs.mask"
        refused = True
    extrema = mask_extrema(MASKS[name], invert)
    assert extrema is not None and (extrema[1] < REPAINTS) == refused


def test_what_the_reader_does_not_read_is_left_to_the_worker() -> None:
    """None: not an answer, the worker decides (it decodes them with Pillow)."""
    black = Image.new("L", (64, 48), 0)
    assert mask_extrema(encoded(black, "JPEG")) is None
    assert mask_extrema(encoded(black, "WEBP")) is None
    assert mask_extrema(png_of(zlib.compress(b"\0" * 9 * 8), 8, 8, interlace=1)) is None  # Adam7
    assert mask_extrema(encoded(Image.new("I;16", (64, 48), 0))) is None  # 16-bit
    big = png_of(b"\0" * 16, width=MAX_RAW_BYTES, height=1, color=0)  # beyond what the Lambda decodes
    assert mask_extrema(big) is None


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_of(idat: bytes, width: int, height: int, color: int = 0, depth: int = 8, interlace: int = 0) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_broken_pngs_are_refused_as_the_worker_refuses_them() -> None:
    good = MASKS["L"]
    idat = good.index(b"IDAT")
    with pytest.raises(BrokenPng, match="truncated"):
        mask_extrema(good[:idat + 40])
    bad_crc = bytearray(good)
    bad_crc[29] ^= 0xFF  # IHDR's checksum
    with pytest.raises(BrokenPng, match="checksum"):
        mask_extrema(bytes(bad_crc))
    with pytest.raises(BrokenPng, match="compressed"):
        mask_extrema(png_of(b"not zlib at all", 8, 8))
    with pytest.raises(BrokenPng, match="filter"):
        mask_extrema(png_of(zlib.compress(b"\x07" + b"\0" * 8) * 1, 8, 1))
    with pytest.raises(BrokenPng, match="truncated"):  # a valid stream, shorter than the rows it declares
        mask_extrema(png_of(zlib.compress(b"\0" * 9 * 4), 8, 8))
    for name, data in (("truncated", good[:idat + 40]), ("bad checksum", bytes(bad_crc))):
        with pytest.raises(OSError):  # and so does Pillow, the worker's decoder
            Image.open(io.BytesIO(data)).load()
        del name


def test_a_zip_bomb_costs_what_its_header_declares() -> None:
    """64 MiB of zeros behind a 512x512 header: the reader decompresses the 257 KiB the rows take, no more."""
    stream = zlib.compressobj(9)
    zeros = b"\0" * (1 << 20)
    bomb = b"".join(stream.compress(zeros) for _ in range(64)) + stream.flush()
    assert len(bomb) < 100_000
    data = png_of(bomb, 512, 512)
    tracemalloc.start()
    try:
        assert mask_extrema(data) == (0, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, peak  # 64 MiB decompressed would show


def test_the_reader_and_the_checks_need_no_pillow() -> None:
    """The Lambda bundle has no Pillow: the reader and the submit checks run with PIL impossible to import."""
    code = ("import sys; sys.modules['PIL'] = None\n"
            "import lambdas.submit, lambdas.edits\n"
            "from runtime.contract.pngmask import mask_extrema\n"
            "print(mask_extrema(sys.stdin.buffer.read()))\n")
    done = subprocess.run([sys.executable, "-c", code], input=MASKS["RGBA transparent hole"], capture_output=True,
                          check=False, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "(0, 255)"


# == the API ===================================================================================================
@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """``spotgen dev`` in this process without workers, on the default settings (the tiny models, their
    upscalers): the submit Lambda's handler behind the local gateway, on the real emulator."""
    with dev_stack(Settings(poll_wait_s=1), tmp_path_factory.mktemp("edits-api")) as stack:
        yield stack


def inline(image: Image.Image, fmt: str = "PNG") -> str:
    return base64.b64encode(encoded(image, fmt)).decode()


IMAGE = inline(noise("RGB", (64, 48)))
MASK = inline(_with_pixel(Image.new("L", (64, 48), 0), 255))  # one pixel to repaint
BLACK = inline(Image.new("L", (64, 48), 0))


def inpaint(**inputs: Any) -> dict[str, Any]:
    return {"pipeline": "inpaint", "model": "tiny-sd",
            "inputs": {"prompt": "a fox", "steps": 2, "image": IMAGE, "mask": MASK, **inputs}}


def txt2img(model: str = "tiny-sd", **inputs: Any) -> dict[str, Any]:
    return {"pipeline": "txt2img", "model": model, "inputs": {"prompt": "a fox", "steps": 4, "width": 64,
                                                              "height": 48, **inputs}}


def upscale(model: str = "lanczos", **inputs: Any) -> dict[str, Any]:
    return {"pipeline": "upscale", "model": model, "inputs": {"image": IMAGE, **inputs}}


def sd_upscale(**inputs: Any) -> dict[str, Any]:
    return {"pipeline": "sd_upscale", "model": "tiny-sd",
            "inputs": {"prompt": "a fox", "steps": 2, "image": IMAGE, "width": 64, "height": 48, "overlap": 16,
                       **inputs}}


REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
    ("extend beyond the family's budget", inpaint(extend={"left": 1024, "right": 1024}), "invalid_field",
     "inputs.extend"),
    ("a mask of another aspect ratio", inpaint(mask=inline(Image.new("L", (48, 64), 255))), "invalid_field",
     "inputs.mask"),
    ("an empty mask", inpaint(mask=BLACK), "invalid_field", "inputs.mask"),
    ("a mask below half white", inpaint(mask=inline(Image.new("L", (64, 48), 127))), "invalid_field", "inputs.mask"),
    ("a mask of RGBA alpha below half", inpaint(mask=inline(Image.new("RGBA", (64, 48), (255, 255, 255, 127)))),
     "invalid_field", "inputs.mask"),
    ("an empty RGBA mask: transparent throughout", inpaint(mask=inline(Image.new("RGBA", (64, 48), (255,) * 3 + (0,)))),
     "invalid_field", "inputs.mask"),
    ("an inverted white mask", inpaint(mask=inline(Image.new("L", (64, 48), 255)), invert_mask=True),
     "invalid_field", "inputs.mask"),
    ("a mask that is a broken PNG", inpaint(mask=base64.b64encode(MASKS["L"][:60]).decode()), "invalid_field",
     "inputs.mask"),
    ("neither mask nor extend", inpaint(mask=None), "invalid_field", "inputs.mask"),
    ("inpaint on an upscaler", {**inpaint(), "model": "tiny-esrgan"}, "unknown_model", "model"),
    ("an unknown upscaler", upscale("no-such-upscaler"), "unknown_model", "model"),
    ("upscale on a base model", upscale("tiny-sd"), "unknown_model", "model"),
    ("upscale beyond the largest image", upscale(image=inline(Image.new("L", (2048, 2048))), scale=2.5),
     "invalid_field", "inputs.scale"),
    ("upscale scale above 8", upscale(scale=9), "invalid_field", "inputs.scale"),
    ("hires with an unknown upscaler", txt2img(hires={"upscaler": "no-such-upscaler"}), "unknown_model",
     "inputs.hires.upscaler"),
    ("hires with a base model as upscaler", txt2img(hires={"upscaler": "tiny-sd"}), "unknown_model",
     "inputs.hires.upscaler"),
    ("hires target beyond the family's budget", txt2img(width=1024, height=1024, hires={"scale": 2}),
     "invalid_field", "inputs.hires"),
    ("an unknown refiner", txt2img("tiny-sdxl", refiner="no-such-refiner"), "unknown_model", "inputs.refiner"),
    ("SD upscale with an unknown upscaler", sd_upscale(upscaler="no-such-upscaler"), "unknown_model",
     "inputs.upscaler"),
    ("SD upscale with a base model as upscaler", sd_upscale(upscaler="tiny-sd"), "unknown_model", "inputs.upscaler"),
    ("a refiner of another family", txt2img("tiny-sdxl", refiner="tiny-sd"), "incompatible_refiner",
     "inputs.refiner"),
    ("a refiner for an SD 1.x model", txt2img(refiner="tiny-sdxl-refiner"), "invalid_field", "inputs.refiner"),
]


class Emulator:
    """The stack's S3 and SQS, with clients made once (each new client costs a third of a second)."""

    def __init__(self, api: DevStack) -> None:
        from runtime.storage import aws

        self.settings = api.settings
        self.s3, self.sqs = aws.client("s3", self.settings), aws.client("sqs", self.settings)

    def kept(self) -> tuple[set[str], dict[str, str]]:
        """Every key in both buckets, and the work queue's message counts."""
        keys = {f"{bucket}/{o['Key']}" for bucket in (self.settings.input_bucket, self.settings.output_bucket)
                for o in self.s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
        counts = self.sqs.get_queue_attributes(QueueUrl=self.settings.queue_url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return keys, counts

    def stored(self, uri: str) -> bytes:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()


@pytest.fixture(scope="module")
def emu(api: DevStack) -> Emulator:
    return Emulator(api)


@pytest.mark.parametrize(("case", "body", "code", "field"), REFUSED, ids=[c[0] for c in REFUSED])
def test_a_bad_edit_is_400_naming_the_field_and_nothing_is_stored(api: DevStack, emu: Emulator, case: str,
                                                                   body: dict[str, Any], code: str, field: str) -> None:
    refused(api, emu, case, body, code, field)


def refused(api: DevStack, emu: Emulator, case: str, body: dict[str, Any], code: str, field: str) -> None:
    """``body`` is answered 400 with ``code``, naming ``field``, and nothing is stored or queued."""
    before = emu.kept()
    status, answer = call("POST", f"{api.api_url}/v1/jobs", body)
    assert status == 400, f"{case}: {status} {answer}"
    assert (answer["error"]["code"], answer["error"]["field"]) == (code, field), f"{case}: {answer}"
    assert field in answer["error"]["message"] or field == "model", f"{case}: {answer}"
    assert emu.kept() == before, f"{case}: something was stored or queued"


def queued(api: DevStack, emu: Emulator, body: dict[str, Any]) -> dict[str, Any]:
    """The job as the API queued it (its message, taken off the work queue: no worker here)."""
    status, answer = call("POST", f"{api.api_url}/v1/jobs", body)
    assert status == 202, answer
    queue = api.settings.queue_url
    for _ in range(20):
        for message in emu.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10,
                                               WaitTimeSeconds=1).get("Messages", []):
            emu.sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
            _headers, [spec], _kwargs = read_celery_message(message["Body"])
            if spec["id"] == answer["id"]:
                return spec
    raise AssertionError(f"no message for job {answer['id']}")


def test_an_inpainting_job_is_queued_with_its_image_and_mask_in_the_input_bucket(api: DevStack,
                                                                                  emu: Emulator) -> None:
    spec = queued(api, emu, inpaint(mask_blur=2, fill="latent_noise", only_masked=True, padding=8))
    inputs = spec["inputs"]
    for name, sent in (("image", IMAGE), ("mask", MASK)):
        assert inputs[name].startswith(f"s3://{api.settings.input_bucket}/inputs/{spec['id']}/"), inputs[name]
        assert emu.stored(inputs[name]) == base64.b64decode(sent)
    assert (inputs["fill"], inputs["only_masked"], inputs["padding"]) == ("latent_noise", True, 8)


@pytest.mark.parametrize(("case", "body"), [
    ("outpainting alone: an empty mask with extend", inpaint(mask=BLACK, extend={"right": 16})),
    ("outpainting without a mask", inpaint(mask=None, extend={"left": 8, "top": 8})),
    ("a mask twice the image's size", inpaint(mask=inline(Image.new("L", (128, 96), 255)))),
    ("a mask at half white", inpaint(mask=inline(Image.new("L", (64, 48), 128)))),
    ("an RGBA mask's alpha at half", inpaint(mask=inline(Image.new("RGBA", (64, 48), (0, 0, 0, 128))))),
    ("a JPEG mask: left to the worker", inpaint(mask=inline(Image.new("L", (64, 48), 0), "JPEG"))),
    ("an s3 image: the worker compares the sizes", inpaint(image="s3://spotgen-inputs/mine/a.png",
                                                           mask=inline(Image.new("L", (48, 64), 255)))),
    ("upscale with a filter", upscale("lanczos", scale=2)),
    ("upscale with an upscaler model", upscale("tiny-esrgan", scale=4)),
    ("hires fix with a latent upscaler", txt2img(hires={"scale": 1.5, "upscaler": "latent_bicubic"})),
    ("hires fix with an upscaler model", txt2img(hires={"width": 128, "upscaler": "tiny-compact", "steps": 2})),
    ("the SDXL refiner", txt2img("tiny-sdxl", refiner="tiny-sdxl-refiner", switch_at=0.5)),
    ("SD upscale without an upscaler (WebUI's None)", sd_upscale()),
    ("SD upscale with an upscaler model", sd_upscale(upscaler="tiny-esrgan", scale=2)),
], ids=lambda value: value if isinstance(value, str) else "")
def test_a_good_edit_is_queued(api: DevStack, emu: Emulator, case: str, body: dict[str, Any]) -> None:
    spec = queued(api, emu, body)
    assert (spec["pipeline"], spec["model"]) == (body["pipeline"], body["model"]), case
    # the worker validates the message's inputs again, as strictly: an input the API added would fail the job
    validate_inputs(spec["pipeline"], spec["inputs"], input_bucket=api.settings.input_bucket)
    for name in ("image", "mask"):
        if isinstance(spec["inputs"].get(name), str):
            assert spec["inputs"][name].startswith("s3://"), f"{case}: {name} not moved"
