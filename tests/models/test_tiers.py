"""Tier 2 of the model cache: loaded models in worker memory, shared, least recently used dropped first."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.common import base_pipeline, controlnet_model
from runtime.local.devstack import DevStack
from runtime.models.store import ModelStore, object_bytes
from tests.conftest import in_process_stack
from tests.rest import call, wait_for


def test_least_recently_used_model_is_dropped_under_the_budget(two_models: Path) -> None:
    one = object_bytes(base_pipeline(ModelStore(two_models), "tiny-sd"))
    store = ModelStore(two_models, "cpu", memory_budget=one + one // 2)  # room for one base model
    base_pipeline(store, "tiny-sd")
    assert store.resident("tiny-sd") and store.memory_bytes() == one
    base_pipeline(store, "tiny-sd-b")
    assert store.resident("tiny-sd-b") and not store.resident("tiny-sd") and store.evictions == 1
    pipe = base_pipeline(store, "tiny-sd")  # an evicted model still serves: it is loaded again
    assert pipe.unet is not None and store.loads == 3 and not store.resident("tiny-sd-b")


def test_pipelines_of_one_base_model_cost_one_copy_of_the_weights(two_models: Path) -> None:
    store = ModelStore(two_models)
    base = object_bytes(base_pipeline(store, "tiny-sd"))
    controlnet = object_bytes(controlnet_model(store, "tiny-controlnet"))
    # txt2img, img2img and ControlNet all run on the one loaded base pipeline plus the ControlNet
    assert store.memory_bytes() == base + controlnet


@pytest.fixture
def stack(two_models: Path, tmp_path: Path) -> Iterator[DevStack]:
    with in_process_stack(two_models, tmp_path / "logs") as running:
        yield running

def run_jobs(stack: DevStack, models: tuple[str, ...]) -> list[str]:
    """Each job's ``model_cache`` (all must succeed)."""
    seen = []
    for model in models:
        status, body = call("POST", f"{stack.api_url}/v1/jobs", {"pipeline": "txt2img", "model": model, "inputs": {
            "prompt": "a fox", "width": 64, "height": 64, "steps": 2}})
        assert status == 202, body
        doc = wait_for(stack.api_url, body["id"], timeout=120)
        assert doc["state"] == "succeeded" and doc["phase"] is None
        seen.append(doc["model_cache"])
    return seen


def test_second_job_for_each_model_is_a_memory_hit(stack: DevStack) -> None:
    assert run_jobs(stack, ("tiny-sd", "tiny-sd-b", "tiny-sd", "tiny-sd-b")) == ["miss", "miss", "hit", "hit"]


def test_jobs_for_models_evicted_from_both_tiers_still_succeed(two_models: Path, tmp_path: Path) -> None:
    """Budgets for one model in memory and one on node disk: each switch evicts the other model from both."""
    one = object_bytes(base_pipeline(ModelStore(two_models), "tiny-sd"))
    budgets = {"model_memory_bytes": one + one // 2, "node_cache_dir": tmp_path / "node",
               "node_cache_bytes": ModelStore(two_models).size("tiny-sd") * 3 // 2}
    with in_process_stack(two_models, tmp_path / "logs", settings=budgets) as stack:
        assert run_jobs(stack, ("tiny-sd", "tiny-sd", "tiny-sd-b", "tiny-sd")) == ["miss", "hit", "miss", "miss"]
    log = (tmp_path / "logs" / "worker-0.log").read_text()
    copies = re.findall(r"model (\S+): copied \d+ bytes to the node cache", log)
    assert copies == ["tiny-sd", "tiny-sd-b", "tiny-sd"]  # tier 1 evicted tiny-sd for tiny-sd-b, and back
    assert sorted(p.name for p in (tmp_path / "node").iterdir() if not p.name.startswith(".")) == ["tiny-sd"]
