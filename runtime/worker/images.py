"""Images in and out of a job: input images decoded with explicit limits, outputs encoded as PNG."""

from __future__ import annotations

import io
import json
from typing import Any

from PIL import Image, PngImagePlugin

from runtime.contract import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, ImageRefError
from runtime.plugins import RetryableError
from runtime.storage.jobstore import JobStore
from runtime.storage.retry import Retry, transient


def encode_png(image: Image.Image, parameters: dict[str, Any]) -> bytes:
    """PNG with the generation parameters in a ``parameters`` text chunk; same inputs give the same bytes."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", json.dumps(parameters, sort_keys=True, separators=(",", ":")))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def decode_image(data: bytes) -> Image.Image:
    """Decode an input image with explicit limits (never trust what is in the bucket)."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.format not in ("PNG", "JPEG", "WEBP"):
            raise ImageRefError(f"input images must be PNG, JPEG or WebP, not {image.format}")
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise ImageRefError(f"input image has more than {MAX_IMAGE_PIXELS} pixels")
        return image.convert("RGB")
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
        raise
    return decode_image(data)
