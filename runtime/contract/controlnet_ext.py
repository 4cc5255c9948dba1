"""The routes of WebUI's ControlNet extension (Mikubill/sd-webui-controlnet, ``scripts/api.py``) that clients
call besides ``alwayson_scripts``: ``/controlnet/version``, ``model_list``, ``module_list``, ``control_types``,
``settings`` and ``detect``.

``version`` is the extension's API version (2). ``model_list`` names the ControlNets the deployment accepts, as a
unit's ``model`` may name them; ``module_list`` the preprocessors spotgen runs (``WEIGHT_FREE``, by the
extension's names), each with ``model_free`` false (in the extension only the reference and revision modules
run without a ControlNet model) and no slider descriptions. ``detect`` runs one preprocessor on each image as a
``controlnet_detect`` job. Its body is read as the extension's FastAPI ``Body`` fields read it (pydantic v1:
numbers as strings), with the extension's ``-1`` meaning "the module's default" for the resolution and both
thresholds; ``controlnet_images`` (what the ``webuiapi`` client sends) is taken for ``controlnet_input_images``.
A module that needs a detector's weights is refused naming ``controlnet_module``: no catalog holds one yet.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.contract.detect import DETECT_MODEL
from runtime.contract.errors import ContractError, raise_contract_error
from runtime.contract.preprocessors import NEEDS_WEIGHTS, WEIGHT_FREE

#: ``external_code.get_api_version()``.
EXTENSION_API_VERSION = 2
#: The processor resolution the extension's sliders default to, for ``controlnet_processor_res`` -1.
DEFAULT_RESOLUTION = 512
#: The most images one ``detect`` request may hold (each is a job; the answer carries every map).
MAX_DETECT_IMAGES = 8


class DetectBody(BaseModel):
    """``POST /controlnet/detect``'s body fields, with the extension's defaults."""

    model_config = ConfigDict(extra="forbid")

    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list, max_length=MAX_DETECT_IMAGES)
    controlnet_images: list[str] | None = Field(None, max_length=MAX_DETECT_IMAGES)  # webuiapi's name
    controlnet_processor_res: int = -1
    controlnet_threshold_a: float = Field(-1.0, allow_inf_nan=False)
    controlnet_threshold_b: float = Field(-1.0, allow_inf_nan=False)
    controlnet_masks: list[str] = Field(default_factory=list)  # the modules here take no mask: ignored, as there
    low_vram: bool = False


def module_list() -> dict[str, Any]:
    """``GET /controlnet/module_list``'s answer."""
    return {"module_list": list(WEIGHT_FREE),
            "module_detail": {name: {"model_free": False, "sliders": []} for name in WEIGHT_FREE}}


#: The extension's control types (``global_state.preprocessor_filters``: its UI's radio buttons, in its order), each
#: with its default module and the words that put a module or a model in it (its name and its aliases).
CONTROL_TYPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "All": ("none", ()), "Canny": ("canny", ("canny",)), "Depth": ("depth_midas", ("depth",)),
    "NormalMap": ("normal_bae", ("normal",)), "OpenPose": ("openpose_full", ("openpose",)), "MLSD": ("mlsd", ("mlsd",)),
    "Lineart": ("lineart_standard", ("lineart",)), "SoftEdge": ("softedge_pidinet", ("softedge", "hed", "pidi")),
    "Scribble/Sketch": ("scribble_pidinet", ("scribble", "sketch")), "Segmentation": ("seg_ofade20k", ("seg",)),
    "Shuffle": ("shuffle", ("shuffle",)), "Tile/Blur": ("tile_resample", ("tile", "blur")),
    "Inpaint": ("inpaint_only", ("inpaint",)), "InstructP2P": ("none", ("ip2p",)),
    "Reference": ("reference_only", ("reference",)), "Recolor": ("recolor_luminance", ("recolor",)),
    "Revision": ("revision_clipvision", ("revision",)), "T2I-Adapter": ("none", ("t2ia", "t2i_adapter", "t2iadapter")),
    "IP-Adapter": ("ip-adapter_clip_sd15", ("ip-adapter", "ip_adapter", "ipadapter")),
    "Instant_ID": ("instant_id", ("instant_id",)), "SparseCtrl": ("none", ("sparsectrl",)),
}


