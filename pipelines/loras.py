"""LoRA adapters per request: read once per worker, kept in the base model under a byte budget, switched per job.

An adapter is injected (unfused, through peft) into the modules of the loaded base model that every job's view
shares. Each job then activates exactly its own adapters and weights with ``set_adapters``; a job without LoRAs
disables them all, which makes every adapted layer compute its base layer alone, so its pixels are the ones of
a worker that never loaded a LoRA. Adapters beyond the budget (``SPOTGEN_LORA_MEMORY_BYTES``) are deleted, least
recently used first, never one the running job uses. Adapters stay unfused: fusing rewrites the shared weights
and has to be undone exactly before the next job, which costs more than the few per cent it saves per step
(``make bench`` measures both).

LoRA files come from the catalog only (a request names an id, never a path) and are read with safetensors, never
unpickled. diffusers converts kohya's format (the files SD WebUI users download) to its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file

from runtime.contract import ContractError, LoraRef
from runtime.models.catalog import ModelError
from runtime.models.store import ModelStore

log = logging.getLogger("spotgen.loras")

#: Larger files are refused before they are read: SDXL LoRAs of rank 128 are under 1 GB.
MAX_LORA_FILE_BYTES = 2 * 1024**3
_STATE = "spotgen_loras"  # the attribute of a base pipeline that lists its adapters, least recently used first


def check(store: ModelStore, base_family: str, loras: Sequence[LoraRef]) -> None:
    """Refuse, naming the field, a LoRA the catalog lacks or one made for another family of models."""
    for i, ref in enumerate(loras):
        field = f"inputs.loras.{i}.id"
        try:
            entry = store.entry(ref.id, "lora")
        except ModelError as exc:
            raise ContractError(exc.code, str(exc), field) from None
        if entry.family != base_family:
            raise ContractError("incompatible_lora", f"LoRA {ref.id!r} is for {entry.family} models and this is a "
                                f"{base_family} model", field)


def adapter_name(lora_id: str) -> str:
    """A peft adapter name for a catalog id (ids may hold '.', which module names may not)."""
    return "lora_" + hashlib.sha256(lora_id.encode()).hexdigest()[:16]


def loaded(base: Any) -> OrderedDict[str, int]:
    """The adapters in ``base``, name to bytes, least recently used first."""
    state = getattr(base, _STATE, None)
    if state is None:
        state = OrderedDict()
        setattr(base, _STATE, state)
    return state


def activate(store: ModelStore, base: Any, loras: Sequence[LoraRef]) -> None:
    """Make ``loras`` at their weights the only active adapters of ``base`` (none: all disabled)."""
    adapters = loaded(base)
    if not loras:
        if adapters:
            base.disable_lora()
        return
    names = [adapter_name(ref.id) for ref in loras]
    for i, (ref, name) in enumerate(zip(loras, names, strict=True)):
        if name in adapters:
            adapters.move_to_end(name)
            continue
        try:
            adapters[name] = _load(store, base, ref.id, name)
        except ModelError as exc:  # the job fails naming the adapter at fault
            raise ContractError(exc.code, str(exc), f"inputs.loras.{i}.id") from None
    base.enable_lora()
    base.set_adapters(names, adapter_weights=[ref.weight for ref in loras])
    _evict(base, adapters, keep=set(names), budget=store.lora_budget)


def _load(store: ModelStore, base: Any, lora_id: str, name: str) -> int:
    path = store.source(lora_id, "lora").path
    size = path.stat().st_size
    if size > MAX_LORA_FILE_BYTES:
        raise ModelError("invalid_lora", f"LoRA {lora_id!r}: {size} bytes is more than the {MAX_LORA_FILE_BYTES} a "
                         "LoRA file may have")
    try:
        weights = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError("invalid_lora", f"LoRA {lora_id!r}: {path.name} is not a readable safetensors file: "
                         f"{exc}") from None
    if not weights or not all(t.is_floating_point() for t in weights.values()):
        raise ModelError("invalid_lora", f"LoRA {lora_id!r}: {path.name} holds no floating-point LoRA weights")
    try:
        with _quiet():
            base.load_lora_weights(weights, adapter_name=name)
    except Exception as exc:  # keys of no known format, shapes of another model...
        _delete(base, name)  # nothing stays half-loaded
        raise ModelError("invalid_lora", f"LoRA {lora_id!r} cannot be applied to this model: "
                         f"{type(exc).__name__}: {exc}") from None
    log.info("loaded LoRA %s (%d bytes)", lora_id, size)
    return sum(t.numel() * t.element_size() for t in weights.values())


def _evict(base: Any, adapters: OrderedDict[str, int], keep: set[str], budget: int) -> None:
    for name in list(adapters):
        if not budget or sum(adapters.values()) <= budget:
            return
        if name not in keep:
            _delete(base, name)
            del adapters[name]
            log.info("dropped LoRA adapter %s (budget %d bytes)", name, budget)


def _delete(base: Any, name: str) -> None:
    with contextlib.suppress(Exception), _quiet():
        base.delete_adapters([name])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """peft and transformers warn about every other adapter's keys when one more is loaded; the worker's log
    would fill with them."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
