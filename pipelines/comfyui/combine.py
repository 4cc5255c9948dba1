"""``ConditioningCombine`` at sampling time: the noise predictions of each combined conditioning, averaged.

ComfyUI does not merge combined conditionings into one text: its sampler predicts the noise once per conditioning
and blends the predictions, each weighted by its strength (1 here: no area or strength nodes yet), i.e. averages
them. It does so on every family: on Flux and SD 3.5 the prediction is the flow's velocity, and each conditioning
is predicted with its own text, pooled vector and (Flux) FluxGuidance's guidance. diffusers' loop calls the
denoiser (SD's UNet, the flow families' transformer) once per step with the first conditioning of the positive and
of the negative; a forward hook, on the shared denoiser for this sampler's run only, calls it again for each
further conditioning of either side and puts the average in place of that side's prediction. Nothing it does
draws noise, so a resumed run averages alike.

Which rows of a call are which side: SD's and SD 3.5's classes batch the negative half first, then the positive;
Flux's runs the positive alone, then (true CFG) the negative in a call of its own, each step (``alternating``).
There diffusers gives the negative the positive's distilled guidance; ComfyUI gives each conditioning its own (3.5
where no FluxGuidance set one), and so does a pre-hook here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from pipelines.comfyui.values import Cond, Conditioning

#: The denoisers' keyword for the pooled text vector (SD 3.5's and Flux's transformer); SDXL's UNet takes it in
#: ``added_cond_kwargs["text_embeds"]``.
POOLED = "pooled_projections"


def chunks(cond: Cond, length: int) -> torch.Tensor:
    """SD's and SDXL's ``cond`` made ``length`` tokens long with empty chunks, as their samplers pad a side."""
    return cond.padded(length // cond.pad.shape[1])


@contextlib.contextmanager
def averaged(denoiser: torch.nn.Module, positive: Conditioning, negative: Conditioning, batch: int,
             alternating: bool = False, guidance: float | None = None,
             pad: Callable[[Cond, int], torch.Tensor] = chunks) -> Iterator[None]:
    """While the sampler runs: ``denoiser``'s prediction for each side, the mean over that side's conditionings.
    ``batch`` is the images' count: a call of twice as many is guided (negative half first, as diffusers batches);
    ``alternating``: calls of ``batch`` alternate positive and negative (Flux's true CFG), and the negative's runs
    with its own guidance; ``guidance`` is Flux's distilled guidance for a conditioning no FluxGuidance set.
    ``pad`` makes an encoding as long as the call's (the sampler pads its first parts so, to the longest of all):
    each part is predicted at the length and in a call of the shape of the first parts', so the average does not
    depend on the parts' order."""
    inside, calls, side = [False], [0], [positive]

    def before(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Which side this call is; Flux's negative call with its own guidance (diffusers gives it the
        positive's, ComfyUI each conditioning its own)."""
        if inside[0]:  # the hook's own calls
            return None
        side[0] = negative if calls[0] % 2 else positive
        calls[0] += 1
        if side[0] is negative and isinstance(kwargs.get("guidance"), torch.Tensor) and guidance is not None:
            own = getattr(negative.parts[0], "guidance", None)
            return args, {**kwargs, "guidance": torch.full_like(kwargs["guidance"], guidance if own is None else own)}
        return None

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        if inside[0]:  # the hook's own calls
            return None
        inside[0] = True
        try:
            return _average(module, args, kwargs, output, side[0], negative, batch, guidance, pad)
        finally:
            inside[0] = False

    handles = [denoiser.register_forward_pre_hook(before, with_kwargs=True)] if alternating else []
    if len(positive.parts) > 1 or len(negative.parts) > 1:
        handles.append(denoiser.register_forward_hook(hook, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _average(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any, positive: Conditioning,
             negative: Conditioning, batch: int, guidance: float | None,
             pad: Callable[[Cond, int], torch.Tensor]) -> Any:
    prediction = output[0] if isinstance(output, tuple) else output.sample
    total = prediction.shape[0]
    sides = [(slice(0, batch), negative), (slice(batch, total), positive)] if total == 2 * batch \
        else [(slice(0, total), positive)]
    sums = [prediction[rows] for rows, _ in sides]
    for k in range(1, max(len(conditioning.parts) for _, conditioning in sides)):
        parts = [conditioning.parts[k] if k < len(conditioning.parts) else None for _, conditioning in sides]
        # both sides in one call shaped as diffusers' own (a side out of parts runs its first, not counted)
        paired = [part or conditioning.parts[0] for part, (_, conditioning) in zip(parts, sides, strict=True)]
        if len(sides) == 2 and _alike(paired):
            both = _predict(module, args, kwargs, slice(0, total), paired, total, guidance, pad)
            sums = [side + half if part is not None else side
                    for side, half, part in zip(sums, (both[:batch], both[batch:]), parts, strict=True)]
            continue
        for i, ((rows, _), part) in enumerate(zip(sides, parts, strict=True)):
            if part is not None:
                sums[i] = sums[i] + _predict(module, args, kwargs, rows, [part], total, guidance, pad)
    out = [side / len(conditioning.parts) if len(conditioning.parts) > 1 else side
           for side, (_, conditioning) in zip(sums, sides, strict=True)]
    blended = torch.cat(out)
    return (blended, *output[1:]) if isinstance(output, tuple) else type(output)(sample=blended)


def _alike(parts: list[Cond]) -> bool:
    """Whether the two sides' parts batch as one call (pooled vectors of one shape, or none)."""
    first, second = parts
    return (first.pooled is None) == (second.pooled is None) and \
        (first.pooled is None or first.pooled.shape == second.pooled.shape)  # type: ignore[union-attr]


def _rows(value: Any, rows: slice, total: int) -> Any:
    """A per-row argument of the call cut to ``rows``; a shared one (a scalar timestep) as it is."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == total:
        return value[rows]
    return value


def _each(conds: list[Cond], value: Callable[[Cond], Any], count: int, like: torch.Tensor) -> torch.Tensor:
    """``value`` of each cond (its embeddings or pooled vector), repeated over its share of ``count`` rows."""
    share = count // len(conds)
    rest = [1] * (like.ndim - 1)
    return torch.cat([value(cond).to(like.device, like.dtype).repeat(share, *rest) for cond in conds])


def _predict(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], rows: slice, conds: list[Cond],
             total: int, guidance: float | None, pad: Callable[[Cond, int], torch.Tensor]) -> torch.Tensor:
    """The denoiser on ``rows`` of the call, their first half with ``conds[0]`` and their second with ``conds[1]``
    where there are two."""
    call = {name: _rows(value, rows, total) for name, value in kwargs.items()}
    positional = [_rows(value, rows, total) for value in args]
    latents = positional[0] if positional else call["hidden_states"]
    count = latents.shape[0]
    like = kwargs["encoder_hidden_states"]
    call["encoder_hidden_states"] = _each(conds, lambda cond: pad(cond, like.shape[1]), count, like)
    pooled = [cond.pooled for cond in conds]
    added = kwargs.get("added_cond_kwargs")
    if added:
        added = {name: _rows(value, rows, total) for name, value in added.items()}
        if "text_embeds" in added and None not in pooled:
            added["text_embeds"] = _each(conds, lambda cond: cond.pooled, count, added["text_embeds"])
        call["added_cond_kwargs"] = added
    if kwargs.get(POOLED) is not None and None not in pooled:
        call[POOLED] = _each(conds, lambda cond: cond.pooled, count, kwargs[POOLED])
    own = getattr(conds[0], "guidance", None)  # Flux: a call of one side, one cond
    if isinstance(call.get("guidance"), torch.Tensor) and (own is not None or guidance is not None):
        call["guidance"] = torch.full_like(call["guidance"], own if own is not None else guidance)
    call["return_dict"] = False
    return module(*positional, **call)[0]  # type: ignore[no-any-return]
