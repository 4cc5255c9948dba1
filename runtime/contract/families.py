"""Model families: the rules a request meets once the model it names is known.

The inputs (``runtime.contract.inputs``) are checked without knowing the model. What depends on the family is
checked here, by the API when its settings say the model's family and always by the worker, which reads the
family from its catalog: the default size (512 for SD 1.x/2.x, 1024 for SDXL), the pixel budget, and SDXL's
size and crop conditioning, which SD 1.x models do not have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.contract.errors import ContractError


@dataclass(frozen=True)
class FamilyRules:
    #: Width and height of a request that sets neither: the resolution the family was trained at.
    default_size: int
    #: Largest width x height a request may ask for.
    max_pixels: int
    #: Whether the UNet is conditioned on the original size, crop and target size (SDXL's micro-conditioning).
    size_conditioning: bool


FAMILIES: dict[str, FamilyRules] = {
    "sd1": FamilyRules(default_size=512, max_pixels=1536 * 1536, size_conditioning=False),
    "sd2": FamilyRules(default_size=512, max_pixels=1536 * 1536, size_conditioning=False),
    "sdxl": FamilyRules(default_size=1024, max_pixels=2048 * 2048, size_conditioning=True),
}
#: Inputs only SDXL's micro-conditioning reads.
SIZE_CONDITIONING_FIELDS = ("original_size", "target_size", "crops_coords_top_left")


def family_rules(family: str) -> FamilyRules:
    try:
        return FAMILIES[family]
    except KeyError:
        raise ContractError("unsupported_model_family", f"model family {family!r} is not one of "
                            f"{', '.join(FAMILIES)}", "model") from None


def for_family(inputs: Any, family: str, prefix: str = "inputs") -> Any:
    """``inputs`` (a built-in pipeline's validated inputs) with the family's default size filled in, or a
    ``ContractError`` naming the field that the family does not allow."""
    rules = family_rules(family)
    if not rules.size_conditioning:
        for name in SIZE_CONDITIONING_FIELDS:
            if getattr(inputs, name, None) is not None:
                raise ContractError("invalid_field", f"{prefix}.{name}: only SDXL models take size conditioning; "
                                    f"this is a {family} model", f"{prefix}.{name}")
    if getattr(type(inputs), "sized_by_image", False) and (inputs.width is None or inputs.height is None):
        return inputs  # the image decides what is left out (``runtime.contract.edits.inpaint_size``)
    width = inputs.width if inputs.width is not None else rules.default_size
    height = inputs.height if inputs.height is not None else rules.default_size
    if width * height > rules.max_pixels:
        raise ContractError("invalid_field", f"{prefix}.width: width x height is {width * height} pixels, above the "
                            f"{family} budget of {rules.max_pixels}", f"{prefix}.width")
    hires = getattr(inputs, "hires", None)
    if hires is not None:
        target = hires.target(width, height)
        if target[0] * target[1] > rules.max_pixels:
            raise ContractError("invalid_field", f"{prefix}.hires: the second pass's {target[0]}x{target[1]} is "
                                f"{target[0] * target[1]} pixels, above the {family} budget of {rules.max_pixels}",
                                f"{prefix}.hires")
    if getattr(inputs, "refiner", None) is not None and not rules.size_conditioning:
        raise ContractError("invalid_field", f"{prefix}.refiner: the refiner takes over SDXL models' denoising; this "
                            f"is a {family} model", f"{prefix}.refiner")
    return inputs.model_copy(update={"width": width, "height": height})
