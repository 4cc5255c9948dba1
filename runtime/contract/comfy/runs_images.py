"""The image-input and mask node classes the interpreter runs (``pipelines/comfyui/imagenodes.py``);
``table.RUNS`` joins them to the core set for the API (KSampler with a noise mask is the core KSampler's name)."""

from __future__ import annotations

RUNS_IMAGES: frozenset[str] = frozenset({"LoadImage", "LoadImageMask", "VAEEncodeForInpaint", "SetLatentNoiseMask"})