def control_types(models: list[str]) -> dict[str, Any]:
    """``GET /controlnet/control_types``' answer: per control type, the modules spotgen runs and the ControlNet
    ``models`` (their WebUI titles) of that type, "none" and "None" first as in the extension, and its defaults:
    the type's own module where spotgen runs it, and the first model of the type ("None" for "All")."""
    answer = {}
    for name, (default, words) in CONTROL_TYPES.items():
        def of_type(title: str, words: tuple[str, ...] = words) -> bool:
            return not words or any(word in title.lower() for word in words)

        modules = ["none", *(m for m in WEIGHT_FREE if m != "none" and of_type(m))]
        titles = ["None", *(t for t in models if of_type(t))]
        answer[name] = {"module_list": modules, "model_list": titles,
                        "default_option": default if default in modules else "none",
                        "default_model": titles[1] if len(titles) > 1 and words else "None"}
    return {"control_types": answer}


def detect_jobs(body: Any) -> list[tuple[dict[str, Any], str]]:
    """The ``controlnet_detect`` jobs' inputs (model ``DETECT_MODEL``), one per image, each with the body's field
    its image is at; a ContractError naming the body's field."""
    if not isinstance(body, dict):
        raise ContractError("invalid_body", "the request body must be a JSON object", "body")
    try:
        request = DetectBody.model_validate(body)
    except ValidationError as exc:
        raise_contract_error(exc)
        raise  # unreachable
    module = request.controlnet_module
    if module in NEEDS_WEIGHTS:
        raise ContractError("unsupported_preprocessor", f"controlnet_module: {module!r} needs a detector's weights, "
                            f"and the catalog holds no detectors yet; spotgen runs {', '.join(WEIGHT_FREE)}",
                            "controlnet_module")
    if module not in WEIGHT_FREE:
        raise ContractError("invalid_field", f"controlnet_module: {module!r} is not a module; spotgen runs "
                            f"{', '.join(WEIGHT_FREE)} (GET /controlnet/module_list)", "controlnet_module")
    field = "controlnet_input_images"
    images = request.controlnet_input_images
    if not images and request.controlnet_images:
        field, images = "controlnet_images", request.controlnet_images
    if not images:
        raise ContractError("invalid_field", "controlnet_input_images: no image to detect in", field)
    resolution = request.controlnet_processor_res
    inputs: dict[str, Any] = {
        "preprocessor": module, "resolution": DEFAULT_RESOLUTION if resolution < 0 else resolution,
        "threshold_a": None if request.controlnet_threshold_a < 0 else request.controlnet_threshold_a,
        "threshold_b": None if request.controlnet_threshold_b < 0 else request.controlnet_threshold_b}
    return [({"image": image, **inputs}, f"{field}.{i}") for i, image in enumerate(images)]


#: The job's fields -> the body's (the image's is each job's own).
_BODY_FIELDS = {"inputs.resolution": "controlnet_processor_res", "inputs.threshold_a": "controlnet_threshold_a",
                "inputs.threshold_b": "controlnet_threshold_b", "inputs.preprocessor": "controlnet_module"}


def detect_error(exc: ContractError, image_field: str) -> ContractError:
    """``exc``, found in a detect job, naming the body's field instead of the job's."""
    field = {**_BODY_FIELDS, "inputs.image": image_field}.get(exc.field or "")
    if field is None:
        return exc
    return ContractError(exc.code, exc.message.replace(exc.field or "", field, 1), field)


__all__ = ["DETECT_MODEL", "EXTENSION_API_VERSION", "detect_error", "detect_jobs", "module_list"]
