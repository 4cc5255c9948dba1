"""The built-in pipelines by name, with their inputs: what the API checks in full before a job is queued."""

from __future__ import annotations

from pydantic import BaseModel

from runtime.contract.comfy.inputs import ComfyInputs
from runtime.contract.detect import ControlNetDetectInputs
from runtime.contract.edits import InpaintInputs, UpscaleInputs
from runtime.contract.inputs import ControlNetInputs, Img2ImgInputs, Txt2ImgInputs
from runtime.contract.sdupscale import SdUpscaleInputs

BUILTIN_INPUTS: dict[str, type[BaseModel]] = {
    "txt2img": Txt2ImgInputs,
    "img2img": Img2ImgInputs,
    "controlnet": ControlNetInputs,
    "inpaint": InpaintInputs,
    "upscale": UpscaleInputs,
    "controlnet_detect": ControlNetDetectInputs,
    "sd_upscale": SdUpscaleInputs,
    "comfyui": ComfyInputs,
}
BUILTIN_PIPELINES = tuple(BUILTIN_INPUTS)
#: Fields of built-in inputs that hold image references (moved to S3 by the submit Lambda).
IMAGE_FIELDS = ("image", "control_image", "mask")
#: The catalog kind of a built-in pipeline's job ``model`` (``base`` for the others).
#: ``preprocessor``: no catalog kind; ``controlnet_detect``'s model is ``none`` (``runtime.contract.detect``).
MODEL_KINDS = {"upscale": "upscaler", "controlnet_detect": "preprocessor"}
