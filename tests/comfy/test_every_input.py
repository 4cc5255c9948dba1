"""Every input of every node spotgen runs changes the result, or is listed with the reason it does not (issue 30).

The inputs are enumerated from the API's declarations (``runtime.contract.comfy.table``: every input of each class
in ``RUNS``), so a node or an input added later without a case fails here, naming it. Each is in one table:

- ``CHANGES``: a base graph (ComfyUI's exported workflows, made tiny as the other comfy modules make them) and one
  edit of that input to another valid value, or of a link to another source of the same type; the edited graph's
  output bytes must differ from the base's.
- ``NO_PIXELS``: inputs that by design do not change pixels; where an edit can show it, ``SAME`` holds it and the
  test asserts the very same bytes, so the reason is checked too.
- ``FIXED``: inputs with no other valid value to edit in isolation here, each with why.

``REFUSED`` checks the reasons of inputs that cannot change alone (an encoder type only one family takes, the one
SD 1.x ControlNet, a Flux or SD 3.5 loader's name that must be its UNETLoader's): another value is refused naming
the input (or the sampler that finds it wrong), so it is read. Each base runs once per module (``outputs``)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from runtime.contract import ContractError
from runtime.contract.comfy.table import RUNS, all_nodes
from runtime.models.store import ModelStore
from tests.comfy.runner import PAINTED, PHOTO, default_graph, photos, run, workflow
from tests.comfy.test_advanced_graphs import refiner_graph
from tests.comfy.test_control_graphs import control_graph
from tests.comfy.test_flow_graphs import custom_default_graph, flux_graph, sd3_graph
from tests.comfy.test_image_graphs import inpaint_graph, noise_mask_graph
from tests.comfy.test_interpreter import hires_graph
from tests.comfy.test_upscale_graphs import upscale_graph
from tests.pipelines.harness import BUCKET, Harness, png

Case = tuple[str, dict[str, Any]]  # (base, {"<node>.<input>": value, "<new node>": node})
CASE_ID = "{0[0]}.{0[1]}".format
Outputs = Callable[[str, dict[str, Any]], list[bytes]]  # (base, edits) -> the edited graph's PNGs


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def lora_only(model: list[Any], lora: str) -> dict[str, Any]:
    return node("LoraLoaderModelOnly", model=model, lora_name=lora, strength_model=1.0)


def _edit(graph: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    graph = copy.deepcopy(graph)
    for key, value in edits.items():
        if "." in key:
            node_id, name = key.split(".", 1)
            graph[node_id]["inputs"][name] = value
        else:
            graph[key] = value
    return graph


def _images_graph() -> dict[str, Any]:
    """The image and latent nodes without a sampler (a few milliseconds a run): the photo resized to another
    aspect ratio, scaled and inverted into a preview; and encoded, its latents resized to another aspect ratio,
    decoded and saved."""
    return {
        "1": node("CheckpointLoaderSimple", ckpt_name="tiny-sd"), "2": node("LoadImage", image=PHOTO),
        "3": node("ImageScale", image=["2", 0], upscale_method="nearest-exact", width=48, height=40, crop="disabled"),
        "4": node("ImageScaleBy", image=["3", 0], upscale_method="lanczos", scale_by=0.5),
        "5": node("ImageInvert", image=["4", 0]), "6": node("PreviewImage", images=["5", 0]),
        "7": node("VAEEncode", pixels=["2", 0], vae=["1", 2]),
        "8": node("LatentUpscale", samples=["7", 0], upscale_method="bilinear", width=40, height=24, crop="disabled"),
        "9": node("VAEDecode", samples=["8", 0], vae=["1", 2]),
        "10": node("SaveImage", images=["9", 0], filename_prefix="ComfyUI")}


def _extras_graph() -> dict[str, Any]:
    """The default graph with a LoRA on the model only and a combined positive."""
    return _edit(default_graph(), {
        "5.width": 32, "5.height": 32, "3.steps": 1,
        "20": node("LoraLoaderModelOnly", model=["4", 0], lora_name="tiny-lora-sd1", strength_model=0.7),
        "21": node("CLIPTextEncode", text="a red fox", clip=["4", 1]),
        "22": node("ConditioningCombine", conditioning_1=["6", 0], conditioning_2=["21", 0]),
        "3.model": ["20", 0], "3.positive": ["22", 0]})


def _control_apply_graph() -> dict[str, Any]:
    """The ControlNet graph with the old ControlNetApply on the positive alone."""
    return _edit(control_graph(), {
        "11": node("ControlNetApply", conditioning=["6", 0], control_net=["12", 0], image=["13", 0], strength=1.0),
        "3.positive": ["11", 0], "3.negative": ["7", 0], "3.steps": 2, "10.image": EDGES})


def _flux_graph() -> dict[str, Any]:
    return _edit(flux_graph(), {"27.width": 16, "27.height": 16, "30.width": 16, "30.height": 16, "17.steps": 2,
                                "6.text": "a fox"})  # T5 encodes every token of the example's long prompt


def _sd3_graph() -> dict[str, Any]:
    """SD 3.5 by custom sampling with its encoders from a single CLIPLoader (the Flux base has DualCLIPLoader),
    without CFG (BasicGuider), the cheapest: its inputs here are the loaders' and ModelSamplingSD3's."""
    return _edit(sd3_graph(), {"53.width": 16, "53.height": 16, "17.steps": 2,
                               "11": node("CLIPLoader", clip_name="tiny-sd3", type="sd3"),
                               "22": node("BasicGuider", model=["13", 0], conditioning=["6", 0])})


BASES: dict[str, Callable[[], dict[str, Any]]] = {
    "txt2img": lambda: _edit(default_graph(), {"5.width": 32, "5.height": 32, "3.steps": 2}),
    "lora": lambda: _edit(workflow("lora"), {"4.ckpt_name": "tiny-sd", "10.lora_name": "tiny-lora-sd1",
                                             "5.width": 32, "5.height": 32, "3.steps": 1, "3.seed": 1234}),
    "images": _images_graph, "lora_extras": _extras_graph,
    "img2img_mask": lambda: _edit(noise_mask_graph(), {"3.steps": 1}),
    "inpaint": lambda: _edit(inpaint_graph("tiny-sd"), {"3.steps": 1}),
    "hires": lambda: _edit(hires_graph(), {"5.width": 32, "5.height": 32, "3.sampler_name": "euler"}),
    "control": lambda: _edit(control_graph(), {"3.steps": 2, "10.image": EDGES}),
    "control_apply": _control_apply_graph,
    "flux": _flux_graph,
    # the default graph's KSampler as custom-sampling nodes, on SD 1.x: a guider with CFG cheaper than SD 3.5's, and
    # schedules that differ at 2 steps (diffusers' flow-matching Karras and exponential schedules end where the
    # default one does, so at 2 steps on Flux or SD 3.5 they are the default one)
    "sd_custom": lambda: _edit(custom_default_graph(), {"5.width": 32, "5.height": 32, "23.steps": 2,
                                                         "24": node("ConditioningZeroOut", conditioning=["7", 0]),
                                                         "21.negative": ["24", 0]}),
    "sd3": _sd3_graph,
    # on SD 1.x's tiny model, the cheapest (the refiner's own checkpoint is test_checkpoint_variants')
    "refiner": lambda: _edit(refiner_graph("tiny-sd", steps=3, switch=2), {"4.ckpt_name": "tiny-sd", "5.width": 32,
                                                                          "5.height": 32}),
    "upscale": lambda: _edit(upscale_graph(), {"5.width": 32, "5.height": 32, "3.steps": 1}),
}

FLUX_ALL = {"12.unet_name": "tiny-flux-schnell", "11.clip_name1": "tiny-flux-schnell",
            "11.clip_name2": "tiny-flux-schnell", "10.vae_name": "tiny-flux-schnell"}
SD3_ALL = {"12.unet_name": "tiny-sd3-turbo", "11.clip_name": "tiny-sd3-turbo", "10.vae_name": "tiny-sd3-turbo"}
#: The ControlNet graph's source: a box whose edge runs from faint to strong (so Canny's low threshold cuts it
#: somewhere) and a box of one middling contrast (which Canny's high threshold finds or not).
EDGES = f"s3://{BUCKET}/every-input-edges.png"
SDXL = node("CheckpointLoaderSimple", ckpt_name="tiny-sdxl")
BLURRY = node("CLIPTextEncode", text="blurry", clip=["11", 0])  # another text on the Flux graph's encoders

CHANGES: dict[tuple[str, str], Case] = {
    ("CheckpointLoaderSimple", "ckpt_name"): ("txt2img", {"4.ckpt_name": "tiny-sdxl"}),
    ("KSampler", "model"): ("txt2img", {"20": lora_only(["4", 0], "tiny-lora-sd1"), "3.model": ["20", 0]}),
    ("KSampler", "seed"): ("txt2img", {"3.seed": 1235}),
    ("KSampler", "steps"): ("txt2img", {"3.steps": 3}),
    ("KSampler", "cfg"): ("txt2img", {"3.cfg": 4.0}),
    ("KSampler", "sampler_name"): ("txt2img", {"3.sampler_name": "dpmpp_2m"}),
    ("KSampler", "scheduler"): ("txt2img", {"3.scheduler": "sgm_uniform"}),
    ("KSampler", "positive"): ("txt2img", {"3.positive": ["7", 0]}),
    ("KSampler", "negative"): ("txt2img", {"3.negative": ["6", 0]}),
    ("KSampler", "latent_image"): ("txt2img", {"20": node("EmptyLatentImage", width=40, height=32, batch_size=1),
                                               "3.latent_image": ["20", 0]}),
    ("KSampler", "denoise"): ("txt2img", {"3.denoise": 0.5}),
    ("EmptyLatentImage", "width"): ("txt2img", {"5.width": 40}),
    ("EmptyLatentImage", "height"): ("txt2img", {"5.height": 40}),
    ("EmptyLatentImage", "batch_size"): ("txt2img", {"5.batch_size": 2}),
    ("CLIPTextEncode", "text"): ("txt2img", {"6.text": "a red fox in the snow"}),
    ("CLIPTextEncode", "clip"): ("txt2img", {"20": node("CLIPSetLastLayer", clip=["4", 1], stop_at_clip_layer=-2),
                                             "6.clip": ["20", 0]}),
    ("VAEDecode", "samples"): ("images", {"9.samples": ["7", 0]}),
    ("VAEDecode", "vae"): ("images", {"20": SDXL, "9.vae": ["20", 2]}),
    ("SaveImage", "images"): ("images", {"10.images": ["5", 0]}),
    ("PreviewImage", "images"): ("images", {"6.images": ["4", 0]}),
    # LoRAs and CLIP layers (ComfyUI's LoRA example)
    ("LoraLoader", "model"): ("lora", {"20": lora_only(["4", 0], "tiny-lora-sd1-kohya"), "10.model": ["20", 0]}),
    ("LoraLoader", "clip"): ("lora", {"20": node("LoraLoader", model=["4", 0], clip=["4", 1],
                                                 lora_name="tiny-lora-sd1-kohya", strength_model=1.0,
                                                 strength_clip=1.0), "10.clip": ["20", 1]}),
    ("LoraLoader", "lora_name"): ("lora", {"10.lora_name": "tiny-lora-sd1-kohya"}),
    ("LoraLoader", "strength_model"): ("lora", {"10.strength_model": 0.5}),
    ("LoraLoader", "strength_clip"): ("lora", {"10.strength_clip": 0.5}),
    ("CLIPSetLastLayer", "clip"): ("lora", {"11.clip": ["4", 1]}),
    ("CLIPSetLastLayer", "stop_at_clip_layer"): ("lora", {"11.stop_at_clip_layer": -1}),
    # a LoRA on the model only and combined conditionings; then the image and latent nodes (no sampler)
    ("LoraLoaderModelOnly", "model"): ("lora_extras", {"30": lora_only(["4", 0], "tiny-lora-sd1-kohya"),
                                                  "20.model": ["30", 0]}),
    ("LoraLoaderModelOnly", "lora_name"): ("lora_extras", {"20.lora_name": "tiny-lora-sd1-kohya"}),
    ("LoraLoaderModelOnly", "strength_model"): ("lora_extras", {"20.strength_model": 0.3}),
    ("ConditioningCombine", "conditioning_1"): ("lora_extras", {"22.conditioning_1": ["7", 0]}),
    ("ConditioningCombine", "conditioning_2"): ("lora_extras", {"22.conditioning_2": ["7", 0]}),
    ("LoadImage", "image"): ("images", {"2.image": PAINTED}),
    ("VAEEncode", "pixels"): ("images", {"7.pixels": ["3", 0]}),
    ("VAEEncode", "vae"): ("images", {"20": SDXL, "7.vae": ["20", 2]}),
    ("LatentUpscale", "samples"): ("images", {"20": node("EmptyLatentImage", width=32, height=32, batch_size=1),
                                              "8.samples": ["20", 0]}),
    ("LatentUpscale", "upscale_method"): ("images", {"8.upscale_method": "bislerp"}),
    ("LatentUpscale", "width"): ("images", {"8.width": 48}),
    ("LatentUpscale", "height"): ("images", {"8.height": 32}),
    ("LatentUpscale", "crop"): ("images", {"8.crop": "center"}),
    ("ImageScale", "image"): ("images", {"3.image": ["9", 0]}),
    ("ImageScale", "upscale_method"): ("images", {"3.upscale_method": "bicubic"}),
    ("ImageScale", "width"): ("images", {"3.width": 40}),
    ("ImageScale", "height"): ("images", {"3.height": 48}),
    ("ImageScale", "crop"): ("images", {"3.crop": "center"}),
    ("ImageScaleBy", "image"): ("images", {"4.image": ["2", 0]}),
    ("ImageScaleBy", "upscale_method"): ("images", {"4.upscale_method": "nearest-exact"}),
    ("ImageScaleBy", "scale_by"): ("images", {"4.scale_by": 0.75}),
    ("ImageInvert", "image"): ("images", {"5.image": ["3", 0]}),
    ("LatentUpscaleBy", "samples"): ("hires", {"10.samples": ["5", 0]}),
    ("LatentUpscaleBy", "upscale_method"): ("hires", {"10.upscale_method": "bislerp"}),
    ("LatentUpscaleBy", "scale_by"): ("hires", {"10.scale_by": 2.0}),
    # masks into graphs: img2img with SetLatentNoiseMask, ComfyUI's inpainting example
    ("LoadImageMask", "image"): ("img2img_mask", {"15.image": PHOTO}),
    ("LoadImageMask", "channel"): ("img2img_mask", {"15.channel": "red"}),
    ("SetLatentNoiseMask", "samples"): ("img2img_mask", {"20": node("LoadImage", image=PAINTED),
                                                         "21": node("VAEEncode", pixels=["20", 0], vae=["14", 2]),
                                                         "16.samples": ["21", 0]}),
    ("SetLatentNoiseMask", "mask"): ("img2img_mask", {"20": node("LoadImageMask", image=PAINTED, channel="red"),
                                                      "16.mask": ["20", 0]}),
    ("VAEEncodeForInpaint", "pixels"): ("inpaint", {"30": node("ImageInvert", image=["20", 0]),
                                                    "26.pixels": ["30", 0]}),
    ("VAEEncodeForInpaint", "vae"): ("inpaint", {"30": SDXL, "26.vae": ["30", 2]}),
    ("VAEEncodeForInpaint", "mask"): ("inpaint", {"30": node("LoadImageMask", image=PAINTED, channel="red"),
                                                  "26.mask": ["30", 0]}),
    ("VAEEncodeForInpaint", "grow_mask_by"): ("inpaint", {"26.grow_mask_by": 0}),
    # ControlNets (ComfyUI's canny example, and the old apply node)
    ("ControlNetApplyAdvanced", "positive"): ("control", {"11.positive": ["7", 0]}),
    ("ControlNetApplyAdvanced", "negative"): ("control", {"11.negative": ["6", 0]}),
    ("ControlNetApplyAdvanced", "image"): ("control", {"11.image": ["10", 0]}),
    ("ControlNetApplyAdvanced", "strength"): ("control", {"11.strength": 0.5}),
    ("ControlNetApplyAdvanced", "start_percent"): ("control", {"11.start_percent": 0.5}),
    ("ControlNetApplyAdvanced", "end_percent"): ("control", {"11.end_percent": 0.5}),
    ("Canny", "image"): ("control", {"20": node("LoadImage", image=PHOTO), "13.image": ["20", 0]}),
    ("Canny", "low_threshold"): ("control", {"13.low_threshold": 0.1}),
    ("Canny", "high_threshold"): ("control", {"13.high_threshold": 0.5}),
    ("ControlNetApply", "conditioning"): ("control_apply", {"11.conditioning": ["7", 0]}),
    ("ControlNetApply", "image"): ("control_apply", {"11.image": ["10", 0]}),
    ("ControlNetApply", "strength"): ("control_apply", {"11.strength": 0.5}),
    # Flux by custom sampling (ComfyUI's Flux dev example). Its loaders name one catalog model together (alone,
    # another is refused: REFUSED), so each one's case changes them all
    ("UNETLoader", "unet_name"): ("flux", FLUX_ALL),
    ("DualCLIPLoader", "clip_name1"): ("flux", FLUX_ALL),
    ("DualCLIPLoader", "clip_name2"): ("flux", FLUX_ALL),
    ("VAELoader", "vae_name"): ("flux", FLUX_ALL),
    ("FluxGuidance", "conditioning"): ("flux", {"40": BLURRY, "26.conditioning": ["40", 0]}),
    ("FluxGuidance", "guidance"): ("flux", {"26.guidance": 5.0}),
    ("ModelSamplingFlux", "model"): ("flux", {"40": lora_only(["12", 0], "tiny-lora-flux"), "30.model": ["40", 0]}),
    ("ModelSamplingFlux", "max_shift"): ("flux", {"30.max_shift": 2.0}),
    ("ModelSamplingFlux", "base_shift"): ("flux", {"30.base_shift": 1.0}),
    ("ModelSamplingFlux", "width"): ("flux", {"30.width": 1024}),
    ("ModelSamplingFlux", "height"): ("flux", {"30.height": 1024}),
    ("KSamplerSelect", "sampler_name"): ("flux", {"16.sampler_name": "dpmpp_2m"}),
    ("BasicScheduler", "model"): ("flux", {"40": node("ModelSamplingFlux", model=["12", 0], max_shift=2.0,
                                                      base_shift=1.0, width=16, height=16),
                                           "17.model": ["40", 0]}),
    ("BasicScheduler", "scheduler"): ("sd_custom", {"23.scheduler": "sgm_uniform"}),
    ("BasicScheduler", "steps"): ("flux", {"17.steps": 3}),
    ("BasicScheduler", "denoise"): ("flux", {"17.denoise": 0.5}),
    ("BasicGuider", "model"): ("flux", {"40": lora_only(["30", 0], "tiny-lora-flux"), "22.model": ["40", 0]}),
    ("BasicGuider", "conditioning"): ("flux", {"40": BLURRY, "22.conditioning": ["40", 0]}),
    ("RandomNoise", "noise_seed"): ("flux", {"25.noise_seed": 1235}),
    ("SamplerCustomAdvanced", "noise"): ("flux", {"40": node("RandomNoise", noise_seed=99), "13.noise": ["40", 0]}),
    ("SamplerCustomAdvanced", "guider"): ("flux", {"40": BLURRY, "13.guider": ["41", 0], "41": node(
        "CFGGuider", model=["30", 0], positive=["26", 0], negative=["40", 0], cfg=2.0)}),
    ("SamplerCustomAdvanced", "sampler"): ("flux", {"40": node("KSamplerSelect", sampler_name="dpmpp_2m"),
                                                    "13.sampler": ["40", 0]}),
    ("SamplerCustomAdvanced", "sigmas"): ("flux", {"40": node("BasicScheduler", model=["30", 0], scheduler="simple",
                                                              steps=3, denoise=1.0), "13.sigmas": ["40", 0]}),
    ("SamplerCustomAdvanced", "latent_image"): ("flux", {
        "40": node("EmptySD3LatentImage", width=32, height=16, batch_size=1), "13.latent_image": ["40", 0]}),
    ("EmptySD3LatentImage", "width"): ("flux", {"27.width": 32}),
    ("EmptySD3LatentImage", "height"): ("flux", {"27.height": 32}),
    ("EmptySD3LatentImage", "batch_size"): ("flux", {"27.batch_size": 2}),
    # SD 3.5's own nodes; CFGGuider on SD 1.x's custom sampling (sd_custom), cheaper
    ("CLIPLoader", "clip_name"): ("sd3", SD3_ALL),
    ("ModelSamplingSD3", "model"): ("sd3", {"60": lora_only(["12", 0], "tiny-lora-sd3"), "13.model": ["60", 0]}),
    ("ModelSamplingSD3", "shift"): ("sd3", {"13.shift": 1.5}),
    ("CFGGuider", "model"): ("sd_custom", {"30": lora_only(["4", 0], "tiny-lora-sd1"), "21.model": ["30", 0]}),
    ("CFGGuider", "positive"): ("sd_custom", {"21.positive": ["7", 0]}),
    ("CFGGuider", "negative"): ("sd_custom", {"21.negative": ["6", 0]}),
    ("CFGGuider", "cfg"): ("sd_custom", {"21.cfg": 4.0}),
    # KSamplerAdvanced (ComfyUI's SDXL base + refiner example: node 10 adds noise, node 11 does not)
    ("KSamplerAdvanced", "model"): ("refiner", {"20": lora_only(["12", 0], "tiny-lora-sd1"), "11.model": ["20", 0]}),
    ("KSamplerAdvanced", "add_noise"): ("refiner", {"10.add_noise": "disable"}),
    ("KSamplerAdvanced", "noise_seed"): ("refiner", {"10.noise_seed": 4321}),
    ("KSamplerAdvanced", "steps"): ("refiner", {"10.steps": 4}),
    ("KSamplerAdvanced", "cfg"): ("refiner", {"10.cfg": 4.0}),
    ("KSamplerAdvanced", "sampler_name"): ("refiner", {"11.sampler_name": "dpmpp_2m"}),
    ("KSamplerAdvanced", "scheduler"): ("refiner", {"10.scheduler": "karras"}),
    ("KSamplerAdvanced", "positive"): ("refiner", {"10.positive": ["7", 0]}),
    ("KSamplerAdvanced", "negative"): ("refiner", {"10.negative": ["6", 0]}),
    ("KSamplerAdvanced", "latent_image"): ("refiner", {
        "20": node("EmptyLatentImage", width=40, height=32, batch_size=1), "10.latent_image": ["20", 0]}),
    ("KSamplerAdvanced", "start_at_step"): ("refiner", {"10.start_at_step": 1}),
    ("KSamplerAdvanced", "end_at_step"): ("refiner", {"10.end_at_step": 1}),
    ("KSamplerAdvanced", "return_with_leftover_noise"): ("refiner", {"10.return_with_leftover_noise": "disable"}),
    # upscale models
    ("UpscaleModelLoader", "model_name"): ("upscale", {"10.model_name": "tiny-compact"}),
    ("ImageUpscaleWithModel", "upscale_model"): ("upscale", {
        "20": node("UpscaleModelLoader", model_name="tiny-compact"), "11.upscale_model": ["20", 0]}),
    ("ImageUpscaleWithModel", "image"): ("upscale", {"20": node("ImageInvert", image=["8", 0]), "11.image": ["20", 0]}),
}

NO_PIXELS: dict[tuple[str, str], str] = {
    ("SaveImage", "filename_prefix"): "names the saved file (its /history and /view entries), not its pixels",
    ("UNETLoader", "weight_dtype"): "not read: the catalog's storage_dtype decides how the weights are stored "
                                    "(pipelines/comfyui/flowloaders.py), on every device",
    ("ControlNetApplyAdvanced", "vae"): "not read: SD's and SDXL's ControlNets take pixels; ComfyUI uses it for "
                                        "ControlNets that take latents, which spotgen does not run in graphs",
    ("ConditioningZeroOut", "conditioning"): "zeroed whatever it holds: only its shape reaches the sampler",
    ("KSamplerAdvanced", "noise_seed"): "only where add_noise is disable and the sampler draws nothing after the "
                                        "start (Euler), as in ComfyUI; it matters otherwise (CHANGES)",
}

#: The edit each NO_PIXELS input is checked with (the same bytes as its base).
SAME: dict[tuple[str, str], Case] = {
    ("SaveImage", "filename_prefix"): ("images", {"10.filename_prefix": "elsewhere/other"}),
    ("UNETLoader", "weight_dtype"): ("flux", {"12.weight_dtype": "fp8_e4m3fn"}),
    ("ControlNetApplyAdvanced", "vae"): ("control", {"11.vae": ["4", 2]}),
    ("ConditioningZeroOut", "conditioning"): ("sd_custom", {"24.conditioning": ["6", 0]}),
    ("KSamplerAdvanced", "noise_seed"): ("refiner", {"11.noise_seed": 5}),
}

FIXED: dict[tuple[str, str], str] = {
    ("DualCLIPLoader", "type"): "one valid value per family (flux's encoders are 'flux', SD 3.5's 'sd3'); another "
                                "is refused naming the input, so there is no other value to run",
    ("CLIPLoader", "type"): "one valid value per family, as DualCLIPLoader's type",
    ("ControlNetLoader", "control_net_name"): "the catalog has one SD 1.x ControlNet (tiny-controlnet); another "
                                              "family's is refused naming the sampler it would control",
    ("ControlNetApplyAdvanced", "control_net"): "the only other CONTROL_NET would be another ControlNetLoader, "
                                                "whose only valid name is this one (ControlNetLoader above)",
    ("ControlNetApply", "control_net"): "as ControlNetApplyAdvanced's control_net",
}

#: Another value of each input that cannot change alone: (base, "<node>.<input>", value, the input refused).
REFUSED: dict[tuple[str, str], tuple[str, str, Any, str]] = {
    ("DualCLIPLoader", "clip_name1"): ("flux", "11.clip_name1", "tiny-flux-schnell", "11.clip_name1"),
    ("DualCLIPLoader", "clip_name2"): ("flux", "11.clip_name2", "tiny-flux-schnell", "11.clip_name2"),
    ("VAELoader", "vae_name"): ("flux", "10.vae_name", "tiny-flux-schnell", "10.vae_name"),
    ("CLIPLoader", "clip_name"): ("sd3", "11.clip_name", "tiny-sd3-turbo", "11.clip_name"),
    ("DualCLIPLoader", "type"): ("flux", "11.type", "sd3", "11.type"),
    ("CLIPLoader", "type"): ("sd3", "11.type", "stable_diffusion", "11.type"),
    # the loader cannot know the model's family: the sampler the control reaches refuses it
    ("ControlNetLoader", "control_net_name"): ("control", "12.control_net_name", "tiny-sdxl-controlnet", "3.positive"),
}


@pytest.fixture(scope="module")
def harness(tiny_models: Path) -> Harness:
    """The tiny models with test_image_graphs' photo and painted-out photo (made alike) and the edges above."""
    made = Harness(ModelStore(tiny_models, "cpu"))
    images = photos()
    edges = np.zeros((48, 64, 3), np.uint8)
    edges[6:22, 6:58] = np.linspace(10, 250, 52, dtype=np.uint8)[None, :, None]
    edges[28:42, 16:48] = 30
    made.images.update({**images, EDGES: Image.fromarray(edges)})
    return made


