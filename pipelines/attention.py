"""Which attention kernel loaded models use: PyTorch's SDPA, or xformers only where it is installed and faster.

PyTorch 2's ``scaled_dot_product_attention`` (diffusers' default) has flash and memory-efficient kernels of
its own, so xformers rarely wins on current GPUs; it is an optional extra of the image
(``--build-arg XFORMERS=<version>``, docs/deploy.md). ``auto`` times both on the shape that dominates Stable
Diffusion at 512 px (the UNet's first self-attention: 4096 tokens, 8 heads of 40) once per process and keeps
the faster; a setting of ``xformers`` insists on it and fails loudly where it cannot run.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import time
from typing import Any

from runtime.models.catalog import ModelError

log = logging.getLogger("spotgen.attention")

CHOICES = ("auto", "sdpa", "xformers")


def xformers_installed() -> bool:
    return importlib.util.find_spec("xformers") is not None


def choose(device: str, setting: str = "auto") -> str:
    """``sdpa`` or ``xformers`` for models loaded on ``device``."""
    if setting not in CHOICES:
        raise ModelError("invalid_attention", f"attention {setting!r} is not one of {', '.join(CHOICES)}")
    if setting == "sdpa":
        return "sdpa"
    cuda = device.startswith("cuda")
    if setting == "xformers":
        if not xformers_installed():
            raise ModelError("attention_unavailable", "SPOTGEN_ATTENTION=xformers, but xformers is not installed "
                             "(build the worker image with --build-arg XFORMERS=<version>, or use auto or sdpa)")
        if not cuda:
            raise ModelError("attention_unavailable", f"SPOTGEN_ATTENTION=xformers needs a CUDA device, not {device!r}")
        return "xformers"
    return "xformers" if cuda and xformers_installed() and _xformers_faster(device) else "sdpa"


def apply(module: Any, kind: str) -> None:
    """Switch a loaded pipeline or model to ``kind`` (SDPA is what diffusers sets up already)."""
    if kind == "xformers":
        module.enable_xformers_memory_efficient_attention()


@functools.cache
def _xformers_faster(device: str, rounds: int = 20) -> bool:
    import torch
    import torch.nn.functional as F  # noqa: N812
    from xformers.ops import memory_efficient_attention

    q, k, v = (torch.randn(2, 4096, 8, 40, device=device, dtype=torch.float16) for _ in range(3))

    def sdpa() -> Any:  # SDPA takes (batch, heads, tokens, dim)
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

    def xformers() -> Any:
        return memory_efficient_attention(q, k, v)

    def seconds(fn: Any) -> float:
        fn()  # warm-up: kernel selection, allocation
        torch.cuda.synchronize(device)
        began = time.perf_counter()
        for _ in range(rounds):
            fn()
        torch.cuda.synchronize(device)
        return time.perf_counter() - began

    try:
        with torch.inference_mode():
            times = {"sdpa": seconds(sdpa), "xformers": seconds(xformers)}
    except Exception as exc:  # noqa: BLE001 - a build for another GPU or torch: xformers cannot run here
        log.warning("xformers is installed but does not run on %s (%s); using PyTorch SDPA", device, exc)
        return False
    log.info("attention on %s: sdpa %.2f ms, xformers %.2f ms per call; using %s", device,
             times["sdpa"] / rounds * 1000, times["xformers"] / rounds * 1000, min(times, key=times.__getitem__))
    return times["xformers"] < times["sdpa"]
