"""Flux's transformer in black-forest-labs' original layout (``double_blocks.*``, ``single_blocks.*``, ``img_in``...)
and in diffusers' layout, both ways.

``flux1-dev.safetensors``, ComfyUI's ``flux1-dev-fp8.safetensors`` (under ``model.diffusion_model.``) and city96's
GGUF files keep the original layout. diffusers 0.42's own converter (``convert_flux_transformer_checkpoint_to_
diffusers``) assumes FLUX.1's width (3072) when it splits a single block's fused ``linear1``, so it cannot read a
narrower transformer, such as the tiny ones that test this path; ``to_diffusers`` splits by the tensors' own
shapes instead and otherwise renames exactly as it does (``tests/models/test_flow_forms.py`` compares the two at
FLUX.1's shapes). Splits are along the first dimension only, which a GGUF tensor keeps in rows (its quantization
blocks run along the last), so quantized tensors split without being dequantized. ``to_original`` is the inverse,
used to write the tiny files.
"""

from __future__ import annotations

from typing import Any

#: Renamed one to one: diffusers' module -> the original's (the leaf ``weight``/``bias`` is kept).
_TOP = {"time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
        "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
        "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
        "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
        "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
        "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
        "context_embedder": "txt_in", "x_embedder": "img_in", "proj_out": "final_layer.linear"}
_DOUBLE = {"norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
           "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2", "ff_context.net.0.proj": "txt_mlp.0",
           "ff_context.net.2": "txt_mlp.2", "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj"}
_DOUBLE_NORMS = {"attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
                 "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm"}
#: Fused in the original: diffusers' modules, in the order they are stacked along the first dimension.
_DOUBLE_FUSED = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                 "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
_SINGLE = {"norm.linear": "modulation.lin", "proj_out": "linear2"}
_SINGLE_NORMS = {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}
_SINGLE_FUSED = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")  # linear1: q, k, v, then the MLP's input
_FINAL_NORM = ("norm_out.linear", "final_layer.adaLN_modulation.1")  # shift and scale swapped
PREFIX = "model.diffusion_model."  # ComfyUI's and SD WebUI's prefix of the transformer in an all-in-one file
#: A key every original-layout Flux transformer has.
MARKER = "double_blocks.0.img_attn.qkv.weight"


def _blocks(state: dict[str, Any], prefix: str) -> int:
    return len({key.split(".")[1] for key in state if key.startswith(prefix)})


def _swap(tensor: Any) -> Any:
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def to_original(state: dict[str, Any]) -> dict[str, Any]:
    """A diffusers ``FluxTransformer2DModel`` state dict in the original layout (no prefix)."""
    import torch

    out: dict[str, Any] = {}
    for leaf in ("weight", "bias"):
        for new, old in _TOP.items():
            if f"{new}.{leaf}" in state:
                out[f"{old}.{leaf}"] = state[f"{new}.{leaf}"]
        out[f"{_FINAL_NORM[1]}.{leaf}"] = _swap(state[f"{_FINAL_NORM[0]}.{leaf}"])
        for i in range(_blocks(state, "transformer_blocks.")):
            new, old = f"transformer_blocks.{i}.", f"double_blocks.{i}."
            out |= {f"{old}{o}.{leaf}": state[f"{new}{n}.{leaf}"] for n, o in _DOUBLE.items()}
            out |= {f"{old}{o}.{leaf}": torch.cat([state[f"{new}{n}.{leaf}"] for n in parts])
                    for o, parts in _DOUBLE_FUSED.items()}
        for i in range(_blocks(state, "single_transformer_blocks.")):
            new, old = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
            out |= {f"{old}{o}.{leaf}": state[f"{new}{n}.{leaf}"] for n, o in _SINGLE.items()}
            out[f"{old}linear1.{leaf}"] = torch.cat([state[f"{new}{n}.{leaf}"] for n in _SINGLE_FUSED])
    for i in range(_blocks(state, "transformer_blocks.")):
        out |= {f"double_blocks.{i}.{o}.scale": state[f"transformer_blocks.{i}.{n}.weight"]
                for n, o in _DOUBLE_NORMS.items()}
    for i in range(_blocks(state, "single_transformer_blocks.")):
        out |= {f"single_blocks.{i}.{o}.scale": state[f"single_transformer_blocks.{i}.{n}.weight"]
                for n, o in _SINGLE_NORMS.items()}
    return out


def to_diffusers(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The transformer of an original-layout file (bare or under ``model.diffusion_model.``; other keys, such as
    an all-in-one file's text encoders and VAE, are left out) in diffusers' layout; a ``KeyError`` names the first
    key a Flux transformer must have and the file lacks."""
    import torch

    state = {key.removeprefix(PREFIX): value for key, value in checkpoint.items()
             if key.startswith(PREFIX) or not key.startswith(("text_encoders.", "first_stage_model.", "vae.",
                                                                "cond_stage_model.", "conditioner."))}
    if MARKER not in state:
        raise KeyError(MARKER)
    heads_width = state["double_blocks.0.img_attn.proj.weight"].shape[0]  # the attention's inner width
    out: dict[str, Any] = {}
    for leaf in ("weight", "bias"):
        for new, old in _TOP.items():
            if f"{old}.{leaf}" in state or not old.startswith("guidance_in"):  # schnell has no guidance embedding
                out[f"{new}.{leaf}"] = state[f"{old}.{leaf}"]
        out[f"{_FINAL_NORM[0]}.{leaf}"] = _swap(state[f"{_FINAL_NORM[1]}.{leaf}"])
        for i in range(_blocks(state, "double_blocks.")):
            new, old = f"transformer_blocks.{i}.", f"double_blocks.{i}."
            out |= {f"{new}{n}.{leaf}": state[f"{old}{o}.{leaf}"] for n, o in _DOUBLE.items()}
            for o, parts in _DOUBLE_FUSED.items():
                out |= dict(zip((f"{new}{n}.{leaf}" for n in parts), torch.chunk(state[f"{old}{o}.{leaf}"], 3),
                                strict=True))
        for i in range(_blocks(state, "single_blocks.")):
            new, old = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
            out |= {f"{new}{n}.{leaf}": state[f"{old}{o}.{leaf}"] for n, o in _SINGLE.items()}
            fused = state[f"{old}linear1.{leaf}"]
            sizes = (heads_width,) * 3 + (fused.shape[0] - 3 * heads_width,)
            out |= dict(zip((f"{new}{n}.{leaf}" for n in _SINGLE_FUSED), torch.split(fused, sizes), strict=True))
    for i in range(_blocks(state, "double_blocks.")):
        out |= {f"transformer_blocks.{i}.{n}.weight": state[f"double_blocks.{i}.{o}.scale"]
                for n, o in _DOUBLE_NORMS.items()}
    for i in range(_blocks(state, "single_blocks.")):
        out |= {f"single_transformer_blocks.{i}.{n}.weight": state[f"single_blocks.{i}.{o}.scale"]
                for n, o in _SINGLE_NORMS.items()}
    return out
