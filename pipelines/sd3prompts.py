"""SD 3.5's prompts with WebUI's weighting where its encoders allow it: CLIP-L's and CLIP-G's tokens.

SD 3.5 reads a prompt through three encoders: the two CLIPs' per-token hidden states (their penultimate layer,
concatenated and zero-padded to T5's width) come first in the sequence the transformer attends to, then T5's
tokens; the CLIPs' pooled projections, concatenated, are its pooled vector. The CLIP tokens are encoded as WebUI
encodes SD's (``pipelines.prompts``: ``(word:1.3)`` weights, BREAK, 75-token chunks, each chunk its own pass, the
prompt and the negative padded to the same number of chunks); T5 reads the text with the syntax stripped, as Forge
does (``pipelines.families.flow.plain_text``). The pooled vectors are the first chunk's, as WebUI takes SDXL's.

diffusers uses embeddings given to it as they are (its SD3 ``encode_prompt`` repeats only those it makes itself),
so they are repeated here for the job's images, and the call is told one image per prompt.
"""

from __future__ import annotations

from typing import Any

import torch

from pipelines import prompts


def _clip(pipe: Any, text: str, name: str) -> list[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]]:
    """Per CLIP encoder: each chunk's weighted hidden states, the first chunk's pooled projection, and an empty
    chunk's hidden states (to pad with)."""
    out = []
    for tokenizer, encoder, role in ((pipe.tokenizer, pipe.text_encoder, "clip_l"),
                                     (pipe.tokenizer_2, pipe.text_encoder_2, "clip_g")):
        chunks = prompts._layout(text, tokenizer, name)
        states, pooled = prompts._encode_chunks(encoder, chunks, 1, True, role)
        empty = prompts._encode_chunks(encoder, [prompts._chunk(tokenizer, [], [])], 1, True, role)[0][0]
        out.append((states, pooled, empty))
    return out


def encode(pipe: Any, texts: dict[str, tuple[str, str]], *, num_images: int,
           max_sequence_length: int) -> dict[str, Any]:
    """The call's prompt arguments for ``texts``: ``{"prompt": (weighted, plain)}`` and, with guidance,
    ``"negative_prompt"`` alike (the text as written for CLIP, and stripped for T5)."""
    encoded = {name: _clip(pipe, weighted, name) for name, (weighted, _) in texts.items()}
    count = max(len(states) for per in encoded.values() for states, _, _ in per)
    out: dict[str, Any] = {"num_images_per_prompt": 1}
    with torch.no_grad():
        for name, (_, plain) in texts.items():
            t5 = pipe._get_t5_prompt_embeds(prompt=[plain], num_images_per_prompt=1,
                                            max_sequence_length=max_sequence_length, device=pipe._execution_device)
            hidden = [torch.cat(states + [empty] * (count - len(states)), dim=1) for states, _, empty in encoded[name]]
            clip = torch.cat([part.to(t5.device) for part in hidden], dim=-1)
            clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1])).to(t5.dtype)
            pooled = torch.cat([p.to(t5.device) for _, p, _ in encoded[name]], dim=-1).to(t5.dtype)
            prefix = "" if name == "prompt" else "negative_"
            out[f"{prefix}prompt_embeds"] = torch.cat([clip, t5], dim=-2).repeat(num_images, 1, 1)
            out[f"{prefix}pooled_prompt_embeds"] = pooled.repeat(num_images, 1)
    return out
