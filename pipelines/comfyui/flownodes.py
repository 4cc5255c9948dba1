"""Flux's and SD 3.5's nodes: UNETLoader, CLIPLoader, DualCLIPLoader, VAELoader (``flowloaders``),
ModelSamplingSD3/Flux (``flowloaders``), FluxGuidance and EmptySD3LatentImage (``flowtext``), and the
custom-sampling set: SamplerCustomAdvanced, RandomNoise, KSamplerSelect, BasicScheduler, BasicGuider, CFGGuider
(``customsampling``).

``CLIPTextEncode`` is here too: the same class encodes a flow model's CLIP (``flowtext``) and hands any other to the
core node unchanged, since ComfyUI's Flux and SD 3.5 graphs encode their prompts with it.

``NODES``: the classes this area runs (``executor.node_table`` merges it; ``runtime.contract.comfy.table.RUNS``
lists the same names for the API).
"""

from __future__ import annotations

from pipelines.comfyui import customsampling, flowloaders, flowtext
from pipelines.comfyui.registry import Node

NODES: dict[str, Node] = {
    "UNETLoader": Node(flowloaders.unet_loader),
    "CLIPLoader": Node(flowloaders.clip_loader),
    "DualCLIPLoader": Node(flowloaders.dual_clip_loader),
    "VAELoader": Node(flowloaders.vae_loader),
    "ModelSamplingSD3": Node(flowloaders.model_sampling_sd3),
    "ModelSamplingFlux": Node(flowloaders.model_sampling_flux),
    "CLIPTextEncode": Node(flowtext.clip_text_encode),
    "FluxGuidance": Node(flowtext.flux_guidance),
    "EmptySD3LatentImage": Node(flowtext.empty_sd3_latent_image),
    "RandomNoise": Node(customsampling.random_noise),
    "KSamplerSelect": Node(customsampling.ksampler_select),
    "BasicScheduler": Node(customsampling.basic_scheduler),
    "BasicGuider": Node(customsampling.basic_guider),
    "CFGGuider": Node(customsampling.cfg_guider),
    "SamplerCustomAdvanced": Node(customsampling.sampler_custom_advanced, plan=customsampling.plan),
}
