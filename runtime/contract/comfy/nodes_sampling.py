"""ComfyUI's sampling nodes, and its sampler and scheduler names as spotgen's sampler table runs them.

ComfyUI names k-diffusion's samplers (``dpm_2_ancestral``) where spotgen names WebUI's (``dpm2_a``), and splits
the sigma schedule off as ``scheduler``. Only the names spotgen runs are choices, so a graph naming another
(``dpm_fast``, ``beta``) is ComfyUI's own ``value_not_in_list`` at the API, naming it, rather than a substitute
the client did not ask for. ``normal`` and ``simple`` are both timesteps evenly spaced over the model's schedule
(``simple`` is the flow-matching families' default), which is spotgen's ``default`` schedule on every family; on
Flux and SD 3.5 ``sgm_uniform`` is too (the model's own shifted schedule, which is all those families' ``default``
is), so the pairs a family takes depend on the family (``runtime.contract.families``).
"""

from __future__ import annotations

from runtime.contract.comfy.nodes import (
    MAX_SEED,
    SAMPLERS,
    SCHEDULERS,
    Input,
    Node,
    catalog,
    integer,
    link,
    number,
)
from runtime.contract.families import FAMILIES
from runtime.contract.inputs import MAX_GUIDANCE, MAX_SHIFT, MAX_SIDE, MAX_STEPS, SAMPLER_SCHEDULES

#: ComfyUI's sampler names (in ComfyUI's order) -> spotgen's samplers. The ``_gpu`` variants differ from their
#: namesakes only in where ComfyUI draws the noise, which spotgen draws its own way anyway.
COMFY_SAMPLERS: dict[str, str] = {
    "euler": "euler", "euler_ancestral": "euler_a", "heun": "heun", "dpm_2": "dpm2", "dpm_2_ancestral": "dpm2_a",
    "lms": "lms", "dpmpp_sde": "dpmpp_sde", "dpmpp_sde_gpu": "dpmpp_sde", "dpmpp_2m": "dpmpp_2m",
    "dpmpp_2m_sde": "dpmpp_2m_sde", "dpmpp_2m_sde_gpu": "dpmpp_2m_sde", "lcm": "lcm", "ddim": "ddim",
    "uni_pc": "unipc",
}
#: ComfyUI's scheduler names (in ComfyUI's order) -> spotgen's schedules.
COMFY_SCHEDULERS: dict[str, str] = {
    "normal": "default", "karras": "karras", "exponential": "exponential", "sgm_uniform": "sgm_uniform",
    "simple": "default",
}


#: On the flow-matching families (Flux, SD 3.5), whose schedule is the model's own shift of uniform timesteps.
FLOW_SCHEDULERS: dict[str, str] = {**COMFY_SCHEDULERS, "sgm_uniform": "default"}


def _family_table(family: str | None) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """(spotgen sampler -> schedules, ComfyUI scheduler -> schedule) that ``family`` runs; None: any family."""
    rules = FAMILIES.get(family or "")
    if rules is None or rules.samplers is None:
        return SAMPLER_SCHEDULES, COMFY_SCHEDULERS
    return rules.samplers, FLOW_SCHEDULERS


def samplers_for(family: str | None = None) -> tuple[str, ...]:
    """ComfyUI's sampler names that spotgen runs on ``family`` (None: on some family)."""
    samplers, _ = _family_table(family)
    return tuple(name for name, runs in COMFY_SAMPLERS.items() if runs in samplers)


def schedulers_for(sampler_name: str, family: str | None = None) -> tuple[str, ...]:
    """ComfyUI's scheduler names that spotgen runs with the ComfyUI sampler ``sampler_name`` on ``family`` (None:
    on some family); an ancestral sampler takes no Karras schedule here, for one."""
    samplers, schedules = _family_table(family)
    takes = samplers.get(COMFY_SAMPLERS[sampler_name], ())
    return tuple(name for name, schedule in schedules.items() if schedule in takes)


def spotgen_sampler(sampler_name: str, scheduler: str, family: str | None = None) -> tuple[str, str]:
    """(spotgen sampler, schedule) for ComfyUI's pair on a model of ``family`` (``sd1``, ``sdxl``, ``sd3``,
    ``flux``; None: read as on SD); ValueError naming what spotgen runs when it runs no such sampler, scheduler or
    pair (``check_graph`` refuses these first, on the family when the deployment's ``Names`` know it)."""
    if sampler_name not in samplers_for(family):
        raise ValueError(f"sampler_name: spotgen runs no sampler {sampler_name!r} here; it runs "
                         f"{', '.join(samplers_for(family))}")
    if scheduler not in COMFY_SCHEDULERS:
        raise ValueError(f"scheduler: spotgen runs no scheduler {scheduler!r}; it runs {', '.join(COMFY_SCHEDULERS)}")
    if scheduler not in schedulers_for(sampler_name, family):
        raise ValueError(f"scheduler: spotgen runs sampler {sampler_name!r} with "
                         f"{', '.join(schedulers_for(sampler_name, family))}, not {scheduler!r}")
    return COMFY_SAMPLERS[sampler_name], _family_table(family)[1][scheduler]


