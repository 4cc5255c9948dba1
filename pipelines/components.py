"""A diffusers directory's components, loaded one by one with the smallest first, for ``from_pretrained`` to take.

Why: a cold load ends when the last of its bytes is read and the component they belong to is built around them.
The store reads a model's files ahead in a thread of its own, the smallest folder's first
(``runtime.models.prefetch.smallest_first``). Loading the components in that same order builds the text encoders,
the VAE and the tokenizers while the largest one's bytes (the UNet's, the transformer's) are still coming in, so
that one is all that is left when its read ends. diffusers' own loop takes the components in an order that varies
from one load to the next, often the UNet first, and then the others were built after the whole read.

Each is loaded as diffusers' ``load_sub_model`` does (the class its model index names, from its folder, in the
load's dtype, from safetensors only), so the pipeline is the same one; a model's weights (diffusers' or
transformers') are views of its mapped files (``pipelines.mapped``): the largest is built before its bytes have
come in, and none is copied out of the page cache. Not in threads:
diffusers and transformers build modules on the meta device by patching torch for the time of a load (accelerate's
``init_empty_weights``), and two loads at once in one process can leave that patch in place.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, ModelMixin
from transformers import PreTrainedModel

from pipelines import mapped
from runtime.models.prefetch import folder_bytes

#: The libraries whose classes a model index may name for a component loaded here (diffusers' own lookup table);
#: a component of any other (a custom pipeline's module) is left to diffusers.
LIBRARIES = ("diffusers", "transformers")


def smallest_first(directory: Path, pipeline_class: type[DiffusionPipeline], dtype: torch.dtype,
                   given: Mapping[str, Any]) -> dict[str, Any]:
    """The components of the diffusers directory ``directory`` that ``pipeline_class`` takes and ``given`` (the
    call's own arguments: a catalog VAE, ``safety_checker=None``) lacks, loaded smallest first."""
    takes = set(inspect.signature(pipeline_class.__init__).parameters)
    index = json.loads((directory / "model_index.json").read_text())
    todo = [(name, value[0], value[1]) for name, value in index.items()
            if name in takes and name not in given and isinstance(value, list) and len(value) == 2
            and value[0] in LIBRARIES and isinstance(value[1], str) and (directory / name).is_dir()]
    todo.sort(key=lambda item: (folder_bytes(directory / item[0]), item[0]))
    return {name: load(directory / name, library, class_name, dtype) for name, library, class_name in todo}


def load(folder: Path, library: str, class_name: str, dtype: torch.dtype) -> Any:
    """One component from its folder: a model in ``dtype`` from safetensors, anything else (a tokenizer, a
    scheduler, an image processor) from its configs."""
    cls = getattr(importlib.import_module(library), class_name)
    if isinstance(cls, type) and issubclass(cls, (ModelMixin, PreTrainedModel)):
        return model(cls, folder, dtype)
    return cls.from_pretrained(str(folder))  # as diffusers passes it: the component's config records it


def model(cls: type, folder: Path, dtype: torch.dtype) -> Any:
    """A diffusers or transformers model from its folder's safetensors in ``dtype``: as views of the mapped files
    where ``pipelines.mapped`` can, else by the class's own ``from_pretrained``."""
    loaded = (mapped.load(cls, folder, dtype) if issubclass(cls, ModelMixin)
              else mapped.load_transformers(cls, folder, dtype))
    return loaded if loaded is not None else cls.from_pretrained(str(folder), dtype=dtype, use_safetensors=True)
