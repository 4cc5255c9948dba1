"""WebUI's ``alwayson_scripts`` as spotgen's inputs: the checkpoint the AWS sample names there, and the units of
the ControlNet extension (``runtime.contract.webui``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from runtime.contract.errors import ContractError
from runtime.contract.inputs import MAX_CONTROLNETS, MAX_IP_ADAPTERS, MAX_SIDE, MODEL_ID_RE
from runtime.contract.preprocessors import PREPROCESSORS
from runtime.contract.webui_coerce import coerce as _typed
from runtime.contract.webui_rules import Names, _accepted, _check_resize, _resolve, _unsupported
from runtime.contract.webui_schema import _CONTROL_RESIZE, _EXTENSIONS, _HASH_RE, _UNIT

Task = Literal["txt2img", "img2img"]


def _scripts(scripts: Mapping[str, Any], task: Task, names: Names, size: tuple[int, int], hires: bool = False
             ) -> tuple[str | None, str | None, dict[str, Any]]:
    """(checkpoint, the pipeline the units need or None, their inputs) of ``alwayson_scripts``: ControlNet is the
    one script spotgen runs, and ``sd_model_checkpoint`` is where the AWS EKS sample names the model."""
    model, pipeline, control, seen = None, None, {}, False
    for key, value in scripts.items():
        field = f"alwayson_scripts.{key}"
        if key == "sd_model_checkpoint":
            model = _resolve(names.models, _typed(value, "str", field), field, "checkpoint")
        elif key.casefold() == "controlnet" and not seen:  # WebUI finds scripts by title, regardless of case
            seen, (pipeline, control) = True, _controlnet(value, field, task, names, size, hires)
        else:
            raise ContractError("unsupported_field", f"{field}: spotgen runs no WebUI script but ControlNet", field)
    return model, pipeline, control


def _enabled(value: Any, field: str) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    """The enabled units of ``controlnet``'s value (``{"args": [...]}`` or the list), with their paths."""
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
    return enabled, field


def _controlnet(value: Any, field: str, task: Task, names: Names, size: tuple[int, int], hires: bool
                ) -> tuple[str | None, dict[str, Any]]:
    """(pipeline, inputs) of the enabled units: one plain or Canny unit on txt2img is the ``controlnet``
    pipeline's (as before there were several); any other set is ``controlnets`` and ``ip_adapters`` of the
    task's own pipeline. An IP-Adapter unit is one whose module is the extension's ``ip-adapter*``."""
    enabled, field = _enabled(value, field)
    units, adapters = [], []
    for path, unit in enabled:
        read = _unit(path, unit, names, size)
        option = unit.get("hr_option", "Both")
        if hires and not (isinstance(option, str) and option.casefold() == "both"):  # spotgen's guide both passes
            raise ContractError("unsupported_field", f"{path}.hr_option: {option!r} is not supported yet: with hires "
                                "fix, a unit guides both passes here (\"Both\")", f"{path}.hr_option")
        (adapters if "preprocessor" not in read else units).append((path, read))
    for kind, found, most in (("ControlNet", units, MAX_CONTROLNETS), ("IP-Adapter", adapters, MAX_IP_ADAPTERS)):
        if len(found) > most:
            path = f"{found[most][0]}.enabled"
            raise ContractError("unsupported_field", f"{path}: spotgen runs {most} {kind} units a job at most", path)
    if not units and not adapters:
        return None, {}
    if task == "txt2img" and not adapters and not hires and len(units) == 1 and \
            units[0][1]["preprocessor"] in ("none", "canny"):
        return "controlnet", _single(units[0][1])
    out: dict[str, Any] = {"controlnets": [read for _, read in units]} if units else {}
    return None, out | ({"ip_adapters": [read for _, read in adapters]} if adapters else {})


def _single(unit: dict[str, Any]) -> dict[str, Any]:
    """The ``controlnet`` pipeline's inputs of one unit (Canny's thresholds: the module's 100 and 200 for -1)."""
    job = {"control_image": unit["image"], "controlnet": unit["id"], "controlnet_conditioning_scale": unit["scale"],
           "control_guidance_start": unit["start"], "control_guidance_end": unit["end"]}
    if unit["preprocessor"] == "canny":
        for key, name, default in (("threshold_a", "canny_low", 100), ("threshold_b", "canny_high", 200)):
            value = unit.get(key)
            job[name] = default if value is None else int(value) if value == int(value) else value
        job["control_preprocessor"] = "canny"
    return job


def _unit(path: str, unit: Mapping[str, Any], names: Names, size: tuple[int, int]) -> dict[str, Any]:
    """One enabled unit as a ``ControlUnit`` (``preprocessor`` set) or an ``IpAdapterRef``."""
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
    weight = _bounded(unit, path, "weight", 1.0, 2.0)
    start, end = _bounded(unit, path, "guidance_start", 0.0, 1.0), _bounded(unit, path, "guidance_end", 1.0, 1.0)
    if end <= start:
        raise ContractError("invalid_field", f"{path}.guidance_end: must be above guidance_start ({start:g})",
                            f"{path}.guidance_end")
    module = _module(unit, path)
    model = _typed(model, "str", f"{path}.model")
    if module.startswith("ip-adapter"):
        for key, value, default in (("guidance_start", start, 0.0), ("guidance_end", end, 1.0)):
            if value != default:
                raise ContractError("unsupported_field", f"{path}.{key}: an IP-Adapter guides every step here "
                                    f"(leave it at {default:g})", f"{path}.{key}")
        return {"id": _ip_adapter(model, names, f"{path}.model"), "image": image, "scale": weight}
    read = {"id": _resolve(names.controlnets, model, f"{path}.model", "ControlNet"), "image": image,
            "scale": weight, "start": start, "end": end, "preprocessor": module}
    for key in ("threshold_a", "threshold_b"):
        value = _typed(unit.get(key, -1), "num", f"{path}.{key}")
        if value != -1:  # the extension's -1 (or nothing): the module's own
            read[key] = _within(value, f"{path}.{key}", -1024.0, 1024.0)
    if module != "none":
        resolution = min(size) if _typed(unit.get("pixel_perfect", False), "bool", f"{path}.pixel_perfect") else \
            _typed(unit.get("processor_res", -1), "int", f"{path}.processor_res")
        read["resolution"] = 512 if resolution == -1 else int(_within(resolution, f"{path}.processor_res", 64,
                                                                         MAX_SIDE))
    return read


