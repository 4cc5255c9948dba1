"""The model catalog and the in-process store of loaded models.

A request names a catalog id, never a path: the catalog (``catalog.json`` in the models directory) maps
ids to diffusers-format directories under that directory. The store loads each model once per process and
hands the same objects to every pipeline that asks, so txt2img, img2img and ControlNet share one UNet,
one VAE and one text encoder.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from runtime.contract import ModelId

CATALOG_FILE = "catalog.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

T = TypeVar("T")


class ModelError(ValueError):
    """A model that cannot be used: unknown id, wrong kind, missing or unsafe files."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    kind: Literal["base", "controlnet"] = "base"
    family: Literal["sd1", "sd2", "sdxl"] = "sd1"


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[ModelId, CatalogEntry]

    @classmethod
    def load(cls, models_dir: Path) -> Catalog:
        path = models_dir / CATALOG_FILE
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ModelError("catalog_missing", f"no model catalog at {path}; build tiny models with "
                             "`spotgen models tiny DIR` or write one") from None
        except (json.JSONDecodeError, ValidationError) as exc:
            raise ModelError("catalog_invalid", f"the model catalog {path} is invalid: {exc}") from None


class ModelStore:
    """Catalog lookups plus a per-process cache of loaded objects (model cache tiers come later)."""

    def __init__(self, models_dir: Path, device: str = "cpu") -> None:
        self.models_dir = models_dir.resolve()
        self.device = device
        self._catalog: Catalog | None = None
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.loads = 0  # how many times a loader actually ran; tests and metrics read it

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog.load(self.models_dir)
        return self._catalog

    def entry(self, model_id: str, kind: str = "base") -> CatalogEntry:
        entry = self.catalog.models.get(model_id)
        if entry is None:
            known = ", ".join(sorted(m for m, e in self.catalog.models.items() if e.kind == kind))
            raise ModelError("unknown_model", f"unknown {kind} model {model_id!r}; the catalog has: {known}")
        if entry.kind != kind:
            raise ModelError("wrong_model_kind", f"model {model_id!r} is a {entry.kind} model, not a {kind} model")
        return entry

    def path(self, model_id: str, kind: str = "base") -> Path:
        """The model's directory, checked to lie inside the models directory and to hold no pickle weights."""
        entry = self.entry(model_id, kind)
        path = (self.models_dir / entry.path).resolve()
        if not path.is_relative_to(self.models_dir):
            raise ModelError("invalid_catalog_path", f"catalog path of {model_id!r} leaves the models directory")
        if not path.is_dir():
            raise ModelError("model_missing", f"model {model_id!r}: directory {path} does not exist")
        pickles = [p.name for p in path.rglob("*") if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise ModelError("unsafe_weights", f"model {model_id!r} has pickle weight files ({', '.join(pickles)}); "
                             "only safetensors are loaded. Convert them with diffusers' save_pretrained"
                             "(safe_serialization=True)")
        return path

    def get(self, key: str, loader: Callable[[], T]) -> T:
        """Load once per process under ``key``; later calls return the same object."""
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = loader()
                self.loads += 1
            return self._loaded[key]
