"""Each output format's bytes, made from a real pipeline's images by the worker's encoder
(``runtime.worker.images.encode_output``): they decode to the PNG's pixels (exactly for lossless WebP, within
the codec's error otherwise), carry the parameters where WebUI reads them, and are the same bytes every time."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import numpy as np
import pytest
from PIL import Image

from runtime.contract.formats import DEFAULT_QUALITY, OutputOptions
from runtime.worker.images import encode_output, encode_png, exif_with_comment
from spotgen.images import read_parameters
from tests.pipelines.harness import Harness

PARAMETERS = {"pipeline": "txt2img", "model": "tiny-sd", "seed": 1, "prompt": "a red fox in the snow 雪狐",
              "index": 0}


@pytest.fixture(scope="module")
def images(harness: Harness) -> list[Image.Image]:
    """One job's images and another seed's (the pixels a wrong image would have)."""
    return [harness.run("txt2img")[0], harness.run("txt2img", job_seed=2)[0]]


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a - b) ** 2)))


def psnr_floor(quality: int) -> float:
    """The lowest PSNR (dB) accepted at ``quality``. The tiny models' random weights make white noise, the hardest
    case for a codec, and both WebP and JPEG (Pillow's default, as WebUI's) keep colour at half resolution (4:2:0),
    which alone caps noise near 25 dB even at quality 100: measured 21-25 dB from quality 10 to 100 (WebP) and 19-25
    (JPEG). The floor rises with quality, about 2 dB under those; another seed's image scores 14 dB."""
    return 17 + 6 * quality / 100


def test_png_is_todays_png_byte_for_byte(images: list[Image.Image]) -> None:
    assert encode_output(images[0], PARAMETERS) == encode_png(images[0], PARAMETERS)
    assert encode_output(images[0], PARAMETERS, OutputOptions(format="png")) == encode_png(images[0], PARAMETERS)


def test_lossless_webp_decodes_to_exactly_the_pngs_pixels(images: list[Image.Image]) -> None:
    webp = encode_output(images[0], PARAMETERS, OutputOptions(format="webp", lossless=True))
    assert Image.open(io.BytesIO(webp)).format == "WEBP"
    assert np.array_equal(decoded(webp), decoded(encode_png(images[0], PARAMETERS)))


@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
@pytest.mark.parametrize("quality", [10, 50, None, 100])
def test_lossy_formats_decode_within_the_codecs_error(images: list[Image.Image], fmt: str,
                                                      quality: int | None) -> None:
    options = OutputOptions(format=fmt, quality=quality)  # type: ignore[arg-type]
    data = encode_output(images[0], PARAMETERS, options)
    assert Image.open(io.BytesIO(data)).format == fmt.upper()
    png = decoded(encode_png(images[0], PARAMETERS))
    assert psnr(decoded(data), png) >= psnr_floor(options.effective_quality or 0)
    assert psnr(decoded(data), decoded(encode_png(images[1], PARAMETERS))) < psnr_floor(10)  # the floor tells


@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
def test_quality_buys_fidelity(images: list[Image.Image], fmt: str) -> None:
    """``quality`` reaches the encoder: more of it, fewer errors and more bytes."""
    png = decoded(encode_png(images[0], PARAMETERS))
    runs = [encode_output(images[0], PARAMETERS, OutputOptions(format=fmt, quality=q))  # type: ignore[arg-type]
            for q in (10, DEFAULT_QUALITY[fmt], 100)]
    scores = [psnr(decoded(data), png) for data in runs]
    assert scores == sorted(scores) and len({len(data) for data in runs}) == 3
    assert [len(data) for data in runs] == sorted(len(data) for data in runs)


@pytest.mark.parametrize("options", [OutputOptions(), OutputOptions(format="webp"), OutputOptions(format="jpeg"),
                                     OutputOptions(format="webp", lossless=True)], ids=str)
def test_the_parameters_round_trip_and_the_bytes_repeat(images: list[Image.Image], options: OutputOptions) -> None:
    """A second delivery overwrites an output with the same bytes (runtime/worker/outputs.py)."""
    data = encode_output(images[0], PARAMETERS, options)
    assert json.loads(read_parameters(data) or "") == PARAMETERS
    assert encode_output(images[0], PARAMETERS, options) == data


def exif_entry(exif: bytes, tag: int) -> tuple[int, bytes]:
    """(type, value) of ``tag`` in the Exif IFD of little-endian EXIF bytes, read without Pillow."""
    tiff = exif.removeprefix(b"Exif\x00\x00")
    assert tiff[:4] == b"II*\x00"

    def entries(offset: int) -> dict[int, tuple[int, int, int]]:
        (count,) = struct.unpack_from("<H", tiff, offset)
        found = {}
        for i in range(count):
            tag_, type_, n, value = struct.unpack_from("<HHII", tiff, offset + 2 + 12 * i)
            found[tag_] = (type_, n, value)
        return found

    exif_ifd = entries(struct.unpack_from("<I", tiff, 4)[0])[0x8769][2]
    type_, n, at = entries(exif_ifd)[tag]
    return type_, tiff[at:at + n]


@pytest.mark.parametrize("fmt", ["webp", "jpeg"])
def test_the_parameters_are_exif_usercomment_as_webui_writes_it(images: list[Image.Image], fmt: str) -> None:
    """WebUI's ``piexif.helper.UserComment.dump(text, encoding="unicode")``: type UNDEFINED (7), the 8-byte
    ``UNICODE\\0`` code, then UTF-16 big-endian. piexif returns BYTE-typed comments as a tuple, which WebUI's
    PNG Info cannot read; so the type is checked too."""
    data = encode_output(images[0], PARAMETERS, OutputOptions(format=fmt))  # type: ignore[arg-type]
    type_, value = exif_entry(Image.open(io.BytesIO(data)).info["exif"], 0x9286)
    text = json.dumps(PARAMETERS, sort_keys=True, separators=(",", ":"))
    assert (type_, value) == (7, b"UNICODE\x00" + text.encode("utf-16-be"))


@pytest.mark.parametrize(("code", "body"), [(b"UNICODE\x00", "Steps: 20, 雪狐".encode("utf-16-be")),
                                            (b"ASCII\x00\x00\x00", b"Steps: 20")])
def test_read_parameters_reads_webuis_jpegs_and_a_png_chunk(code: bytes, body: bytes) -> None:
    """Images WebUI wrote (its UserComment, either code), and a PNG chunk: ``read_parameters`` reads all three
    formats, as WebUI's ``read_info_from_image`` does."""
    exif = exif_with_comment(code + body)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG", exif=exif)
    assert read_parameters(buf.getvalue()) == body.decode("utf-16-be" if code.startswith(b"UNI") else "ascii")
    assert read_parameters(encode_png(Image.new("RGB", (8, 8)), {"a": 1})) == '{"a":1}'
    plain = io.BytesIO()
    Image.new("RGB", (8, 8)).save(plain, format="WEBP")
    assert read_parameters(plain.getvalue()) is None
    with pytest.raises(ValueError, match="not an image"):
        read_parameters(b"not an image")


def test_jpeg_of_an_image_with_alpha_is_rgb(images: list[Image.Image]) -> None:
    """A plugin may return RGBA; JPEG has no alpha channel, so the runtime drops it rather than fail the job."""
    rgba: Any = images[0].convert("RGBA")
    data = encode_output(rgba, PARAMETERS, OutputOptions(format="jpeg"))
    assert Image.open(io.BytesIO(data)).mode == "RGB"
