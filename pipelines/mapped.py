"""A diffusers model whose weights are views of its mapped safetensors files: built before its bytes are read.

Why: diffusers' ``from_pretrained`` opens a checkpoint with safetensors, which reads the whole mapping before it
hands back the first tensor, and only then assigns the tensors to the model (``load_model_dict_into_meta``, a few
ms per hundred tensors). So on a cold node cache all of that Python waits for the last byte of the largest
component, and the load ends well after the read. Here the model is built empty (on the meta device, as
diffusers does), its tensors are views of a private mapping of the file, assigned without a read, and the mapping
is populated at the end (``MADV_POPULATE_READ``) while the store's read-ahead fills the page cache. The load then
ends about when the read does.

The same model as diffusers' own load: the class's config, diffusers' default dtype during construction and its
key fixes, floating tensors in the load's dtype (fp32 for the class's ``_keep_in_fp32_modules``), ``_name_or_path``
in the config, and eval mode. Anything else (a quantized or sharded-with-variants checkpoint, a class with a
loader of its own, keys or shapes that do not match the model) returns None: diffusers loads it and says what is
wrong. The mapping is private and copy-on-write, as safetensors' own: a weight changed in place never reaches the
file. The header is checked by safetensors and its offsets by us before any view is made (model files are
untrusted input).

A transformers model (a text encoder: CLIP, T5) is loaded by transformers itself, handed the same views as its
state dict: its own loader then assigns them (its key renames, tied weights and dtypes as always) where, from a
file, it would copy every tensor out of the mapping (9.5 GB for Flux's T5).
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import sys
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import ModelMixin
from diffusers.models.modeling_utils import LegacyModelMixin, no_init_weights
from safetensors import SafetensorError, safe_open
from transformers import PreTrainedModel

WEIGHTS = "diffusion_pytorch_model.safetensors"
INDEX = WEIGHTS + ".index.json"
#: transformers' weights file.
TRANSFORMERS_WEIGHTS = "model.safetensors"
#: safetensors' dtype names, as its header writes them.
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
          "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class Unmapped(Exception):
    """A checkpoint valid for safetensors that this module does not map (a dtype not in ``DTYPES``): the
    library's own loader reads it."""


#: ``madvise(MADV_POPULATE_READ)``: map every page of the file (reading those not in the page cache), Linux 5.14+.
MADV_POPULATE_READ = 22
MAX_HEADER = 100 << 20  # safetensors' own limit


def load(cls: type, folder: Path, dtype: torch.dtype) -> ModelMixin | None:
    """``cls`` from the diffusers folder ``folder`` in ``dtype``, its weights views of the mapped files; None where
    this is not the plain case (diffusers' ``from_pretrained`` then loads it)."""
    if not _plain(cls, folder):
        return None
    config = cls.load_config(str(folder))
    if config.get("quantization_config"):
        return None
    if (found := _all_mapped(folder, WEIGHTS)) is None:
        return None
    handles, state = found
    model = _empty(cls, config, dtype)
    model._fix_state_dict_keys_on_load(state)
    expected = {key: value.shape for key, value in model.state_dict().items()}
    if set(expected) != set(state) or any(state[key].shape != shape for key, shape in expected.items()):
        return None  # diffusers' load reports the missing, unexpected or mismatched keys
    keep = cls._keep_in_fp32_modules or ()
    for key, tensor in state.items():
        if tensor.is_floating_point():
            target = torch.float32 if any(part in keep for part in key.split(".")) else dtype
            if tensor.dtype != target:
                state[key] = tensor.to(target)  # a copy: this tensor's bytes are read here
    model.load_state_dict(state, strict=True, assign=True)
    _populate(handles)
    model.register_to_config(_name_or_path=str(folder))
    model.eval()
    return model


def load_transformers(cls: type, folder: Path, dtype: torch.dtype) -> PreTrainedModel | None:
    """The transformers model ``cls`` from ``folder`` in ``dtype``, loaded by transformers from views of the mapped
    files; None where there are no safetensors weights to map (transformers then loads it from its folder)."""
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel) and (folder / "config.json").is_file()):
        return None
    if (found := _all_mapped(folder, TRANSFORMERS_WEIGHTS)) is None:
        return None
    handles, state = found
    model = cls.from_pretrained(None, config=cls.config_class.from_pretrained(str(folder)), state_dict=state,
                                dtype=dtype)
    model.config._name_or_path = str(folder)  # as a load from the folder records it
    _populate(handles)
    return model


