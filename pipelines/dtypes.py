"""The precision models load in: one rule for base models, ControlNets and adapters alike."""

from __future__ import annotations

import torch


def torch_dtype(device: str, name: str | None = None) -> torch.dtype:
    """The catalog entry's ``dtype``; else half precision where it is fast and memory is scarce (GPUs), since
    CPUs are slow or inexact at it."""
    if name is not None:
        return getattr(torch, name)
    return torch.float16 if device.startswith("cuda") else torch.float32
