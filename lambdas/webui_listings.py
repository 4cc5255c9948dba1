"""SD WebUI's listing routes that clients call at start-up, answered in WebUI 1.10's shapes with what spotgen has.

A client that finds a 404 where WebUI lists something stops (or fails with a KeyError) before it sends a single
request. Every listing here is what the settings say spotgen serves: the upscalers the API accepts (the catalog's,
under their WebUI names, after WebUI's three that need no model), the latent upscale modes hires fix takes, the
scripts a body may name. Where spotgen has none of a kind (face restorers, hypernetworks, styles, VAEs, separate
text encoders), the answer is WebUI's empty list: honest, and what a WebUI without such files answers too. Nothing
here opens a model file: a path or a size that only the worker could read is ``null``.
"""

from __future__ import annotations

from typing import Any

from runtime.config import Settings

#: WebUI's upscalers that need no model, first in its list (``shared.sd_upscalers``), at its default scale.
BUILTIN_UPSCALERS = ("None", "Lanczos", "Nearest")
#: Hires fix's latent upscale modes, by WebUI's names (``shared.latent_upscale_modes``); spotgen runs all six
#: (``runtime.contract.inputs.LATENT_UPSCALERS``).
LATENT_MODES = ("Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                "Latent (nearest)", "Latent (nearest-exact)")
#: What ``alwayson_scripts`` and ``script_name`` may name, by tab, as WebUI lists scripts (lower-case titles).
#: "sd upscale" is the one selectable script (``script_name``: ``runtime.contract.webui_scripts``).
SCRIPTS = {"txt2img": ["controlnet"], "img2img": ["controlnet", "sd upscale"]}
#: WebUI's launch flags that clients read (``--api``, the model folders, the memory options), as spotgen is run:
#: an API without a UI, its models in a catalog rather than in folders.
CMD_FLAGS: dict[str, Any] = {
    "api": True, "nowebui": True, "listen": True, "port": None, "api_auth": None, "api_log": False,
    "api_server_stop": False, "share": False, "gradio_auth": None, "ckpt": None, "ckpt_dir": None,
    "vae_dir": None, "lora_dir": None, "embeddings_dir": None, "hypernetwork_dir": None, "esrgan_models_path": None,
    "realesrgan_models_path": None, "codeformer_models_path": None, "gfpgan_models_path": None,
    "controlnet_dir": None, "data_dir": None, "models_dir": None, "medvram": False, "medvram_sdxl": False,
    "lowvram": False, "lowram": False, "no_half": False, "no_half_vae": False, "precision": "autocast",
    "upcast_sampling": False, "xformers": False, "opt_sdp_attention": True, "disable_nan_check": False,
    "skip_torch_cuda_test": False, "use_cpu": [], "device_id": None, "hide_ui_dir_config": True,
    "freeze_settings": False, "enable_insecure_extension_access": False, "disable_safe_unpickle": False,
    "disable_extra_extensions": True, "disable_all_extensions": True, "theme": None, "subpath": None,
    "add_stop_route": False, "timeout_keep_alive": 30,
}


def upscaler_names(settings: Settings) -> dict[str, str]:
    """Each upscaler model id's WebUI name: its first alias (a deployment aliases ``R-ESRGAN 4x+`` to its
    model), else the id; the name ``hr_upscaler`` and the extras' ``upscaler_1`` take."""
    names = {}
    for upscaler in settings.upscalers:
        aliases = [alias for alias, target in settings.aliases.items() if target == upscaler]
        names[upscaler] = (aliases or [upscaler])[0]
    return names


def upscalers(settings: Settings) -> list[dict[str, Any]]:
    """WebUI's ``UpscalerItem`` list: its three without a model, then each model the API accepts."""
    builtin = [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4.0}
               for name in BUILTIN_UPSCALERS]
    return builtin + [{"name": name, "model_name": upscaler, "model_path": None, "model_url": None, "scale": None}
                      for upscaler, name in upscaler_names(settings).items()]


def latent_upscale_modes() -> list[dict[str, Any]]:
    return [{"name": mode} for mode in LATENT_MODES]


def scripts() -> dict[str, list[str]]:
    return {tab: list(names) for tab, names in SCRIPTS.items()}


def _arg(label: str, value: Any, low: float | None = None, high: float | None = None, step: float | None = None,
         choices: list[str] | None = None) -> dict[str, Any]:
    return {"label": label, "value": value, "minimum": low, "maximum": high, "step": step, "choices": choices}


def script_info(settings: Settings) -> list[dict[str, Any]]:
    """WebUI's ``ScriptInfo`` for each script a body may name. ControlNet's arguments are the extension's own (its
    unit's fields, docs/migrating.md); SD upscale's are its positional ``script_args``, as WebUI's UI declares
    them (the upscaler by its index in ``/sdapi/v1/upscalers``)."""
    upscale_args = [_arg("", None), _arg("Tile overlap", 64, 0, 256, 16),
                    _arg("Upscaler", "None", choices=[u["name"] for u in upscalers(settings)]),
                    _arg("Scale Factor", 2, 0, 4, 1)]
    return [{"name": name, "is_alwayson": name == "controlnet", "is_img2img": tab == "img2img",
             "args": upscale_args if name == "sd upscale" else []}
            for tab, names in SCRIPTS.items() for name in names]


#: The listings spotgen has none of: WebUI's answer without such files, an empty list.
EMPTY = ("face-restorers", "realesrgan-models", "prompt-styles", "hypernetworks", "sd-vae", "sd-modules")


def listing(name: str, settings: Settings) -> Any:
    """The answer of ``GET /sdapi/v1/{name}`` for the listings of this module; KeyError for another name."""
    if name in EMPTY:
        return []
    return {"upscalers": lambda: upscalers(settings), "latent-upscale-modes": latent_upscale_modes,
            "scripts": scripts, "script-info": lambda: script_info(settings),
            "cmd-flags": lambda: dict(CMD_FLAGS)}[name]()


NAMES = ("upscalers", "latent-upscale-modes", "scripts", "script-info", "cmd-flags", *EMPTY)
