"""check_graph: ComfyUI's own workflows pass, and each kind of error comes back in ComfyUI's 400 shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from runtime.contract.comfy.graph import GraphError, check_graph
from runtime.contract.comfy.inputs import ComfyInputs
from runtime.contract.webui_rules import Names

WORKFLOWS = Path(__file__).parent / "workflows"
ERROR_KEYS = {"type", "message", "details", "extra_info"}


def workflow(name: str) -> dict[str, Any]:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def refused(graph: Any, **kwargs: Any) -> GraphError:
    with pytest.raises(GraphError) as caught:
        check_graph(graph, **kwargs)
    body = json.loads(json.dumps(caught.value.body()))  # it is what POST /prompt answers
    assert set(body) == {"error", "node_errors"} and set(body["error"]) == ERROR_KEYS
    for entry in body["node_errors"].values():
        assert set(entry) == {"errors", "dependent_outputs", "class_type"}
        assert all(set(error) == ERROR_KEYS for error in entry["errors"])
    return caught.value


def only_error(graph: dict[str, Any], node: str, **kwargs: Any) -> dict[str, Any]:
    """The one error of ``node`` when it is the graph's only invalid node."""
    error = refused(graph, **kwargs)
    assert error.error["type"] == "prompt_outputs_failed_validation"
    assert error.error["message"] == "Prompt outputs failed validation"
    assert list(error.node_errors) == [node]
    assert error.node_errors[node]["class_type"] == graph[node]["class_type"]
    (found,) = error.node_errors[node]["errors"]
    assert found["message"] in error.error["details"]
    return found


@pytest.mark.parametrize("name", sorted(p.stem for p in WORKFLOWS.glob("*.json")))
def test_comfyui_workflows_pass_and_checking_again_changes_nothing(name: str) -> None:
    graph = workflow(name)
    checked = check_graph(graph)
    assert list(checked) == list(graph)
    for key, node in checked.items():
        assert node == graph[key]  # nothing to convert in a graph ComfyUI saved
    assert check_graph(checked) == checked
    ComfyInputs(graph=graph)


def test_model_names_resolve_to_catalog_ids_through_names() -> None:
    names = Names(models={"v1-5-pruned-emaonly.safetensors": "sd15", "flux1-dev.safetensors": "flux-dev",
                          "ae.safetensors": "flux-dev", "t5xxl_fp16.safetensors": "flux-dev",
                          "clip_l.safetensors": "flux-dev"},
                  loras={"epiNoiseoffset_v2.safetensors": "noise-offset"},
                  controlnets={"control_v11p_sd15_canny_fp16.safetensors": "canny-sd15"},
                  upscalers={"RealESRGAN_x4plus.pth": "realesrgan-x4"})
    assert check_graph(workflow("default_txt2img"), names)["4"]["inputs"]["ckpt_name"] == "sd15"
    flux = check_graph(workflow("flux_dev"), names)
    assert flux["12"]["inputs"]["unet_name"] == flux["10"]["inputs"]["vae_name"] == "flux-dev"
    assert flux["11"]["inputs"]["clip_name1"] == flux["11"]["inputs"]["clip_name2"] == "flux-dev"
    assert check_graph(workflow("lora"), names)["10"]["inputs"]["lora_name"] == "noise-offset"
    assert check_graph(workflow("controlnet_canny"), names)["12"]["inputs"]["control_net_name"] == "canny-sd15"
    mixed = check_graph(workflow("upscale_and_mask"), names)
    assert mixed["19"]["inputs"]["model_name"] == "realesrgan-x4"
    assert mixed["2"]["inputs"]["image"] == "example.png"  # uploads are the API's to resolve
    graph = workflow("default_txt2img")
    for written in ("SD1.5/v1-5-pruned-emaonly.safetensors", "v1-5-pruned-emaonly", "V1-5-PRUNED-EMAONLY.ckpt",
                    "sd15"):
        graph["4"]["inputs"]["ckpt_name"] = written
        assert check_graph(graph, names)["4"]["inputs"]["ckpt_name"] == "sd15"
        assert check_graph(check_graph(graph, names))["4"]["inputs"]["ckpt_name"] == "sd15"  # the worker's check


