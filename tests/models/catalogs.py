"""Catalog helpers shared by the model tests: a catalog written into a models directory, and the refusal a store
gives for one of its entries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runtime.models.catalog import CATALOG_FILE, ModelError
from runtime.models.store import ModelStore

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def write_catalog(models: Path, entries: dict[str, Any]) -> ModelStore:
    models.mkdir(parents=True, exist_ok=True)
    (models / CATALOG_FILE).write_text(json.dumps({"models": entries}))
    return ModelStore(models, "cpu")


def refused(store: ModelStore, model_id: str, kind: str = "base") -> ModelError:
    with pytest.raises(ModelError) as caught:
        store.source(model_id, kind)
    return caught.value
