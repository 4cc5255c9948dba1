"""Model families: the rules a request meets once the model it names is known.

The inputs (``runtime.contract.inputs``) are checked without knowing the model. What depends on the family is
checked here, by the API when its settings say the model's family (and variant) and always by the worker, which
reads both from its catalog: the default size and what sizes divide by (8 for the UNet families; 16 for Flux and
SD 3.5, whose transformers work on 2 x 2 patches of latents), the pixel budget, the samplers the family's noise
process can use, its guidance (classifier-free, Flux's distilled ``guidance``, none for timestep-distilled models:
Flux schnell, SD 3.5 large turbo), SDXL's size and crop conditioning, and the inputs that only some families read.

The worker's side of a family (loading, prompt encoding, samplers, per-job views) is one module of
``pipelines/families``; this table is what the API needs to refuse a request without loading anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtime.contract.errors import ContractError

#: Flow-matching samplers diffusers has (``pipelines/flowsamplers.py``) and the schedules each takes. Euler a
#: (``FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)``) draws its noise outside the job's generators, so
#: neither the same seed nor a resume would give the same image: it is refused.
FLOW_SAMPLERS: dict[str, tuple[str, ...]] = {"euler": ("default", "karras", "exponential"), "dpmpp_2m": ("default",),
                                             "unipc": ("default",)}
#: SD 3.5 takes Heun too: diffusers' Flux pipelines always pass their own sigmas, which FlowMatchHeun does not take.
SD3_SAMPLERS: dict[str, tuple[str, ...]] = {**FLOW_SAMPLERS, "heun": ("default",)}
#: Variants of timestep-distilled models: they run a few steps without guidance.
UNGUIDED_VARIANTS = ("schnell", "turbo")


@dataclass(frozen=True)
class FamilyRules:
    #: Width and height of a request that sets neither: the resolution the family was trained at.
    default_size: int
    #: Largest width x height a request may ask for.
    max_pixels: int
    #: Whether the UNet is conditioned on the original size, crop and target size (SDXL's micro-conditioning).
    size_conditioning: bool
    #: What width and height must divide by.
    multiple_of: int = 8
    #: ``guidance_scale`` when a request leaves it out (classifier-free guidance; 1 is off).
    default_guidance: float = 7.5
    #: Flux's distilled guidance (``inputs.guidance``) when left out; None: the family has none and refuses it.
    distilled_guidance: float | None = None
    #: The distilled guidance of a variant when left out (Flux Fill: 30, as black-forest-labs recommend).
    variant_guidance: dict[str, float] = field(default_factory=dict)
    #: Samplers and their schedules; None: every pair of ``runtime.contract.SAMPLER_SCHEDULES``.
    samplers: dict[str, tuple[str, ...]] | None = None
    #: Samplers that run on plain text-to-image only (no input image, no ControlNet), with why.
    txt2img_samplers: dict[str, str] = field(default_factory=dict)
    #: Inputs this family reads that others refuse, by field name.
    own_inputs: frozenset[str] = field(default_factory=frozenset)
    #: Inputs of other families that this one refuses, with why.
    refused: dict[str, str] = field(default_factory=dict)


_FLOW_REFUSED = {
    "clip_skip": "it conditions on CLIP's penultimate layer already, with T5; clip_skip is for SD and SDXL",
    "tiling": "seamless tiling pads a UNet's and a VAE's convolutions; this model's transformer has none",
    "hires": "hires fix runs on SD and SDXL models (run img2img at the larger size)",
    "ip_adapters": "no IP-Adapter for this family is in the catalog",
}
#: Why the multistep solvers run plain text-to-image only on the flow families.
_TXT2IMG_ONLY = ("diffusers' other Flux and SD 3.5 pipelines pass their own sigmas or noise the input image with the "
                 "flow schedulers' scale_noise, which the multistep solvers lack; use euler")
_MULTISTEP_TXT2IMG = dict.fromkeys(("dpmpp_2m", "unipc"), _TXT2IMG_ONLY)
#: The value of each refusable input that asks for nothing.
_UNSET: dict[str, Any] = {"clip_skip": 1, "tiling": False, "ip_adapters": []}
FAMILIES: dict[str, FamilyRules] = {
    "sd1": FamilyRules(default_size=512, max_pixels=1536 * 1536, size_conditioning=False),
    "sd2": FamilyRules(default_size=512, max_pixels=1536 * 1536, size_conditioning=False),
    "sdxl": FamilyRules(default_size=1024, max_pixels=2048 * 2048, size_conditioning=True),
    "flux": FamilyRules(default_size=1024, max_pixels=2048 * 2048, size_conditioning=False, multiple_of=16,
                        default_guidance=1.0, distilled_guidance=3.5, variant_guidance={"inpainting": 30.0},
                        samplers=FLOW_SAMPLERS, txt2img_samplers=_MULTISTEP_TXT2IMG,
                        own_inputs=frozenset({"guidance", "shift", "max_sequence_length"}), refused=_FLOW_REFUSED),
    "sd3": FamilyRules(default_size=1024, max_pixels=2048 * 2048, size_conditioning=False, multiple_of=16,
                       default_guidance=4.5, samplers=SD3_SAMPLERS, txt2img_samplers=_MULTISTEP_TXT2IMG,
                       own_inputs=frozenset({"shift", "max_sequence_length", "skip_layer_guidance"}),
                       refused=_FLOW_REFUSED),
}
#: Inputs only SDXL's micro-conditioning reads.
SIZE_CONDITIONING_FIELDS = ("original_size", "target_size", "crops_coords_top_left")
#: Inputs only some families read (``FamilyRules.own_inputs``): each is refused by the others, naming it.
FAMILY_INPUTS = ("guidance", "shift", "max_sequence_length", "skip_layer_guidance")


def family_rules(family: str) -> FamilyRules:
    try:
        return FAMILIES[family]
    except KeyError:
        raise ContractError("unsupported_model_family", f"model family {family!r} is not one of "
                            f"{', '.join(FAMILIES)}", "model") from None


def _refuse(prefix: str, name: str, why: str) -> ContractError:
    return ContractError("invalid_field", f"{prefix}.{name}: {why}", f"{prefix}.{name}")


def _check_inputs(inputs: Any, family: str, rules: FamilyRules, prefix: str) -> None:
    if not rules.size_conditioning:
        for name in SIZE_CONDITIONING_FIELDS:
            if getattr(inputs, name, None) is not None:
                raise _refuse(prefix, name, f"only SDXL models take size conditioning; this is a {family} model")
    for name in FAMILY_INPUTS:
        if getattr(inputs, name, None) is not None and name not in rules.own_inputs:
            owners = [other for other, r in FAMILIES.items() if name in r.own_inputs]
            raise _refuse(prefix, name, f"only {' and '.join(owners)} models take {name}; this is a {family} model")
    for name, why in rules.refused.items():
        if getattr(inputs, name, None) not in (None, _UNSET.get(name)):
            raise _refuse(prefix, name, f"not for {family} models: {why}")
    if rules.samplers is not None:
        if inputs.scheduler not in rules.samplers:
            raise _refuse(prefix, "scheduler", f"{family} models run the flow-matching samplers "
                          f"{', '.join(rules.samplers)}; {inputs.scheduler!r} is not one of them"
                          + (" (it draws noise outside the job's seed, so no image would repeat)"
                             if inputs.scheduler == "euler_a" else ""))
        why = rules.txt2img_samplers.get(inputs.scheduler)
        if why and (hasattr(inputs, "image") or hasattr(inputs, "control_image") or inputs.controlnets):
            raise _refuse(prefix, "scheduler", f"on {family} models, {inputs.scheduler!r} runs text-to-image without "
                          f"ControlNet units only: {why}")
        if inputs.schedule not in rules.samplers[inputs.scheduler]:
            raise _refuse(prefix, "schedule", f"on {family} models, sampler {inputs.scheduler!r} takes the schedules "
                          f"{', '.join(rules.samplers[inputs.scheduler])}")
    for edge in ("width", "height"):
        value = getattr(inputs, edge, None)
        if value is not None and value % rules.multiple_of:
            raise _refuse(prefix, edge, f"{family} models take sizes in multiples of {rules.multiple_of}; "
                          f"{value} is not")


def _guidance(inputs: Any, family: str, variant: str | None, rules: FamilyRules, prefix: str) -> dict[str, Any]:
    """The guidance fields with the family's defaults filled in, or a refusal for an unguided model."""
    if variant in UNGUIDED_VARIANTS:
        if inputs.guidance is not None:
            raise _refuse(prefix, "guidance", f"a {variant} model is timestep-distilled and runs without guidance")
        if inputs.guidance_scale is not None and inputs.guidance_scale > 1:
            raise _refuse(prefix, "guidance_scale", f"a {variant} model is timestep-distilled and runs without "
                          f"guidance; leave guidance_scale out (or at most 1)")
        return {"guidance_scale": 1.0 if inputs.guidance_scale is None else inputs.guidance_scale}
    out = {"guidance_scale": rules.default_guidance if inputs.guidance_scale is None else inputs.guidance_scale}
    if rules.distilled_guidance is not None:
        default = rules.variant_guidance.get(variant or "", rules.distilled_guidance)
        out["guidance"] = default if inputs.guidance is None else inputs.guidance
    return out


