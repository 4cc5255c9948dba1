"""ControlNets in graphs: ``ControlNetLoader``, ``ControlNetApply``, ``ControlNetApplyAdvanced``, ``Canny``, and the
``KSampler`` that runs a controlled conditioning with its ControlNet.

``NODES``: the classes this area runs; ``executor.node_table`` merges it after ``imagenodes``, so its KSampler is
the one that runs: a conditioning with a control goes to ``controlled``, anything else to ``noisemask.ksampler``
(which hands an unmasked latent on to the core sampler), so noise masks and ControlNets both work. A latent with a
noise mask and a controlled conditioning together are refused naming the KSampler's ``latent_image``: diffusers'
ControlNet inpainting class on an ordinary checkpoint is not what ComfyUI does.

A control rides on the conditioning, as in ComfyUI: the Apply nodes return the conditioning with (ControlNet, map,
strength, start, end) attached; the KSampler reads the positive's. diffusers runs the ControlNet on both halves of
the guided batch (spotgen's ``controlnet`` pipeline does the same), so a control on the positive only (the old
``ControlNetApply``) guides the negative too, where ComfyUI would leave it alone. Strength 0 hands the conditioning
on unchanged, as ComfyUI does. The sampler stays one pass of the job's checkpoint stream
(``pipelines.resume.run_resumable``), and nothing here draws noise, so an interruption resumes byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from pipelines.comfyui import denoise, inpaintmodel, noisemask, samplers, sampling
from pipelines.comfyui.noisemask import MaskedLatent
from pipelines.comfyui.registry import Node
from pipelines.comfyui.unetpass import UnetPass
from pipelines.comfyui.values import Conditioning, Images, Latent, Model
from pipelines.common import job_pipeline
from pipelines.loading import controlnet_model, torch_dtype
from pipelines.preprocess import canny as canny_edges
from runtime.contract import ContractError
from runtime.models.catalog import ModelError
from runtime.plugins import RunContext

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution


@dataclass(frozen=True)
class ControlNet:
    """CONTROL_NET: a catalog ControlNet, loaded once per process (``pipelines.loading.controlnet_model``)."""

    model_id: str
    family: str
    dtype: torch.dtype
    net: Any


@dataclass(frozen=True)
class Control:
    """What an Apply node attaches: the net, its map (IMAGE pixels), its scale and guidance window (0..1)."""

    net: ControlNet
    image: torch.Tensor
    strength: float
    start: float
    end: float


@dataclass(frozen=True)
class Controlled(Conditioning):
    """CONDITIONING with a ControlNet's control on it."""

    control: Control | None = None


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """IMAGE pixels (batch, 3, h, w) in [0, 1] as 8-bit RGB images, rounded as diffusers' own conversion."""
    array = (pixels.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(one)) for one in array]


def from_pil(made: list[Image.Image]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(one, dtype=np.float32) / 255.0).permute(2, 0, 1)
                        for one in made])