def _bounded(unit: Mapping[str, Any], path: str, key: str, default: float, most: float) -> float:
    return _within(_typed(unit.get(key, default), "num", f"{path}.{key}"), f"{path}.{key}", 0.0, most)


def _within(value: float, field: str, least: float, most: float) -> float:
    if not least <= value <= most:
        raise ContractError("invalid_field", f"{field}: must be {least:g} to {most:g}, not {value:g}", field)
    return value


def _module(unit: Mapping[str, Any], path: str) -> str:
    """The unit's preprocessor by spotgen's name: the extension's module names, its older aliases and the labels
    its UI shows ("invert (from white bg & black line)"); an IP-Adapter module as it is."""
    field = f"{path}.module"
    name = _typed(unit.get("module", "none"), "str", field).strip()
    module = _MODULE_ALIASES.get(name.casefold(), name.casefold())
    if module.startswith("ip-adapter"):
        if "face_id" in module or "pulid" in module:
            raise ContractError("unsupported_field", f"{field}: {name!r} takes a face embedding (insightface); "
                                "spotgen's IP-Adapters take an image", field)
        return module
    if module not in PREPROCESSORS:
        raise ContractError("unsupported_field", f"{field}: spotgen has no preprocessor {name!r}; it runs "
                            f"{', '.join(PREPROCESSORS)} and the ip-adapter modules", field)
    return module


def _ip_adapter(name: str, names: Names, field: str) -> str:
    """An IP-Adapter's catalog id: by alias where the settings list them, else its file's name (``ip-adapter_sd15
    [6a3f6166]`` is ``ip-adapter_sd15``), which the worker's catalog judges as any id the API does not list."""
    if names.ip_adapters:
        return _resolve(names.ip_adapters, name, field, "IP-Adapter")
    bare = _HASH_RE.sub("", name.strip()).replace("\\", "/").rsplit("/", 1)[-1]
    bare = next((bare[: -len(ext)] for ext in _EXTENSIONS if bare.casefold().endswith(ext)), bare).casefold()
    if not MODEL_ID_RE.match(bare):
        raise ContractError("invalid_field", f"{field}: {name!r} names no IP-Adapter (an id is a-z, 0-9, '.', '_' "
                            "and '-')", field)
    return bare


#: A ``ControlUnit``'s or ``IpAdapterRef``'s field -> the unit's field it comes from.
_UNIT_FIELDS = {"id": "model", "image": "image", "scale": "weight", "start": "guidance_start", "end": "guidance_end",
                "preprocessor": "module", "threshold_a": "threshold_a", "threshold_b": "threshold_b",
                "resolution": "processor_res"}


def unit_field(body: Mapping[str, Any], field: str) -> str | None:
    """The body's field of a job's ``inputs.controlnets.N.x`` or ``inputs.ip_adapters.N.x`` (N counts the enabled
    units of that kind, in order); None for any other field, or a body that does not say."""
    parts = field.split(".")
    if len(parts) < 3 or parts[0] != "inputs" or parts[1] not in ("controlnets", "ip_adapters") or \
            not parts[2].isdigit():
        return None
    scripts = body.get("alwayson_scripts") if isinstance(body.get("alwayson_scripts"), dict) else {}
    key = next((k for k in scripts if k.casefold() == "controlnet"), None)
    if key is None:
        return None
    args, where = scripts[key], f"alwayson_scripts.{key}"
    if isinstance(args, dict):
        args, where = args.get("args"), f"{where}.args"
    seen = 0
    for i, unit in enumerate(args if isinstance(args, list) else []):
        try:
            enabled = isinstance(unit, dict) and _typed(unit.get("enabled"), "bool", "enabled")
        except ContractError:
            enabled = False
        if not enabled or str(unit.get("module") or "none").casefold().startswith("ip-adapter") != \
                (parts[1] == "ip_adapters"):
            continue
        if seen == int(parts[2]):
            rest = [_UNIT_FIELDS.get(parts[3], parts[3]), *parts[4:]] if len(parts) > 3 else []
            if rest[:1] == ["image"] and "input_image" in unit:
                rest[0] = "input_image"
            return ".".join([where, str(i), *rest])
        seen += 1
    return None


#: The extension's older module names and its UI's labels -> spotgen's preprocessors.
_MODULE_ALIASES = {
    "invert (from white bg & black line)": "invert", "lineart_standard (from white bg & black line)":
    "lineart_standard", "depth": "depth_midas", "normal_map": "normal_midas", "hed": "softedge_hed",
    "hed_safe": "softedge_hedsafe", "pidinet": "softedge_pidinet", "pidinet_safe": "softedge_pidisafe",
    "pidinet_scribble": "scribble_pidinet", "fake_scribble": "scribble_hed", "lineart": "lineart_realistic",
    "lineart_anime_denoise": "lineart_anime_denoise", "color": "t2ia_color_grid", "threshold": "threshold",
}
