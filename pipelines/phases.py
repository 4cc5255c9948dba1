"""Several passes in one job, with one checkpoint stream and one progress bar: hires fix (a pass at the job's size,
then one at the target size), SDXL's refiner (the base model's steps, then the refiner's), or a plugin's own.

A job is interrupted at a step of one pass and must resume at that step of that pass, byte-identical. So each
checkpoint holds what the pass it was taken in needs (``run_resumable``'s state: latents, scheduler, generators)
plus what the passes before it produced (their *carried* outputs: the first pass's latents or images), and which
pass and step it was taken at. On resume, a pass before the saved one is not run again: its carried output is
returned; the saved pass continues from its step; the later ones run as usual. Whatever a pipeline does between
passes (upscaling the latents, say) must be a pure function of the carried outputs, so it is done again alike.

Progress is one count over all passes: a pass's step k is reported as the steps of the passes before it plus k,
out of those plus this pass's total plus the steps planned for the passes after it. The passes before count the
steps they actually ran (saved in each checkpoint), so the count only goes up even when a sampler runs more
timesteps than planned. Each pass is named to the runtime (``RunContext.begin_phase``): the status's
``progress.phase``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from runtime.plugins import CheckpointError, RunContext, StepState

T = TypeVar("T")
PHASE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
#: Where a checkpoint keeps the passes' bookkeeping (``values``) and their carried outputs (tensor names).
KEY = "phases"
_PREFIX = f"{KEY}."


class Phases:
    """The passes of one job, in order, with the steps each is planned to run: ``{"base": 20, "hires": 10}``.

    ``run(name, fn)`` runs pass ``name`` (the next one in order): ``fn(ctx)`` gets a ``RunContext`` of its own
    (global progress, this pass's ``resume_from``), runs the pass (typically ``run_resumable``) and returns its
    output. The output of every pass but the last is carried in later checkpoints, so it must be a tensor
    (``run_resumable(..., output_type="latent")``) or a list of tensors or PIL images."""

    def __init__(self, ctx: RunContext, planned: Mapping[str, int]) -> None:
        if not planned or any(not isinstance(n, int) or n < 0 for n in planned.values()):
            raise ValueError(f"plan each pass's steps as a non-negative number, got {dict(planned)!r}")
        if bad := [name for name in planned if not isinstance(name, str) or not PHASE_NAME.match(name)]:
            raise ValueError(f"name each pass with 1-32 of a-z, 0-9, '_' and '-', starting with a letter (the status "
                             f"shows it, checkpoints key its output by it): {bad!r}")
        self.ctx, self.planned, self.names = ctx, dict(planned), list(planned)
        #: Steps each finished pass ran, and the carried outputs (tensors, and where each goes).
        self.done: dict[str, int] = {}
        self._tensors: dict[str, torch.Tensor] = {}
        self._layouts: dict[str, Any] = {}
        self._saved = _Saved.read(ctx.resume_from, self.names, ctx.device)

    def run(self, name: str, fn: Callable[[RunContext], T]) -> T:
        index = len(self.done)
        if index >= len(self.names) or name != self.names[index]:
            raise ValueError(f"pass {name!r} runs out of order: the next pass is "
                             f"{self.names[index] if index < len(self.names) else 'none'} (passes: {self.names})")
        saved = self._saved
        if saved is not None and self.names.index(saved.phase) > index:  # it ended before the checkpoint
            self.done[name] = saved.done[name]
            self._layouts[name] = saved.layouts[name]
            mine = f"{_PREFIX}{name}"
            self._tensors.update({k: v for k, v in saved.carried.items() if k == mine or k.startswith(f"{mine}.")})
            return saved.outputs[name]  # type: ignore[no-any-return]
        resume = saved.state if saved is not None and saved.phase == name else None
        offset, later = sum(self.done.values()), sum(self.planned[n] for n in self.names[index + 1:])
        last = [resume.step if resume is not None else 0]

        def report(step: int, total: int, state: Callable[[], StepState] | None) -> None:
            last[0] = step
            build = None if state is None else (lambda: self._wrap(name, offset, state()))
            self.ctx.report(offset + step, offset + total + later, build)

        self.ctx.begin_phase(name)
        output = fn(dataclasses.replace(self.ctx, report=report, resume_from=resume))
        self.done[name] = last[0]
        if index + 1 < len(self.names):
            self._layouts[name] = _encode(f"{_PREFIX}{name}", output, self._tensors)
        return output

    def _wrap(self, name: str, offset: int, inner: StepState) -> StepState:
        """The pass's own state, plus the carried outputs and where the job stands."""
        clash = [key for key in inner.tensors if key.startswith(_PREFIX)] + ([KEY] if KEY in inner.values else [])
        if clash:
            raise CheckpointError(f"pass {name!r} saves {clash[0]!r}, a name kept for the passes' own state")
        values = {**inner.values, KEY: {"phase": name, "step": inner.step, "done": dict(self.done),
                                        "carry": dict(self._layouts)}}
        return StepState(step=offset + inner.step, tensors={**inner.tensors, **self._tensors}, values=values)


@dataclasses.dataclass
class _Saved:
    """A multi-pass checkpoint read back: the pass it was taken in, that pass's own state, the passes before."""

    phase: str
    state: StepState
    done: dict[str, int]
    layouts: dict[str, Any]
    carried: dict[str, torch.Tensor]
    outputs: dict[str, Any]

    @classmethod
    def read(cls, state: StepState | None, names: list[str], device: str) -> _Saved | None:
        if state is None:
            return None
        book = state.values.get(KEY)
        if not isinstance(book, dict) or book.get("phase") not in names:
            raise CheckpointError(f"the checkpoint is not one of a run of the passes {names}")
        phase, step, done, carry = book["phase"], book.get("step"), book.get("done"), book.get("carry")
        before = names[:names.index(phase)]
        if not isinstance(step, int) or step < 0 or not isinstance(done, dict) or list(done) != before or \
                not all(isinstance(n, int) and n >= 0 for n in done.values()) or not isinstance(carry, dict) or \
                list(carry) != before or state.step != sum(done.values()) + step:
            raise CheckpointError("the checkpoint's record of the passes does not add up")
        carried = {k: v for k, v in state.tensors.items() if k.startswith(_PREFIX)}
        outputs = {name: _decode(f"{_PREFIX}{name}", carry[name], carried, device) for name in before}
        own = StepState(step=step, tensors={k: v for k, v in state.tensors.items() if not k.startswith(_PREFIX)},
                        values={k: v for k, v in state.values.items() if k != KEY})
        return cls(phase, own, done, carry, carried, outputs)


def _encode(key: str, value: Any, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    if isinstance(value, torch.Tensor):
        tensors[key] = value
        return {"t": "tensor", "device": str(value.device)}
    if isinstance(value, Image.Image):
        tensors[key] = torch.from_numpy(np.array(value))
        return {"t": "image", "mode": value.mode}
    if isinstance(value, list | tuple):
        return {"t": "list", "items": [_encode(f"{key}.{i}", item, tensors) for i, item in enumerate(value)]}
    raise TypeError(f"{key}: a pass that another follows must return a tensor, or a list of tensors or PIL "
                    f"images (its output is saved in checkpoints), not a {type(value).__name__}")


def _decode(key: str, spec: Any, tensors: dict[str, torch.Tensor], device: str) -> Any:
    kind = spec.get("t") if isinstance(spec, dict) else None
    if kind in ("tensor", "image") and key not in tensors:
        raise CheckpointError(f"the checkpoint lacks {key}")
    if kind == "tensor":
        # Back where it was made: the same values on another device are rounded otherwise by what follows.
        saved = str(spec.get("device", "cpu"))
        return tensors[key].to(saved if saved.split(":")[0] == torch.device(device).type else device)
    if kind == "image" and spec.get("mode") in ("L", "RGB", "RGBA"):
        image = Image.fromarray(tensors[key].numpy())
        return image if image.mode == spec["mode"] else image.convert(spec["mode"])
    if kind == "list" and isinstance(spec.get("items"), list):
        return [_decode(f"{key}.{i}", item, tensors, device) for i, item in enumerate(spec["items"])]
    raise CheckpointError(f"the checkpoint describes {key} in a way this code does not read")
