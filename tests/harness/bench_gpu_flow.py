"""`make bench-gpu`'s Flux.1 and SD 3.5 workloads (tests/harness/bench_gpu.py runs them after SD's): peak GPU memory
and images per second of spotgen's path against plain diffusers, at full size with random weights.

Each workload (``WORKLOADS``: a table, so another form of a model is one more row) builds its base pipeline at the
real architecture's full size on the device, in bfloat16, with random weights (nothing is downloaded): Flux.1's
transformer (19 double and 38 single blocks, 3072 wide), T5-XXL (24 layers, 4096 wide), CLIP-L, CLIP-G for SD 3.5
medium (its MMDiT-X transformer: 24 layers, 1536 wide, dual attention in the first 13), and the 16-channel VAE. The
tokenizers are the tiny models' local ones (the vocabulary's size costs nothing; T5 still reads
``max_sequence_length`` tokens). Random weights run at the speed of real ones, and make noise, not pictures.

Both sides run in this process on the very same modules, one image of each in turn (the side that goes first
alternating), after one warm-up image each:

* **spotgen:** the worker's own ``Txt2Img.run`` with a ``RunContext`` as the worker makes one: the catalog entry's
  family and variant, the contract's per-family defaults, the loader's attention and compile settings
  (``pipelines.loading.base_pipeline``, fed the pipeline built here instead of reading files), the family's per-job
  view, ``run_resumable`` with the per-step report and its checkpoint-ready state. No queue, API or storage: the
  SD rows measure those end to end.
* **plain diffusers:** ``FluxPipeline(**components)`` / ``StableDiffusion3Pipeline(**components)`` called with the
  same size, steps, guidance, T5 length and seeds.

Per side: images/s and peak GPU memory (``torch.cuda.max_memory_allocated`` since the side's first image, the
weights included), and spotgen's images/s divided by plain diffusers' (goal >= 0.97: the path adds a few
milliseconds per job). Every image is checked as the SD rows' are (size, not one flat colour, no NaN).

With ``--tiny`` (or no CUDA) each workload runs its tiny stand-in from the tiny models' catalog, loaded the ordinary
way, on the CPU at 64 px and at most 4 steps: that checks the script, not speed; peak memory is then None.
"""

from __future__ import annotations

import contextlib
import gc
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.verdicts import finite, goal, image_problems

PROMPT = "a red fox in the snow"
GOAL = 0.97

#: The full-size architectures' configs (diffusers' and transformers' argument names).
FLUX_TRANSFORMER = {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
                    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
                    "pooled_projection_dim": 768, "axes_dims_rope": (16, 56, 56)}
SD35_MEDIUM_TRANSFORMER = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16,
                           "num_layers": 24, "attention_head_dim": 64, "num_attention_heads": 24,
                           "joint_attention_dim": 4096, "caption_projection_dim": 1536, "pooled_projection_dim": 2048,
                           "pos_embed_max_size": 384, "dual_attention_layers": tuple(range(13)),
                           "qk_norm": "rms_norm"}
T5_XXL = {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24,
          "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32, "vocab_size": 32128}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "projection_dim": 768, "hidden_act": "quick_gelu"}
CLIP_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
          "projection_dim": 1280, "hidden_act": "gelu"}
VAE_16 = {"in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": (128, 256, 512, 512),
          "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
          "layers_per_block": 2, "sample_size": 1024, "use_quant_conv": False, "use_post_quant_conv": False}


@dataclass(frozen=True)
class FlowWorkload:
    """One row: the catalog entry spotgen serves it as, its job, and how its full-size model is built."""

    family: str
    variant: str | None
    size: int
    steps: int
    tiny: str  # the tiny model that stands in with --tiny
    build: Callable[[str], Any]  # device -> the base pipeline at full size, random weights, bfloat16
    inputs: dict[str, Any] = field(default_factory=dict)  # the job's inputs beyond prompt, size and steps
    call: dict[str, Any] = field(default_factory=dict)  # plain diffusers' arguments for the same settings
    dtype: str = "bfloat16"  # the catalog entry's
    #: The catalog entry's form (docs/models.md "Flux and SD 3.5 on 24 GB GPUs"), applied to the built model as the
    #: loader applies it to files (``pipelines.flowload.serve``); plain diffusers runs the same modules.
    form: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _built_as(device: str) -> Iterator[None]:
    """Modules made on ``device`` in bfloat16 from the start (a float32 Flux would not fit beside its copy)."""
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            yield
    finally:
        torch.set_default_dtype(before)


def _t5() -> tuple[Any, Any]:
    from transformers import T5Config, T5EncoderModel

    from runtime.models.tinyflow import t5_tokenizer

    return T5EncoderModel(T5Config(**T5_XXL, dense_act_fn="gelu_new", is_gated_act=True)).eval(), t5_tokenizer()


