"""ControlNet preprocessors: the control map the worker makes from a plain image (SD WebUI's ``module``).

Clients of SD WebUI's ControlNet extension send a photo and name a module; the extension turns the photo into
the map the ControlNet was trained on. Every weight-free module of ``runtime.contract.preprocessors.WEIGHT_FREE``
runs here, with the extension's parameters: ``threshold_a``/``threshold_b`` mean what they mean for that module
(``PARAMETERS``: name and default), and ``resolution`` (the extension's ``processor_res``) is the short side the
image is resized to before the module runs. Written from the extension's documented behaviour with OpenCV,
Pillow and numpy (its code is GPL and not copied); the unit's pipeline then resizes the map to the job's size.

The modules that need a detector's weights (depth, pose, HED ...) are refused, naming the unit's field: the
catalog holds no detectors yet. ``shuffle`` is random: its noise comes from a generator seeded by the job's
seed, so a job (and a resumed one) gets the same map every time.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image

from runtime.contract import ContractError
from runtime.contract.preprocessors import NEEDS_WEIGHTS, WEIGHT_FREE

#: Each module's ``threshold_a`` and ``threshold_b``: (what it means, its default), None where unused.
PARAMETERS: dict[str, tuple[tuple[str, float] | None, tuple[str, float] | None]] = {
    "none": (None, None),
    "canny": (("low threshold", 100), ("high threshold", 200)),
    "invert": (None, None),
    "threshold": (("binarization threshold", 127), None),
    "binary": (("binary threshold (0: Otsu's)", 0), None),
    "tile_resample": (("down sampling rate", 1.0), None),
    "tile_colorfix": (("variation (blur sigma)", 8.0), None),
    "tile_colorfix+sharp": (("variation (blur sigma)", 8.0), ("sharpness", 1.0)),
    "shuffle": (None, None),
    "lineart_standard": (None, None),
    "blur_gaussian": (("sigma", 9.0), None),
    "scribble_xdog": (("XDoG threshold", 32), None),
    "t2ia_color_grid": (None, None),
    "recolor_luminance": (("gamma correction", 1.0), None),
    "recolor_intensity": (("gamma correction", 1.0), None),
}
assert set(PARAMETERS) == set(WEIGHT_FREE)
#: Modules that work on the image as given, not resized to ``resolution`` (as in the extension).
OWN_SIZE = frozenset({"none", "tile_resample", "tile_colorfix", "tile_colorfix+sharp", "invert"})


def canny(image: Image.Image, low: int, high: int) -> Image.Image:
    edges = cv2.Canny(np.asarray(image.convert("RGB")), low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def control_map(image: Image.Image, preprocessor: str, low: int = 100, high: int = 200) -> Image.Image:
    """``image`` as the ControlNet sees it (the ``controlnet`` pipeline's own fields: none or canny)."""
    if preprocessor == "canny":
        return canny(image, low, high)
    return image


def refuse_unknown(name: str, field: str) -> None:
    """Refuse, naming ``field``, a module this worker cannot run (one needing a detector's weights)."""
    if name in NEEDS_WEIGHTS:
        raise ContractError("unsupported_preprocessor", f"{field}: {name!r} needs a detector's weights, and the "
                            f"catalog holds no detectors yet; the weight-free preprocessors are "
                            f"{', '.join(WEIGHT_FREE)}", field)
    if name not in WEIGHT_FREE:
        raise ContractError("invalid_field", f"{field}: {name!r} is not a preprocessor", field)


def preprocess(image: Image.Image, name: str, threshold_a: float | None = None, threshold_b: float | None = None,
               resolution: int = 512, seed: int = 0, field: str = "preprocessor") -> Image.Image:
    """The control map of ``image`` by module ``name`` (RGB; its size is the working size, see the module doc)."""
    refuse_unknown(name, field)
    if name == "none":
        return image.convert("RGB")
    a_spec, b_spec = PARAMETERS[name]
    a = threshold_a if threshold_a is not None else (a_spec[1] if a_spec else 0.0)
    b = threshold_b if threshold_b is not None else (b_spec[1] if b_spec else 0.0)
    pixels = np.asarray(image.convert("RGB"))
    if name not in OWN_SIZE:
        pixels = _short_side(pixels, resolution)
    out = _MODULES[name](pixels, a, b, np.random.default_rng(seed))
    if out.ndim == 2:
        out = np.stack([out] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(out.astype(np.uint8)))


def _short_side(pixels: np.ndarray, side: int) -> np.ndarray:
    height, width = pixels.shape[:2]
    k = side / min(height, width)
    size = (max(1, round(width * k)), max(1, round(height * k)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)


def _gray(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY))


def _threshold(pixels: np.ndarray, a: float, b: float, rng: np.random.Generator) -> np.ndarray:
    return np.where(_gray(pixels) > a, 255, 0)


def _binary(pixels: np.ndarray, a: float, b: float, rng: np.random.Generator) -> np.ndarray:
    """Black lines on white become white on black; threshold 0 (or 255) lets Otsu's method choose."""
    flags = cv2.THRESH_BINARY_INV + (cv2.THRESH_OTSU if a in (0, 255) else 0)
    return np.asarray(cv2.threshold(_gray(pixels), int(a), 255, flags)[1])


def _tile_resample(pixels: np.ndarray, a: float, b: float, rng: np.random.Generator) -> np.ndarray:
    height, width = pixels.shape[:2]
    rate = max(1.0, a)
    size = (max(1, int(width / rate)), max(1, int(height / rate)))
    return np.asarray(cv2.resize(pixels, size, interpolation=cv2.INTER_AREA))


def _colorfix(pixels: np.ndarray, a: float, b: float, rng: np.random.Generator) -> np.ndarray:
    """The image's colours without its detail: a Gaussian blur of sigma ``variation``."""
    return np.asarray(cv2.GaussianBlur(pixels, (0, 0), max(a, 0.01)))


def _colorfix_sharp(pixels: np.ndarray, a: float, b: float, rng: np.random.Generator) -> np.ndarray:
    """The colour blur plus ``sharpness`` times the detail it removed (an unsharp mask)."""
    blurred = _colorfix(pixels, a, b, rng).astype(np.float32)
    return np.clip(blurred + b * (pixels.astype(np.float32) - blurred), 0, 255)


def _shuffle(pixels: np.ndarray, a: float, b: float, rng: np.random.Generator) -> np.ndarray:
    """Content shuffle: every pixel moved along a smooth random flow field (the noise from ``rng``)."""
    height, width = pixels.shape[:2]

    def field(scale: float) -> np.ndarray:
        coarse = rng.random((max(2, height // 64 + 2), max(2, width // 64 + 2))).astype(np.float32)
        return np.asarray(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)) * scale

    x, y = field(width - 1), field(height - 1)
    return np.asarray(cv2.remap(pixels, x, y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT))


def _lineart_standard(pixels: np.ndarray, a: float, b: float, rng: np.random.Generator) -> np.ndarray:
    """Dark lines (darker than their blurred surroundings) as white on black, scaled by their median strength."""
    x = pixels.astype(np.float32)
    darker = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
    strong = darker[darker > 8]
    darker /= max(16.0, float(np.median(strong)) if strong.size else 16.0)
    return np.clip(darker * 127, 0, 255)


def _blur(pixels: np.ndarray, a: float, b: float, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(cv2.GaussianBlur(pixels, (0, 0), max(a, 0.01)))


def _xdog(pixels: np.ndarray, a: float, b: float, rng: np.random.Generator) -> np.ndarray:
    """Difference of Gaussians (sigma 0.5 and 5), kept where twice its strength passes the threshold."""
    x = pixels.astype(np.float32)
    dog = np.min(cv2.GaussianBlur(x, (0, 0), 5.0) - cv2.GaussianBlur(x, (0, 0), 0.5), axis=2).clip(0, 255)
    return np.where(2 * dog > a, 255, 0)


def _color_grid(pixels: np.ndarray, a: float, b: float, rng: np.random.Generator) -> np.ndarray:
    """Colour blocks of 64 pixels (T2I-Adapter's colour map)."""
    height, width = pixels.shape[:2]
    small = cv2.resize(pixels, (max(1, width // 64), max(1, height // 64)), interpolation=cv2.INTER_CUBIC)
    return np.asarray(cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST))


def _gamma(channel: np.ndarray, gamma: float) -> np.ndarray:
    return np.clip(255.0 * (channel.astype(np.float32) / 255.0) ** max(gamma, 0.01), 0, 255)


def _luminance(pixels: np.ndarray, a: float, b: float, rng: np.random.Generator) -> np.ndarray:
    return _gamma(cv2.cvtColor(pixels, cv2.COLOR_RGB2LAB)[..., 0], a)


def _intensity(pixels: np.ndarray, a: float, b: float, rng: np.random.Generator) -> np.ndarray:
    return _gamma(cv2.cvtColor(pixels, cv2.COLOR_RGB2HSV)[..., 2], a)


_MODULES: dict[str, Callable[[np.ndarray, float, float, np.random.Generator], np.ndarray]] = {
    "canny": lambda p, a, b, rng: np.asarray(cv2.Canny(p, int(a), int(b))),
    "invert": lambda p, a, b, rng: 255 - p,
    "threshold": _threshold, "binary": _binary, "tile_resample": _tile_resample, "tile_colorfix": _colorfix,
    "tile_colorfix+sharp": _colorfix_sharp, "shuffle": _shuffle, "lineart_standard": _lineart_standard,
    "blur_gaussian": _blur, "scribble_xdog": _xdog, "t2ia_color_grid": _color_grid,
    "recolor_luminance": _luminance, "recolor_intensity": _intensity,
}
assert set(_MODULES) == set(WEIGHT_FREE) - {"none"}
