"""SD 3.5's transformer in Stability AI's original layout (``joint_blocks.*``, ``x_embedder``, ``final_layer``...),
as ``sd3.5_medium.safetensors`` keeps it under ``model.diffusion_model.``: the inverse of diffusers'
``convert_sd3_transformer_checkpoint_to_diffusers``, which reads it (and which the tests run on what this writes).
Used to write the tiny SD 3.5 single file (``runtime.models.tinyforms``).
"""

from __future__ import annotations

from typing import Any

_TOP = {"pos_embed.proj": "x_embedder.proj", "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
        "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2", "context_embedder": "context_embedder",
        "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
        "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2", "proj_out": "final_layer.linear"}
#: Per block, diffusers' module -> the original's; the context block's last four are absent from the last block.
_BLOCK = {"attn.norm_q": "x_block.attn.ln_q", "attn.norm_k": "x_block.attn.ln_k",
          "attn.norm_added_q": "context_block.attn.ln_q", "attn.norm_added_k": "context_block.attn.ln_k",
          "attn.to_out.0": "x_block.attn.proj", "attn2.norm_q": "x_block.attn2.ln_q",
          "attn2.norm_k": "x_block.attn2.ln_k", "attn2.to_out.0": "x_block.attn2.proj",
          "norm1.linear": "x_block.adaLN_modulation.1", "ff.net.0.proj": "x_block.mlp.fc1",
          "ff.net.2": "x_block.mlp.fc2", "norm1_context.linear": "context_block.adaLN_modulation.1",
          "attn.to_add_out": "context_block.attn.proj", "ff_context.net.0.proj": "context_block.mlp.fc1",
          "ff_context.net.2": "context_block.mlp.fc2"}
_FUSED = {"x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
          "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
          "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v")}
PREFIX = "model.diffusion_model."


def _swap(tensor: Any) -> Any:
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def to_original(state: dict[str, Any]) -> dict[str, Any]:
    """A diffusers ``SD3Transformer2DModel`` state dict in the original layout, under ``model.diffusion_model.``."""
    import torch

    blocks = len({key.split(".")[1] for key in state if key.startswith("transformer_blocks.")})
    out: dict[str, Any] = {"pos_embed": state["pos_embed.pos_embed"]}
    for new, old in _TOP.items():
        out |= {f"{old}.{leaf}": state[f"{new}.{leaf}"] for leaf in ("weight", "bias")}
    out |= {f"final_layer.adaLN_modulation.1.{leaf}": _swap(state[f"norm_out.linear.{leaf}"])
            for leaf in ("weight", "bias")}
    for i in range(blocks):
        new, old = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        for key, value in state.items():
            if not key.startswith(new):
                continue
            module, _, leaf = key[len(new):].rpartition(".")
            if module in _BLOCK:  # norms' weights keep their name (RMSNorm ``weight``)
                last_context = i == blocks - 1 and module == "norm1_context.linear"
                out[f"{old}{_BLOCK[module]}.{leaf}"] = _swap(value) if last_context else value
        for fused, parts in _FUSED.items():
            for leaf in ("weight", "bias"):
                if f"{new}{parts[0]}.{leaf}" in state:
                    out[f"{old}{fused}.{leaf}"] = torch.cat([state[f"{new}{part}.{leaf}"] for part in parts])
    return {PREFIX + key: value for key, value in out.items()}
