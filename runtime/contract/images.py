"""Image references as they arrive in requests: inline base64 or an ``s3://`` URI in the input bucket.

Standard library only, so the Lambda producers can check an image (format and size from its header)
without Pillow. The worker decodes it for real, with Pillow's own limits, when it runs the job.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from dataclasses import dataclass

MAX_IMAGE_BYTES = 4 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096

_S3_KEY_RE = re.compile(r"^[A-Za-z0-9!_.*'()/=-]{1,1024}$")
_DATA_URL_RE = re.compile(r"^data:image/(png|jpeg|webp);base64,", re.IGNORECASE)


class ImageRefError(ValueError):
    """The reference is not an acceptable image; the message says why, for the client."""


@dataclass(frozen=True)
class InlineImage:
    data: bytes
    format: str  # png | jpeg | webp
    width: int
    height: int

    @property
    def content_type(self) -> str:
        return f"image/{self.format}"


@dataclass(frozen=True)
class S3Ref:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_uri(ref: str, input_bucket: str | None) -> S3Ref:
    """Accept ``s3://BUCKET/KEY`` only inside the configured input bucket (never another bucket)."""
    rest = ref[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise ImageRefError("an s3:// image reference must be s3://BUCKET/KEY")
    if input_bucket is None or bucket != input_bucket:
        raise ImageRefError(f"s3:// image references must point into the input bucket {input_bucket!r}")
    if not _S3_KEY_RE.match(key) or ".." in key.split("/") or key.startswith("/"):
        raise ImageRefError("the s3:// key contains characters or path segments that are not allowed")
    return S3Ref(bucket, key)


def decode_inline(ref: str) -> InlineImage:
    """Decode base64 (optionally a ``data:image/...;base64,`` URL) and check it is a bounded image."""
    match = _DATA_URL_RE.match(ref)
    payload = ref[match.end() :] if match else ref
    if len(payload) > (MAX_IMAGE_BYTES * 4) // 3 + 4:
        raise ImageRefError(f"the inline image is larger than {MAX_IMAGE_BYTES} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRefError("not valid base64; send a PNG, JPEG or WebP image as base64") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageRefError(f"the inline image is larger than {MAX_IMAGE_BYTES} bytes")
    fmt, width, height = sniff(data)
    if width <= 0 or height <= 0:
        raise ImageRefError("the image has no pixels")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageRefError(f"the image has {width}x{height} pixels, more than the limit of {MAX_IMAGE_PIXELS}")
    return InlineImage(data, fmt, width, height)


def check_ref(ref: str, input_bucket: str | None) -> str:
    """Validate an image reference from a request; returns it unchanged."""
    lowered = ref[:16].lower()
    if lowered.startswith(("http://", "https://", "file:", "ftp://")):
        raise ImageRefError("URLs are not accepted: send the image inline as base64 or as an s3:// URI "
                            "in the input bucket")
    if lowered.startswith("s3://"):
        parse_s3_uri(ref, input_bucket)
    else:
        decode_inline(ref)
    return ref


def sniff(data: bytes) -> tuple[str, int, int]:
    """Format and size from the header: PNG, JPEG or WebP, else an error."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return "png", width, height
    if data.startswith(b"\xff\xd8"):
        return ("jpeg", *_jpeg_size(data))
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ("webp", *_webp_size(data))
    raise ImageRefError("the data is not a PNG, JPEG or WebP image")


_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF_MARKERS and i + 9 <= len(data):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    raise ImageRefError("the JPEG image is truncated or corrupt")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    raise ImageRefError("the WebP image is truncated or corrupt")
