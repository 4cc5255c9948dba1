"""Loader nodes: ``CheckpointLoaderSimple``'s MODEL, CLIP and VAE from one catalog base model.

The API has already put catalog ids in place of ComfyUI's file names (``ckpt_name``), so the worker only looks ids
up. The model loads once per process into the store every built-in pipeline reads (``pipelines.loading``); the
graph's three outputs are views of it. A shared model may carry another job's LoRAs or IP-Adapter: they are
switched off here, before any node uses it, as ``DiffusersPipeline.prepare`` does for a job without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines import loras
from pipelines.comfyui.values import Clip, Model, Vae
from pipelines.families.sd import StableDiffusion
from pipelines.ipadapters import activate as activate_ip_adapters
from pipelines.loading import base_pipeline, check_variant, model_family
from runtime.contract import ContractError
from runtime.models.catalog import ModelError
from runtime.models.store import ModelStore

if TYPE_CHECKING:
    from pipelines.comfyui.executor import Execution

#: Base model variants a checkpoint loader takes: ordinary checkpoints and distilled ones (SDXL Turbo).
VARIANTS: frozenset[str | None] = frozenset({None, "turbo"})


def load_model(store: ModelStore, model_id: Any, where: str) -> Model:
    """The catalog base model ``model_id``, loaded and with no adapters; refused naming ``where`` (the node's
    input) when the catalog lacks it, it is no base model, or this interpreter does not run its family yet."""
    try:
        if not isinstance(model_id, str):
            raise ModelError("invalid_model_id", f"{model_id!r} is not a model id")
        entry = store.entry(model_id, "base")
        kind = model_family(store, model_id)
        check_variant(store, model_id, VARIANTS, "a ComfyUI checkpoint loader", field=where)
    except ModelError as exc:
        message = str(exc) if str(exc).startswith(where) else f"{where}: {exc}"
        raise ContractError(exc.code, message, where) from None
    if not isinstance(kind, StableDiffusion):
        raise ContractError("unsupported_model_family", f"{where}: model {model_id!r} is a {entry.family} model; "
                            "ComfyUI graphs run on SD 1.x, SD 2.x and SDXL models so far", where)
    base = base_pipeline(store, model_id)
    loras.activate(store, base, [])
    activate_ip_adapters(store, base, [])
    return Model(model_id, entry.family, kind, entry.variant, base)


def checkpoint_loader_simple(ex: Execution, node_id: str, args: dict[str, Any]) -> tuple[Any, ...]:
    model = load_model(ex.store, args["ckpt_name"], ex.where(node_id, "ckpt_name"))
    return model, Clip(model), Vae(model)
