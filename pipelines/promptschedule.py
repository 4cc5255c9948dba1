"""WebUI's prompt editing and alternation in a diffusers run: each step conditioned by its own text.

``runtime.contract.promptsyntax`` turns the prompt and the negative prompt into WebUI's schedules (which text
holds up to which step). Here each distinct (prompt, negative) pair of texts is encoded once, WebUI's way
(``pipelines.prompts``: weights, BREAK, chunks), and the run's embeddings are swapped between steps through
diffusers' ``callback_on_step_end``: at the end of step i it returns the ``prompt_embeds`` (and, for SDXL, the
pooled ``add_text_embeds``) of step i + 1, which every SD and SDXL pipeline of diffusers pops from the callback's
output and uses from the next step on. The loop's index i is WebUI's sampling step (0-based), so the
conditioning of a step is a function of that step alone, and a resumed run starts with the embeddings of the
step it resumes at: resume stays byte-identical. A prompt without the syntax has one pair and no swap, so its
run is the one it was before this module existed.

The tensors handed to the loop are built as diffusers builds them from ``prompt_embeds`` and friends: each
repeated for the images of the job, the negative first when guidance is on (SDXL's pooled embeddings alike).
Prompt and negative are padded to equal chunks per pair (``prompts.encode_pairs``), so a step's shapes can
differ from another step's; the UNet takes any number of text tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from pipelines import prompts
from runtime.contract import ContractError
from runtime.contract.promptsyntax import PromptSyntaxError, at, schedule

#: The tensors a step's conditioning replaces in the diffusers loop (SD: the first; SDXL: both).
SWAPPED = ("prompt_embeds", "add_text_embeds")

StepConditioning = Callable[[int, dict[str, Any]], dict[str, Any]]


def schedules(prompt: str, negative_prompt: str, steps: int) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """Both schedules, refusing (``syntax_error``, naming the field) what ``promptsyntax`` refuses."""
    out = []
    for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        try:
            out.append(schedule(text, steps))
        except PromptSyntaxError as error:
            raise ContractError("invalid_field", f"inputs.{name}: {error}", f"inputs.{name}") from error
    return out[0], out[1]


def pairs_by_step(prompt: str, negative_prompt: str, steps: int) -> list[tuple[str, str]]:
    """The (prompt, negative) texts of sampling steps 0 .. steps (the last holds for any step after it)."""
    positive, negative = schedules(prompt, negative_prompt, steps)
    return [(positive[at(positive, i)][1], negative[at(negative, i)][1]) for i in range(steps + 1)]


def encode(pipe: Any, prompt: str, negative_prompt: str, *, steps: int, start: int = 0, clip_skip: int = 1,
           guidance: bool = True, num_images: int = 1,
           embeddings: Mapping[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], StepConditioning | None]:
    """The embeddings to call ``pipe`` with (those of step ``start``, where the run begins or resumes) and the
    function that swaps them between steps, None when every step has the same texts (a prompt without the
    syntax: then the embeddings are ``prompts.encode``'s, bit for bit). ``embeddings``: the textual-inversion
    embeddings a prompt may name (``pipelines.embeddings.for_family``)."""
    by_step = pairs_by_step(prompt, negative_prompt, steps)
    distinct = list(dict.fromkeys(by_step))
    encoded = dict(zip(distinct, prompts.encode_pairs(pipe, distinct, clip_skip=clip_skip, guidance=guidance,
                                                        embeddings=embeddings),
                       strict=True))
    first = encoded[by_step[min(start, steps)]]
    if len(distinct) == 1:
        return dict(first), None

    def on_step_end(step: int, current: dict[str, Any]) -> dict[str, Any]:
        """Given the loop's index of the step about to run, and the loop's current tensors (for their device
        and dtype): the tensors that condition it."""
        pair = encoded[by_step[min(step, steps)]]
        like = current["prompt_embeds"]
        out = {"prompt_embeds": _batch(pair, "prompt_embeds", "negative_prompt_embeds", num_images, like)}
        if "pooled_prompt_embeds" in pair:
            out["add_text_embeds"] = _batch(pair, "pooled_prompt_embeds", "negative_pooled_prompt_embeds",
                                            num_images, like)
        return out

    return dict(first), on_step_end  # a copy: the caller may add to it (IP-Adapter embeddings)


def _batch(pair: dict[str, torch.Tensor], positive: str, negative: str, num_images: int,
           like: torch.Tensor) -> torch.Tensor:
    """What diffusers' ``encode_prompt`` and ``__call__`` make of given embeddings: each repeated per image
    (batch 1 here), the negative ones first when guidance is on."""
    parts = ([pair[negative]] * num_images if negative in pair else []) + [pair[positive]] * num_images
    return torch.cat(parts, dim=0).to(device=like.device, dtype=like.dtype)
