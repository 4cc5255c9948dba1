"""The harnesses' job mix (tests/harness/jobmix.py), checked without a stack or a model.

A job the API refuses is found by `make chaos` only after minutes (its submit asserts 202), and `make faults` runs
far more of the mix than chaos does. So every job of the lengths both harnesses run is put through what the submit
Lambda checks (the contract, then the family rules of the deployment's default settings), and the mix is checked
to hold what issue 28 asks of it: both flow-matching families, each of their tasks.
"""

from __future__ import annotations

import pytest

from lambdas.submit import check_family
from runtime.config import Settings
from runtime.contract import GenerationInputs, validate_inputs
from tests.harness.jobmix import FLOW_KINDS, make_jobs


@pytest.mark.parametrize(("jobs", "size", "steps"), [(100, 128, 60), (420, 64, 12)])  # chaos's and faults' own
def test_the_api_accepts_every_job_of_the_mix(jobs: int, size: int, steps: int) -> None:
    settings = Settings()
    for job in make_jobs(jobs, size, steps, 1, "inputs"):
        inputs = validate_inputs(job.request["pipeline"], job.request["inputs"], input_bucket="inputs")
        if isinstance(inputs, GenerationInputs):  # as the submit Lambda: a graph's models are checked in the graph
            check_family(settings, job.request["model"], inputs)


def test_the_mix_runs_every_flow_task_of_both_families() -> None:
    families = Settings().model_families
    flow = [job for job in make_jobs(100, 128, 60, 1, "inputs") if families[job.request["model"]] in ("flux", "sd3")]
    assert len(flow) >= 2 * len(FLOW_KINDS)  # every kind at least twice in a 100-job chaos run
    asked = [job.request["inputs"] for job in flow]  # as sent, without the defaults the contract fills in
    seen = {(job.request["model"], job.request["pipeline"], *sorted(set(raw) & {
        "guidance", "skip_layer_guidance", "image", "mask", "extend"}),
        *("unit" for unit in raw.get("controlnets", [])), *(lora["id"] for lora in raw.get("loras", [])))
        for job, raw in zip(flow, asked, strict=True)}
    assert {("tiny-flux", "txt2img", "guidance"), ("tiny-flux-schnell", "txt2img"),
            ("tiny-flux", "img2img", "guidance", "image"), ("tiny-flux-fill", "inpaint", "image", "mask"),
            ("tiny-flux-fill", "inpaint", "extend", "image"),
            ("tiny-sd3", "txt2img", "skip_layer_guidance"), ("tiny-sd3", "img2img", "image")} <= seen, seen
    # a ControlNet unit with LoRAs in each format people share (diffusers, kohya, XLabs), and only there
    assert {lora["id"] for raw in asked for lora in raw.get("loras", [])} == {
        "tiny-lora-flux", "tiny-lora-flux-kohya", "tiny-lora-flux-xlabs"}
    assert all(bool(raw.get("controlnets")) == bool(raw.get("loras")) for raw in asked)


def test_the_mix_runs_comfyui_graphs_of_two_samplers() -> None:
    """Issue 30: a ComfyUI graph in the chaos mix, so that a kill inside either of its samplers is met and its
    resume compared byte for byte; the API's graph check (the contract's) takes each one."""
    graphs = [job for job in make_jobs(100, 128, 60, 1, "inputs") if job.request["pipeline"] == "comfyui"]
    assert len(graphs) == len(range(2, 100, 8)) and all(job.steps == 120 for job in graphs)
    samplers = [[node["inputs"]["scheduler"] for node in job.inputs["graph"].values()
                 if node["class_type"] == "KSampler"] for job in graphs]
    assert all(len(pair) == 2 for pair in samplers) and {pair[1] for pair in samplers} == {"normal", "karras"}
