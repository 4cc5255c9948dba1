"""Images in and out of a job: input images decoded with explicit limits, outputs encoded in the job's format
(``runtime.contract.formats``) with its parameters embedded where SD WebUI puts them, so WebUI's PNG Info and
the tools that read WebUI's images find them: a PNG ``parameters`` text chunk, EXIF UserComment in WebP and JPEG.
Every encoder is deterministic (same image and options, same bytes), so a second delivery overwrites an output
with the very bytes the first stored."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

from PIL import Image, PngImagePlugin

from runtime.contract import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, ImageRefError
from runtime.contract.formats import (
    EXIF_IFD_TAG,
    USER_COMMENT_ENCODING,
    USER_COMMENT_PREFIX,
    USER_COMMENT_TAG,
    OutputOptions,
)
from runtime.plugins import RetryableError
from runtime.storage.jobstore import JobStore
from runtime.storage.retry import Retry, transient

PNG = OutputOptions()


def parameters_text(parameters: dict[str, Any]) -> str:
    return json.dumps(parameters, sort_keys=True, separators=(",", ":"))


def encode_png(image: Image.Image, parameters: dict[str, Any]) -> bytes:
    """PNG with the generation parameters in a ``parameters`` text chunk; same inputs give the same bytes."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters_text(parameters))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def user_comment_exif(text: str) -> bytes:
    """EXIF holding ``text`` as UserComment, as WebUI writes it (``piexif.helper.UserComment.dump(text,
    encoding="unicode")``): the ``UNICODE`` code, then UTF-16 big-endian."""
    return exif_with_comment(USER_COMMENT_PREFIX + text.encode(USER_COMMENT_ENCODING))


def exif_with_comment(comment: bytes) -> bytes:
    """EXIF with one UserComment of type UNDEFINED, as piexif writes it: a little-endian TIFF header, IFD0 with the
    one pointer to the Exif IFD, and that IFD with the one tag. Written by hand because Pillow types a nested
    IFD's bytes as BYTE, which piexif (so WebUI's PNG Info) cannot load as a comment; and no piexif is needed."""
    ifd0, exif_ifd = 8, 8 + 2 + 12 + 4
    data_at = exif_ifd + 2 + 12 + 4
    return (b"Exif\x00\x00II*\x00" + struct.pack("<I", ifd0)
            + struct.pack("<HHHII", 1, EXIF_IFD_TAG, 4, 1, exif_ifd) + struct.pack("<I", 0)  # LONG: the offset
            + struct.pack("<HHHII", 1, USER_COMMENT_TAG, 7, len(comment), data_at) + struct.pack("<I", 0)
            + comment)


def encode_output(image: Image.Image, parameters: dict[str, Any], options: OutputOptions = PNG) -> bytes:
    """One output in the job's format: PNG as ``encode_png`` (byte for byte), WebP or JPEG with the parameters in
    EXIF UserComment. JPEG has no alpha, so the image is made RGB first (the built-ins return RGB already)."""
    if options.format == "png":
        return encode_png(image, parameters)
    exif = user_comment_exif(parameters_text(parameters))
    buf = io.BytesIO()
    if options.format == "webp":
        if options.lossless:  # method 4 and quality 80 (effort): libwebp's defaults, Pillow's too
            image.save(buf, format="WEBP", lossless=True, exif=exif)
        else:
            image.save(buf, format="WEBP", quality=options.effective_quality, exif=exif)
    else:
        rgb = image if image.mode in ("RGB", "L") else image.convert("RGB")
        rgb.save(buf, format="JPEG", quality=options.effective_quality, exif=exif)
    return buf.getvalue()


def decode_image(data: bytes) -> Image.Image:
    """Decode an input image with explicit limits (never trust what is in the bucket), as L, RGB or RGBA: its own
    channels, so that a mask's alpha survives (``RunContext.image`` converts to what the pipeline asks for)."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.format not in ("PNG", "JPEG", "WEBP"):
            raise ImageRefError(f"input images must be PNG, JPEG or WebP, not {image.format}")
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise ImageRefError(f"input image has more than {MAX_IMAGE_PIXELS} pixels")
        if image.mode in ("L", "RGB", "RGBA"):
            image.load()
            return image
        transparent = image.mode in ("LA", "PA", "RGBa", "La") or "transparency" in image.info
        return image.convert("RGBA" if transparent else "L" if image.mode in ("1", "I", "I;16", "F") else "RGB")
    except (OSError, Image.DecompressionBombError) as exc:
        raise ImageRefError(f"input image cannot be decoded: {exc}") from None


def fetch_image(store: JobStore, retry_s: float, uri: str) -> Image.Image:
    """An input image, read while the job runs: an outage is waited out for ``retry_s`` (the heartbeat keeps the
    lease meanwhile), and past that the delivery is retried later, not the job failed: the image is still there."""
    try:
        data = Retry(retry_s)(lambda: store.get_input(uri, MAX_IMAGE_BYTES), f"input image {uri}")
    except Exception as exc:
        if transient(exc):
            raise RetryableError(f"the input image {uri} could not be read: {type(exc).__name__}") from exc
        if _missing(exc):  # S3 reads after writes consistently: an image absent now is absent on every delivery
            raise ImageRefError(f"the input image {uri} does not exist in the input bucket") from None
        raise
    return decode_image(data)


def _missing(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    return isinstance(response, dict) and response.get("Error", {}).get("Code") in ("NoSuchKey", "404")