def for_family(inputs: Any, family: str, prefix: str = "inputs", variant: str | None = None) -> Any:
    """``inputs`` (a built-in pipeline's validated inputs) with the family's defaults filled in (size, guidance),
    or a ``ContractError`` naming the field that the family (or the model's ``variant``) does not allow."""
    rules = family_rules(family)
    _check_inputs(inputs, family, rules, prefix)
    update = _guidance(inputs, family, variant, rules, prefix) if hasattr(inputs, "guidance_scale") else {}
    if getattr(type(inputs), "sized_by_image", False) and (inputs.width is None or inputs.height is None):
        return inputs.model_copy(update=update)  # the image decides the size (``runtime.contract.edits``)
    width = inputs.width if inputs.width is not None else rules.default_size
    height = inputs.height if inputs.height is not None else rules.default_size
    if width * height > rules.max_pixels:
        raise _refuse(prefix, "width", f"width x height is {width * height} pixels, above the {family} budget of "
                      f"{rules.max_pixels}")
    hires = getattr(inputs, "hires", None)
    if hires is not None:
        target = hires.target(width, height)
        if target[0] * target[1] > rules.max_pixels:
            raise _refuse(prefix, "hires", f"the second pass's {target[0]}x{target[1]} is {target[0] * target[1]} "
                          f"pixels, above the {family} budget of {rules.max_pixels}")
    if getattr(inputs, "refiner", None) is not None and not rules.size_conditioning:
        raise _refuse(prefix, "refiner", f"the refiner takes over SDXL models' denoising; this is a {family} model")
    return inputs.model_copy(update={"width": width, "height": height, **update})
