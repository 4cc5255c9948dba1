"""Step checkpoints: what a pipeline needs to continue a job exactly where an earlier attempt stopped.

A checkpoint is a safetensors file (tensors, no code: loading one never runs anything) whose metadata holds
a JSON header: the format, the step to continue at, the job's fingerprint (job id, inputs, model, seed) and
small values such as scheduler counters. A digest over the header and every tensor's bytes detects a
truncated or altered file. Anything that does not check out is refused with ``CheckpointError``; the
caller then logs it and starts the job from the beginning, which is always correct, only slower.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from runtime.plugins import CheckpointError, StepState
from runtime.worker.latest import LatestWins

FORMAT = 1
#: A checkpoint holds latents and a little solver history; a file this large is not one of ours.
MAX_CHECKPOINT_BYTES = 512 * 1024 * 1024
MAX_HEADER_BYTES = 1024 * 1024


def _digest(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def dump(state: StepState, fingerprint: str) -> bytes:
    """Serialize on the calling thread (tensors are copied to CPU here, so the job may go on at once).

    Memory layouts are kept too: img2img latents are channels-last (they come from the VAE encoder), and a
    convolution over another layout of the same values rounds differently.
    """
    tensors = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in state.tensors.items()}
    strides = {name: list(t.stride()) for name, t in state.tensors.items() if not t.is_contiguous()}
    header = {"format": FORMAT, "step": state.step, "fingerprint": fingerprint, "values": state.values,
              "strides": strides}
    metadata = {"spotgen": json.dumps(header, sort_keys=True), "digest": _digest(header, tensors)}
    return save_tensors(tensors, metadata=metadata)


def _metadata(data: bytes) -> dict[str, str]:
    if len(data) < 8:
        raise CheckpointError("the file is too short to be a safetensors file")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(MAX_HEADER_BYTES, len(data) - 8):
        raise CheckpointError("the safetensors header is larger than the file allows")
    try:
        header = json.loads(data[8 : 8 + size])
        metadata = header.get("__metadata__") or {}
    except (ValueError, AttributeError):
        raise CheckpointError("the safetensors header is not valid JSON") from None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError("the safetensors metadata is malformed")
    return metadata


def load(data: bytes, fingerprint: str) -> StepState:
    """The state saved in ``data`` if it is an intact checkpoint of the job with ``fingerprint``."""
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"the file is larger than {MAX_CHECKPOINT_BYTES} bytes")
    metadata = _metadata(data)
    try:
        header = json.loads(metadata["spotgen"])
        digest = metadata["digest"]
    except (KeyError, ValueError):
        raise CheckpointError("not a spotgen checkpoint (no header)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"unknown checkpoint format {header.get('format') if isinstance(header, dict) else None}")
    if header.get("fingerprint") != fingerprint:
        raise CheckpointError("it was made for another job, or for other inputs, model or seed")
    step, values = header.get("step"), header.get("values")
    if not isinstance(step, int) or step < 0 or not isinstance(values, dict):
        raise CheckpointError("the header has no valid step and values")
    try:
        tensors = load_tensors(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for bad files
        raise CheckpointError(f"the tensors cannot be read: {exc}") from None
    if _digest(header, tensors) != digest:
        raise CheckpointError("the digest does not match: the file was altered or damaged")
    for name, stride in (header.get("strides") or {}).items():
        tensors[name] = _with_stride(tensors.get(name), stride, name)
    return StepState(step=step, tensors=tensors, values=values)


def _with_stride(t: torch.Tensor | None, stride: Any, name: str) -> torch.Tensor:
    """``t`` laid out with ``stride``, which must be a dense layout of its shape (a permutation of dims)."""
    if t is None or not isinstance(stride, list) or len(stride) != t.dim():
        raise CheckpointError(f"the checkpoint has a bad memory layout for {name}")
    expected = 1
    for size, step in sorted(zip(t.shape, stride, strict=True), key=lambda pair: pair[1]):
        if size != 1 and step != expected:
            raise CheckpointError(f"the checkpoint has a bad memory layout for {name}")
        expected *= size
    out = torch.empty_strided(tuple(t.shape), tuple(stride), dtype=t.dtype)
    out.copy_(t)
    return out


class Saver(LatestWins[bytes]):
    """Uploads checkpoints of one job in order, off the denoising loop; a newer one replaces one not yet sent.

    ``save(..., wait=True)`` (an interruption) returns once that checkpoint is stored; periodic ones do
    not wait, so the GPU keeps going while S3 is written. ``close`` drains, so a checkpoint deleted after
    the job ends cannot be recreated by a late upload.
    """

    def __init__(self, put: Callable[[bytes], None]) -> None:
        super().__init__(put, "checkpoint upload")

    def save(self, data: bytes, wait: bool = False) -> bool:
        return self.submit(data, wait)