def test_an_unknown_model_is_not_in_the_deployments_list() -> None:
    names = Names(models={"v1-5-pruned-emaonly.safetensors": "sd15"}, loras={"other.safetensors": "other"})
    graph = workflow("default_txt2img")
    graph["4"]["inputs"]["ckpt_name"] = "dreamshaper_8.safetensors"
    found = only_error(graph, "4", names=names)
    assert found["type"] == "value_not_in_list" and found["message"] == "Value not in list"
    assert found["details"] == ("ckpt_name: 'dreamshaper_8.safetensors' not in "
                                "['sd15', 'v1-5-pruned-emaonly.safetensors']")
    assert found["extra_info"]["received_value"] == "dreamshaper_8.safetensors"
    lora = workflow("lora")
    lora["10"]["inputs"]["lora_name"] = "v1-5-pruned-emaonly.safetensors"  # a checkpoint is no LoRA
    assert only_error(lora, "10", names=names)["extra_info"]["input_name"] == "lora_name"
    lora["10"]["inputs"]["lora_name"] = "other.safetensors"
    assert check_graph(lora)["10"]["inputs"]["lora_name"] == "other.safetensors"  # without names: any name


def test_not_an_object_and_no_prompt() -> None:
    assert refused(None).error["type"] == "no_prompt"
    for graph in ([workflow("default_txt2img")], "graph", 3):
        error = refused(graph)
        assert error.error["type"] == "invalid_prompt" and error.node_errors == {}
    graph = workflow("default_txt2img")
    del graph["5"]["class_type"]
    assert refused(graph).error == {"type": "invalid_prompt", "message": "Cannot execute because a node is missing "
                                    "the class_type property.", "details": "Node ID '#5'", "extra_info": {}}
    graph = workflow("default_txt2img")
    graph["5"]["inputs"] = [512, 512]
    assert refused(graph).error["details"] == "Node ID '#5'"


def test_a_graph_without_an_output_node() -> None:
    graph = workflow("default_txt2img")
    del graph["9"]
    assert refused(graph).error == {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "",
                                    "extra_info": {}}
    assert refused({}).error["type"] == "prompt_no_outputs"


def test_custom_nodes_are_refused_naming_each_node_and_class() -> None:
    graph = workflow("default_txt2img")
    graph["10"] = {"inputs": {"images": ["8", 0]}, "class_type": "Image Save", "_meta": {"title": "Image Save"}}
    graph["11"] = {"inputs": {}, "class_type": "CLIPTextEncodeSDXL+", "_meta": {"title": "x"}}
    error = refused(graph)
    assert error.error["type"] == "missing_node_type"
    assert error.error["message"].startswith("Node 'Image Save' not found. The custom node may not be installed.")
    assert error.error["details"] == "Node ID '#10'"
    assert error.error["extra_info"] == {"node_id": "10", "class_type": "Image Save"}
    assert {k: v["class_type"] for k, v in error.node_errors.items()} == {"10": "Image Save",
                                                                          "11": "CLIPTextEncodeSDXL+"}
    assert "Image Save" in str(error)


def test_a_missing_required_input() -> None:
    graph = workflow("default_txt2img")
    del graph["3"]["inputs"]["steps"]
    assert only_error(graph, "3") == {"type": "required_input_missing", "message": "Required input is missing",
                                      "details": "steps", "extra_info": {"input_name": "steps"}}
    graph = workflow("controlnet_canny")
    assert "vae" not in graph["11"]["inputs"]  # optional
    check_graph(graph)


@pytest.mark.parametrize(("link", "message"), [
    (["99", 0], "Bad linked input, the linked node does not exist"),
    (["4", 3], "Bad linked input, the linked node has no such output"),
    (["11", 0], "Bad linked input, the linked node has no such output"),
    (["4"], "Bad linked input, must be a length-2 list of [node_id, slot_index]"),
    (["4", "0"], "Bad linked input, must be a length-2 list of [node_id, slot_index]"),
])
def test_a_link_to_a_missing_node_or_output(link: list[Any], message: str) -> None:
    graph = workflow("default_txt2img")
    graph["10"] = {"inputs": {"image": "example.png"}, "class_type": "LoadImage"}
    graph["11"] = {"inputs": {"images": ["10", 0]}, "class_type": "PreviewImage"}  # an output node has no outputs
    graph["3"]["inputs"]["model"] = link
    found = only_error(graph, "3")
    assert found["type"] == "bad_linked_input" and found["message"] == message
    assert found["extra_info"]["input_name"] == "model" and found["extra_info"]["received_value"] == link


