"""``ConditioningCombine`` at sampling time: the noise predictions of each combined conditioning, averaged.

ComfyUI does not merge combined conditionings into one text: its sampler predicts the noise once per conditioning
and blends the predictions, each weighted by its strength (1 here: no area or strength nodes yet), i.e. averages
them. diffusers' loop calls the UNet once per step with the first conditioning of the positive and of the
negative; a forward hook, on the shared UNet for this sampler's run only, calls it again for each further
conditioning of either side and puts the average in place of that side's prediction. Nothing it does draws noise,
so a resumed run averages alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from pipelines.comfyui.values import Cond, Conditioning


@contextlib.contextmanager
def averaged(unet: torch.nn.Module, positive: Conditioning, negative: Conditioning, batch: int) -> Iterator[None]:
    """While the sampler runs: ``unet``'s prediction for each side, the mean over that side's conditionings.
    ``batch`` is the images' count: a call of twice as many is guided (negative half first, as diffusers batches)."""
    if len(positive.parts) == 1 and len(negative.parts) == 1:
        yield
        return
    inside = [False]

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        if inside[0]:  # the hook's own calls
            return None
        inside[0] = True
        try:
            return _average(module, args, kwargs, output, positive, negative, batch)
        finally:
            inside[0] = False

    handle = unet.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _average(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any, positive: Conditioning,
             negative: Conditioning, batch: int) -> Any:
    prediction = output[0] if isinstance(output, tuple) else output.sample
    total = prediction.shape[0]
    sides = [(slice(0, batch), negative), (slice(batch, total), positive)] if total == 2 * batch \
        else [(slice(0, total), positive)]
    out = []
    for rows, conditioning in sides:
        side = prediction[rows]
        for cond in conditioning.parts[1:]:
            side = side + _predict(module, args, kwargs, rows, cond, total)
        out.append(side / len(conditioning.parts) if len(conditioning.parts) > 1 else side)
    blended = torch.cat(out)
    return (blended, *output[1:]) if isinstance(output, tuple) else type(output)(sample=blended)


def _rows(value: Any, rows: slice, total: int) -> Any:
    """A per-row argument of the call cut to ``rows``; a shared one (a scalar timestep) as it is."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == total:
        return value[rows]
    return value


def _predict(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], rows: slice, cond: Cond,
             total: int) -> torch.Tensor:
    sample = args[0][rows]
    count = sample.shape[0]
    like = kwargs["encoder_hidden_states"]
    call = {name: _rows(value, rows, total) for name, value in kwargs.items()}
    call["encoder_hidden_states"] = cond.embeds.to(like.device, like.dtype).repeat(count, 1, 1)
    added = kwargs.get("added_cond_kwargs")
    if added:
        added = {name: _rows(value, rows, total) for name, value in added.items()}
        if "text_embeds" in added and cond.pooled is not None:
            added["text_embeds"] = cond.pooled.to(like.device, added["text_embeds"].dtype).repeat(count, 1)
        call["added_cond_kwargs"] = added
    call["return_dict"] = False
    positional = [_rows(value, rows, total) for value in args[1:]]
    return module(sample, *positional, **call)[0]