_SEED = {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True}
# spotgen: ComfyUI's steps run to 10000 and cfg to 100
_STEPS = integer("steps", 20, 1, MAX_STEPS)
_CFG = number("cfg", 8.0, 0.0, MAX_GUIDANCE, 0.1, round=0.01)
_DENOISE = number("denoise", 1.0, 0.0, 1.0, 0.01)
_CUSTOM = "comfy_extras.nodes_custom_sampler"

SAMPLING = (
    Node("KSampler", "KSampler", "sampling",
         (link("model", "MODEL"), Input("seed", "INT", _SEED), _STEPS, _CFG, catalog("sampler_name", SAMPLERS),
          catalog("scheduler", SCHEDULERS), link("positive", "CONDITIONING"), link("negative", "CONDITIONING"),
          link("latent_image", "LATENT"), _DENOISE),
         ("LATENT",), description="Uses the provided model, positive and negative conditioning to denoise the "
                                  "latent image."),
    Node("KSamplerAdvanced", "KSampler (Advanced)", "sampling",
         (link("model", "MODEL"), Input("add_noise", ("enable", "disable")), Input("noise_seed", "INT", _SEED),
          _STEPS, _CFG, catalog("sampler_name", SAMPLERS), catalog("scheduler", SCHEDULERS),
          link("positive", "CONDITIONING"), link("negative", "CONDITIONING"), link("latent_image", "LATENT"),
          integer("start_at_step", 0, 0, 10000), integer("end_at_step", 10000, 0, 10000),
          Input("return_with_leftover_noise", ("disable", "enable"))),
         ("LATENT",)),
    Node("SamplerCustomAdvanced", "SamplerCustomAdvanced", "sampling/custom_sampling",
         (link("noise", "NOISE"), link("guider", "GUIDER"), link("sampler", "SAMPLER"), link("sigmas", "SIGMAS"),
          link("latent_image", "LATENT")),
         ("LATENT", "LATENT"), ("output", "denoised_output"), python_module=_CUSTOM),
    Node("RandomNoise", "RandomNoise", "sampling/custom_sampling/noise", (Input("noise_seed", "INT", _SEED),),
         ("NOISE",), python_module=_CUSTOM),
    Node("KSamplerSelect", "KSamplerSelect", "sampling/custom_sampling/samplers",
         (catalog("sampler_name", SAMPLERS),), ("SAMPLER",), python_module=_CUSTOM),
    Node("BasicScheduler", "BasicScheduler", "sampling/custom_sampling/schedulers",
         (link("model", "MODEL"), catalog("scheduler", SCHEDULERS), _STEPS, _DENOISE), ("SIGMAS",),
         python_module=_CUSTOM),
    Node("BasicGuider", "BasicGuider", "sampling/custom_sampling/guiders",
         (link("model", "MODEL"), link("conditioning", "CONDITIONING")), ("GUIDER",), python_module=_CUSTOM),
    Node("CFGGuider", "CFGGuider", "sampling/custom_sampling/guiders",
         (link("model", "MODEL"), link("positive", "CONDITIONING"), link("negative", "CONDITIONING"), _CFG),
         ("GUIDER",), python_module=_CUSTOM),
    # spotgen: ComfyUI's shift runs to 100
    Node("ModelSamplingSD3", "ModelSamplingSD3", "advanced/model",
         (link("model", "MODEL"), number("shift", 3.0, 0.0, MAX_SHIFT, 0.01)), ("MODEL",),
         python_module="comfy_extras.nodes_model_advanced"),
    Node("ModelSamplingFlux", "ModelSamplingFlux", "advanced/model",
         (link("model", "MODEL"), number("max_shift", 1.15, 0.0, 100.0, 0.01),
          number("base_shift", 0.5, 0.0, 100.0, 0.01), integer("width", 1024, 16, MAX_SIDE, 8),
          integer("height", 1024, 16, MAX_SIDE, 8)), ("MODEL",), python_module="comfy_extras.nodes_model_advanced"),
)