def test_a_link_of_the_wrong_type() -> None:
    graph = workflow("default_txt2img")
    graph["3"]["inputs"]["model"] = ["4", 1]
    found = only_error(graph, "3")
    assert found["type"] == "return_type_mismatch"
    assert found["message"] == "Return type mismatch between linked nodes"
    assert found["details"] == "model, received_type(CLIP) mismatch input_type(MODEL)"
    assert found["extra_info"]["received_type"] == "CLIP" and found["extra_info"]["linked_node"] == ["4", 1]
    graph = workflow("default_txt2img")
    graph["3"]["inputs"]["steps"] = ["5", 0]  # a widget linked to a node's output
    assert only_error(graph, "3")["details"] == "steps, received_type(LATENT) mismatch input_type(INT)"


@pytest.mark.parametrize(("node", "name", "value"), [
    ("3", "steps", "twenty"), ("3", "cfg", "NaN"), ("3", "seed", None), ("5", "width", {"value": 512}),
    ("3", "model", "v1-5-pruned-emaonly.safetensors"), ("6", "text", {"text": "a cat"}),
])
def test_a_value_of_the_wrong_type(node: str, name: str, value: Any) -> None:
    graph = workflow("default_txt2img")
    graph[node]["inputs"][name] = value
    found = only_error(graph, node)
    assert found["type"] == "invalid_input_type"
    assert found["message"].startswith("Failed to convert an input value to a ")
    assert found["details"].startswith(f"{name}, ")
    assert found["extra_info"]["input_name"] == name and found["extra_info"]["received_value"] == value


def test_values_are_converted_as_comfyui_converts_them() -> None:
    graph = workflow("default_txt2img")
    graph["3"]["inputs"].update(steps="12", cfg=7, seed=3.0)
    graph["3"]["inputs"]["model"] = [4, 0]  # a node id as a number
    graph["6"]["inputs"]["text"] = 42
    graph["3"]["inputs"]["not_an_input"] = 1
    checked = check_graph(graph)
    assert checked["3"]["inputs"]["steps"] == 12 and isinstance(checked["3"]["inputs"]["cfg"], float)
    assert checked["3"]["inputs"]["seed"] == 3 and checked["3"]["inputs"]["model"] == ["4", 0]
    assert checked["6"]["inputs"]["text"] == "42" and "not_an_input" not in checked["3"]["inputs"]


@pytest.mark.parametrize(("node", "name", "value", "kind", "message"), [
    ("3", "steps", 0, "value_smaller_than_min", "Value 0 smaller than min of 1"),
    ("3", "denoise", 1.5, "value_bigger_than_max", "Value 1.5 bigger than max of 1.0"),
    ("5", "width", 4096, "value_bigger_than_max", "Value 4096 bigger than max of 2048"),
    ("3", "seed", -1, "value_smaller_than_min", "Value -1 smaller than min of 0"),
    ("3", "seed", 2**64, "value_bigger_than_max", f"Value {2**64} bigger than max of {2**64 - 1}"),
])
def test_a_value_out_of_range(node: str, name: str, value: Any, kind: str, message: str) -> None:
    graph = workflow("default_txt2img")
    graph[node]["inputs"][name] = value
    found = only_error(graph, node)
    assert (found["type"], found["message"], found["details"]) == (kind, message, name)
    assert found["extra_info"]["input_config"][0] in ("INT", "FLOAT")


@pytest.mark.parametrize(("name", "value"), [("sampler_name", "dpm_fast"), ("scheduler", "beta"),
                                             ("sampler_name", "Euler a"), ("scheduler", 3)])
def test_a_choice_spotgen_does_not_run(name: str, value: Any) -> None:
    graph = workflow("default_txt2img")
    graph["3"]["inputs"][name] = value
    found = only_error(graph, "3")
    assert found["type"] == "value_not_in_list" and found["message"] == "Value not in list"
    assert found["details"].startswith(f"{name}: '{value}' not in ['")
    assert found["extra_info"]["received_value"] == value


def test_a_sampler_and_scheduler_spotgen_does_not_run_together() -> None:
    graph = workflow("default_txt2img")
    graph["3"]["inputs"].update(sampler_name="euler_ancestral", scheduler="karras")
    found = only_error(graph, "3")
    assert found["type"] == "value_not_in_list" and found["extra_info"]["input_name"] == "scheduler"
    assert found["details"].startswith("scheduler: 'karras' not in ['normal', 'sgm_uniform', 'simple']")
    flux = workflow("flux_dev")
    flux["16"]["inputs"]["sampler_name"] = "euler_ancestral"
    flux["17"]["inputs"]["scheduler"] = "exponential"
    found = only_error(flux, "17")
    assert "sampler 'euler_ancestral' of node '#16'" in found["details"]


