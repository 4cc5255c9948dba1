"""Masks and canvases of the inpaint pipeline: what to repaint, read as WebUI reads it, and the crop, fill and
composite around the model's run.

The order is WebUI's (``StableDiffusionProcessingImg2Img.init``): the mask is read (an RGBA mask with transparency:
its alpha channel, rounded at half as WebUI's ``create_binary_mask`` does; anything else: its grey level), resized
to the image, inverted (``invert_mask``); outpainting (``extend``) grows the canvas, its new area masked; then the
mask is blurred (``mask_blur``: a Gaussian of that sigma in each direction, WebUI's kernel size). The model works
on the whole canvas, or with ``only_masked`` on a crop around the mask (diffusers'
``VaeImageProcessor.get_crop_region``: the mask's box plus ``padding``, widened to the job's aspect ratio); its
output is composited back over the canvas with the blurred mask as alpha (``Image.composite``), so wherever that
mask is 0 the output's pixels are the input's, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from diffusers.image_processor import VaeImageProcessor
from PIL import Image, ImageOps

from runtime.contract.edits import Extend, mask_fits
from runtime.contract.errors import ContractError

FIELD = "inputs.mask"
#: A mask level the model repaints: diffusers binarises the mask at half (as WebUI rounds its latent mask).
REPAINTS = 128
#: ``fill``'s neighbourhood: OpenCV's Telea inpainting (``cv2.inpaint``) spreads the surroundings into the masked
#: area from this many pixels around each point it fills.
FILL_RADIUS = 3


@dataclass(frozen=True)
class Canvas:
    """What the job edits, at the size its output keeps: the image (plus ``extend``'s new area) and the blurred
    mask (L, 255 repaints)."""

    image: Image.Image
    mask: Image.Image


@dataclass(frozen=True)
class Work:
    """What the model gets, at the job's width x height: the starting image, its mask, and the crop of the canvas
    they come from (``only_masked``; None: the whole canvas)."""

    image: Image.Image
    mask: Image.Image
    box: tuple[int, int, int, int] | None


def read_mask(mask: Image.Image) -> Image.Image:
    """The mask as L: an RGBA image with real transparency is its alpha channel (opaque repaints), rounded at half
    as WebUI reads it (WebUI keeps 128 out, this takes it in: one rule, "at half or more repaints", for the mask's
    levels and its alpha); any other image its grey level (white repaints)."""
    if mask.mode == "RGBA" and mask.getextrema()[3] != (255, 255):
        return mask.getchannel("A").point(lambda value: 255 if value >= REPAINTS else 0)
    return mask if mask.mode == "L" else mask.convert("L")


def fit_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``mask`` at the image's ``size``: resized when its aspect ratio is the image's (``mask_fits``: within a
    pixel of rounding), else a ``ContractError`` naming ``inputs.mask``, since stretching it would move what it
    covers."""
    if mask.size == size:
        return mask
    if not mask_fits(size, mask.size):
        raise ContractError("invalid_field", f"{FIELD}: the mask is {mask.size[0]}x{mask.size[1]} and the image "
                            f"{size[0]}x{size[1]}, another aspect ratio: give a mask of the image's size or shape",
                            FIELD)
    return mask.resize(size, Image.Resampling.BILINEAR)


def blur(mask: np.ndarray, sigma: int) -> np.ndarray:
    """WebUI's ``mask_blur``: a Gaussian of ``sigma`` pixels across and down, kernel ``2 * int(2.5 * sigma + 0.5)
    + 1``."""
    if sigma <= 0:
        return mask
    size = 2 * int(2.5 * sigma + 0.5) + 1
    return cv2.GaussianBlur(mask, (size, size), sigmaX=sigma, sigmaY=sigma)


def canvas(image: Image.Image, mask: Image.Image | None, extend: Extend | None, invert: bool,
           mask_blur: int) -> Canvas:
    """The canvas and its blurred mask (module docstring). ``extend``'s new area starts as the image's edge pixels
    stretched outward (``cv2.BORDER_REPLICATE``) and is masked, united with the given mask. A mask that leaves
    nothing to repaint (no pixel at half or more, after ``invert_mask``) is refused, naming ``inputs.mask``."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    if mask is not None:
        mask = fit_mask(read_mask(mask), image.size)
        mask = ImageOps.invert(mask) if invert else mask
    pixels = np.asarray(image)
    held = np.asarray(mask) if mask is not None else np.zeros(pixels.shape[:2], np.uint8)
    if extend is not None:
        sides = (extend.top, extend.bottom, extend.left, extend.right)
        pixels = cv2.copyMakeBorder(pixels, *sides, cv2.BORDER_REPLICATE)
        held = cv2.copyMakeBorder(held, *sides, cv2.BORDER_CONSTANT, value=255)
    if int(held.max()) < REPAINTS:
        what = "after invert_mask " if invert else ""
        raise ContractError("invalid_field", f"{FIELD}: the mask {what}has nothing to repaint (no pixel is at half "
                            f"white or more; white repaints)", FIELD)
    return Canvas(Image.fromarray(pixels), Image.fromarray(blur(np.ascontiguousarray(held), mask_blur)))


def crop_box(mask: Image.Image, width: int, height: int, padding: int) -> tuple[int, int, int, int]:
    """``only_masked``'s crop: the box of every pixel the blurred mask touches, plus ``padding``, widened to
    ``width``:``height`` within the canvas (diffusers' ``get_crop_region``, WebUI's rule)."""
    x1, y1, x2, y2 = VaeImageProcessor.get_crop_region(mask, width, height, pad=padding)
    return int(x1), int(y1), int(x2), int(y2)


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """``fill``: the masked area (at half or more) painted from its surroundings before denoising, by OpenCV's
    Telea inpainting (``cv2.inpaint``), in place of WebUI's stacked blurs: the model then starts from the colours
    around the hole instead of what it covered."""
    hole = (np.asarray(mask) >= REPAINTS).astype(np.uint8)
    return Image.fromarray(cv2.inpaint(np.asarray(image), hole, FILL_RADIUS, cv2.INPAINT_TELEA))


def work(board: Canvas, width: int, height: int, only_masked: bool, padding: int, pixel_fill: bool) -> Work:
    """The model's input at ``width`` x ``height``: the whole canvas, or (``only_masked``) the crop around the
    mask; filled from the surroundings first when ``pixel_fill``."""
    box = crop_box(board.mask, width, height, padding) if only_masked else None
    image, mask = (board.image, board.mask) if box is None else (board.image.crop(box), board.mask.crop(box))
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
        mask = mask.resize((width, height), Image.Resampling.BILINEAR)
    return Work(fill(image, mask) if pixel_fill else image, mask, box)


def paste_back(output: Image.Image, board: Canvas, job: Work, size: tuple[int, int]) -> Image.Image:
    """The model's ``output`` composited over the canvas as WebUI does: with ``only_masked`` pasted into its crop
    and blended by the blurred mask, else over the whole canvas (at ``size``) by the blurred mask doubled (WebUI's
    ``mask_for_overlay``: the repainted core is opaque, the blur's outer half fades). Where the mask is 0 the
    pixels are the canvas's, exactly."""
    output = output if output.mode == "RGB" else output.convert("RGB")
    if job.box is not None:
        x1, y1, x2, y2 = job.box
        pasted = board.image.copy()
        pasted.paste(output.resize((x2 - x1, y2 - y1), Image.Resampling.LANCZOS), (x1, y1))
        return Image.composite(pasted, board.image, board.mask)
    base, mask = board.image, board.mask
    if size != base.size:
        base, mask = base.resize(size, Image.Resampling.LANCZOS), mask.resize(size, Image.Resampling.BILINEAR)
    if output.size != size:
        output = output.resize(size, Image.Resampling.LANCZOS)
    overlay = mask.point(lambda value: min(255, 2 * value))
    return Image.composite(output, base, overlay)
