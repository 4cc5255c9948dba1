"""GGUF's Q4_K blocks, written here because the ``gguf`` package reads K-quants but has no quantizer for them.

A Q4_K block is 256 weights in 144 bytes: a float16 scale ``d`` and minimum ``dmin``, then eight sub-blocks of 32
weights, each with a 6-bit scale and a 6-bit minimum (packed in 12 bytes as ggml packs them), and the weights as
4-bit numbers ``q`` (two per byte), read back as ``d * scale * q - dmin * minimum``. This is the plain rounding of
that form (llama.cpp's quantizer searches for better scales; any valid block reads the same way), so what a
reader makes of it is checked against ``gguf``'s own ``dequantize`` (``tests/models/test_flow_forms.py``).
"""

from __future__ import annotations

from typing import Any

BLOCK = 256  # weights per Q4_K block; a row's width must be a multiple of it


def quantize_q4_k(rows: Any) -> Any:
    """``rows`` (float32, 2-D, widths a multiple of 256) as Q4_K blocks: uint8, 144 bytes per 256 weights."""
    import numpy as np

    x = rows.astype(np.float32).reshape(-1, 8, 32)  # blocks, sub-blocks, weights
    low = np.minimum(x.min(axis=-1), 0.0)  # a sub-block's minimum, as a non-negative offset below
    scale = (x.max(axis=-1) - low) / 15.0
    d = np.maximum(scale.max(axis=-1), 1e-12) / 63.0  # each sub-block's scale in 6 bits of d
    dmin = np.maximum((-low).max(axis=-1), 1e-12) / 63.0
    d, dmin = d.astype(np.float16), dmin.astype(np.float16)  # as stored, so the 6-bit parts fit what is read
    sc = np.clip(np.rint(scale / d.astype(np.float32)[:, None]), 0, 63).astype(np.uint8)
    mn = np.clip(np.rint(-low / dmin.astype(np.float32)[:, None]), 0, 63).astype(np.uint8)
    step = np.maximum(d.astype(np.float32)[:, None] * sc, 1e-12)[..., None]
    offset = (dmin.astype(np.float32)[:, None] * mn)[..., None]
    q = np.clip(np.rint((x + offset) / step), 0, 15).astype(np.uint8)  # blocks, 8, 32
    packed = np.empty((x.shape[0], 12), dtype=np.uint8)
    packed[:, 0:4] = sc[:, :4] | ((sc[:, 4:] & 0x30) << 2)
    packed[:, 4:8] = mn[:, :4] | ((mn[:, 4:] & 0x30) << 2)
    packed[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    nibbles = q.reshape(-1, 4, 2, 32)  # sub-blocks 2g and 2g+1 share 32 bytes: low and high nibbles
    qs = (nibbles[:, :, 0] | (nibbles[:, :, 1] << 4)).reshape(-1, 128)
    blocks = np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), packed, qs],
                            axis=1)
    return blocks.reshape(rows.shape[0], -1)
