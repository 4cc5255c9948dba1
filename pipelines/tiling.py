"""Seamless tiling (WebUI's "Tiling"): a job with ``tiling: true`` runs with every 2-D convolution of the UNet and
the VAE padding *circularly*, so that a convolution at the left edge sees the right edge as its neighbour (and the
top sees the bottom). The image is then computed as if on a torus: its edges continue into each other, and copies
of it laid side by side show no seam. WebUI does the same (it switches ``padding_mode`` of the model's ``Conv2d``
layers between ``"circular"`` and ``"zeros"``); PyTorch's ``Conv2d`` pads by ``padding_mode`` on every call, so the
switch needs no new weights and costs nothing.

The modules are shared by every job of the process (``pipelines.loading``; one job at a time), so the switch is
for one job only: ``circular`` is a context manager that puts back each layer's own padding mode when the job
leaves it, whether it finished, failed or was interrupted (``JobInterrupted`` is an exception like any other).
A job without tiling does not touch the modules at all. Under ``SPOTGEN_COMPILE`` the compiled UNet guards on the
padding mode: the first tiling job compiles once more (as a new size does), and each kind of job then reuses its
own code (checked: the same bytes as uncompiled, for tiling and plain jobs in turn).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from diffusers import DiffusionPipeline
from torch import nn

#: The pipeline's modules whose convolutions wrap around: the denoiser and the VAE (encoder and decoder), as
#: WebUI's tiling does. Text encoders have no 2-D convolutions; ControlNets see the control image as it is.
MODULES = ("unet", "vae")


def convolutions(pipe: DiffusionPipeline) -> list[nn.Conv2d]:
    """Every ``Conv2d`` of the pipeline's UNet and VAE (a LoRA-wrapped layer's base convolution included)."""
    layers: list[nn.Conv2d] = []
    for name in MODULES:
        module = getattr(pipe, name, None)
        if isinstance(module, nn.Module):
            layers += [layer for layer in module.modules() if isinstance(layer, nn.Conv2d)]
    return layers


@contextmanager
def circular(pipe: DiffusionPipeline, enabled: bool) -> Iterator[None]:
    """Within the block, ``pipe``'s UNet and VAE pad circularly if ``enabled``; afterwards, as they were."""
    if not enabled:
        yield
        return
    layers = convolutions(pipe)
    before = [layer.padding_mode for layer in layers]
    try:
        for layer in layers:
            layer.padding_mode = "circular"
        yield
    finally:
        for layer, mode in zip(layers, before, strict=True):
            layer.padding_mode = mode
