"""Tiny IP-Adapters and their image encoder, random but non-zero, in the layout the catalog takes.

An IP-Adapter has two parts: ``image_proj`` turns an image encoder's embedding into four extra tokens (a linear
layer and a layer norm), and ``ip_adapter`` holds, for every cross-attention layer of the UNet, a key and a value
projection of those tokens (``{n}.to_k_ip.weight``, ``{n}.to_v_ip.weight``, n = 1, 3, 5 ... in the order of the
UNet's attention processors, as diffusers' ``load_ip_adapter`` numbers them). The image encoder is a
CLIPVisionModelWithProjection; one tiny encoder serves the adapters of both families, as h94's SD 1.5 and SDXL
"vit-h" adapters share theirs.
"""

from __future__ import annotations

from typing import Any

#: The image encoder's embedding size (``projection_dim``), the input of every tiny adapter's ``image_proj``.
EMBED_DIM = 32
TOKENS = 4  # the image tokens a plain IP-Adapter adds


def image_encoder(seed: int, projection_dim: int = EMBED_DIM) -> Any:
    """A two-layer CLIP vision tower (32 x 32 images, 8 x 8 patches) with a projection."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                              image_size=32, patch_size=8, projection_dim=projection_dim, num_channels=3)
    return CLIPVisionModelWithProjection(config).eval()


def ip_adapter_weights(unet: Any, seed: int, scale: float = 0.5) -> dict[str, Any]:
    """An IP-Adapter for ``unet`` as one flat safetensors dict (``image_proj.*``, ``ip_adapter.*``). ``scale``
    sets how far its tokens move each cross-attention: enough to change the pixels clearly."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    blocks = list(unet.config.block_out_channels)

    def randn(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * scale / shape[-1] ** 0.5).contiguous()

    weights: dict[str, torch.Tensor] = {
        "image_proj.proj.weight": randn(cross * TOKENS, EMBED_DIM) * EMBED_DIM ** 0.5,
        "image_proj.proj.bias": randn(cross * TOKENS),
        "image_proj.norm.weight": 1.0 + randn(cross),
        "image_proj.norm.bias": randn(cross),
    }
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(blocks))[int(name[len("up_blocks.")])]
        else:
            hidden = blocks[int(name[len("down_blocks.")])]
        weights[f"ip_adapter.{key_id}.to_k_ip.weight"] = randn(hidden, cross) * 4
        weights[f"ip_adapter.{key_id}.to_v_ip.weight"] = randn(hidden, cross) * 4
        key_id += 2
    return weights
