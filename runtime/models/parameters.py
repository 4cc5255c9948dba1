"""The API stack's model parameters, derived from the model catalog.

The API refuses a model it does not list (``SPOTGEN_MODELS`` and its kin), and a worker can only run what its
catalog holds: two lists kept by hand drift apart, and then the API accepts jobs that fail on every worker. So the
stack's lists are printed from the very catalog that goes onto the model library (``spotgen models parameters``,
docs/deploy.md), and the API accepts exactly the catalog's ids: its base models, ControlNets, LoRAs and
upscalers (a ``vae`` entry is only ever named by a base model, never by a request).
"""

from __future__ import annotations

import json
from pathlib import Path

from runtime.models.catalog import Catalog, ModelError

#: The stack parameter (lambdas/template.yaml) that lists the catalog's ids of each kind a request may name.
KIND_PARAMETERS = {"base": "Models", "controlnet": "ControlNets", "lora": "Loras", "upscaler": "Upscalers"}
#: The kinds whose ids go into ``ModelFamilies`` (an upscaler works on pixels of any family).
FAMILY_KINDS = ("base", "controlnet", "lora")
#: CloudFormation refuses a parameter value longer than this (bytes): a catalog with hundreds of aliases could
#: reach it, and it is better said here than by a failed change set.
CFN_VALUE_MAX_BYTES = 4096


def accepted_ids(catalog: Catalog) -> dict[str, list[str]]:
    """The ids a request may name, by kind (``base``, ``controlnet``, ``lora``, ``upscaler``), in catalog order."""
    ids: dict[str, list[str]] = {kind: [] for kind in KIND_PARAMETERS}
    for model_id, entry in catalog.models.items():
        if entry.kind in ids:
            ids[entry.kind].append(model_id)
    return ids


def catalog_aliases(catalog: Catalog, accepted: set[str] | None = None) -> dict[str, str]:
    """The catalog's aliases of the ids in ``accepted`` (default: every id a request may name), as
    ``SPOTGEN_ALIASES`` takes them (ids left out: each id is its own alias anyway)."""
    if accepted is None:
        accepted = {model_id for ids in accepted_ids(catalog).values() for model_id in ids}
    names = catalog.names()
    return {alias: target for kind in (names.models, names.loras, names.controlnets) for alias, target in kind.items()
            if alias != target and target in accepted}


def stack_parameters(catalog: Catalog) -> dict[str, str]:
    """``Models``, ``ControlNets``, ``Loras``, ``Upscalers``, ``ModelFamilies``, ``ModelVariants`` and
    ``CompatAliases`` of lambdas/template.yaml, as the API must have them for this catalog."""
    ids = accepted_ids(catalog)
    every = [model_id for kind in FAMILY_KINDS for model_id in ids[kind]]
    parameters = {name: ",".join(ids[kind]) for kind, name in KIND_PARAMETERS.items()}
    parameters["ModelFamilies"] = ",".join(f"{model_id}={catalog.models[model_id].family}" for model_id in every)
    # Base models made for one task or run without guidance: the API refuses guidance on Flux schnell with them.
    parameters["ModelVariants"] = ",".join(f"{model_id}={catalog.models[model_id].variant}" for model_id in ids["base"]
                                           if catalog.models[model_id].variant is not None)
    parameters["CompatAliases"] = json.dumps(catalog_aliases(catalog), separators=(",", ":"),
                                             ensure_ascii=False)
    for name, value in parameters.items():
        if len(value.encode()) > CFN_VALUE_MAX_BYTES:
            raise ModelError("parameter_too_long", f"{name} would be {len(value.encode())} bytes, over "
                             f"CloudFormation's {CFN_VALUE_MAX_BYTES} for a parameter value: shorten the catalog's "
                             "ids or aliases, or split the models over two stacks")
    return parameters


def parameters_file(models_dir: Path) -> str:
    """The parameters of the catalog in ``models_dir`` as a file for ``sam deploy --parameter-overrides
    file://NAME.yaml``: JSON, which is YAML too, so that no value needs YAML's quoting rules (a JSON object in a
    value stays one string; the SAM CLI's command line would cut it at its first '"')."""
    return json.dumps(stack_parameters(Catalog.load(models_dir)), indent=2, ensure_ascii=False) + "\n"
