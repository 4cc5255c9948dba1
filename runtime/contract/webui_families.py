"""What a WebUI body means on Flux.1 and SD 3.5 checkpoints: Forge's reading (the WebUI fork that runs them).

People run these models in Forge, whose API is WebUI's plus ``distilled_cfg_scale`` (Flux dev's distilled
guidance, "Distilled CFG Scale", 3.5 by default), and their clients send WebUI's fields as they always have. On
these models Forge reads them so, and so does spotgen:

- ``cfg_scale`` is true classifier-free guidance ("CFG Scale": 1 is off, above 1 runs the model twice a step with
  the negative prompt), on Flux dev as on SD 3.5. Timestep-distilled models (Flux schnell, SD 3.5 large turbo:
  the settings' ``model_variants``) run without guidance, and WebUI clients send ``cfg_scale`` every time (7 by
  default), so it is not forwarded to them: they run at 1, and ``info`` says so.
- ``distilled_cfg_scale`` is Flux's ``guidance``; left out, Forge's 3.5 on a Flux model. A model without
  distilled guidance (schnell, turbo, SD, SDXL, SD 3.5) refuses it when given, naming it: a client that asks for
  it is told that it does nothing there.
- The samplers are the family's flow-matching ones (``runtime.contract.families``) by their WebUI names ("Euler"
  ...), and "Automatic" is the model's own schedule (not WebUI's Karras for DPM++ 2M: that is an SD choice).
  Forge's "Simple", which Flux and SD 3.5 users pick, spaces the timesteps evenly as the model's own schedule
  does: it is Automatic here (spotgen shifts them by the image's size as diffusers does; Forge by a fixed shift).
  Another sampler is refused naming ``sampler_name``.

The family and variant come from the settings (``model_families``, ``model_variants``); for a model they do not
list, the body is forwarded as it is and the worker's catalog decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime.contract.errors import ContractError
from runtime.contract.families import FAMILIES, UNGUIDED_VARIANTS
from runtime.contract.inputs import WEBUI_SAMPLERS
from runtime.contract.webui_schema import _OWN_SCHEDULE, SCHEDULE_LABELS

#: Forge's ``distilled_cfg_scale`` when a body leaves it out.
FORGE_DISTILLED_CFG = 3.5
#: Forge's schedule type that is the flow-matching families' own (see the module docstring).
SIMPLE = "simple"
#: WebUI's "Automatic" until the model is known: the sampler's own schedule (``_OWN_SCHEDULE``) on SD and SDXL,
#: the model's own on the flow-matching families.
AUTOMATIC = "automatic"


def sampler_field(body: Mapping[str, Any]) -> str:
    """The field the body named its sampler in (WebUI reads ``sampler_name or sampler_index``)."""
    return "sampler_name" if body.get("sampler_name") else "sampler_index"


#: Variants made for another task than the routes' txt2img and img2img (an inpainting model runs img2img with a
#: ``mask`` only: WebUI's inpainting).
_OTHER_TASK = {"inpainting": "an inpainting model (its denoiser also takes a mask: Flux Fill, SD inpainting); "
                             "give img2img a mask to inpaint with it",
               "refiner": "SDXL's refiner, which takes over the end of another model's denoising (a native "
                          "txt2img job's refiner); it does not start from noise"}


def family_inputs(body: Mapping[str, Any], inputs: dict[str, Any], family: str | None,
                  variant: str | None, model_field: str = "override_settings.sd_model_checkpoint",
                  own_schedule_of: str | None = None, pipeline: str = "txt2img") -> dict[str, Any]:
    """``inputs`` of a body for a model of ``family`` and ``variant`` (None: not in the settings), read as Forge
    reads them on that family; a ContractError naming the body's field for what the family cannot run (the
    checkpoint, at ``model_field``, for a variant made for another task). "Automatic" is the schedule of
    ``own_schedule_of`` (the sampler the body named, where eta 0 made it another: ``webui._eta``)."""
    if variant in _OTHER_TASK and not (variant == "inpainting" and pipeline == "inpaint"):
        raise ContractError("unsupported_field", f"{model_field}: the checkpoint is {_OTHER_TASK[variant]}",
                            model_field)
    out = dict(inputs)
    if variant in UNGUIDED_VARIANTS:
        out["guidance_scale"] = 1.0  # cfg_scale, which every client sends, is not forwarded to an unguided model
    distilled = body.get("distilled_cfg_scale")
    if distilled is not None:
        out["guidance"] = distilled  # refused by the family rules where the model has none, naming the field
    elif family == "flux" and variant not in UNGUIDED_VARIANTS:
        out["guidance"] = FORGE_DISTILLED_CFG
    rules = FAMILIES.get(family or "")
    flow = rules is not None and rules.samplers is not None
    if out.get("schedule") == AUTOMATIC:
        own = own_schedule_of or out.get("scheduler", "euler")
        out["schedule"] = "default" if flow else _OWN_SCHEDULE.get(own, "default")
    elif out.get("schedule") == SIMPLE:
        if not flow:
            raise ContractError("invalid_field", "scheduler: schedule type 'Simple' is not supported for this "
                                "checkpoint: it is for Flux and SD 3.5 models (as the settings say them); choose "
                                "Automatic, Uniform, Karras, Exponential or SGM Uniform", "scheduler")
        out["schedule"] = "default"
    if rules is not None and rules.samplers is not None:
        field, sampler = sampler_field(body), out.get("scheduler", "euler")
        allowed = ", ".join(WEBUI_SAMPLERS[name] for name in rules.samplers)
        if sampler not in rules.samplers:
            why = (" (its noise is drawn outside the seed, so no image would repeat)" if sampler == "euler_a"
                   else "")
            raise ContractError("invalid_field", f"{field}: {family} models run the samplers {allowed}; "
                                f"{WEBUI_SAMPLERS.get(sampler, sampler)!r} is not one of them{why}", field)
        if out.get("schedule") not in rules.samplers[sampler]:
            labels = ", ".join(SCHEDULE_LABELS[s] for s in rules.samplers[sampler])
            raise ContractError("invalid_field", f"scheduler: on {family} models, {WEBUI_SAMPLERS[sampler]!r} takes "
                                f"the schedule types {labels} (and Simple, which is Automatic)", "scheduler")
    return out
