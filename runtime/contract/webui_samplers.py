"""The sampler, schedule and ``eta`` of a WebUI body, as WebUI 1.10 reads them (``runtime.contract.webui``).

WebUI 1.9+ splits the sampler from its schedule type (``scheduler``), "Automatic" being the sampler's own; a
suffix in the name ("DPM++ 2M Karras", the names before 1.9) wins. ``eta`` is what WebUI's k-diffusion samplers
make of it: at eta 0 an ancestral sampler is the one without noise, which spotgen runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime.contract.errors import ContractError
from runtime.contract.inputs import SAMPLER_SCHEDULES, WEBUI_SAMPLERS
from runtime.contract.webui_families import AUTOMATIC, SIMPLE, sampler_field
from runtime.contract.webui_schema import _BY_WEBUI_NAME, _ETA, _SCHEDULE_TYPES, _WITHOUT_NOISE


def sampler_of(body: Mapping[str, Any]) -> tuple[str, str, str]:
    """(sampler, schedule, the sampler whose "Automatic" schedule applies) as WebUI's ``get_sampler_and_scheduler``
    reads ``sampler_name or sampler_index`` (its API's default being Euler) and ``scheduler``, and ``eta`` as its
    k-diffusion samplers take it: ``_eta``."""
    field = sampler_field(body)
    given, scheduler = body.get(field) or "Euler", body.get("scheduler") or "Automatic"  # WebUI reads "" so too
    if scheduler.casefold() not in _SCHEDULE_TYPES:
        raise ContractError("invalid_field", f"scheduler: schedule type {scheduler!r} is not supported; choose "
                            "Automatic, Uniform, Karras, Exponential or SGM Uniform", "scheduler")
    schedule, source, name = _SCHEDULE_TYPES[scheduler.casefold()], "scheduler", given.strip()
    for word in sorted(_SCHEDULE_TYPES, key=len, reverse=True):  # "SGM Uniform" before "Uniform"
        if name.casefold().endswith(" " + word):
            name, schedule, source = name[: -len(word) - 1].rstrip(), _SCHEDULE_TYPES[word], field
            break
    sampler = _BY_WEBUI_NAME.get(name.casefold())
    if sampler is None:
        raise ContractError("invalid_field", f"{field}: unknown sampler {given!r}; choose one of "
                            f"{', '.join(WEBUI_SAMPLERS.values())}, optionally followed by Karras, Exponential or "
                            "SGM Uniform", field)
    own = sampler
    sampler = _WITHOUT_NOISE[own] if body.get("eta") == 0 and own in _WITHOUT_NOISE else own
    if schedule not in (None, SIMPLE) and schedule not in SAMPLER_SCHEDULES[sampler]:
        raise ContractError("invalid_field", f"{source}: sampler {WEBUI_SAMPLERS[sampler]!r} does not take "
                            f"schedule {schedule!r} here; it takes {', '.join(SAMPLER_SCHEDULES[sampler])}", source)
    _check_eta(own, body.get("eta"))
    # None: the sampler's own schedule, SIMPLE: Forge's; both read once the model is known (``family_inputs``)
    return sampler, schedule or AUTOMATIC, own


def _check_eta(sampler: str, eta: float | None) -> None:
    """WebUI passes ``eta`` to the samplers that take one (``_ETA``; left out, its ``eta_ancestral`` 1 or
    ``eta_ddim`` 0), and the others ignore it. At eta 0 an ancestral or SDE sampler adds no noise: k-diffusion's
    Euler a is then Euler step for step, DPM2 a is DPM2, and DPM++ 2M SDE is DPM++ 2M (its midpoint update
    without the noise term is 2M's), which run instead (``_WITHOUT_NOISE``). spotgen's samplers take no other eta."""
    if eta is None or sampler not in _ETA or eta == _ETA[sampler] or (eta == 0 and sampler in _WITHOUT_NOISE):
        return
    name, runs = WEBUI_SAMPLERS[sampler], f"eta {_ETA[sampler]:g}"
    if sampler in _WITHOUT_NOISE:
        runs += f", or eta 0 (which is {WEBUI_SAMPLERS[_WITHOUT_NOISE[sampler]]})"
    raise ContractError("unsupported_field", f"eta: {eta:g} is not supported for {name!r}; spotgen runs it at "
                        f"{runs} (or leave eta out)", "eta")
