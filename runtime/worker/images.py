"""Images in and out of a job: input images decoded with explicit limits, outputs encoded as PNG."""

from __future__ import annotations

import io
import json
from typing import Any

from PIL import Image, PngImagePlugin

from runtime.contract import MAX_IMAGE_PIXELS, ImageRefError


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
