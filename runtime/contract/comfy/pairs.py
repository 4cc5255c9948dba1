"""The samplers and schedulers of a graph that spotgen runs each, but not together or not on the graph's model.

A KSampler names both; custom sampling splits them over ``KSamplerSelect`` and ``BasicScheduler``, joined where
both link straight to a ``SamplerCustomAdvanced``. Where the deployment's ``Names`` know the family of the model a
sampler's ``model`` comes from (through LoRAs and ModelSampling nodes to its loader), the pair is checked on that
family (Flux and SD 3.5 run fewer samplers); otherwise as on SD, and the worker refuses the rest knowing the
model. Each is ComfyUI's ``value_not_in_list``, with the names that would do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtime.contract.comfy.nodes_sampling import samplers_for, schedulers_for
from runtime.contract.comfy.objectinfo import declaration
from runtime.contract.comfy.table import all_nodes
from runtime.contract.comfy.values import link_of, node_error
from runtime.contract.webui_rules import Names

_KSAMPLERS = ("KSampler", "KSamplerAdvanced")
#: Nodes that hand on the model they take, and the loaders a model starts from (with the input naming it).
_MODEL_PASSES = ("LoraLoader", "LoraLoaderModelOnly", "ModelSamplingSD3", "ModelSamplingFlux")
_MODEL_LOADERS = {"CheckpointLoaderSimple": "ckpt_name", "UNETLoader": "unet_name"}


def model_of(prompt: Mapping[str, Any], checked: Mapping[str, dict[str, Any]], key: str) -> str | None:
    """The model name (a catalog id once resolved) of the loader that node ``key``'s ``model`` input comes from;
    None where it comes from no loader of the table."""
    seen: set[str] = set()
    found = link_of(prompt, checked.get(key, {}).get("model"))
    while found is not None and found[0] not in seen and found[0] in checked:
        source = found[0]
        seen.add(source)
        class_type = prompt[source]["class_type"]
        if class_type in _MODEL_LOADERS:
            name = checked[source].get(_MODEL_LOADERS[class_type])
            return name if isinstance(name, str) else None
        if class_type not in _MODEL_PASSES:
            return None
        found = link_of(prompt, checked[source].get("model"))
    return None


def check_sampler_pairs(prompt: Mapping[str, Any], checked: Mapping[str, dict[str, Any]],
                        errors: dict[str, list[dict[str, Any]]], names: Names | None) -> None:
    """Adds to ``errors`` (by node id) a ``value_not_in_list`` for each pair spotgen does not run."""
    def bad(key: str) -> bool:
        return any(e["extra_info"].get("input_name") in ("sampler_name", "scheduler") for e in errors.get(key, ()))

    # (node holding the sampler, node holding the scheduler, node whose model input names the model)
    pairs: list[tuple[str, str, str]] = []
    for key, inputs in checked.items():
        class_type = prompt[key]["class_type"]
        if class_type in _KSAMPLERS and not bad(key) and "sampler_name" in inputs and "scheduler" in inputs:
            pairs.append((key, key, key))
        elif class_type == "SamplerCustomAdvanced":
            select, schedule = (link_of(prompt, inputs.get(name)) for name in ("sampler", "sigmas"))
            if (select and schedule and prompt[select[0]]["class_type"] == "KSamplerSelect"
                    and prompt[schedule[0]]["class_type"] == "BasicScheduler"
                    and not bad(select[0]) and not bad(schedule[0])
                    and "sampler_name" in checked[select[0]] and "scheduler" in checked[schedule[0]]):
                pairs.append((select[0], schedule[0], schedule[0]))
    reported: set[tuple[str, str]] = set()
    for sampler_node, scheduler_node, model_node in pairs:
        sampler = checked[sampler_node]["sampler_name"]
        scheduler = checked[scheduler_node]["scheduler"]
        model = model_of(prompt, checked, model_node)
        family = names.families.get(model) if names is not None and model is not None else None
        on = f" on {family} models such as {model!r}" if family else ""
        if sampler not in samplers_for(family):
            takes, at, name, value = list(samplers_for(family)), sampler_node, "sampler_name", sampler
            why = f"the samplers spotgen runs{on}"
        elif scheduler not in schedulers_for(sampler, family):
            takes, at, name, value = list(schedulers_for(sampler, family)), scheduler_node, "scheduler", scheduler
            of = f" of node '#{sampler_node}'" if sampler_node != scheduler_node else ""
            why = f"the schedulers spotgen runs sampler '{sampler}'{of} with{on}"
        else:
            continue
        if (at, name) in reported:
            continue
        reported.add((at, name))
        spec = all_nodes()[prompt[at]["class_type"]].input(name)
        assert spec is not None
        errors.setdefault(at, []).append(node_error(
            "value_not_in_list", "Value not in list", f"{name}: '{value}' not in {takes} ({why})", input_name=name,
            input_config=[takes, *declaration(spec, names)[1:]], received_value=value))
