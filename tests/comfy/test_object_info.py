"""GET /object_info from the node table, the table itself, and ComfyUI's sampler names on spotgen's samplers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.contract.comfy.nodes import LINK_TYPES, VALUE_TYPES
from runtime.contract.comfy.nodes_sampling import (
    COMFY_SAMPLERS,
    COMFY_SCHEDULERS,
    samplers_for,
    schedulers_for,
    spotgen_sampler,
)
from runtime.contract.comfy.objectinfo import object_info, object_info_of
from runtime.contract.comfy.table import all_nodes, node_rows
from runtime.contract.inputs import SAMPLER_SCHEDULES, SCHEDULERS, SCHEDULES
from runtime.contract.webui_rules import Names

#: The core nodes issue 30 names.
CORE = [
    "CheckpointLoaderSimple", "UNETLoader", "CLIPLoader", "DualCLIPLoader", "VAELoader", "LoraLoader",
    "LoraLoaderModelOnly", "ControlNetLoader", "UpscaleModelLoader", "CLIPTextEncode", "CLIPSetLastLayer",
    "ConditioningCombine", "ConditioningZeroOut", "FluxGuidance", "EmptyLatentImage", "EmptySD3LatentImage",
    "LatentUpscale", "LatentUpscaleBy", "SetLatentNoiseMask", "KSampler", "KSamplerAdvanced",
    "SamplerCustomAdvanced", "RandomNoise", "KSamplerSelect", "BasicScheduler", "BasicGuider", "CFGGuider",
    "ModelSamplingSD3", "ModelSamplingFlux", "VAEDecode", "VAEEncode", "VAEEncodeForInpaint", "LoadImage",
    "LoadImageMask", "ImageScale", "ImageScaleBy", "ImageUpscaleWithModel", "ImageInvert", "SaveImage",
    "PreviewImage", "ControlNetApply", "ControlNetApplyAdvanced", "Canny",
]
KEYS = {"input", "input_order", "output", "output_is_list", "output_name", "name", "display_name", "description",
        "python_module", "category", "output_node"}
WORKFLOWS = Path(__file__).parent / "workflows"


def test_every_node_of_the_table_is_listed_in_comfyuis_shape() -> None:
    info = json.loads(json.dumps(object_info(None)))
    assert set(all_nodes()) == set(CORE) == set(info)
    for name, entry in info.items():
        assert KEYS <= set(entry) <= KEYS | {"deprecated"}
        assert entry["name"] == name and entry["display_name"] and entry["category"]
        assert entry["input_order"] == {key: list(value) for key, value in entry["input"].items()}
        assert len(entry["output"]) == len(entry["output_name"]) == len(entry["output_is_list"])
        assert entry["output_node"] == (entry["output"] == [])
        for declared in [*entry["input"]["required"].values(), *entry["input"].get("optional", {}).values()]:
            assert isinstance(declared[0], list) or declared[0] in LINK_TYPES + VALUE_TYPES
            assert len(declared) == 1 or isinstance(declared[1], dict)


def test_no_link_input_names_a_type_no_node_outputs() -> None:
    outputs = {kind for node in all_nodes().values() for kind in node.outputs}
    assert outputs == set(LINK_TYPES)
    for node in all_nodes().values():
        for spec in node.inputs:
            assert not isinstance(spec.type, str) or spec.type in outputs or spec.type in VALUE_TYPES, spec


def test_nodes_as_comfyui_declares_them() -> None:
    info = object_info(None)
    ksampler = info["KSampler"]
    assert ksampler["input_order"]["required"] == ["model", "seed", "steps", "cfg", "sampler_name", "scheduler",
                                                   "positive", "negative", "latent_image", "denoise"]
    assert ksampler["input"]["required"]["seed"] == ["INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                                             "control_after_generate": True}]
    assert ksampler["input"]["required"]["model"] == ["MODEL"]
    assert ksampler["input"]["required"]["sampler_name"] == [list(COMFY_SAMPLERS)]
    assert ksampler["input"]["required"]["scheduler"] == [["normal", "karras", "exponential", "sgm_uniform",
                                                           "simple"]]
    assert ksampler["output"] == ["LATENT"] and ksampler["category"] == "sampling"
    assert info["CheckpointLoaderSimple"]["output"] == ["MODEL", "CLIP", "VAE"]
    assert info["CheckpointLoaderSimple"]["output_name"] == ["MODEL", "CLIP", "VAE"]
    assert info["CheckpointLoaderSimple"]["category"] == "loaders"
    apply = info["ControlNetApplyAdvanced"]
    assert apply["output_name"] == ["positive", "negative"] and apply["input"]["optional"] == {"vae": ["VAE"]}
    assert info["ControlNetApply"]["deprecated"] is True
    assert info["SamplerCustomAdvanced"]["output_name"] == ["output", "denoised_output"]
    assert info["SamplerCustomAdvanced"]["python_module"] == "comfy_extras.nodes_custom_sampler"
    save = info["SaveImage"]
    assert save["output_node"] is True and save["output"] == []
    assert save["input"]["required"]["filename_prefix"] == ["STRING", {"default": "ComfyUI"}]
    assert save["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert info["LoadImage"]["input"]["required"]["image"] == [[], {"image_upload": True}]
    assert info["LoadImage"]["output"] == ["IMAGE", "MASK"]
    assert info["EmptySD3LatentImage"]["input"]["required"]["width"][1]["step"] == 16
    assert info["FluxGuidance"]["input"]["required"]["guidance"][1]["default"] == 3.5
    assert info["DualCLIPLoader"]["input"]["required"]["type"] == [["sdxl", "sd3", "flux"]]
    assert object_info_of("KSampler") == {"KSampler": ksampler}
    assert object_info_of("TripleCLIPLoader") == {}


def test_model_choices_are_the_deployments_names() -> None:
    names = Names(models={"v1-5-pruned-emaonly.safetensors": "sd15", "flux1-dev.safetensors": "flux-dev"},
                  loras={"detail.safetensors": "detail"}, controlnets={"canny.safetensors": "canny"},
                  upscalers={"RealESRGAN_x4plus.pth": "realesrgan"})
    info = object_info(names)
    models = ["flux-dev", "flux1-dev.safetensors", "sd15", "v1-5-pruned-emaonly.safetensors"]
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"] == [models]
    assert info["UNETLoader"]["input"]["required"]["unet_name"] == [models]
    assert info["LoraLoader"]["input"]["required"]["lora_name"] == [["detail", "detail.safetensors"]]
    assert info["ControlNetLoader"]["input"]["required"]["control_net_name"] == [["canny", "canny.safetensors"]]
    assert info["UpscaleModelLoader"]["input"]["required"]["model_name"] == [["realesrgan", "RealESRGAN_x4plus.pth"]]
    assert object_info(None)["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"] == [[]]


@pytest.mark.parametrize("name", sorted(p.stem for p in WORKFLOWS.glob("*.json")))
def test_a_client_reading_object_info_finds_each_workflow_node_and_input(name: str) -> None:
    info = object_info(None)
    for node in json.loads((WORKFLOWS / f"{name}.json").read_text()).values():
        entry = info[node["class_type"]]
        assert set(entry["input"]["required"]) <= set(node["inputs"])
        assert set(node["inputs"]) <= set(entry["input"]["required"]) | set(entry["input"].get("optional", {}))


def test_comfyui_sampler_names_map_onto_spotgens_sampler_table() -> None:
    assert set(COMFY_SAMPLERS.values()) <= set(SCHEDULERS) and set(COMFY_SCHEDULERS.values()) <= set(SCHEDULES)
    assert spotgen_sampler("euler_ancestral", "normal") == ("euler_a", "default")
    assert spotgen_sampler("dpmpp_2m", "karras") == ("dpmpp_2m", "karras")
    assert spotgen_sampler("uni_pc", "sgm_uniform") == ("unipc", "sgm_uniform")
    assert spotgen_sampler("dpm_2_ancestral", "simple") == ("dpm2_a", "default")
    for sampler in COMFY_SAMPLERS:
        assert schedulers_for(sampler)
        for scheduler in schedulers_for(sampler):
            runs, schedule = spotgen_sampler(sampler, scheduler)
            assert schedule in SAMPLER_SCHEDULES[runs]
    assert spotgen_sampler("euler", "sgm_uniform", "flux") == ("euler", "default")  # the model's own schedule
    assert spotgen_sampler("euler", "sgm_uniform", "sdxl") == ("euler", "sgm_uniform")
    for family in ("flux", "sd3"):
        assert set(samplers_for(family)) < set(COMFY_SAMPLERS) and "heun" in samplers_for("sd3")
    with pytest.raises(ValueError, match="'heun'"):
        spotgen_sampler("heun", "normal", "flux")
    for sampler, scheduler in (("dpm_fast", "normal"), ("euler", "beta"), ("euler_ancestral", "karras")):
        with pytest.raises(ValueError, match=f"'{sampler if sampler == 'dpm_fast' else scheduler}'"):
            spotgen_sampler(sampler, scheduler)


def test_node_rows_for_the_docs_table() -> None:
    rows = node_rows()
    assert [row[0] for row in rows] == list(all_nodes())
    by_class = {row[0]: row for row in rows}
    assert by_class["KSampler"][1][2] == "steps: INT 1..150" and by_class["KSampler"][2] == ["LATENT"]
    assert by_class["ControlNetApplyAdvanced"][1][-1] == "[vae: VAE]"
    assert by_class["ControlNetApplyAdvanced"][2] == ["positive (CONDITIONING)", "negative (CONDITIONING)"]
    assert by_class["SaveImage"][2] == ["(output node)"]


def test_the_contract_imports_nothing_of_the_project_outside_it() -> None:
    code = ("import sys, runtime.contract.comfy.graph, runtime.contract.comfy.objectinfo, "
            "runtime.contract.comfy.inputs\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'pipelines', 'spotgen',"
            " 'lambdas') or (m.startswith('runtime.') and not m.startswith('runtime.contract')))\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