def _clip(config: dict[str, Any], projected: bool = True, **tokenizer: Any) -> tuple[Any, Any]:
    """A CLIP text encoder (SD 3.5's are projected, Flux's is not) and the tiny models' local tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from runtime.models.tiny import _tokenizer

    tok = _tokenizer(**tokenizer)
    cls = CLIPTextModelWithProjection if projected else CLIPTextModel
    return cls(CLIPTextConfig(vocab_size=len(tok), max_position_embeddings=77, **config)).eval(), tok


def flux(device: str, schnell: bool = False) -> Any:
    """FLUX.1 dev (a guidance embedding, a resolution-dependent shift) or schnell."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from runtime.models.tinyflow import FLUX_DEV_SCHEDULER, FLUX_SCHNELL_SCHEDULER, FLUX_VAE

    with _built_as(device):
        transformer = FluxTransformer2DModel(**FLUX_TRANSFORMER, guidance_embeds=not schnell)
        text_encoder, tokenizer = _clip(CLIP_L, projected=False)
        text_encoder_2, tokenizer_2 = _t5()
        vae = AutoencoderKL(**VAE_16, **FLUX_VAE)
    scheduler = FlowMatchEulerDiscreteScheduler(**(FLUX_SCHNELL_SCHEDULER if schnell else FLUX_DEV_SCHEDULER))
    return FluxPipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                        tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                        image_encoder=None, feature_extractor=None)


def sd35_medium(device: str) -> Any:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    from runtime.models.tinyflow import SD3_SCHEDULER, SD3_VAE

    with _built_as(device):
        transformer = SD3Transformer2DModel(**SD35_MEDIUM_TRANSFORMER)
        text_encoder, tokenizer = _clip(CLIP_L)
        text_encoder_2, tokenizer_2 = _clip(CLIP_G, pad_token="!")
        text_encoder_3, tokenizer_3 = _t5()
        vae = AutoencoderKL(**VAE_16, **SD3_VAE)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)


#: name -> workload. schnell: 4 steps, no guidance, 256 T5 tokens; dev: distilled guidance 3.5, 512 tokens, 8 steps
#: (a real job takes 20-28: the ratio is per image, so fewer steps only weigh the fixed costs more); SD 3.5 medium:
#: CFG 4.5 (two transformer passes a step), 256 tokens.
WORKLOADS: dict[str, FlowWorkload] = {
    "flux-schnell": FlowWorkload("flux", "schnell", 1024, 4, "tiny-flux-schnell", lambda d: flux(d, schnell=True),
                                 call={"guidance_scale": 0.0, "max_sequence_length": 256}),
    "flux-dev": FlowWorkload("flux", None, 1024, 8, "tiny-flux", flux, inputs={"guidance": 3.5},
                             call={"guidance_scale": 3.5, "max_sequence_length": 512}),
    "sd35-medium": FlowWorkload("sd3", None, 1024, 12, "tiny-sd3", sd35_medium, inputs={"guidance_scale": 4.5},
                                call={"guidance_scale": 4.5, "max_sequence_length": 256}),
    # dev with its transformer in fp8 (ComfyUI's flux1-dev-fp8 as served): each layer widened to bf16 as it runs
    "flux-dev-fp8": FlowWorkload("flux", None, 1024, 8, "tiny-flux-fp8", flux, inputs={"guidance": 3.5},
                                 call={"guidance_scale": 3.5, "max_sequence_length": 512},
                                 form={"storage_dtype": "float8_e4m3fn"}),
}


@contextlib.contextmanager
def _served(workload: FlowWorkload, name: str, root: Path, device: str) -> Iterator[tuple[Any, str]]:
    """A model store whose catalog names the workload as spotgen serves it, the base pipeline built here standing in
    for the files the family would read (``Family.load``); and the model id."""
    from pipelines.families import family_of
    from runtime.models.store import ModelStore

    root.mkdir(parents=True, exist_ok=True)
    (root / name).mkdir(exist_ok=True)
    from pipelines.flowload import serve

    entry = {"path": name, "family": workload.family, "dtype": workload.dtype,
             **({"variant": workload.variant} if workload.variant else {}), **workload.form}
    (root / "catalog.json").write_text(json.dumps({"models": {name: entry}}))
    kind, pipe = family_of(workload.family, name), workload.build(device)
    # this instance, until the row ends; in the entry's form
    kind.load = lambda store, model_id: serve(pipe, store.entry(model_id), device)  # type: ignore[method-assign]
    try:
        yield ModelStore(root, device), name
    finally:
        del kind.load


