"""WebUI's ``alwayson_scripts`` as spotgen's inputs: the checkpoint the AWS sample names there, and the units of
the ControlNet extension (``runtime.contract.webui``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from runtime.contract.errors import ContractError
from runtime.contract.webui_coerce import coerce as _typed
from runtime.contract.webui_rules import Names, _accepted, _check_resize, _resolve, _unsupported
from runtime.contract.webui_schema import _CONTROL_RESIZE, _UNIT

Task = Literal["txt2img", "img2img"]


def _scripts(scripts: Mapping[str, Any], task: Task, names: Names, size: tuple[int, int]
             ) -> tuple[str | None, dict[str, Any] | None]:
    """(checkpoint, ControlNet inputs) of ``alwayson_scripts``: ControlNet is the one script spotgen runs, and
    ``sd_model_checkpoint`` is where the AWS EKS sample names the model."""
    model, control, seen = None, None, False
    for key, value in scripts.items():
        field = f"alwayson_scripts.{key}"
        if key == "sd_model_checkpoint":
            model = _resolve(names.models, _typed(value, "str", field), field, "checkpoint")
        elif key.casefold() == "controlnet" and not seen:  # WebUI finds scripts by title, regardless of case
            seen, control = True, _controlnet(value, field, task, names, size)
        else:
            raise ContractError("unsupported_field", f"{field}: spotgen runs no WebUI script but ControlNet", field)
    return model, control


def _controlnet(value: Any, field: str, task: Task, names: Names, size: tuple[int, int]) -> dict[str, Any] | None:
    if isinstance(value, dict):
        for key in set(value) - {"args"}:
            raise ContractError("unknown_field", f"unknown field {field}.{key}", f"{field}.{key}")
        value, field = value.get("args", []), f"{field}.args"
    enabled = []
    for i, unit in enumerate(_typed(value, "list", field)):
        path = f"{field}.{i}"
        if "enabled" not in _typed(unit, "dict", path):  # sd-webui-controlnet's default has changed over versions
            raise ContractError("missing_field", f"{path}.enabled: say whether the unit is enabled", f"{path}.enabled")
        if _typed(unit["enabled"], "bool", f"{path}.enabled"):
            enabled.append((path, unit))
    if not enabled:
        return None
    path, unit = enabled[0]
    if len(enabled) > 1 or task == "img2img":
        path = f"{enabled[1][0]}.enabled" if len(enabled) > 1 else path
        why = "one enabled unit a job" if len(enabled) > 1 else "ControlNet with img2img (it starts from noise)"
        raise ContractError("unsupported_field", f"{path}: spotgen does not run {why} yet", path)
    for key, item in unit.items():
        if key not in _UNIT:
            raise ContractError("unknown_field", f"unknown field {path}.{key}", f"{path}.{key}")
        if _UNIT[key] and not _accepted(item, _UNIT[key]):
            raise _unsupported(f"{path}.{key}", item, _UNIT[key])
    if "image" in unit and "input_image" in unit:
        raise ContractError("invalid_field", f"{path}.input_image: give image or input_image, not both",
                            f"{path}.input_image")
    image_field = f"{path}.input_image" if "input_image" in unit else f"{path}.image"
    image, model = unit.get("input_image", unit.get("image")), unit.get("model")
    for name, value in ((image_field, image), (f"{path}.model", model)):
        if value in (None, "", "None"):
            raise ContractError("missing_field", f"{name}: an enabled ControlNet unit needs one", name)
    _check_resize(unit.get("resize_mode", "Crop and Resize"), _typed(image, "str", image_field), size,
                  f"{path}.resize_mode", _CONTROL_RESIZE)
    weight = _typed(unit.get("weight", 1.0), "num", f"{path}.weight")
    controlnet = _resolve(names.controlnets, _typed(model, "str", f"{path}.model"), f"{path}.model", "ControlNet")
    job = {"control_image": image, "controlnet": controlnet, "controlnet_conditioning_scale": weight,
           "control_guidance_start": _typed(unit.get("guidance_start", 0.0), "num", f"{path}.guidance_start"),
           "control_guidance_end": _typed(unit.get("guidance_end", 1.0), "num", f"{path}.guidance_end")}
    if unit.get("module", "none") == "canny":  # the extension's -1 (or nothing): the module's own 100 and 200
        for key, name, default in (("threshold_a", "canny_low", 100), ("threshold_b", "canny_high", 200)):
            value = _typed(unit.get(key, -1), "num", f"{path}.{key}")
            job[name] = default if value == -1 else int(value) if value == int(value) else value
        job["control_preprocessor"] = "canny"
    return job