def _all_mapped(folder: Path, weights: str) -> tuple[list[mmap.mmap], dict[str, torch.Tensor]] | None:
    """Every checkpoint file of ``folder`` mapped (``weights``, or the shards its index names), and all their
    tensors as views; None where there are none, or they cannot be mapped (a file larger than memory and swap, no
    mmap here, a dtype not mapped)."""
    if not hasattr(mmap, "MAP_PRIVATE"):  # Windows: no private file mappings in Python's mmap
        return None
    if not ((folder / weights).is_file() or (folder / f"{weights}.index.json").is_file()):
        return None
    try:
        files = [_mapped(path) for path in _files(folder, weights)]
    except (OSError, Unmapped):
        return None
    return [handle for handle, _ in files], {key: view for _, views in files for key, view in views.items()}


def _plain(cls: type, folder: Path) -> bool:
    """A diffusers model class loaded by ``ModelMixin.from_pretrained`` itself, with its config in ``folder``."""
    return (isinstance(cls, type) and issubclass(cls, ModelMixin) and not issubclass(cls, LegacyModelMixin)
            and cls.from_pretrained.__func__ is ModelMixin.from_pretrained.__func__
            and (folder / "config.json").is_file())


def _files(folder: Path, weights: str) -> list[Path]:
    """The checkpoint's files: the one file, or the shards its index names (each inside ``folder``)."""
    if (folder / weights).is_file():
        return [folder / weights]
    index = folder / f"{weights}.index.json"
    weight_map = json.loads(index.read_text()).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(name, str) for name in weight_map.values()):
        raise ValueError(f"{index}: no weight_map of file names")
    names = sorted(set(weight_map.values()))
    if any(Path(name).name != name for name in names):
        raise ValueError(f"{index}: a shard outside its folder ({names})")
    return [folder / name for name in names]


def _empty(cls: type, config: dict[str, Any], dtype: torch.dtype) -> ModelMixin:
    """The model with its parameters on the meta device and no initialisation run, built in ``dtype`` as diffusers
    builds it (buffers made in ``__init__``, not in the checkpoint, take the default dtype)."""
    previous = cls._set_default_torch_dtype(dtype) if dtype.is_floating_point else None
    try:
        with no_init_weights(), init_empty_weights():
            return cls.from_config(config)
    finally:
        if previous is not None:
            torch.set_default_dtype(previous)


def _mapped(path: Path) -> tuple[mmap.mmap, dict[str, torch.Tensor]]:
    """A private mapping of the safetensors file ``path`` and its tensors as views of it; nothing read but the
    header."""
    try:  # safetensors checks the header: its JSON, dtypes, and offsets that cover the data without overlap
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as exc:
        raise ValueError(f"{path} is not a valid safetensors file: {exc}") from None
    with open(path, "rb") as file:
        size = int.from_bytes(file.read(8), "little")
        if not 0 < size <= MAX_HEADER:
            raise ValueError(f"{path}: a safetensors header of {size} bytes")
        header = json.loads(file.read(size))
        handle = mmap.mmap(file.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    data = 8 + size
    whole = torch.frombuffer(handle, dtype=torch.uint8) if len(handle) > data else torch.empty(0, dtype=torch.uint8)
    tensors = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype, shape, (start, end) = DTYPES.get(info["dtype"]), info["shape"], info["data_offsets"]
        if dtype is None:
            raise Unmapped(f"{path}: tensor {key} has dtype {info['dtype']}")
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if not 0 <= start <= end <= len(handle) - data or end - start != math.prod(shape) * itemsize:
            raise ValueError(f"{path}: tensor {key}'s offsets {start}..{end} do not fit its shape or the file")
        raw = whole[data + start:data + end]
        if (data + start) % itemsize:
            raw = raw.clone()  # not aligned for its dtype (an odd-sized tensor before it): copied
        tensors[key] = raw.view(dtype).view(shape)
    return handle, tensors


def _populate(handles: list[mmap.mmap]) -> None:
    """Map every page now, so that the load ends with the weights in memory and a first job does not fault them in
    one by one; where the kernel cannot, they are faulted in on first use."""
    if not sys.platform.startswith("linux"):
        return
    for handle in handles:
        if len(handle):
            with contextlib.suppress(OSError):
                handle.madvise(MADV_POPULATE_READ)
