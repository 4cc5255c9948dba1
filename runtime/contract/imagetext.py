"""The text an image carries, read with the standard library alone: what WebUI's PNG Info reads.

The API has no Pillow (``runtime.contract.pngmask`` says why), yet ``/sdapi/v1/png-info`` must read the parameters
that spotgen's worker writes (``runtime.worker.images``: a PNG ``parameters`` text chunk, EXIF UserComment in WebP
and JPEG) and that WebUI writes the same way. This reads PNG's three text chunks (``tEXt``, ``zTXt``, ``iTXt``),
and the EXIF UserComment of a JPEG (its APP1 segment) or a WebP (its ``EXIF`` chunk), as WebUI's
``read_info_from_image`` does: the ``parameters`` text, else the UserComment, and the other text chunks as
``items``. Compressed text is inflated up to ``MAX_TEXT_BYTES``: a zip bomb costs no more than an honest chunk.
"""

from __future__ import annotations

import struct
import zlib

from runtime.contract.formats import EXIF_IFD_TAG, USER_COMMENT_TAG

#: The most bytes one text chunk inflates to; WebUI's infotexts are a few kilobytes.
MAX_TEXT_BYTES = 1 << 20
_PNG = b"\x89PNG\r\n\x1a\n"
#: UserComment's character codes (EXIF 2.3): prefix -> codec, as ``spotgen.images`` reads them.
_CODES = {b"UNICODE\x00": "utf-16-be", b"ASCII\x00\x00\x00": "ascii", b"JIS\x00\x00\x00\x00\x00": "shift_jis"}


class NotAnImage(ValueError):
    """The bytes are no PNG, JPEG or WebP."""


def image_text(data: bytes) -> tuple[str | None, dict[str, str]]:
    """(the generation parameters text or None, the image's other text items) of a PNG, JPEG or WebP;
    ``NotAnImage`` for other bytes. A truncated or corrupt file yields what was read before the damage."""
    if data.startswith(_PNG):
        items = _png_text(data)
        return items.pop("parameters", None), items
    if data.startswith(b"\xff\xd8"):
        return _comment(_jpeg_exif(data)), {}
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _comment(_webp_exif(data)), {}
    raise NotAnImage("not a PNG, JPEG or WebP image")


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, MAX_TEXT_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError("text chunk too large")
    return out


def _png_text(data: bytes) -> dict[str, str]:
    items: dict[str, str] = {}
    at = len(_PNG)
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        at += 12 + length
        if len(body) < length or kind == b"IEND":
            break
        try:
            if kind == b"tEXt":
                key, _, text = body.partition(b"\x00")
                items[key.decode("latin-1")] = text.decode("latin-1")
            elif kind == b"zTXt":
                key, _, rest = body.partition(b"\x00")
                items[key.decode("latin-1")] = _inflate(rest[1:]).decode("latin-1")
            elif kind == b"iTXt":
                key, _, rest = body.partition(b"\x00")
                compressed, rest = rest[0], rest[2:]
                _language, _, rest = rest.partition(b"\x00")
                _translated, _, text = rest.partition(b"\x00")
                items[key.decode("latin-1")] = (_inflate(text) if compressed else text).decode("utf-8", "replace")
        except (ValueError, IndexError, zlib.error):
            continue  # a damaged chunk: Pillow skips it too
    return items


def _jpeg_exif(data: bytes) -> bytes | None:
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker, length = data[at + 1], struct.unpack(">H", data[at + 2:at + 4])[0]
        if marker == 0xDA:  # start of scan: no metadata after it
            return None
        segment = data[at + 4:at + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
            return segment[6:]
        at += 2 + length
    return None


def _webp_exif(data: bytes) -> bytes | None:
    at = 12
    while at + 8 <= len(data):
        kind, length = data[at:at + 4], struct.unpack("<I", data[at + 4:at + 8])[0]
        if kind == b"EXIF":
            exif = data[at + 8:at + 8 + length]
            return exif[6:] if exif.startswith(b"Exif\x00\x00") else exif
        at += 8 + length + (length & 1)
    return None


def _ifd(tiff: bytes, offset: int, order: str) -> dict[int, tuple[int, int, bytes]]:
    """One IFD's entries: tag -> (type, count, value or offset field)."""
    (count,) = struct.unpack(order + "H", tiff[offset:offset + 2])
    entries = {}
    for i in range(count):
        entry = tiff[offset + 2 + 12 * i:offset + 14 + 12 * i]
        if len(entry) < 12:
            break
        tag, kind, number = struct.unpack(order + "HHI", entry[:8])
        entries[tag] = (kind, number, entry[8:12])
    return entries


def _comment(tiff: bytes | None) -> str | None:
    """The UserComment of an EXIF block (a TIFF structure), decoded as WebUI does (piexif's ``UserComment.load``,
    else UTF-8 ignoring errors)."""
    if not tiff or tiff[:2] not in (b"II", b"MM"):
        return None
    order = "<" if tiff[:2] == b"II" else ">"
    try:
        (first,) = struct.unpack(order + "I", tiff[4:8])
        pointer = _ifd(tiff, first, order).get(EXIF_IFD_TAG)
        if pointer is None:
            return None
        (exif_at,) = struct.unpack(order + "I", pointer[2])
        entry = _ifd(tiff, exif_at, order).get(USER_COMMENT_TAG)
        if entry is None:
            return None
        _kind, size, field = entry
        if size <= 4:
            raw = field[:size]
        else:
            (at,) = struct.unpack(order + "I", field)
            raw = tiff[at:at + size]
    except struct.error:
        return None
    codec = _CODES.get(raw[:8])
    text = raw[8:].decode(codec, errors="replace") if codec else raw.decode("utf-8", "ignore")
    return text or None