def controlnet_loader(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    """The catalog ControlNet the API put in place of ``control_net_name``; refused naming it when the catalog
    has no ControlNet by that id."""
    where = ex.where(node_id, "control_net_name")
    model_id = args.get("control_net_name")
    try:
        if not isinstance(model_id, str):
            raise ModelError("invalid_model_id", f"{model_id!r} is not a model id")
        entry = ex.store.entry(model_id, "controlnet")
        net = controlnet_model(ex.store, model_id)
    except ModelError as exc:
        raise ContractError(exc.code, f"{where}: {exc}", where) from None
    return (ControlNet(model_id, entry.family, torch_dtype(ex.store.device, entry.dtype), net),)


def _control(ex: Execution, node_id: str, args: dict[str, Any], start: float, end: float) -> Control | None:
    net = ex.want(args["control_net"], ControlNet, node_id, "control_net")
    image = ex.want(args["image"], Images, node_id, "image").pixels
    strength = ex.number(node_id, args, "strength")
    if not 0 <= strength <= 10:
        where = ex.where(node_id, "strength")
        raise ContractError("invalid_field", f"{where}: from 0 to 10, not {strength}", where)
    if not 0 <= start < end <= 1:
        where = ex.where(node_id, "end_percent" if 0 <= start <= 1 else "start_percent")
        raise ContractError("invalid_field", f"{where}: start_percent and end_percent within 0..1, the start "
                            f"below the end (got {start} and {end})", where)
    return None if strength == 0 else Control(net, image, strength, start, end)


def _unstacked(ex: Execution, node_id: str, conditioning: Conditioning, name: str) -> Conditioning:
    """A conditioning that has no control yet: two ControlNets on one conditioning are refused naming the input
    (ComfyUI runs both; the one-net sampler here would keep only the last)."""
    if isinstance(conditioning, Controlled) and conditioning.control is not None:
        where = ex.where(node_id, name)
        raise ContractError("unsupported_combination", f"{where}: already has a ControlNet; several ControlNets on "
                            "one conditioning do not run yet", where)
    return conditioning


def _with(conditioning: Conditioning, control: Control | None) -> Conditioning:
    """The conditioning with ``control`` (None at strength 0: the same parts, marked as having been through an
    Apply node, so the sampler knows no control was lost)."""
    return Controlled(conditioning.parts, control=control)


def controlnet_apply(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    conditioning = ex.want(args["conditioning"], Conditioning, node_id, "conditioning")
    _unstacked(ex, node_id, conditioning, "conditioning")
    return (_with(conditioning, _control(ex, node_id, args, 0.0, 1.0)),)


def controlnet_apply_advanced(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    """Both conditionings carry the control (the optional ``vae`` is for models whose ControlNets take latents;
    SD's and SDXL's take pixels, so it is not read)."""
    positive = ex.want(args["positive"], Conditioning, node_id, "positive")
    negative = ex.want(args["negative"], Conditioning, node_id, "negative")
    _unstacked(ex, node_id, positive, "positive")
    _unstacked(ex, node_id, negative, "negative")
    control = _control(ex, node_id, args, ex.number(node_id, args, "start_percent"),
                       ex.number(node_id, args, "end_percent"))
    return _with(positive, control), _with(negative, control)


def canny(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    """ComfyUI's thresholds (0..1 of the gradient on pixels in [0, 1]) as OpenCV's on 8-bit pixels: x 255,
    rounded; the edges of spotgen's ``preprocess`` Canny (white on black, RGB)."""
    pixels = ex.want(args["image"], Images, node_id, "image").pixels
    low, high = (ex.number(node_id, args, name) for name in ("low_threshold", "high_threshold"))
    for name, value in (("low_threshold", low), ("high_threshold", high)):
        if not 0.01 <= value <= 0.99:
            where = ex.where(node_id, name)
            raise ContractError("invalid_field", f"{where}: from 0.01 to 0.99, not {value}", where)
    made = [canny_edges(one, round(low * 255), round(high * 255)) for one in to_pil(pixels)]
    return (Images(from_pil(made)),)


def ksampler(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    """KSampler: a controlled positive runs with its ControlNet (``controlled``); anything else is imagenodes'."""
    positive, negative = args.get("positive"), args.get("negative")
    control = positive.control if isinstance(positive, Controlled) else None
    other = negative.control if isinstance(negative, Controlled) else None
    _lost(ex, node_id, "positive", positive)
    _lost(ex, node_id, "negative", negative)
    if other is not None and other is not control:
        where = ex.where(node_id, "negative")
        raise ContractError("unsupported_combination", f"{where}: its ControlNet is not the positive's; diffusers "
                            "runs one control on both, so put the same Apply node's outputs on both (or the "
                            "control on the positive alone)", where)
    if control is None:
        return noisemask.ksampler(ex, node_id, args)
    latent = args.get("latent_image")
    if isinstance(latent, MaskedLatent) and latent.noise_mask is not None:
        where = ex.where(node_id, "latent_image")
        raise ContractError("unsupported_combination", f"{where}: a latent with a noise mask does not run with a "
                            "ControlNet on its conditioning yet; leave out one of the two", where)
    return controlled(ex, node_id, args, control)


def _lost(ex: Execution, node_id: str, name: str, value: Any) -> None:
    """Refuse, naming the input, a conditioning whose control a node on the way dropped (ConditioningCombine and
    the like make a plain conditioning): an Apply node upstream, and no control left."""
    if isinstance(value, Controlled):  # its control, or none from an Apply at strength 0
        return
    seen, todo = set(), [ex.graph[node_id]["inputs"].get(name)]
    while todo:
        link = todo.pop()
        if not (isinstance(link, list) and link and isinstance(link[0], str)) or link[0] in seen:
            continue
        seen.add(link[0])
        node = ex.graph.get(link[0], {})
        if str(node.get("class_type", "")).startswith("ControlNetApply"):
            where = ex.where(node_id, name)
            raise ContractError("unsupported_combination", f"{where}: node {link[0]}'s ControlNet does not reach "
                                "the sampler through the nodes between them yet; apply it last", where)
        todo.extend(node.get("inputs", {}).values())


def _check(ex: Execution, node_id: str, model: Model, control: Control) -> None:
    """A ControlNet of another family or dtype than the model is refused naming the sampler's ``positive``."""
    inpaintmodel.refuse(ex, node_id, model, "a sampler with a ControlNet")
    where = ex.where(node_id, "positive")
    net = control.net
    if net.family != model.family:
        raise ContractError("incompatible_controlnet", f"{where}: ControlNet {net.model_id!r} is for {net.family} "
                            f"models and {model.model_id!r} is a {model.family} model", where)
    if net.dtype != model.base.unet.dtype:
        raise ContractError("incompatible_controlnet", f"{where}: ControlNet {net.model_id!r} runs in {net.dtype} "
                            f"and {model.model_id!r} in {model.base.unet.dtype}: give them the same catalog "
                            "dtype", where)


def controlled(ex: Execution, node_id: str, args: dict[str, Any], control: Control) -> tuple[Any, ...]:
    """The core KSampler's pass on diffusers' ControlNet class of the same task, the map resized (Lanczos) to the
    image's size as spotgen's ControlNet pipeline fits its input."""
    model = ex.want(args["model"], Model, node_id, "model")
    positive = ex.want(args["positive"], Conditioning, node_id, "positive")
    negative = ex.want(args["negative"], Conditioning, node_id, "negative")
    latent = ex.want(args["latent_image"], Latent, node_id, "latent_image")
    _check(ex, node_id, model, control)
    choice = samplers.choice(args["sampler_name"], args["scheduler"], ex.where(node_id))
    run = sampling.schedule(ex, node_id, args, choice)
    seed = denoise.seed(ex, node_id, args)
    cfg = ex.number(node_id, args, "cfg")
    prompts = sampling._prompts(model, positive, negative, ex.where(node_id, "positive"))
    txt2img = latent.empty and run.strength >= 1
    task_name = "txt2img" if txt2img else "img2img"
    cls = model.kind.task_class(task_name, model.variant, control=True)
    height, width = (side * model.base.vae_scale_factor for side in latent.samples.shape[-2:])
    maps = [one if one.size == (width, height) else one.resize((width, height), Image.Resampling.LANCZOS)
            for one in to_pil(control.image)]
    task: dict[str, Any] = {"width": width, "height": height} if txt2img else \
        {"image": latent.samples.to(model.base.unet.dtype), "strength": run.strength}
    task |= {model.kind.control_key(task_name): maps[0] if len(maps) == 1 else maps,
             "controlnet_conditioning_scale": control.strength, "control_guidance_start": control.start,
             "control_guidance_end": control.end}

    unet = UnetPass(model, positive, negative, latent, seed, cfg)

    def sample(ctx: RunContext) -> torch.Tensor:
        if run.total == 0:
            return latent.samples
        view = job_pipeline(cls, model.base, choice, family=model.kind, controlnet=control.net.net)
        return unet.run(ex, node_id, ctx, view, run.total, **prompts, **task)

    out = ex.sample(node_id, sample)
    return (Latent(out, empty=latent.empty and run.total == 0),)


NODES: dict[str, Node] = {
    "ControlNetLoader": Node(controlnet_loader),
    "ControlNetApply": Node(controlnet_apply),
    "ControlNetApplyAdvanced": Node(controlnet_apply_advanced),
    "Canny": Node(canny),
    "KSampler": Node(ksampler, plan=sampling.plan),
}