@pytest.fixture(scope="module")
def outputs(harness: Harness) -> Outputs:
    """A graph's output PNGs by base and edits; each base runs once per module."""
    bases: dict[str, list[bytes]] = {}

    def of(base: str, edits: dict[str, Any]) -> list[bytes]:
        if not edits:
            if base not in bases:
                bases[base] = png(run(harness, BASES[base]()))
            return bases[base]
        return png(run(harness, _edit(BASES[base](), edits)))

    return of


def test_every_input_of_every_node_run_is_in_exactly_one_table() -> None:
    declared = {(name, spec.name) for name in RUNS for spec in all_nodes()[name].inputs}
    tables = {"CHANGES": set(CHANGES), "NO_PIXELS": set(NO_PIXELS) - set(CHANGES), "FIXED": set(FIXED)}
    listed = set().union(*tables.values())
    assert sorted(declared - listed) == [], "inputs with no case and no reason"
    assert sorted(listed - declared) == [], "cases for inputs that are not declared"
    assert sum(map(len, tables.values())) == len(listed), "an input in two tables"
    assert set(SAME) <= set(NO_PIXELS) and {key for key, why in FIXED.items() if "refused" in why} <= set(REFUSED)
    for key, reason in NO_PIXELS.items():  # each reason is checked, or says why it is not
        assert key in SAME or "cannot" in reason, key