def test_a_cycle_is_refused_on_each_node_in_it() -> None:
    graph = workflow("hires_two_samplers")
    graph["10"]["inputs"]["samples"] = ["11", 0]  # the second pass's input is its own output
    error = refused(graph)
    cycle = {key for key, entry in error.node_errors.items()
             if any(e["type"] == "dependency_cycle" for e in entry["errors"])}
    assert cycle == {"10", "11"}
    assert error.node_errors["10"]["errors"][0]["message"] == "Dependency cycle detected"
    graph = workflow("default_txt2img")
    graph["3"]["inputs"]["latent_image"] = ["3", 0]
    assert {k: [e["type"] for e in v["errors"]] for k, v in refused(graph).node_errors.items()} == {
        "3": ["dependency_cycle"]}


def test_a_graph_too_large() -> None:
    graph = workflow("default_txt2img")
    error = refused(graph, max_nodes=6)
    assert error.error["type"] == "invalid_prompt" and "7 nodes" in error.error["message"]
    assert refused(graph, max_chars=500).error["type"] == "invalid_prompt"
    graph["6"]["inputs"]["text"] = "x" * 1_000_000
    assert "characters" in refused(graph).error["message"]


def test_every_error_is_reported_with_the_outputs_it_blocks() -> None:
    graph = workflow("hires_two_samplers")
    graph["3"]["inputs"]["steps"] = 1000
    graph["11"]["inputs"]["scheduler"] = "beta"
    del graph["16"]["inputs"]["ckpt_name"]
    error = refused(graph)
    assert list(error.node_errors) == ["3", "11", "16"]
    assert error.node_errors["3"]["dependent_outputs"] == ["9", "13"]
    assert error.node_errors["11"]["dependent_outputs"] == ["13"]
    assert error.node_errors["16"]["dependent_outputs"] == ["9", "13"]
    assert error.error["details"].splitlines() == ["Value 1000 bigger than max of 150: steps",
                                                   "Value not in list: scheduler: 'beta' not in "
                                                   "['normal', 'karras', 'exponential', 'sgm_uniform', 'simple']",
                                                   "Required input is missing: ckpt_name"]


def test_nodes_no_output_depends_on_are_neither_checked_nor_kept() -> None:
    graph = workflow("default_txt2img")
    graph["20"] = {"inputs": {"width": -5, "height": 512, "batch_size": 1}, "class_type": "EmptyLatentImage"}
    assert "20" not in check_graph(graph)


def test_the_workers_inputs_check_the_graph() -> None:
    graph = workflow("default_txt2img")
    graph["3"]["inputs"]["sampler_name"] = "dpm_fast"
    with pytest.raises(ValidationError, match="Prompt outputs failed validation"):
        ComfyInputs(graph=graph)


def test_samplers_are_checked_on_the_models_family_when_the_deployment_knows_it() -> None:
    names = Names(models={"flux1-dev.safetensors": "flux-dev", "ae.safetensors": "flux-dev",
                          "t5xxl_fp16.safetensors": "flux-dev", "clip_l.safetensors": "flux-dev",
                          "sd3.5_large_fp8_scaled.safetensors": "sd35", "v1-5-pruned-emaonly.safetensors": "sd15"},
                  loras={"epiNoiseoffset_v2.safetensors": "noise-offset"},
                  families={"flux-dev": "flux", "sd35": "sd3", "sd15": "sd1"})
    check_graph(workflow("sd35"), names)  # sgm_uniform is SD 3.5's own schedule
    flux = workflow("flux_dev")
    flux["16"]["inputs"]["sampler_name"] = "heun"  # SD 3.5 runs Heun, Flux does not
    check_graph(flux)  # without the deployment: as on SD
    found = only_error(flux, "16", names=names)
    assert found["details"] == ("sampler_name: 'heun' not in ['euler', 'dpmpp_2m', 'uni_pc'] (the samplers spotgen "
                                "runs on flux models such as 'flux-dev')")
    sd35 = workflow("sd35")
    sd35["3"]["inputs"].update(sampler_name="dpmpp_2m", scheduler="karras")
    assert only_error(sd35, "3", names=names)["details"].startswith(
        "scheduler: 'karras' not in ['normal', 'sgm_uniform', 'simple']")
    lora = workflow("lora")  # the model reaches the sampler through a LoRA
    lora["3"]["inputs"]["sampler_name"] = "dpm_2"
    check_graph(lora, names)
    lora["4"]["inputs"]["ckpt_name"] = "flux1-dev.safetensors"
    assert only_error(lora, "3", names=names)["extra_info"]["input_name"] == "sampler_name"
