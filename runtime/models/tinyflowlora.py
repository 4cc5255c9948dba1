"""Tiny Flux and SD 3 LoRAs, in the formats people share them in: diffusers', kohya's and XLabs'.

diffusers' (peft) format names each adapted linear layer by its dotted path in the transformer
(``transformer.transformer_blocks.0.attn.to_q.lora_A.weight``). kohya's sd-scripts, whose Flux LoRAs fill Civitai,
name the original Flux checkpoint's layers with underscores (``lora_unet_double_blocks_0_img_attn_qkv``), where
the image stream's query, key and value are one fused linear layer (so one LoRA pair covers three of diffusers'
layers), plus an ``alpha`` per layer. XLabs' trainer names its attention processors' pairs
(``double_blocks.0.processor.qkv_lora1.down.weight``: 1 for the image stream, 2 for the text stream), without
alphas. ``FluxPipeline.load_lora_weights`` converts the last two to the first.

The kohya file adapts the double blocks and the single blocks' output projection, not the single blocks' fused
``linear1``: diffusers splits that one at FLUX.1's own widths (3072 x 3 + 12288), which a tiny model has not.
"""

from __future__ import annotations

from typing import Any

RANK = 4
#: The linear layers a diffusers-format LoRA adapts: attention (both streams of a joint block) and the single
#: blocks' output projection, as the common Flux and SD 3 trainers do.
TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
           "attn.add_v_proj", "attn.to_add_out")
#: kohya's name of each layer of a Flux double block, and the diffusers layers it covers (fused ones first to last).
KOHYA_DOUBLE = {"img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn_proj": ("attn.to_out.0",),
                "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
                "txt_attn_proj": ("attn.to_add_out",), "img_mlp_0": ("ff.net.0.proj",), "img_mlp_2": ("ff.net.2",),
                "txt_mlp_0": ("ff_context.net.0.proj",), "txt_mlp_2": ("ff_context.net.2",)}
KOHYA_SINGLE = {"linear2": ("proj_out",)}
#: XLabs' processor pairs of a Flux double block.
XLABS_DOUBLE = {"qkv_lora1": ("attn.to_q", "attn.to_k", "attn.to_v"), "proj_lora1": ("attn.to_out.0",),
                "qkv_lora2": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
                "proj_lora2": ("attn.to_add_out",)}


def diffusers_lora(transformer: Any, seed: int, scale: float = 1.5) -> dict[str, Any]:
    """A rank-4 adapter in diffusers' format for every ``TARGETS`` layer of a Flux or SD 3 transformer. ``scale``
    sets how far it moves the weights: enough to change the pixels clearly."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for name, layer in transformer.named_modules():
        if isinstance(layer, torch.nn.Linear) and _is_target(name):
            down, up = _pair(generator, layer.in_features, layer.out_features, scale)
            weights[f"transformer.{name}.lora_A.weight"] = down
            weights[f"transformer.{name}.lora_B.weight"] = up
    return weights


def kohya_lora(transformer: Any, seed: int, scale: float = 1.5) -> dict[str, Any]:
    """A Flux adapter as kohya's sd-scripts save it (alpha 2 for rank 4: diffusers scales it by alpha / rank)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for blocks, kohya, names in (("transformer_blocks", "double_blocks", KOHYA_DOUBLE),
                                 ("single_transformer_blocks", "single_blocks", KOHYA_SINGLE)):
        for index, block in enumerate(getattr(transformer, blocks)):
            for name, layers in names.items():
                down, up = _fused_pair(generator, [block.get_submodule(layer) for layer in layers], scale)
                key = f"lora_unet_{kohya}_{index}_{name}"
                weights.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                                f"{key}.alpha": torch.tensor(RANK / 2)})
    return weights


def xlabs_lora(transformer: Any, seed: int, scale: float = 1.5) -> dict[str, Any]:
    """A Flux adapter as XLabs' trainer saves it: the double blocks' attention processors, no alphas."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for index, block in enumerate(transformer.transformer_blocks):
        for name, layers in XLABS_DOUBLE.items():
            down, up = _fused_pair(generator, [block.get_submodule(layer) for layer in layers], scale)
            key = f"double_blocks.{index}.processor.{name}"
            weights.update({f"{key}.down.weight": down, f"{key}.up.weight": up})
    return weights


def _is_target(name: str) -> bool:
    return name.endswith(TARGETS) or (name.startswith("single_transformer_blocks.") and name.endswith(".proj_out"))


def _fused_pair(generator: Any, layers: list[Any], scale: float) -> tuple[Any, Any]:
    """One pair for layers that share their input and whose outputs the original checkpoint concatenates."""
    return _pair(generator, layers[0].in_features, sum(layer.out_features for layer in layers), scale)


def _pair(generator: Any, fan_in: int, fan_out: int, scale: float) -> tuple[Any, Any]:
    import torch

    down = torch.randn(RANK, fan_in, generator=generator) * scale / fan_in ** 0.5
    up = torch.randn(fan_out, RANK, generator=generator) * scale / RANK ** 0.5
    return down.contiguous(), up.contiguous()
