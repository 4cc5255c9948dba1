"""ComfyUI's API-format workflow graphs run on spotgen's own pipelines and model store (issue 30): an interpreter
of ComfyUI's core nodes, written for spotgen (ComfyUI's own code is GPL and none of it is here).

One concept per module:

- ``pipeline``: ``ComfyUI``, the ``comfyui`` pipeline plugin (``inputs.graph``), which returns the output nodes'
  images;
- ``executor``: the graph evaluated in dependency order, each node's outputs computed once, each sampler node a
  pass of one checkpoint stream (``pipelines.phases``);
- ``values``: what flows along the graph's links (MODEL, CLIP, VAE, CONDITIONING, LATENT, IMAGE);
- ``loaders``, ``text``, ``latents``, ``sampling``, ``images``, ``pixels``: the nodes, by the kind of value they
  make or work on;
- ``samplers``: ComfyUI's sampler and scheduler names on spotgen's sampler table (``pipelines.schedulers``);
- ``combine``: ConditioningCombine's conditionings, their predictions averaged while a sampler runs.
"""

from __future__ import annotations

from pipelines.comfyui.pipeline import ComfyUI

__all__ = ["ComfyUI"]
