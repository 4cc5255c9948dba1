"""Stable Diffusion 3.5 (large, medium, large turbo): an MMDiT transformer with CLIP-L, CLIP-G and T5.

Classifier-free guidance as SD's (``guidance_scale``, 4.5 by default); turbo (catalog ``variant: turbo``) is
timestep-distilled and runs without it. 3.5 medium's skip-layer guidance (``inputs.skip_layer_guidance``) is
diffusers' ``skip_guidance_layers``: the layers must exist in the model's transformer, and only diffusers'
text-to-image class takes it (other tasks refuse it, naming the field).

ControlNet units run on text-to-image only: diffusers has no SD3 ControlNet class for img2img, and its "inpainting"
one is another kind of model (a ControlNet that itself inpaints, taking the image and mask as its control). Its
text-to-image class encodes the control image with the VAE's ``sample()`` from torch's global generator, so
``SeededControlNet`` runs it with that generator seeded from the job's seed: the same seed gives the same image,
and a resumed run the same values (but, the draw being one for the whole batch, the first of two images is not the
image of a job of one, as it is everywhere else). Its img2img class encodes image i of a batch with generator i but
never repeats a single input image for ``num_images``, as SD's does: ``BatchedImg2Img`` repeats it first.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from diffusers import (
    DiffusionPipeline,
    SD3ControlNetModel,
    StableDiffusion3ControlNetPipeline,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3InpaintPipeline,
    StableDiffusion3Pipeline,
)
from diffusers.models.controlnets.controlnet_sd3 import SD3MultiControlNetModel

from pipelines import sd3prompts
from pipelines.families.base import StepConditioning, require
from pipelines.families.flow import FlowMatching
from runtime.contract import ContractError

if TYPE_CHECKING:
    from pipelines.common import Prepared
    from runtime.plugins import RunContext


class SeededControlNet(StableDiffusion3ControlNetPipeline):
    """diffusers' SD3 ControlNet class with torch's global generator seeded from the run's (module docstring)."""

    @functools.wraps(StableDiffusion3ControlNetPipeline.__call__)  # its signature: what a call may pass is read there
    def __call__(self, *args: Any, generator: Any = None, **kwargs: Any) -> Any:
        first = generator[0] if isinstance(generator, list) else generator
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):  # the process's own generators are left as they were
            torch.manual_seed(first.initial_seed() if first is not None else 0)
            return super().__call__(*args, generator=generator, **kwargs)


class BatchedImg2Img(StableDiffusion3Img2ImgPipeline):
    """diffusers' SD3 img2img class with one input image repeated for each image of the job (module docstring)."""

    def prepare_latents(self, image: Any, timestep: Any, batch_size: int, num_images_per_prompt: int, dtype: Any,
                        device: Any, generator: Any = None) -> Any:
        images = len(generator) if isinstance(generator, list) else 0
        if images > image.shape[0] and images % image.shape[0] == 0:
            image = torch.cat([image] * (images // image.shape[0]), dim=0)
        return super().prepare_latents(image, timestep, batch_size, num_images_per_prompt, dtype, device, generator)


class StableDiffusion3(FlowMatching):
    names = ("sd3",)
    base_class = StableDiffusion3Pipeline
    tasks: ClassVar[dict[str, type[DiffusionPipeline]]] = {
        "txt2img": StableDiffusion3Pipeline, "img2img": BatchedImg2Img,
        "inpaint": StableDiffusion3InpaintPipeline}
    control_tasks: ClassVar[dict[str, type[DiffusionPipeline]]] = {"txt2img": SeededControlNet}
    controlnet_class = SD3ControlNetModel
    sequence_length = 256  # diffusers' default for SD3; 3.5 was trained with 256 T5 tokens

    def multi_controlnet(self, nets: Any) -> Any:
        return SD3MultiControlNetModel(list(nets))

    def load(self, store: Any, model_id: str) -> DiffusionPipeline:
        # the forms of docs/models.md "Flux and SD 3.5 on 24 GB GPUs"; diffusers converts SD 3.5's original layout
        from diffusers import SD3Transformer2DModel
        from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

        from pipelines import flowload

        return flowload.load(self, store, model_id, SD3Transformer2DModel,
                             lambda state: convert_sd3_transformer_checkpoint_to_diffusers(dict(state)))

    def encode(self, pipe: DiffusionPipeline, job: Prepared,
               ctx: RunContext) -> tuple[dict[str, Any], StepConditioning | None]:
        """WebUI's weighting on the CLIP encoders' tokens, the text stripped for T5 (``pipelines.sd3prompts``)."""
        inputs = job.inputs
        plain = super().encode(pipe, job, ctx)[0]  # the stripped texts, refusals of prompt editing, T5's length
        texts = {"prompt": (inputs.prompt, plain["prompt"])}
        if "negative_prompt" in plain:
            texts["negative_prompt"] = (inputs.negative_prompt, plain["negative_prompt"])
        with torch.inference_mode():
            return sd3prompts.encode(pipe, texts, num_images=inputs.num_images,
                                     max_sequence_length=plain["max_sequence_length"]), None

    def call_args(self, pipe: DiffusionPipeline, inputs: Any) -> dict[str, Any]:
        args: dict[str, Any] = {"guidance_scale": inputs.guidance_scale}
        slg = inputs.skip_layer_guidance
        if slg is not None:
            layers = pipe.transformer.config.num_layers  # type: ignore[attr-defined]
            if max(slg.layers) >= layers:
                raise ContractError("invalid_field", f"inputs.skip_layer_guidance.layers: this model's transformer has "
                                    f"{layers} layers (0 to {layers - 1}); {max(slg.layers)} is not one of them",
                                    "inputs.skip_layer_guidance.layers")
            args |= {"skip_guidance_layers": slg.layers, "skip_layer_guidance_scale": slg.scale,
                     "skip_layer_guidance_start": slg.start, "skip_layer_guidance_stop": slg.stop}
            require(pipe, args, "inputs.skip_layer_guidance", "skip_guidance_layers")
        return args


FAMILY = StableDiffusion3()
