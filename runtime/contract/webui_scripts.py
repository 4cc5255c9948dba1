"""WebUI's ``script_name`` and ``script_args``: the one selectable script spotgen runs, img2img's "SD upscale",
as the ``sd_upscale`` pipeline (``runtime.contract.sdupscale``).

WebUI finds a script by its title regardless of case, among the scripts of the body's tab (txt2img has no "SD
upscale": WebUI answers that it is not found), and hands it ``script_args`` as they are, positionally:
``[info, overlap, upscaler_index, scale_factor]``, the script's UI controls in order (``info`` is a text shown in
its UI, not read). ``upscaler_index`` is a place in WebUI's upscaler list, ``/sdapi/v1/upscalers``: "None",
"Lanczos", "Nearest", then the deployment's upscalers in the order the settings list them (``Names.upscalers``
keeps that order: each id first, then the aliases). No coercion applies (the list is untyped in WebUI's model),
so a value of the wrong type is refused naming ``script_args.N``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime.contract.edits import MAX_UPSCALE
from runtime.contract.errors import ContractError
from runtime.contract.sdupscale import MAX_OVERLAP, NO_UPSCALE
from runtime.contract.webui_coerce import exact
from runtime.contract.webui_rules import Names, _get

#: The scripts a body may select, by tab (WebUI's lower-cased titles).
SCRIPTS = {"txt2img": (), "img2img": ("sd upscale",)}
#: WebUI's upscalers that need no model, first in its list, as spotgen's ``sd_upscale`` names them.
BUILTIN_UPSCALERS = (NO_UPSCALE, "lanczos", "nearest")
#: ``script_args`` of SD upscale: the arguments' count.
SD_UPSCALE_ARGS = 4


def selected(body: Mapping[str, Any], task: str) -> str | None:
    """The script the body selects (lower-cased title), None for none; a ``ContractError`` naming
    ``script_name`` for a script spotgen does not run."""
    name = body.get("script_name")
    if name in (None, ""):
        return None
    if name.casefold() not in SCRIPTS[task]:
        runs = ", ".join(f"'{s}'" for s in SCRIPTS[task]) or "none"
        raise ContractError("unsupported_field", f"script_name: {name!r} is not supported yet: spotgen runs these "
                            f"scripts on {task}: {runs}", "script_name")
    return str(name.casefold())


def upscaler_list(names: Names) -> list[str]:
    """The ``sd_upscale`` upscaler at each index of WebUI's list (``/sdapi/v1/upscalers``' order)."""
    return [*BUILTIN_UPSCALERS, *dict.fromkeys(names.upscalers.values())]


def sd_upscale(body: Mapping[str, Any], names: Names) -> dict[str, Any]:
    """``upscaler``, ``scale`` and ``overlap`` of SD upscale's ``script_args``; the body's other fields that
    would seed or guide the tiles otherwise than WebUI are refused naming them."""
    args = body.get("script_args") or []
    if len(args) != SD_UPSCALE_ARGS:
        raise ContractError("invalid_field", f"script_args: SD upscale takes {SD_UPSCALE_ARGS} arguments, [info, "
                            f"overlap, upscaler_index, scale_factor], not {len(args)}", "script_args")
    _info, overlap, index, scale = args
    overlap = exact(overlap, "int", "script_args.1")
    tile = (_get(body, "width", 512), _get(body, "height", 512))  # a tile is width x height
    if not 0 <= overlap <= MAX_OVERLAP or overlap >= min(tile):
        raise ContractError("invalid_field", f"script_args.1: the tile overlap is 0 to {MAX_OVERLAP} pixels and less "
                            f"than a tile's sides ({tile[0]}x{tile[1]}), not {overlap}", "script_args.1")
    upscalers = upscaler_list(names)
    index = exact(index, "int", "script_args.2")
    if not 0 <= index < len(upscalers):
        raise ContractError("invalid_field", f"script_args.2: upscaler index {index} is not in /sdapi/v1/upscalers "
                            f"(0 to {len(upscalers) - 1})", "script_args.2")
    scale = exact(scale, "num", "script_args.3")
    if not 1 <= scale <= MAX_UPSCALE:
        raise ContractError("invalid_field", f"script_args.3: the scale factor is 1 to {MAX_UPSCALE:g}, not "
                            f"{scale:g}", "script_args.3")
    for field in ("batch_size", "n_iter"):
        if (body.get(field) or 1) != 1:
            raise ContractError("unsupported_field", f"{field}: SD upscale makes one image here (WebUI seeds a batch "
                                "of tiles and repeated upscales otherwise); leave it 1", field)
    if body.get("mask"):
        raise ContractError("unsupported_field", "mask: SD upscale runs img2img on whole tiles, without a mask",
                            "mask")
    return {"upscaler": upscalers[index], "scale": scale, "overlap": overlap}
