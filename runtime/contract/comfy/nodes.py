"""The core ComfyUI nodes spotgen runs, as ComfyUI declares them: the one table that ``check_graph``,
``/object_info`` and docs/comfyui.md's node table are made from.

Inputs carry ComfyUI's names, types, defaults and steps, so that a graph saved by ComfyUI ("Save (API Format)")
reads the same here, and ComfyUI-aware tools that read ``/object_info`` build graphs spotgen runs. Where spotgen runs
less than ComfyUI declares, the table says what spotgen runs instead of what ComfyUI would accept (marked
``# spotgen``): a graph asking for more is then refused at the API, with ComfyUI's own error, before anything is
queued, and ``/object_info`` tells tools the range they can use. The loaders, conditioning, latent and image nodes
are here; the sampling nodes are in ``nodes_sampling``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime.contract.inputs import MAX_GUIDANCE, MAX_IMAGES, MAX_LORA_WEIGHT, MAX_SIDE

#: The types of values a node passes along a link (``[node_id, output_index]``); every other input is a widget.
LINK_TYPES = ("MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "MASK", "CONTROL_NET", "UPSCALE_MODEL",
              "NOISE", "SAMPLER", "SIGMAS", "GUIDER")
#: Widget types that take a value typed in the graph.
VALUE_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
#: ComfyUI's seed range (a 64-bit unsigned integer).
MAX_SEED = 0xFFFFFFFFFFFFFFFF
#: Choice lists that are not fixed: the deployment's catalog (``Names`` fields), the uploaded images, ComfyUI's
#: sampler and scheduler names that spotgen runs (``nodes_sampling``).
MODELS, LORAS, CONTROLNETS, UPSCALERS, IMAGES = "models", "loras", "controlnets", "upscalers", "images"
SAMPLERS, SCHEDULERS = "samplers", "schedulers"
DYNAMIC_CHOICES = (MODELS, LORAS, CONTROLNETS, UPSCALERS, IMAGES, SAMPLERS, SCHEDULERS)


@dataclass(frozen=True)
class Input:
    """One input: ``type`` is a link type, a value type, a fixed tuple of choices, or (``choices``) a list that
    is known only with the deployment. ``options`` is ComfyUI's second element of the input's declaration."""

    name: str
    type: str | tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    optional: bool = False
    #: One of ``DYNAMIC_CHOICES`` for a choice list known only at run time (``type`` is then ``()``).
    choices: str | None = None

    @property
    def is_link(self) -> bool:
        return isinstance(self.type, str) and self.type in LINK_TYPES


@dataclass(frozen=True)
class Node:
    """A node class: ComfyUI's ``INPUT_TYPES``, ``RETURN_TYPES``/``RETURN_NAMES``, ``OUTPUT_NODE``, ``CATEGORY``."""

    name: str
    display_name: str
    category: str
    inputs: tuple[Input, ...]
    outputs: tuple[str, ...] = ()
    output_names: tuple[str, ...] | None = None
    output_node: bool = False
    description: str = ""
    python_module: str = "nodes"
    #: ComfyUI's hidden inputs (the prompt and workflow an output node writes into its PNG).
    hidden: Mapping[str, str] = field(default_factory=dict)
    #: ComfyUI marks the node as superseded (its menu hides it; graphs still run it).
    deprecated: bool = False

    @property
    def names_of_outputs(self) -> tuple[str, ...]:
        return self.output_names if self.output_names is not None else self.outputs

    def input(self, name: str) -> Input | None:
        return next((i for i in self.inputs if i.name == name), None)


def link(name: str, kind: str, optional: bool = False) -> Input:
    return Input(name, kind, optional=optional)


def integer(name: str, default: int, lo: int, hi: int, step: int | None = None, **more: Any) -> Input:
    options: dict[str, Any] = {"default": default, "min": lo, "max": hi}
    if step is not None:
        options["step"] = step
    return Input(name, "INT", {**options, **more})


def number(name: str, default: float, lo: float, hi: float, step: float, **more: Any) -> Input:
    return Input(name, "FLOAT", {"default": default, "min": lo, "max": hi, "step": step, **more})


def choice(name: str, values: tuple[str, ...], **options: Any) -> Input:
    return Input(name, values, options)


def catalog(name: str, kind: str, **options: Any) -> Input:
    return Input(name, (), options, choices=kind)


_SIZE = {"min": 16, "max": MAX_SIDE}  # spotgen: ComfyUI's MAX_RESOLUTION is 16384
_LATENT_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
_IMAGE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
_CROP = ("disabled", "center")
# spotgen: ComfyUI's LoRA strengths run from -100 to 100
_LORA_STRENGTH = {"default": 1.0, "min": -MAX_LORA_WEIGHT, "max": MAX_LORA_WEIGHT, "step": 0.01}

