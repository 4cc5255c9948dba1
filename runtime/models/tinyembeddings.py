"""Tiny textual-inversion embeddings with random vectors, in the formats people download them in.

A textual-inversion embedding is a few learned token vectors that stand for a word. SD WebUI saves them as
``emb_params`` (n, width) for SD 1.x/2.x and as ``clip_l`` (n, 768) plus ``clip_g`` (n, 1280) for SDXL's two
text encoders; diffusers' ``save_textual_inversion`` writes one ``{token: vectors}`` key. The tiny text encoders
are 32 wide (SDXL's second 48), so the vectors here are too. Their scale is that of a unit normal: far from any
token's own embedding, so a prompt naming one clearly changes the pixels.
"""

from __future__ import annotations

from typing import Any

#: Catalog id -> (family, format). The ids are the words a prompt names them by.
EMBEDDINGS = {"tiny-emb-sd1": ("sd1", "webui"), "tiny-emb-sd1-diffusers": ("sd1", "diffusers"),
              "tiny-emb-sdxl": ("sdxl", "webui")}


def embedding_weights(model_id: str, seed: int) -> dict[str, Any]:
    """The file's tensors: two vectors in WebUI's format, three (under a token of its own) in diffusers'."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    family, layout = EMBEDDINGS[model_id]

    def vectors(n: int, width: int) -> torch.Tensor:
        return torch.randn(n, width, generator=generator)

    if family == "sdxl":
        return {"clip_l": vectors(2, 32), "clip_g": vectors(2, 48)}
    return {"emb_params": vectors(2, 32)} if layout == "webui" else {"<tiny-token>": vectors(3, 32)}
