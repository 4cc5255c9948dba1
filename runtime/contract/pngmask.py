"""Whether a PNG mask repaints anything, read with the standard library alone.

The submit Lambda has no Pillow, yet an empty mask (nothing to repaint) should be a 400 naming ``inputs.mask``
before anything is stored, not a failed job. This reads the 8-bit and palette PNGs masks come as (grayscale
1/2/4/8-bit, RGB, palette with or without ``tRNS``, gray+alpha, RGBA) the way the worker sees them (in Pillow's
modes: ``runtime.worker.images.decode_image``) and applies WebUI's rule (``create_binary_mask``, as
``pipelines/masks.read_mask`` does): an image with transparency has its alpha channel as the mask, rounded at half
(opaque repaints), any other its luminance (white repaints). A mask repaints something where a value is at least
``REPAINTS`` (the model binarises the mask at half). What it does not read (interlaced
or 16-bit PNGs, very large ones; JPEG and WebP are not PNGs) is left to the worker, which refuses an empty mask as
well. Decompression is bounded by the size the header declares: a zip bomb costs no more than an honest mask.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate

SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The most unfiltered bytes (rows and their filter bytes) read here: a 1024x1024 RGBA mask, or a 2048x2048 L one.
#: Larger masks are left to the worker: pure Python unfilters about a megabyte in a few tenths of a second.
MAX_RAW_BYTES = 4 * 1024 * 1024 + 4096
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_DEPTHS = {0: (1, 2, 4, 8), 2: (8,), 3: (1, 2, 4, 8), 4: (8,), 6: (8,)}
_OPAQUE = bytes([255]) * 256
#: The least mask value that repaints: diffusers binarises the mask at half (and WebUI rounds its latent mask).
REPAINTS = 128


class BrokenPng(ValueError):
    """The PNG is corrupt (truncated, a bad checksum or compressed stream, an unknown filter): the worker's
    decoder would refuse it as well."""


@dataclass(frozen=True)
class _Png:
    width: int
    height: int
    depth: int
    color: int
    palette: bytes
    trns: bytes | None
    idat: list[bytes]


def mask_extrema(data: bytes, invert: bool = False) -> tuple[int, int] | None:
    """The smallest and largest mask value (0-255, 255 repaints) of the PNG ``data`` by WebUI's rule, flipped by
    ``invert``; None where this reader cannot tell (not a PNG it reads: the worker decides); ``BrokenPng`` when
    the file is corrupt. A mask repaints nothing when the largest value is below ``REPAINTS``."""
    png = _parse(data)
    if png is None:
        return None
    lo, hi = _extrema(png)
    return (255 - hi, 255 - lo) if invert else (lo, hi)


def _parse(data: bytes) -> _Png | None:
    if not data.startswith(SIGNATURE):
        return None
    pos, header, palette, trns, idat = len(SIGNATURE), None, b"", None, []
    while True:
        if pos + 8 > len(data):
            raise BrokenPng("the PNG ends before its IEND chunk")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if len(body) < length or pos + 12 + length > len(data):
            raise BrokenPng(f"the PNG's {kind!r} chunk is truncated")
        crc = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
        if kind != b"IDAT" and zlib.crc32(kind + body) != crc:  # the worker's decoder checks these, not IDAT's
            raise BrokenPng(f"the PNG's {kind.decode('latin-1')!r} chunk has a bad checksum")
        pos += 12 + length
        if header is None and kind != b"IHDR":
            raise BrokenPng("the PNG does not start with IHDR")
        if kind == b"IHDR":
            if length != 13:
                raise BrokenPng("the PNG's IHDR is not 13 bytes")
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = body
        elif kind == b"tRNS":
            trns = body
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, color, _compression, _filter, interlace = header
    if interlace or color not in _DEPTHS or depth not in _DEPTHS[color] or width < 1 or height < 1:
        return None
    if height * (1 + _row_bytes(width, depth, color)) > MAX_RAW_BYTES:
        return None
    if color == 3 and (not palette or len(palette) % 3):
        raise BrokenPng("the palette PNG has no usable PLTE chunk")
    if color in (0, 2):
        trns = None  # the worker keeps an L or RGB image as it is: tRNS makes no alpha channel there
    return _Png(width, height, depth, color, palette, trns, idat)


def _row_bytes(width: int, depth: int, color: int) -> int:
    return (width * depth * _CHANNELS[color] + 7) // 8


def _rows(png: _Png) -> Iterator[bytes]:
    """The unfiltered rows, decompressed at most a row at a time beyond what was asked."""
    size = _row_bytes(png.width, png.depth, png.color)
    bpp = max(1, png.depth * _CHANNELS[png.color] // 8)
    stream = zlib.decompressobj()
    pending, chunks = b"", iter(png.idat)
    previous = bytes(size)
    for _ in range(png.height):
        while len(pending) < size + 1:
            try:  # what the stream holds back first (a long match cut at the limit), then the next chunk
                more = stream.decompress(stream.unconsumed_tail, size + 1 - len(pending))
                if not more:
                    chunk = next(chunks, None)
                    if chunk is None or stream.eof:
                        raise BrokenPng("the PNG's image data is truncated")
                    more = stream.decompress(chunk, size + 1 - len(pending))
            except zlib.error as exc:
                raise BrokenPng(f"the PNG's image data is not a valid compressed stream ({exc})") from None
            pending += more
        kind, line, pending = pending[0], pending[1:size + 1], pending[size + 1:]
        previous = _unfilter(kind, line, previous, bpp)
        yield previous


def _unfilter(kind: int, line: bytes, prior: bytes, bpp: int) -> bytes:
    if kind == 0 or (kind == 2 and not any(prior)):
        return line
    if kind == 2:  # bytewise sums without carries between bytes, on the row as one integer
        n = len(line)
        high = int.from_bytes(b"\x80" * n, "big")
        x, y = int.from_bytes(line, "big"), int.from_bytes(prior, "big")
        return (((x & ~high) + (y & ~high)) ^ ((x ^ y) & high)).to_bytes(n, "big")
    if kind == 1:
        out = bytearray(line)
        for c in range(bpp):
            out[c::bpp] = bytes(accumulate(line[c::bpp], lambda a, b: (a + b) & 255))
        return bytes(out)
    if kind not in (3, 4):
        raise BrokenPng(f"the PNG has a row of unknown filter type {kind}")
    out = bytearray(len(line))
    for i, x in enumerate(line):
        a = out[i - bpp] if i >= bpp else 0
        b = prior[i]
        if kind == 3:
            out[i] = (x + ((a + b) >> 1)) & 255
            continue
        c = prior[i - bpp] if i >= bpp else 0
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        out[i] = (x + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    return bytes(out)


def _luminance(r: int, g: int, b: int) -> int:
    """Pillow's RGB to L (ITU-R 601-2, rounded as Pillow rounds)."""
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