LOADERS = (
    Node("CheckpointLoaderSimple", "Load Checkpoint", "loaders", (catalog("ckpt_name", MODELS),),
         ("MODEL", "CLIP", "VAE"),
         description="Loads a diffusion model checkpoint, diffusion models are used to denoise latents."),
    Node("UNETLoader", "Load Diffusion Model", "advanced/loaders",
         (catalog("unet_name", MODELS),
          choice("weight_dtype", ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"))), ("MODEL",)),
    # spotgen: the families it runs (ComfyUI's list also names stable_cascade, stable_audio, mochi, ltxv...)
    Node("CLIPLoader", "Load CLIP", "advanced/loaders",
         (catalog("clip_name", MODELS), choice("type", ("stable_diffusion", "sd3"))), ("CLIP",)),
    Node("DualCLIPLoader", "DualCLIPLoader", "advanced/loaders",
         (catalog("clip_name1", MODELS), catalog("clip_name2", MODELS), choice("type", ("sdxl", "sd3", "flux"))),
         ("CLIP",)),
    Node("VAELoader", "Load VAE", "loaders", (catalog("vae_name", MODELS),), ("VAE",)),
    Node("LoraLoader", "Load LoRA", "loaders",
         (link("model", "MODEL"), link("clip", "CLIP"), catalog("lora_name", LORAS),
          Input("strength_model", "FLOAT", _LORA_STRENGTH), Input("strength_clip", "FLOAT", _LORA_STRENGTH)),
         ("MODEL", "CLIP"),
         description="LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are "
                     "denoised such as applying styles. Multiple LoRA nodes can be linked together."),
    Node("LoraLoaderModelOnly", "LoraLoaderModelOnly", "loaders",
         (link("model", "MODEL"), catalog("lora_name", LORAS), Input("strength_model", "FLOAT", _LORA_STRENGTH)),
         ("MODEL",)),
    Node("ControlNetLoader", "Load ControlNet Model", "loaders", (catalog("control_net_name", CONTROLNETS),),
         ("CONTROL_NET",)),
    Node("UpscaleModelLoader", "Load Upscale Model", "loaders", (catalog("model_name", UPSCALERS),),
         ("UPSCALE_MODEL",), python_module="comfy_extras.nodes_upscale_model"),
)

CONDITIONING = (
    Node("CLIPTextEncode", "CLIP Text Encode (Prompt)", "conditioning",
         (Input("text", "STRING", {"multiline": True, "dynamicPrompts": True}), link("clip", "CLIP")),
         ("CONDITIONING",),
         description="Encodes a text prompt using a CLIP model into an embedding that can be used to guide the "
                     "diffusion model towards generating specific images."),
    Node("CLIPSetLastLayer", "CLIP Set Last Layer", "conditioning",
         (link("clip", "CLIP"), integer("stop_at_clip_layer", -1, -24, -1, 1)), ("CLIP",)),
    Node("ConditioningCombine", "Conditioning (Combine)", "conditioning",
         (link("conditioning_1", "CONDITIONING"), link("conditioning_2", "CONDITIONING")), ("CONDITIONING",)),
    Node("ConditioningZeroOut", "ConditioningZeroOut", "advanced/conditioning",
         (link("conditioning", "CONDITIONING"),), ("CONDITIONING",)),
    # spotgen: ComfyUI's guidance runs to 100
    Node("FluxGuidance", "FluxGuidance", "advanced/conditioning/flux",
         (link("conditioning", "CONDITIONING"), number("guidance", 3.5, 0.0, MAX_GUIDANCE, 0.1)),
         ("CONDITIONING",), python_module="comfy_extras.nodes_flux"),
    Node("ControlNetApply", "Apply ControlNet (OLD)", "conditioning/controlnet",
         (link("conditioning", "CONDITIONING"), link("control_net", "CONTROL_NET"), link("image", "IMAGE"),
          number("strength", 1.0, 0.0, 10.0, 0.01)), ("CONDITIONING",), deprecated=True),
    Node("ControlNetApplyAdvanced", "Apply ControlNet", "conditioning/controlnet",
         (link("positive", "CONDITIONING"), link("negative", "CONDITIONING"), link("control_net", "CONTROL_NET"),
          link("image", "IMAGE"), number("strength", 1.0, 0.0, 10.0, 0.01),
          number("start_percent", 0.0, 0.0, 1.0, 0.001), number("end_percent", 1.0, 0.0, 1.0, 0.001),
          link("vae", "VAE", optional=True)),
         ("CONDITIONING", "CONDITIONING"), ("positive", "negative")),
)

LATENTS = (
    Node("EmptyLatentImage", "Empty Latent Image", "latent",
         (Input("width", "INT", {"default": 512, **_SIZE, "step": 8}),
          Input("height", "INT", {"default": 512, **_SIZE, "step": 8}),
          integer("batch_size", 1, 1, MAX_IMAGES)),  # spotgen: ComfyUI's batch runs to 4096
         ("LATENT",), description="Create a new batch of empty latent images to be denoised via sampling."),
    Node("EmptySD3LatentImage", "EmptySD3LatentImage", "latent/sd3",
         (Input("width", "INT", {"default": 1024, **_SIZE, "step": 16}),
          Input("height", "INT", {"default": 1024, **_SIZE, "step": 16}),
          integer("batch_size", 1, 1, MAX_IMAGES)),
         ("LATENT",), python_module="comfy_extras.nodes_sd3"),
    Node("LatentUpscale", "Upscale Latent", "latent",
         (link("samples", "LATENT"), choice("upscale_method", _LATENT_METHODS),
          integer("width", 512, 0, MAX_SIDE, 8), integer("height", 512, 0, MAX_SIDE, 8), choice("crop", _CROP)),
         ("LATENT",)),
    Node("LatentUpscaleBy", "Upscale Latent By", "latent",
         (link("samples", "LATENT"), choice("upscale_method", _LATENT_METHODS),
          number("scale_by", 1.5, 0.01, 8.0, 0.01)), ("LATENT",)),
    Node("SetLatentNoiseMask", "Set Latent Noise Mask", "latent/inpaint",
         (link("samples", "LATENT"), link("mask", "MASK")), ("LATENT",)),
    Node("VAEDecode", "VAE Decode", "latent", (link("samples", "LATENT"), link("vae", "VAE")), ("IMAGE",),
         description="Decodes latent images back into pixel space images."),
    Node("VAEEncode", "VAE Encode", "latent", (link("pixels", "IMAGE"), link("vae", "VAE")), ("LATENT",)),
    Node("VAEEncodeForInpaint", "VAE Encode (for Inpainting)", "latent/inpaint",
         (link("pixels", "IMAGE"), link("vae", "VAE"), link("mask", "MASK"), integer("grow_mask_by", 6, 0, 64, 1)),
         ("LATENT",)),
)

_PNG_INFO = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}

IMAGES_ = (
    Node("LoadImage", "Load Image", "image", (catalog("image", IMAGES, image_upload=True),), ("IMAGE", "MASK")),
    Node("LoadImageMask", "Load Image (as Mask)", "mask",
         (catalog("image", IMAGES, image_upload=True), choice("channel", ("alpha", "red", "green", "blue"))),
         ("MASK",)),
    Node("ImageScale", "Upscale Image", "image/upscaling",
         (link("image", "IMAGE"), choice("upscale_method", _IMAGE_METHODS), integer("width", 512, 0, MAX_SIDE, 1),
          integer("height", 512, 0, MAX_SIDE, 1), choice("crop", _CROP)), ("IMAGE",)),
    Node("ImageScaleBy", "Upscale Image By", "image/upscaling",
         (link("image", "IMAGE"), choice("upscale_method", _IMAGE_METHODS), number("scale_by", 1.0, 0.01, 8.0, 0.01)),
         ("IMAGE",)),
    Node("ImageUpscaleWithModel", "Upscale Image (using Model)", "image/upscaling",
         (link("upscale_model", "UPSCALE_MODEL"), link("image", "IMAGE")), ("IMAGE",),
         python_module="comfy_extras.nodes_upscale_model"),
    Node("ImageInvert", "Invert Image", "image", (link("image", "IMAGE"),), ("IMAGE",)),
    Node("Canny", "Canny", "image/preprocessors",
         (link("image", "IMAGE"), number("low_threshold", 0.4, 0.01, 0.99, 0.01),
          number("high_threshold", 0.8, 0.01, 0.99, 0.01)), ("IMAGE",), python_module="comfy_extras.nodes_canny"),
    Node("SaveImage", "Save Image", "image",
         (link("images", "IMAGE"), Input("filename_prefix", "STRING", {"default": "ComfyUI"})), output_node=True,
         description="Saves the input images to your ComfyUI output directory.", hidden=_PNG_INFO),
    Node("PreviewImage", "Preview Image", "image", (link("images", "IMAGE"),), output_node=True,
         description="Saves the input images to your ComfyUI output directory.", hidden=_PNG_INFO),
)
