"""The inputs of the built-in pipelines: limits, samplers, model ids and image references.

A plugin's inputs are its own pydantic model (``runtime.plugins``); these are the ones the API can check in
full before a job is queued.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from runtime.contract.images import ImageRefError, check_ref

MAX_SIDE = 2048
MAX_PIXELS = 1536 * 1536
MAX_STEPS = 150
MAX_IMAGES = 8
MAX_GUIDANCE = 30.0
MAX_PROMPT_CHARS = 2000

#: Scheduler names a request may ask for; the worker maps each to a diffusers scheduler class.
SCHEDULERS = ("ddim", "euler", "euler_a", "dpmpp_2m", "unipc", "pndm", "lms")
Scheduler = Literal["ddim", "euler", "euler_a", "dpmpp_2m", "unipc", "pndm", "lms"]
BUILTIN_PIPELINES = ("txt2img", "img2img", "controlnet")

MODEL_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def _model_id(value: str) -> str:
    if "/" in value or "\\" in value or ".." in value or value.startswith("."):
        raise ValueError("a model id names a catalog entry, not a path")
    if not MODEL_ID_RE.match(value):
        raise ValueError("a model id is 1-64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter "
                         "or digit")
    return value


ModelId = Annotated[str, AfterValidator(_model_id)]


def _image_ref(value: str, info: ValidationInfo) -> str:
    bucket = (info.context or {}).get("input_bucket")
    try:
        return check_ref(value, bucket)
    except ImageRefError as exc:
        raise ValueError(str(exc)) from None


ImageRef = Annotated[str, Field(min_length=1), AfterValidator(_image_ref)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GenerationInputs(Strict):
    """Inputs every built-in diffusers pipeline takes."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    width: int = Field(512, ge=8, le=MAX_SIDE)
    height: int = Field(512, ge=8, le=MAX_SIDE)
    steps: int = Field(30, ge=1, le=MAX_STEPS)
    guidance_scale: float = Field(7.5, ge=0.0, le=MAX_GUIDANCE)
    seed: int | None = Field(None, ge=0, lt=2**32)
    scheduler: Scheduler = "euler"
    num_images: int = Field(1, ge=1, le=MAX_IMAGES)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be a multiple of 8")
        return value

    @model_validator(mode="after")
    def _pixel_budget(self) -> GenerationInputs:
        if self.width * self.height > MAX_PIXELS:
            raise ValueError(f"width x height is {self.width * self.height} pixels, above the budget of "
                             f"{MAX_PIXELS}")
        return self


class Txt2ImgInputs(GenerationInputs):
    pass


class Img2ImgInputs(GenerationInputs):
    image: ImageRef
    strength: float = Field(0.75, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _runs_a_step(self) -> Img2ImgInputs:
        # img2img denoises int(steps * strength) steps; zero steps is an error deep inside diffusers.
        if int(self.steps * self.strength) < 1:
            raise ValueError(f"steps x strength must be at least 1 (it is {self.steps} x {self.strength})")
        return self


class ControlNetInputs(GenerationInputs):
    control_image: ImageRef
    controlnet: ModelId
    controlnet_conditioning_scale: float = Field(1.0, ge=0.0, le=2.0)


BUILTIN_INPUTS: dict[str, type[GenerationInputs]] = {
    "txt2img": Txt2ImgInputs,
    "img2img": Img2ImgInputs,
    "controlnet": ControlNetInputs,
}
#: Fields of built-in inputs that hold image references (moved to S3 by the submit Lambda).
IMAGE_FIELDS = ("image", "control_image")