@pytest.mark.parametrize("key", sorted(SAME), ids=CASE_ID)
def test_the_input_that_changes_no_pixels_gives_the_same_bytes(outputs: Outputs, key: tuple[str, str]) -> None:
    base, edits = SAME[key]
    assert outputs(base, edits) == outputs(base, {}), f"{key}: {NO_PIXELS[key]}"


@pytest.mark.parametrize("key", sorted(REFUSED), ids=CASE_ID)
def test_another_value_of_an_input_that_cannot_change_alone_is_refused_naming_it(outputs: Outputs,
                                                                                 key: tuple[str, str]) -> None:
    base, edited, value, refused = REFUSED[key]
    with pytest.raises(ContractError) as caught:
        outputs(base, {edited: value})
    assert caught.value.field == "inputs.graph.{}.inputs.{}".format(*refused.split(".")), caught.value


# LoRA cases last (SAME and REFUSED have none): a pipeline a LoRA was loaded into pays to switch it off on each run
@pytest.mark.parametrize("key", sorted(CHANGES, key=lambda k: ("lora" in repr(CHANGES[k]), k)), ids=CASE_ID)
def test_the_input_changes_the_output(outputs: Outputs, key: tuple[str, str]) -> None:
    base, edits = CHANGES[key]
    assert outputs(base, edits) != outputs(base, {}), f"{key} on {base}: {edits}"
