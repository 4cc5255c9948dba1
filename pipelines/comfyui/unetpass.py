"""One pass of an SD 1.x/2.x or SDXL UNet, as every SD sampler node runs it (KSampler on each of its classes, on
an inpainting checkpoint, with a noise mask or a ControlNet, KSamplerAdvanced): the model's LoRAs made the active
ones, the combined conditionings averaged (``combine``), and the pass run by ``pipelines.resume.run_resumable``
from the node's seed, so that an interruption resumes at its step, byte-identical. What differs between the
nodes (the diffusers class, its inputs, what is done with the latents after) stays in each node's module.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from pipelines.comfyui import combine, loaders
from pipelines.comfyui.values import Conditioning, Latent, Model
from pipelines.resume import run_resumable
from runtime.plugins import RunContext

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution


@dataclasses.dataclass(frozen=True)
class UnetPass:
    """What a sampler node samples with: its model, both sides' conditionings, its latent, seed and cfg."""

    model: Model
    positive: Conditioning
    negative: Conditioning
    latent: Latent
    seed: int
    cfg: float

    def run(self, ex: Execution, node_id: str, ctx: RunContext, view: Any, steps: int,
            **call: Any) -> torch.Tensor:
        """``steps`` steps of ``view``'s schedule (a ``job_pipeline`` on the model's own modules), its latents out;
        ``call``: the class's own inputs (the prompts' embeddings, image, strength, mask, ControlNet maps ...)."""
        loaders.activate(ctx.models, self.model, self.model.loras, ex.where(node_id, "model"))
        with combine.averaged(self.model.base.unet, self.positive, self.negative, self.latent.batch):
            out = run_resumable(view, dataclasses.replace(ctx, seed=self.seed), num_images=self.latent.batch,
                                num_inference_steps=steps, guidance_scale=self.cfg, output_type="latent", **call)
        return out  # type: ignore[no-any-return]