def _tables(png: _Png) -> tuple[bytes, bytes | None]:
    """Per byte value (a gray level or a palette index): its luminance and its alpha (None: opaque throughout)."""
    if png.color == 3:
        colours = [png.palette[i:i + 3] for i in range(0, min(len(png.palette), 768), 3)]
        lum = bytes(_luminance(*c) for c in colours) + bytes(256 - len(colours))
        if png.trns is None:
            return lum, None
        alpha = png.trns[:256] + _OPAQUE[len(png.trns):]
        return lum, alpha
    scale = 255 // (2 ** png.depth - 1)
    lum = bytes(min(255, v * scale) for v in range(256))
    return lum, None


def _samples(line: bytes, depth: int, width: int) -> bytes:
    """One byte per pixel from a row of 1, 2 or 4-bit samples."""
    if depth == 8:
        return line
    return b"".join(map(_UNPACK[depth].__getitem__, line))[:width]


_UNPACK = {depth: [bytes((byte >> (8 - depth * (k + 1))) & (2 ** depth - 1) for k in range(8 // depth))
                   for byte in range(256)] for depth in (1, 2, 4)}


def _extrema(png: _Png) -> tuple[int, int]:
    """The mask's range: the alpha channel's where any pixel is transparent (rounded at half: 0 below it, 255 from
    it on), else the luminance's."""
    alpha_lo, alpha_hi, lum_lo, lum_hi = 255, 0, 255, 0
    lum_table, alpha_table = _tables(png) if png.color in (0, 3) else (None, None)
    for row in _rows(png):
        if png.color in (0, 3):
            samples = _samples(row, png.depth, png.width)
            alpha = samples.translate(alpha_table) if alpha_table is not None else b"\xff"
            lum = samples.translate(lum_table) if alpha_lo == 255 else b""
        elif png.color == 4:
            alpha, lum = row[1::2], row[0::2] if alpha_lo == 255 else b""
        else:
            channels = 4 if png.color == 6 else 3
            r, g, b = row[0::channels], row[1::channels], row[2::channels]
            alpha = row[3::4] if png.color == 6 else b"\xff"
            lum = b""
            if alpha_lo == 255:
                lum = r if r == g == b else bytes(map(_luminance, r, g, b))
        alpha_lo, alpha_hi = min(alpha_lo, min(alpha)), max(alpha_hi, max(alpha))
        if lum:
            lum_lo, lum_hi = min(lum_lo, min(lum)), max(lum_hi, max(lum))
    if alpha_lo < 255:
        return (255 if alpha_lo >= REPAINTS else 0), (255 if alpha_hi >= REPAINTS else 0)
    return lum_lo, lum_hi

