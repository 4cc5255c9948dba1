"""Textual-inversion embeddings from the catalog (``kind: embedding``), named in prompts as WebUI users name them.

WebUI loads every embedding in its folder and recognises each by its file name wherever the name's tokens occur
in a prompt; here every catalog embedding of the job's family is a candidate, by its id and its aliases. The
prompt encoder (``pipelines.prompts``) gives each found name as many token positions as the embedding has
vectors and puts the vectors there for that encoder call only (a forward hook): no token is added to the shared
tokenizer and the shared text encoder is not resized, so a job that names none runs exactly as before, and an
embedding used by one job leaves the next job's pixels alone.

Files (safetensors only): WebUI's ``emb_params`` (n, width) for SD 1.x/2.x, ``clip_l`` and ``clip_g`` for SDXL's
two encoders; diffusers' ``save_textual_inversion`` format, one ``{token: vectors}`` key (SD 1.x/2.x). Each is
read once per worker (the model store caches it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from safetensors.torch import load_file

from runtime.models.catalog import ModelError
from runtime.models.store import ModelStore

#: At most this many vectors: one chunk's worth of tokens (``pipelines.prompts.CHUNK_TOKENS``).
MAX_VECTORS = 75


@dataclass(frozen=True, eq=False)
class Embedding:
    """An embedding's vectors per text encoder: ``clip`` (SD 1.x/2.x) or ``clip_l`` and ``clip_g`` (SDXL)."""

    model_id: str
    vectors: dict[str, torch.Tensor]

    @property
    def count(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    def vector(self, role: str, index: int, width: int) -> torch.Tensor:
        """Vector ``index`` for the encoder ``role`` whose token embeddings are ``width`` wide."""
        table = self.vectors.get(role)
        if table is None or table.shape[1] != width:
            have = {key: tuple(value.shape) for key, value in self.vectors.items()}
            raise ModelError("invalid_model", f"embedding {self.model_id!r} has {have}; this model's text encoder "
                             f"needs {role!r} vectors {width} wide")
        return table[index]


def for_family(store: ModelStore, family: str, texts: Iterable[str] | None = None) -> dict[str, Embedding]:
    """The catalog embeddings of ``family`` by the names a prompt may use (id and aliases), each read once per
    worker; with ``texts``, only those whose name occurs in one of them (CLIP lowercases, so case is ignored;
    the prompt encoder then matches tokens): a job that names none reads no file."""
    haystack = None if texts is None else "\n".join(texts).lower()
    out: dict[str, Embedding] = {}
    for model_id, entry in sorted(store.catalog.models.items()):
        if entry.kind != "embedding" or entry.family != family:
            continue
        names = [name for name in (model_id, *entry.aliases) if haystack is None or name.lower() in haystack]
        if names:
            embedding = store.get(f"embedding:{model_id}", lambda m=model_id: read(store, m, family), model_id)
            out.update(dict.fromkeys(names, embedding))
    return out


def read(store: ModelStore, model_id: str, family: str) -> Embedding:
    """The file's vectors in WebUI's or diffusers' layout, refused (naming the entry) in any other."""
    tensors = load_file(str(store.path(model_id, "embedding")))
    if family == "sdxl":
        if set(tensors) != {"clip_l", "clip_g"}:
            raise ModelError("invalid_model", f"embedding {model_id!r}: an SDXL embedding holds clip_l and clip_g "
                             f"(WebUI's format); this file holds {sorted(tensors)}")
        vectors = {key: _matrix(model_id, value) for key, value in tensors.items()}
        if vectors["clip_l"].shape[0] != vectors["clip_g"].shape[0]:
            raise ModelError("invalid_model", f"embedding {model_id!r}: clip_l and clip_g have different numbers "
                             "of vectors")
    else:
        if len(tensors) != 1:
            raise ModelError("invalid_model", f"embedding {model_id!r}: expected emb_params (WebUI) or one "
                             f"{{token: vectors}} key (diffusers); this file holds {sorted(tensors)}")
        vectors = {"clip": _matrix(model_id, next(iter(tensors.values())))}
    return Embedding(model_id, vectors)


def _matrix(model_id: str, value: torch.Tensor) -> torch.Tensor:
    value = value.unsqueeze(0) if value.dim() == 1 else value
    if value.dim() != 2 or not 1 <= value.shape[0] <= MAX_VECTORS or not value.is_floating_point():
        raise ModelError("invalid_model", f"embedding {model_id!r}: vectors of shape {tuple(value.shape)}; "
                         f"expected (n, width) floats with 1 <= n <= {MAX_VECTORS}")
    return value.float()


