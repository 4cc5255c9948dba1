"""The submit API's checks of the editing jobs (issue 26): what the contract cannot know alone.

The contract checks each input's bounds; these need the deployment's settings (which upscalers and models it
accepts, their families) or the inline images' bytes (their sizes from the header, the mask's pixels through the
standard-library PNG reader ``runtime.contract.pngmask``: no Pillow in the Lambda). The worker checks all of it
again once the images are decoded; here a bad request becomes a 400 naming the field before anything is stored.
An image given as ``s3://`` is not read here: the worker judges it.
"""

from __future__ import annotations

from typing import Any

from runtime.config import Settings
from runtime.contract import (
    LATENT_UPSCALERS,
    MODEL_KINDS,
    PIXEL_UPSCALERS,
    ContractError,
    InpaintInputs,
    Txt2ImgInputs,
    UpscaleInputs,
    inpaint_size,
    upscale_size,
)
from runtime.contract.detect import DETECT_MODEL
from runtime.contract.edits import mask_fits
from runtime.contract.images import InlineImage, decode_inline
from runtime.contract.pngmask import REPAINTS, BrokenPng, mask_extrema
from runtime.contract.sdupscale import NO_UPSCALE, SdUpscaleInputs


def accepted_models(settings: Settings, pipeline: str) -> list[str]:
    """The ids a job of ``pipeline`` may name as its ``model``: base models, or for ``upscale`` the upscalers
    (the pixel filters ``lanczos`` and ``nearest`` besides the deployment's upscaler models), for
    ``controlnet_detect`` ``none`` (a preprocessor needs no model: ``runtime.contract.detect``)."""
    kind = MODEL_KINDS.get(pipeline, "base")
    if kind == "upscaler":
        return [*PIXEL_UPSCALERS, *settings.upscalers]
    if kind == "preprocessor":
        return [DETECT_MODEL]
    return settings.models


def check_model(settings: Settings, pipeline: str, model: str) -> None:
    """ContractError naming ``model`` unless the deployment accepts it for this pipeline."""
    accepted = accepted_models(settings, pipeline)
    if model not in accepted:
        what = "upscaler" if MODEL_KINDS.get(pipeline) == "upscaler" else "model"
        raise ContractError("unknown_model", f"unknown {what} {model!r} for pipeline {pipeline!r}; available: "
                            f"{', '.join(accepted) or 'none'}", "model")


def check_edits(settings: Settings, model: str, inputs: Any) -> None:
    """ContractError naming the field where a built-in job's editing inputs cannot run on this deployment."""
    if isinstance(inputs, Txt2ImgInputs):
        _check_hires(settings, inputs)
        _check_refiner(settings, model, inputs)
    elif isinstance(inputs, InpaintInputs):
        _check_inpaint(settings, model, inputs)
    elif isinstance(inputs, SdUpscaleInputs):
        name = inputs.upscaler
        if name != NO_UPSCALE and name not in accepted_models(settings, "upscale"):
            raise ContractError("unknown_model", f"inputs.upscaler: unknown upscaler {name!r}; available: "
                                f"{', '.join([NO_UPSCALE, *accepted_models(settings, 'upscale')])}", "inputs.upscaler")
    elif isinstance(inputs, UpscaleInputs):
        second = inputs.upscaler_2
        if second is not None and second not in accepted_models(settings, "upscale"):
            raise ContractError("unknown_model", f"inputs.upscaler_2: unknown upscaler {second!r}; available: "
                                f"{', '.join(accepted_models(settings, 'upscale'))}", "inputs.upscaler_2")
        image = _inline(inputs.image)
        if image is not None:
            upscale_size(inputs, image.width, image.height)


def _inline(ref: str | None) -> InlineImage | None:
    """The inline image (already checked by the contract), or None for an ``s3://`` reference or none at all."""
    if ref is None or ref[:5].lower() == "s3://":
        return None
    return decode_inline(ref)


def _check_hires(settings: Settings, inputs: Txt2ImgInputs) -> None:
    upscaler = inputs.hires.upscaler if inputs.hires is not None else None
    if upscaler is None or upscaler in LATENT_UPSCALERS or upscaler in PIXEL_UPSCALERS:
        return
    if upscaler not in settings.upscalers:
        raise ContractError("unknown_model", f"inputs.hires.upscaler: unknown upscaler {upscaler!r}; available: "
                            f"{', '.join(LATENT_UPSCALERS + PIXEL_UPSCALERS + tuple(settings.upscalers))}",
                            "inputs.hires.upscaler")


def _check_refiner(settings: Settings, model: str, inputs: Txt2ImgInputs) -> None:
    refiner = inputs.refiner
    if refiner is None:
        return
    if refiner not in settings.models:
        raise ContractError("unknown_model", f"inputs.refiner: unknown model {refiner!r}; available: "
                            f"{', '.join(settings.models)}", "inputs.refiner")
    families = settings.model_families
    if model in families and refiner in families and families[model] != families[refiner]:
        raise ContractError("incompatible_refiner", f"inputs.refiner: {refiner!r} is a {families[refiner]} model "
                            f"and {model!r} a {families[model]} one; a refiner continues its own family's latents",
                            "inputs.refiner")


def _check_inpaint(settings: Settings, model: str, inputs: InpaintInputs) -> None:
    image, mask = _inline(inputs.image), _inline(inputs.mask)
    family = settings.model_families.get(model)
    if image is not None and family is not None:
        inpaint_size(inputs, image.width, image.height, family)
    if mask is None:
        return
    if image is not None and not mask_fits((image.width, image.height), (mask.width, mask.height)):
        raise ContractError("invalid_field", f"inputs.mask: the mask is {mask.width}x{mask.height} and the image "
                            f"{image.width}x{image.height}; a mask of another size must have the image's aspect "
                            "ratio (it is resized to the image): send one the image's size", "inputs.mask")
    try:
        extrema = mask_extrema(mask.data, inputs.invert_mask) if mask.format == "png" else None
    except BrokenPng as exc:
        raise ContractError("invalid_field", f"inputs.mask: cannot be decoded: {exc}", "inputs.mask") from None
    if extrema is not None and extrema[1] < REPAINTS and inputs.extend is None:
        what = "after invert_mask " if inputs.invert_mask else ""
        raise ContractError("invalid_field", f"inputs.mask: the mask {what}has nothing to repaint (no pixel is at "
                            "half white or more; white repaints, or opaque where the mask has transparency)",
                            "inputs.mask")
