"""Tiny LoRA adapters with random non-zero weights, in diffusers' format and in kohya's (SD WebUI's) format.

A LoRA adds ``up @ down`` (rank r) to a linear layer's weight. diffusers saves the pair as ``lora_A``/``lora_B``
under the module's dotted name (``unet.down_blocks.1...to_q.lora_A.weight``); kohya's sd-scripts, whose files
SD WebUI users download, save ``lora_down``/``lora_up`` under the name with underscores, prefixed by the
network (``lora_unet_``, ``lora_te_``, or ``lora_te1_``/``lora_te2_`` for SDXL's two text encoders), plus an
``alpha`` that scales the product by alpha / r. diffusers reads both; ``kohya_format`` writes the second from
the first, so a test can check that both load to the same adapter.
"""

from __future__ import annotations

from typing import Any

RANK = 4
#: The attention projections a LoRA adapts, in the UNet and in the CLIP text encoders.
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
#: kohya's network prefix of each diffusers component.
KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}
KOHYA_PREFIX_SDXL = {**KOHYA_PREFIX, "text_encoder": "lora_te1_"}


def lora_weights(pipe: Any, seed: int, scale: float = 0.5) -> dict[str, Any]:
    """A rank-4 adapter for every attention projection of ``pipe``'s UNet and text encoder(s), in diffusers'
    format. ``scale`` sets how far it moves the weights: enough to change the pixels clearly."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for component, targets in (("unet", UNET_TARGETS), ("text_encoder", TEXT_TARGETS),
                               ("text_encoder_2", TEXT_TARGETS)):
        module = getattr(pipe, component, None)
        if module is None:
            continue
        for name, layer in module.named_modules():
            if not isinstance(layer, torch.nn.Linear) or not name.endswith(targets):
                continue
            down = torch.randn(RANK, layer.in_features, generator=generator) * scale / layer.in_features ** 0.5
            up = torch.randn(layer.out_features, RANK, generator=generator) * scale / RANK ** 0.5
            weights[f"{component}.{name}.lora_A.weight"] = down.contiguous()
            weights[f"{component}.{name}.lora_B.weight"] = up.contiguous()
    return weights


def kohya_format(weights: dict[str, Any], sdxl: bool) -> dict[str, Any]:
    """The same adapter as kohya's sd-scripts write it (alpha = rank, so the scale alpha / r is 1)."""
    import torch

    prefixes = KOHYA_PREFIX_SDXL if sdxl else KOHYA_PREFIX
    out: dict[str, torch.Tensor] = {}
    for key, tensor in weights.items():
        component, rest = key.split(".", 1)
        module, kind = rest.rsplit(".lora_", 1)
        name = prefixes[component] + module.replace(".", "_")
        out[f"{name}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = tensor
        out[f"{name}.alpha"] = torch.tensor(float(RANK))
    return out
