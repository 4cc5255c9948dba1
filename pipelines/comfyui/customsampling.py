"""ComfyUI's custom sampling: ``RandomNoise``, ``KSamplerSelect``, ``BasicScheduler``, ``BasicGuider``,
``CFGGuider`` and ``SamplerCustomAdvanced``, on Flux and SD 3.5 models (``flowsampler``) and on SD and SDXL, where
the sampler node is the core KSampler's run (``sampling.ksampler``: the seed, the pair, steps and denoise of these
nodes, the guider's cfg; BasicGuider's is 1, which runs no negative) in a pass of its own.

The first five only describe the run (a seed, a sampler name, a schedule, a model with its conditioning); the
``SamplerCustomAdvanced`` node runs it on a flow model as ``flowsampler``'s pass (the one KSampler runs on these
models too), named as the executor names passes (``samplercustomadvanced-13``). BasicGuider runs the conditioning
alone; CFGGuider adds the negative at ``cfg``. A graph may mix these nodes with KSamplers: the executor plans every
sampler node as a pass of one stream. ``SamplerCustomAdvanced``'s ``denoised_output`` is its ``output``: at the
schedule's end (sigma 0) the two agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.comfyui import denoise, flowsampler, sampling
from pipelines.comfyui.flowvalues import FlowModel, Guider, Noise, SamplerName, Sigmas
from pipelines.comfyui.values import Conditioning, Latent, Model
from runtime.contract import ContractError

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution

CLASS = "SamplerCustomAdvanced"


def random_noise(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    return (Noise(denoise.seed(ex, node_id, args, "noise_seed")),)


def ksampler_select(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    return (SamplerName(str(args["sampler_name"]), ex.where(node_id, "sampler_name")),)


def _model(ex: Execution, node_id: str, value: Any) -> FlowModel | Model:
    """A MODEL of any family (a flow model's, or a checkpoint's ``values.Model``)."""
    return value if isinstance(value, FlowModel) else ex.want(value, Model, node_id, "model")


def basic_scheduler(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    model = _model(ex, node_id, args["model"])
    steps, amount = ex.integer(node_id, args, "steps"), ex.number(node_id, args, "denoise")
    if steps < 1 or not 0 <= amount <= 1:
        where = ex.where(node_id, "steps" if steps < 1 else "denoise")
        raise ContractError("invalid_field", f"{where}: steps must be 1 or more and denoise between 0 and 1", where)
    return (Sigmas(model, str(args["scheduler"]), steps, amount, ex.where(node_id), node_id),)


def _conditioning(ex: Execution, node_id: str, name: str, value: Any, model: FlowModel | Model) -> Conditioning:
    """A guider's conditioning; on a flow model, encodings of ``model``'s encoders (or zeros of them)."""
    if isinstance(model, Model):  # SD's: the core KSampler's checks apply (``sampling``)
        return ex.want(value, Conditioning, node_id, name)
    return flowsampler.conditioning(ex, node_id, name, value, model)


def basic_guider(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    model = _model(ex, node_id, args["model"])
    return (Guider(model, _conditioning(ex, node_id, "conditioning", args["conditioning"], model),
                   where=ex.where(node_id, "model")),)


def cfg_guider(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    model = _model(ex, node_id, args["model"])
    positive = _conditioning(ex, node_id, "positive", args["positive"], model)
    negative = _conditioning(ex, node_id, "negative", args["negative"], model)
    return (Guider(model, positive, negative, flowsampler.cfg(ex, node_id, args), where=ex.where(node_id, "model")),)


def _inputs(ex: Execution, node_id: str) -> tuple[SamplerName, Sigmas]:
    sampler = ex.want(ex.resolve(node_id, "sampler"), SamplerName, node_id, "sampler")
    return sampler, ex.want(ex.resolve(node_id, "sigmas"), Sigmas, node_id, "sigmas")


def plan(ex: Execution, node_id: str, args: dict[str, Any] | None = None) -> int:
    """The steps a SamplerCustomAdvanced node runs (``flowsampler.planned``; on SD, KSampler's count). Its model is
    the sigmas' (the node has no ``model`` input), so ``args`` go unread."""
    sampler, sigmas = _inputs(ex, node_id)
    flowsampler.choice(sampler, sigmas)  # a pair the family does not run: refused naming the node that set it
    model = sigmas.model
    if isinstance(model, Model):
        return sampling.plan(ex, sigmas.node, _ksampler_args(sampler, sigmas, model))
    return flowsampler.planned(ex, sampler, sigmas)


def _ksampler_args(sampler: SamplerName, sigmas: Sigmas, model: Model) -> dict[str, Any]:
    return {"model": model, "sampler_name": sampler.name, "scheduler": sigmas.scheduler, "steps": sigmas.steps,
            "denoise": sigmas.denoise}


def sampler_custom_advanced(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    noise = ex.want(args["noise"], Noise, node_id, "noise")
    guider = ex.want(args["guider"], Guider, node_id, "guider")
    sampler, sigmas = _inputs(ex, node_id)
    latent = ex.want(args["latent_image"], Latent, node_id, "latent_image")
    model = guider.model
    if sigmas.model.model_id != model.model_id:
        where = ex.where(node_id, "sigmas")
        raise ContractError("mismatched_model", f"{where}: the schedule is {sigmas.model.model_id!r}'s and the "
                            f"guider's model is {model.model_id!r}", where)
    flowsampler.choice(sampler, sigmas)
    if isinstance(model, Model):
        core = {**_ksampler_args(sampler, sigmas, model), "seed": noise.seed, "cfg": guider.cfg,
                "positive": guider.positive, "negative": guider.negative or guider.positive, "latent_image": latent}
        done = sampling.ksampler(ex, node_id, core)[0]
        return done, done
    out = flowsampler.run(ex, node_id, noise, guider, sampler, sigmas, latent)
    return out, out
