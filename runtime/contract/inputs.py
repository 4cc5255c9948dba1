"""The inputs of the built-in pipelines: limits, samplers, model ids and image references.

A plugin's inputs are its own pydantic model (``runtime.plugins``); these are the ones the API can check in
full before a job is queued.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from runtime.contract.formats import OutputOptions
from runtime.contract.images import ImageRefError, check_ref
from runtime.contract.preprocessors import PREPROCESSORS, WEIGHT_FREE
from runtime.contract.promptsyntax import check as check_prompt_syntax

MIN_SIDE = 8
MAX_SIDE = 2048
MAX_STEPS = 150
#: The longest schedule a pass may denoise part of: the models' training schedule (1000 timesteps).
MAX_SCHEDULE = 1000
MAX_IMAGES = 8
MAX_GUIDANCE = 30.0
MAX_PROMPT_CHARS = 2000
MAX_LORAS = 5
MAX_LORA_WEIGHT = 2.0
MAX_SHIFT = 20.0
MAX_T5_TOKENS = 512

#: Samplers a request may ask for, by the names SD WebUI users know (docs/api.md has the table); the worker maps
#: each, with a schedule, to a diffusers scheduler (``pipelines/schedulers.py``).
Scheduler = Literal["euler", "euler_a", "heun", "lms", "dpm2", "dpm2_a", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde",
                    "ddim", "pndm", "unipc", "lcm"]
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)
#: Each sampler's SD WebUI (AUTOMATIC1111) display name: what WebUI clients send (``runtime.contract.webui``)
#: and what logs and docs call it (``pipelines/schedulers.py``).
WEBUI_SAMPLERS: dict[str, str] = {
    "euler": "Euler", "euler_a": "Euler a", "heun": "Heun", "lms": "LMS", "dpm2": "DPM2", "dpm2_a": "DPM2 a",
    "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_sde": "DPM++ 2M SDE", "dpmpp_sde": "DPM++ SDE", "ddim": "DDIM", "pndm": "PLMS",
    "unipc": "UniPC", "lcm": "LCM",
}
#: Sigma schedules: the sampler's own ("default"), Karras et al.'s, exponential, or SGM's uniform timesteps.
Schedule = Literal["default", "karras", "exponential", "sgm_uniform"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)
#: LCM samples a subset of the timesteps it was distilled on (diffusers' ``original_inference_steps``, 50), so it
#: runs at most that many steps (times ``strength`` for img2img).
LCM_MAX_STEPS = 50
#: The schedules each sampler can run with; any other pair is refused, naming ``schedule``.
SAMPLER_SCHEDULES: dict[str, tuple[str, ...]] = {
    **{name: SCHEDULES for name in ("euler", "heun", "lms", "dpm2", "dpm2_a", "dpmpp_2m", "dpmpp_2m_sde",
                                    "dpmpp_sde")},
    "euler_a": ("default", "sgm_uniform"),
    "unipc": ("default", "karras", "exponential", "sgm_uniform"),
    "ddim": ("default", "sgm_uniform"),
    "pndm": ("default", "sgm_uniform"),
    "lcm": ("default",),  # diffusers' LCM picks its own timesteps (it ignores timestep_spacing)
}

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


class LoraRef(Strict):
    """One LoRA adapter applied to a job, by catalog id, at ``weight`` (negative weights invert it)."""

    id: ModelId
    weight: float = Field(1.0, ge=-MAX_LORA_WEIGHT, le=MAX_LORA_WEIGHT)


Size = tuple[Annotated[int, Field(ge=1, le=4 * MAX_SIDE)], Annotated[int, Field(ge=1, le=4 * MAX_SIDE)]]
Offset = tuple[Annotated[int, Field(ge=0, le=4 * MAX_SIDE)], Annotated[int, Field(ge=0, le=4 * MAX_SIDE)]]


MAX_CONTROLNETS = 4
MAX_IP_ADAPTERS = 2


def _preprocessor(value: str) -> str:
    if value not in PREPROCESSORS:
        raise ValueError(f"{value!r} is not a preprocessor; the weight-free ones are {', '.join(WEIGHT_FREE)} "
                         "(docs/api.md lists the others)")
    return value


class ControlUnit(Strict):
    """One ControlNet unit, as a unit of WebUI's ControlNet extension: the ControlNet (a catalog id), its image
    (a ready map, or a picture the ``preprocessor`` turns into one), its weight and when in the denoising it
    guides (``start``/``end``, fractions of the steps)."""

    id: ModelId
    image: ImageRef
    scale: float = Field(1.0, ge=0.0, le=2.0)
    start: float = Field(0.0, ge=0.0, le=1.0)
    end: float = Field(1.0, ge=0.0, le=1.0)
    preprocessor: Annotated[str, AfterValidator(_preprocessor)] = "none"
    #: The preprocessor's parameters, as WebUI's ``threshold_a``/``threshold_b`` (their meaning is the module's;
    #: None: its default) and ``processor_res`` (the side the preprocessor works at).
    threshold_a: float | None = Field(None, ge=-1024.0, le=1024.0)
    threshold_b: float | None = Field(None, ge=-1024.0, le=1024.0)
    resolution: int = Field(512, ge=64, le=MAX_SIDE)

    @field_validator("end")
    @classmethod
    def _end_after_start(cls, value: float, info: ValidationInfo) -> float:
        start = info.data.get("start")
        if start is not None and value <= start:
            raise ValueError(f"must be above start ({start})")
        return value


class IpAdapterRef(Strict):
    """One IP-Adapter: a catalog id (``kind: ip_adapter``), the image it takes style or subject from, its weight."""

    id: ModelId
    image: ImageRef
    scale: float = Field(1.0, ge=0.0, le=2.0)


class SkipLayerGuidance(Strict):
    """SD 3.5 medium's skip-layer guidance (diffusers' ``skip_guidance_layers`` and friends): between ``start`` and
    ``stop`` of the steps, a pass without ``layers`` of the transformer steers away from what those layers add."""

    layers: list[int] = Field(default_factory=lambda: [7, 8, 9], min_length=1, max_length=16)
    scale: float = Field(2.8, ge=0.0, le=10.0)
    start: float = Field(0.01, ge=0.0, lt=1.0)
    stop: float = Field(0.2, gt=0.0, le=1.0)


class GenerationInputs(OutputOptions):
    """Inputs every built-in diffusers pipeline takes. ``width``/``height`` left out mean the model family's
    default size (``runtime.contract.families``); ``format``, ``quality`` and ``lossless`` (``OutputOptions``)
    say how the runtime encodes the images."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    width: int | None = Field(None, ge=MIN_SIDE, le=MAX_SIDE)
    height: int | None = Field(None, ge=MIN_SIDE, le=MAX_SIDE)
    steps: int = Field(30, ge=1, le=MAX_STEPS)
    #: Classifier-free guidance (1: off). Left out: the family's default (7.5 for SD and SDXL, 1 for Flux, whose
    #: ``guidance`` is distilled into the model, 4.5 for SD 3.5; none for schnell and turbo models).
    guidance_scale: float | None = Field(None, ge=0.0, le=MAX_GUIDANCE)
    #: Flux dev's distilled guidance (Forge's "Distilled CFG Scale"); left out, 3.5. Other families refuse it.
    guidance: float | None = Field(None, ge=0.0, le=MAX_GUIDANCE)
    #: Flow-matching models (Flux, SD 3.5): the sigma shift (Forge's "Shift"); left out, the model's own (Flux dev
    #: shifts by the image's size). Other families refuse it.
    shift: float | None = Field(None, gt=0.0, le=MAX_SHIFT)
    #: How many T5 tokens of the prompt condition a Flux or SD 3.5 model (left out: 512, schnell 256).
    max_sequence_length: int | None = Field(None, ge=1, le=MAX_T5_TOKENS)
    #: SD 3.5 (medium)'s skip-layer guidance; off when left out.
    skip_layer_guidance: SkipLayerGuidance | None = None
    seed: int | None = Field(None, ge=0, lt=2**32)
    scheduler: Scheduler = "euler"
    schedule: Schedule = "default"
    num_images: int = Field(1, ge=1, le=MAX_IMAGES)
    #: Which CLIP layer conditions the image, counted from the last (1 = the model's own; 2 = "clip skip 2").
    clip_skip: int = Field(1, ge=1, le=12)
    loras: list[LoraRef] = Field(default_factory=list, max_length=MAX_LORAS)
    #: SDXL micro-conditioning, as (height, width) like diffusers: defaults to the output size and (0, 0).
    original_size: Size | None = None
    target_size: Size | None = None
    crops_coords_top_left: Offset | None = None
    #: ControlNet units (up to 4), on every pipeline (the ``controlnet`` pipeline's own fields are one more).
    controlnets: list[ControlUnit] = Field(default_factory=list, max_length=MAX_CONTROLNETS)
    ip_adapters: list[IpAdapterRef] = Field(default_factory=list, max_length=MAX_IP_ADAPTERS)
    #: Seamless tiling: the left and right edges continue into each other, and so do the top and bottom.
    tiling: bool = False

    _prompt_syntax = field_validator("prompt", "negative_prompt")(check_prompt_syntax)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError("must be a multiple of 8")
        return value

    @field_validator("scheduler")
    @classmethod
    def _lcm_steps(cls, value: str, info: ValidationInfo) -> str:
        steps = info.data.get("steps")
        if value == "lcm" and isinstance(steps, int) and steps > LCM_MAX_STEPS:
            raise ValueError(f"sampler 'lcm' runs at most {LCM_MAX_STEPS} steps (the schedule it was distilled on); "
                             f"this job asks for {steps}: lower steps or pick another sampler")
        return value

    @field_validator("schedule")
    @classmethod
    def _sampler_takes_schedule(cls, value: str, info: ValidationInfo) -> str:
        sampler = info.data.get("scheduler")  # absent when the sampler itself was invalid
        if sampler is not None and value not in SAMPLER_SCHEDULES[sampler]:
            raise ValueError(f"sampler {sampler!r} does not take schedule {value!r}; it takes "
                             f"{', '.join(SAMPLER_SCHEDULES[sampler])}")
        return value

    @field_validator("loras")
    @classmethod
    def _distinct_loras(cls, value: list[LoraRef]) -> list[LoraRef]:
        ids = [ref.id for ref in value]
        if len(set(ids)) != len(ids):
            raise ValueError("each LoRA may be listed once; give one weight per adapter")
        return value



