"""ControlNet preprocessors: the control map the worker makes from a plain image (SD WebUI's ``module``).

Clients of SD WebUI's ControlNet extension send a photo and name a module; the extension turns the photo into
the map the ControlNet was trained on. ``canny`` is OpenCV's Canny edge detector with the extension's
thresholds (``threshold_a``, ``threshold_b``), on the image as sized for the job, white edges on black in
three channels as the ControlNet takes them. OpenCV is the maintained implementation both use.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def canny(image: Image.Image, low: int, high: int) -> Image.Image:
    import cv2  # the worker's dependency, imported where it is used

    edges = cv2.Canny(np.asarray(image.convert("RGB")), low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def control_map(image: Image.Image, preprocessor: str, low: int = 100, high: int = 200) -> Image.Image:
    """``image`` as the ControlNet sees it."""
    if preprocessor == "canny":
        return canny(image, low, high)
    return image