def run(name: str, tiny_models: Path | None, root: Path, images: int, device: str) -> dict[str, Any]:
    """One workload's row: each side's images/s and peak memory, and what is wrong with any image made."""
    workload = WORKLOADS[name]
    if tiny_models is not None:
        from runtime.models.store import ModelStore

        served: Any = contextlib.nullcontext((ModelStore(tiny_models, "cpu"), workload.tiny))
        size, steps = 64, min(workload.steps, 4)
    else:
        served, size, steps = _served(workload, name, root / name, device), workload.size, workload.steps
    with served as (store, model_id):
        row = _sides(store, model_id, workload, size, steps, images, device)
    gc.collect()
    if device.startswith("cuda"):  # the next row builds its own model: this one's must be gone (a leak shows here)
        import torch

        torch.cuda.empty_cache()
        row["left_allocated_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    return row


def _sides(store: Any, model_id: str, workload: FlowWorkload, size: int, steps: int, images: int,
           device: str) -> dict[str, Any]:
    import torch

    from pipelines.flowload import held_bytes
    from pipelines.loading import base_pipeline
    from pipelines.txt2img import Txt2Img
    from runtime.plugins import RunContext

    base = base_pipeline(store, model_id)
    plain = type(base)(**base.components)  # plain diffusers, on the same modules
    plain.set_progress_bar_config(disable=True)
    inputs = Txt2Img.Inputs(prompt=PROMPT, width=size, height=size, steps=steps, **workload.inputs)
    cuda = device.startswith("cuda")

    def spotgen(seed: int) -> Any:
        return Txt2Img().run(inputs, RunContext(job_id="bench", model=model_id, seed=seed, device=device,
                                                models=store, report=lambda step, total, state: None,
                                                fetch_image=lambda ref: None))[0]

    def diffusers(seed: int) -> Any:
        with torch.inference_mode():
            return plain(PROMPT, width=size, height=size, num_inference_steps=steps,
                         generator=torch.Generator("cpu").manual_seed(seed), **workload.call).images[0]

    sides = {"spotgen": spotgen, "diffusers": diffusers}
    seconds: dict[str, float] = dict.fromkeys(sides, 0.0)
    peak: dict[str, int] = dict.fromkeys(sides, 0)
    problems: list[str] = []
    for round_ in range(images + 1):  # round 0 is each side's warm-up, not timed
        for side in list(sides) if round_ % 2 == 0 else list(sides)[::-1]:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            image = sides[side](round_)
            if cuda:
                torch.cuda.synchronize()
                peak[side] = max(peak[side], torch.cuda.max_memory_allocated())
            if round_:
                seconds[side] += time.perf_counter() - started
            problems += [f"{side} {model_id}, image {round_}: {p}" for p in image_problems(image, size)]
    per_s = {side: images / seconds[side] for side in sides}
    ratio = round(per_s["spotgen"] / per_s["diffusers"], 3)
    return {"model": model_id, "family": workload.family, "variant": workload.variant, "size": size, "steps": steps,
            "images": images, "spotgen_images_per_s": round(per_s["spotgen"], 4),
            "plain_images_per_s": round(per_s["diffusers"], 4), "ratio_to_plain": ratio,
            "spotgen_peak_gib": round(peak["spotgen"] / 2**30, 2) if cuda else None,
            "transformer_bytes": held_bytes(base.transformer),  # as stored (fp8: about half of bf16)
            "plain_peak_gib": round(peak["diffusers"] / 2**30, 2) if cuda else None,
            "images_checked": 2 * (images + 1), "image_problems": problems,
            "goals": {"ratio_to_plain": goal(ratio, ">=", GOAL)}}


def problems(rows: dict[str, Any], asked: list[str], cuda: bool) -> list[str]:
    """What makes the flow rows worthless (as ``verdicts.gpu_problems`` for SD's): a row missing, an image that is
    not one, a figure missing or not finite (peak memory too, on a GPU)."""
    found: list[str] = []
    for name in asked:
        row = rows.get(name)
        if row is None:
            found.append(f"{name}: no figures")
            continue
        found += row["image_problems"]
        figures = ("spotgen_images_per_s", "plain_images_per_s", "ratio_to_plain") + (
            ("spotgen_peak_gib", "plain_peak_gib") if cuda else ())
        found += [f"{name}: {key} is {row.get(key)}" for key in figures if not (finite(row.get(key)) and row[key] > 0)]
    return found


def report(rows: dict[str, Any]) -> list[str]:
    lines = []
    for name, row in rows.items():
        peak = (f"; peak GPU memory {row['spotgen_peak_gib']:.1f} GiB vs {row['plain_peak_gib']:.1f} GiB"
                if row["spotgen_peak_gib"] is not None else "")
        lines.append(f"  {name} ({row['model']}, {row['size']} px, {row['steps']} steps): spotgen "
                     f"{row['spotgen_images_per_s']:.3f} img/s, plain diffusers {row['plain_images_per_s']:.3f} img/s "
                     f"= {row['ratio_to_plain']:.2f}x (goal >= {GOAL}){peak}")
    return lines
