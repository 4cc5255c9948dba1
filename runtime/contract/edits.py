"""The inputs of the editing pipelines: inpainting (and outpainting, its ``extend``) and upscaling.

Sizes here depend on the input image: an inpainting job left without ``width``/``height`` works at its canvas's
size (the image plus ``extend``), and an upscale job's output is ``scale`` times its image. The API checks them
where it knows the image's size (an inline image's header: ``inpaint_size``, ``upscale_size``); the worker checks
them always, once the image is decoded.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from runtime.contract.errors import ContractError
from runtime.contract.families import family_rules
from runtime.contract.formats import OutputOptions
from runtime.contract.images import MAX_IMAGE_PIXELS
from runtime.contract.inputs import LCM_MAX_STEPS, MAX_SIDE, GenerationInputs, ImageRef, Strict

#: What the masked area holds before denoising, as WebUI's ``inpainting_fill`` (0 fill, 1 original, 2 latent
#: noise, 3 latent nothing): the image itself, its surroundings spread into it, random latents, or zero latents.
Fill = Literal["original", "fill", "latent_noise", "latent_nothing"]
FILL_MODES: tuple[str, ...] = ("fill", "original", "latent_noise", "latent_nothing")  # WebUI's order: 0..3
MAX_EXTEND = MAX_SIDE
MAX_MASK_BLUR = 64
MAX_PADDING = 256
MAX_UPSCALE = 8.0
#: The longest side an upscale job may ask for; the pixels (``MAX_IMAGE_PIXELS``) are the real bound.
MAX_TARGET_SIDE = 1 << 16


class Extend(Strict):
    """Outpainting: pixels added on each side of the image; the new area is masked and filled per ``fill``."""

    left: int = Field(0, ge=0, le=MAX_EXTEND)
    right: int = Field(0, ge=0, le=MAX_EXTEND)
    top: int = Field(0, ge=0, le=MAX_EXTEND)
    bottom: int = Field(0, ge=0, le=MAX_EXTEND)

    @model_validator(mode="after")
    def _adds_something(self) -> Extend:
        if not (self.left or self.right or self.top or self.bottom):
            raise ValueError("extend adds no pixels: give left, right, top or bottom")
        return self


class InpaintInputs(GenerationInputs):
    """Repaint where ``mask`` is white (``invert_mask``: where it is black); outside it the output's pixels are the
    input's. ``width``/``height`` left out: the canvas's own size (the image plus ``extend``), rounded down to a
    multiple of 8."""

    #: The family's default size does not apply: the image decides (``inpaint_size``).
    sized_by_image: ClassVar[bool] = True

    image: ImageRef
    extend: Extend | None = None
    #: White repaints: L, RGB or RGBA (RGBA with transparency: the alpha channel is the mask, opaque repaints, as
    #: WebUI reads it). Another size is resized to the image's when its aspect ratio is the image's.
    mask: ImageRef | None = Field(None, validate_default=True)
    mask_blur: int = Field(4, ge=0, le=MAX_MASK_BLUR)
    invert_mask: bool = False
    strength: float = Field(0.75, gt=0.0, le=1.0)
    fill: Fill = "original"
    #: WebUI's "inpaint at full resolution": work on a crop around the mask (plus ``padding`` pixels) at the job's
    #: size, then paste it back.
    only_masked: bool = False
    padding: int = Field(32, ge=0, le=MAX_PADDING)

    @field_validator("mask")
    @classmethod
    def _something_to_repaint(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("extend") is None and "extend" in info.data:
            raise ValueError("give a mask (what to repaint), or extend (outpainting), or both")
        return value

    @model_validator(mode="after")
    def _runs_a_step(self) -> InpaintInputs:
        if int(self.steps * self.strength) < 1:
            raise ValueError(f"steps x strength must be at least 1 (it is {self.steps} x {self.strength})")
        if self.scheduler == "lcm" and self.steps > LCM_MAX_STEPS * self.strength:
            raise ValueError(f"sampler 'lcm' runs at most {LCM_MAX_STEPS} x strength steps in inpainting "
                             f"({LCM_MAX_STEPS} x {self.strength}); this job asks for {self.steps}")
        return self


class UpscaleInputs(OutputOptions):
    """WebUI's "extras": ``image`` made ``scale`` times larger by the job's model, an upscaler: a catalog id
    (``kind: upscaler``), ``lanczos`` or ``nearest``. ``width`` and ``height`` instead: the image scaled to cover
    that size (WebUI's "scale to"), then, with ``crop``, cut to it around the centre. ``upscaler_2`` blended in at
    ``upscaler_2_visibility`` is WebUI's second upscaler; ``multiple_of`` 8 rounds the sides down as WebUI's
    extras do (its upscalers make sides of multiples of 8)."""

    sized_by_image: ClassVar[bool] = True

    image: ImageRef
    scale: float = Field(2.0, ge=1.0, le=MAX_UPSCALE)
    #: The size to reach: both or neither; given, they decide the size and ``scale`` is not used.
    width: int | None = Field(None, ge=1, le=MAX_TARGET_SIDE)
    height: int | None = Field(None, ge=1, le=MAX_TARGET_SIDE)
    crop: bool = True
    multiple_of: int = Field(1, ge=1, le=64)
    upscaler_2: str | None = Field(None, min_length=1, max_length=128)
    upscaler_2_visibility: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _both_sides(self) -> UpscaleInputs:
        if (self.width is None) != (self.height is None):
            raise ValueError("give both width and height (the size to reach), or neither (scale decides)")
        return self


def inpaint_size(inputs: InpaintInputs, image_width: int, image_height: int, family: str,
                 prefix: str = "inputs") -> tuple[int, int]:
    """The job's working size for an image of ``image_width`` x ``image_height``: its own ``width``/``height``,
    else the canvas's (image plus ``extend``), rounded down to what the family's sizes divide by (8, or 16 for
    Flux and SD 3.5); a ``ContractError`` naming the field when it is beyond the family's pixel budget."""
    extend = inputs.extend or Extend.model_construct(left=0, right=0, top=0, bottom=0)
    canvas = (image_width + extend.left + extend.right, image_height + extend.top + extend.bottom)
    rules = family_rules(family)
    step = rules.multiple_of
    width = inputs.width if inputs.width is not None else max(step, canvas[0] // step * step)
    height = inputs.height if inputs.height is not None else max(step, canvas[1] // step * step)
    budget = rules.max_pixels
    if width * height > budget or max(width, height) > MAX_SIDE:
        field = "extend" if inputs.extend is not None and inputs.width is None else "width"
        raise ContractError("invalid_field", f"{prefix}.{field}: the job works at {width}x{height} "
                            f"({width * height} pixels; the image is {image_width}x{image_height}), beyond the "
                            f"{family} "
                            f"budget of {budget} pixels and {MAX_SIDE} per side: set a smaller width and height",
                            f"{prefix}.{field}")
    return width, height


def _side(length: float, multiple: int) -> int:
    return round(length) if multiple == 1 else max(multiple, int(length // multiple * multiple))


def upscale_sizes(inputs: UpscaleInputs, image_width: int, image_height: int,
                  prefix: str = "inputs") -> tuple[tuple[int, int], tuple[int, int]]:
    """The size the upscalers make and the output's (the first cut to the second, around the centre, where they
    differ), or a ``ContractError`` naming ``scale`` (``width``) when either would hold more than
    ``MAX_IMAGE_PIXELS`` pixels (the largest image any input or output may be). To a target size, the image is
    scaled by the larger of the two ratios, so that it covers the target, as WebUI's "scale to"."""
    scale = inputs.scale
    if inputs.width is not None and inputs.height is not None:
        scale = max(inputs.width / image_width, inputs.height / image_height)
    grown = _side(image_width * scale, inputs.multiple_of), _side(image_height * scale, inputs.multiple_of)
    out = (inputs.width, inputs.height) if inputs.width is not None and inputs.height is not None and inputs.crop \
        else grown
    field, how = ("scale", f"times {scale:g}") if inputs.width is None else \
        ("width", f"scaled to cover {inputs.width}x{inputs.height}")
    for width, height in (grown, out):
        if width * height > MAX_IMAGE_PIXELS:
            raise ContractError("invalid_field", f"{prefix}.{field}: {image_width}x{image_height} {how} is "
                                f"{width}x{height}, more than the {MAX_IMAGE_PIXELS} pixels an image may have",
                                f"{prefix}.{field}")
    return grown, out


def upscale_size(inputs: UpscaleInputs, image_width: int, image_height: int,
                 prefix: str = "inputs") -> tuple[int, int]:
    """The output's size (``upscale_sizes``' second), or a ``ContractError`` naming the field."""
    return upscale_sizes(inputs, image_width, image_height, prefix)[1]


def mask_fits(image_size: tuple[int, int], mask_size: tuple[int, int]) -> bool:
    """Whether a mask of ``mask_size`` (width, height) may be resized to an image of ``image_size``: the same
    aspect ratio up to one pixel of rounding, i.e. the mask scaled to the image's width lands within one pixel of
    its height, or scaled to its height within one pixel of its width. Any other mask would be stretched, moving
    what it covers: the API (an inline mask's header) and the worker (``pipelines``) refuse it, naming
    ``inputs.mask``, by this one rule."""
    (iw, ih), (mw, mh) = image_size, mask_size
    if min(iw, ih, mw, mh) < 1:
        return False
    skew = abs(mw * ih - iw * mh)  # |mw/mh - iw/ih| in units of mh*ih
    # scaled to the image's height, the mask is mw*ih/mh wide: within 1 of iw <=> skew <= mh; likewise the others
    return skew <= max(mh, ih, mw, iw)
