"""The API's checks of the inputs that steer an image (issue 27): what the contract cannot know because it depends
on the deployment's settings. Each ControlNet unit's id must be one the API lists (``SPOTGEN_CONTROLNETS``) and,
where the settings give families, of the base model's family; each IP-Adapter's id likewise where the settings list
adapters; and units are not combined with SDXL's refiner, whose pass runs without them. A bad request is
refused naming the field, before anything is stored (the worker checks all of it again against its catalog)."""

from __future__ import annotations

from typing import Any

from runtime.config import Settings
from runtime.contract import ContractError


def same_family(settings: Settings, model: str, other: str, what: str, code: str, field: str) -> None:
    """ContractError ``code`` naming ``field`` when the settings give ``other`` (a ``what``: "LoRA", "ControlNet"...)
    another family than ``model``; nothing where they do not give both families (the worker checks then)."""
    families = settings.model_families
    family = families.get(model)
    if family and other in families and families[other] != family:
        raise ContractError(code, f"{field}: {what} {other!r} is for {families[other]} models and {model!r} is a "
                            f"{family} model", field)


def check(settings: Settings, model: str, inputs: Any) -> None:
    """ContractError naming ``inputs.controlnets.N.id`` (or ``inputs.ip_adapters.N.id``) for an id the API does
    not list, or of another family than ``model``."""
    if getattr(inputs, "controlnets", None) and getattr(inputs, "refiner", None) is not None:
        # as the worker refuses it (pipelines/controlunits.py, refuse_passes); hires fix runs the units in both passes
        raise ContractError("unsupported_combination", "inputs.controlnets: ControlNet units do not run with the "
                            "refiner (no ControlNet guides its pass); leave out one of the two", "inputs.controlnets")
    for i, unit in enumerate(getattr(inputs, "controlnets", [])):
        field = f"inputs.controlnets.{i}.id"
        if unit.id not in settings.controlnets:
            raise ContractError("unknown_model", f"{field}: unknown ControlNet {unit.id!r}; available: "
                                f"{', '.join(settings.controlnets) or 'none'}", field)
        same_family(settings, model, unit.id, "ControlNet", "incompatible_controlnet", field)
    listed = getattr(settings, "ip_adapters", None)  # a settings list where the deployment has one; else the worker
    for i, adapter in enumerate(getattr(inputs, "ip_adapters", [])):
        field = f"inputs.ip_adapters.{i}.id"
        if listed is not None and adapter.id not in listed:
            raise ContractError("unknown_model", f"{field}: unknown IP-Adapter {adapter.id!r}; available: "
                                f"{', '.join(listed) or 'none'}", field)
        same_family(settings, model, adapter.id, "IP-Adapter", "incompatible_ip_adapter", field)