#: Hires fix's latent upscalers, by the names SD WebUI lists ("Latent", "Latent (nearest-exact)", ...): the first
#: pass's latents are resized (``torch.nn.functional.interpolate`` in that mode) instead of its pixels.
LatentUpscaler = Literal["latent", "latent_antialiased", "latent_bicubic", "latent_bicubic_antialiased",
                         "latent_nearest", "latent_nearest_exact"]
LATENT_UPSCALERS: tuple[str, ...] = get_args(LatentUpscaler)
#: Pixel resampling without a model (Pillow's filters); any other upscaler name is a catalog id (``kind: upscaler``).
PIXEL_UPSCALERS = ("lanczos", "nearest")
HIRES_MAX_SCALE = 4.0


def _upscaler(value: str) -> str:
    if value in LATENT_UPSCALERS or value in PIXEL_UPSCALERS:
        return value
    try:
        return _model_id(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an upscaler: name one of {', '.join(LATENT_UPSCALERS + PIXEL_UPSCALERS)} "
                         "or the catalog id of an upscaler model") from None


Upscaler = Annotated[str, AfterValidator(_upscaler)]


class Hires(Strict):
    """Hires fix: generate at the job's size, upscale (``upscaler``), then denoise again at the target size.

    The target is ``scale`` times the first pass (2 when nothing is given), or ``width`` x ``height``; one given
    alone keeps the first pass's aspect ratio, rounded down to a multiple of 8. The second pass runs
    ``steps`` x ``denoising_strength`` steps (``steps``: the first pass's when left out), as img2img does: the
    schedule may be longer than ``MAX_STEPS`` (WebUI stretches it by the strength), the steps it runs may not."""

    scale: float | None = Field(None, ge=1.0, le=HIRES_MAX_SCALE)
    width: int | None = Field(None, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8)
    height: int | None = Field(None, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8)
    upscaler: Upscaler = "latent"
    steps: int | None = Field(None, ge=1, le=MAX_SCHEDULE)
    denoising_strength: float = Field(0.7, gt=0.0, le=1.0)
    #: The second pass's own prompt, negative prompt and sampler; left out, the first pass's.
    prompt: str | None = Field(None, min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    scheduler: Scheduler | None = None

    _prompt_syntax = field_validator("prompt", "negative_prompt")(check_prompt_syntax)

    @model_validator(mode="after")
    def _one_target(self) -> Hires:
        if self.scale is not None and (self.width is not None or self.height is not None):
            raise ValueError("give scale, or width and/or height, not both")
        if self.steps is not None and int(self.steps * self.denoising_strength) > MAX_STEPS:
            raise ValueError(f"the second pass runs steps x denoising_strength steps, at most {MAX_STEPS} (it is "
                             f"{self.steps} x {self.denoising_strength:g})")
        return self

    def target(self, width: int, height: int) -> tuple[int, int]:
        """The second pass's size for a first pass of ``width`` x ``height``."""
        if self.width is None and self.height is None:
            scale = self.scale if self.scale is not None else 2.0
            return _round8(width * scale), _round8(height * scale)
        if self.width is not None and self.height is not None:
            return self.width, self.height
        if self.width is not None:
            return self.width, _round8(height * self.width / width)
        assert self.height is not None
        return _round8(width * self.height / height), self.height


def _round8(value: float) -> int:
    return max(MIN_SIDE, int(value) // 8 * 8)


class Txt2ImgInputs(GenerationInputs):
    hires: Hires | None = None
    #: A second base model of the same family (SDXL's refiner) that takes over at ``switch_at`` of the steps, as
    #: WebUI 1.6+'s refiner and diffusers' ``denoising_end``/``denoising_start`` do. SDXL models only.
    refiner: ModelId | None = None
    switch_at: float = Field(0.8, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _passes_run_steps(self) -> Txt2ImgInputs:
        if self.hires is not None:
            steps = self.hires.steps or self.steps
            if int(steps * self.hires.denoising_strength) < 1:
                raise ValueError(f"hires: steps x denoising_strength must be at least 1 (it is {steps} x "
                                 f"{self.hires.denoising_strength})")
        if self.refiner is not None and not 1 <= int(self.steps * self.switch_at) < self.steps:
            raise ValueError(f"switch_at: {self.switch_at} of {self.steps} steps leaves the base model or the refiner "
                             "no step; raise steps or move switch_at")
        return self


class Img2ImgInputs(GenerationInputs):
    image: ImageRef
    strength: float = Field(0.75, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _runs_a_step(self) -> Img2ImgInputs:
        # img2img denoises int(steps * strength) steps; zero steps is an error deep inside diffusers.
        if int(self.steps * self.strength) < 1:
            raise ValueError(f"steps x strength must be at least 1 (it is {self.steps} x {self.strength})")
        if self.scheduler == "lcm" and self.steps > LCM_MAX_STEPS * self.strength:
            raise ValueError(f"sampler 'lcm' runs at most {LCM_MAX_STEPS} x strength steps in img2img "
                             f"({LCM_MAX_STEPS} x {self.strength}); this job asks for {self.steps}")
        return self


#: What the worker makes of ``control_image`` before the ControlNet sees it: nothing (it is a control map already)
#: or Canny edges (SD WebUI's ``canny`` module).
Preprocessor = Literal["none", "canny"]


class ControlNetInputs(GenerationInputs):
    control_image: ImageRef
    controlnet: ModelId
    controlnet_conditioning_scale: float = Field(1.0, ge=0.0, le=2.0)
    #: The part of the denoising (0 = the first step, 1 = the last) during which the ControlNet guides it.
    control_guidance_start: float = Field(0.0, ge=0.0, le=1.0)
    control_guidance_end: float = Field(1.0, ge=0.0, le=1.0)
    control_preprocessor: Preprocessor = "none"
    #: Canny's hysteresis thresholds (WebUI's ``threshold_a`` and ``threshold_b``), for ``canny`` only.
    canny_low: int = Field(100, ge=1, le=255)
    canny_high: int = Field(200, ge=1, le=255)

    @field_validator("control_guidance_end")
    @classmethod
    def _end_after_start(cls, value: float, info: ValidationInfo) -> float:
        start = info.data.get("control_guidance_start")
        if start is not None and value <= start:
            raise ValueError(f"must be above control_guidance_start ({start})")
        return value

    @field_validator("canny_high")
    @classmethod
    def _high_above_low(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("canny_low")
        if low is not None and value < low:
            raise ValueError(f"must not be below canny_low ({low})")
        return value
