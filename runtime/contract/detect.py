"""The inputs of ``controlnet_detect``: one preprocessor run on one image, as WebUI's ControlNet extension's
``/controlnet/detect`` (its ``controlnet_module``, ``controlnet_processor_res`` and thresholds), for clients that
preview or cache a control map. The job needs no model: its ``model`` is ``none``."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import AfterValidator, Field

from runtime.contract.formats import OutputOptions
from runtime.contract.inputs import MAX_SIDE, ImageRef
from runtime.contract.preprocessors import PREPROCESSORS, WEIGHT_FREE

#: The job model of ``controlnet_detect`` (no catalog entry: the worker does not look it up).
DETECT_MODEL = "none"


def _known(value: str) -> str:
    if value not in PREPROCESSORS:
        raise ValueError(f"{value!r} is not a preprocessor; the weight-free ones are {', '.join(WEIGHT_FREE)}")
    return value


class ControlNetDetectInputs(OutputOptions):
    """The map is returned at the preprocessor's working size: ``resolution`` on the short side (the tile
    modules, ``invert`` and ``none``: the image's own size)."""

    sized_by_image: ClassVar[bool] = True

    image: ImageRef
    preprocessor: Annotated[str, AfterValidator(_known)]
    threshold_a: float | None = Field(None, ge=-1024.0, le=1024.0)
    threshold_b: float | None = Field(None, ge=-1024.0, le=1024.0)
    resolution: int = Field(512, ge=64, le=MAX_SIDE)
