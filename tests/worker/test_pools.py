"""Routing models to separate worker pools: one queue per pool, chosen by an SNS filter policy on `model`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.local.devstack import DevStack
from tests.conftest import in_process_stack
from tests.rest import call, wait_for


@pytest.fixture
def two_pools(two_models: Path, tmp_path: Path) -> Iterator[DevStack]:
    """`tiny-sd` on the default queue, `tiny-sd-b` (the same weights under another id) on pool `b`."""
    with in_process_stack(two_models, tmp_path / "logs", pools={"b": ["tiny-sd-b"]}) as stack:
        yield stack

def test_each_model_runs_on_its_own_pool(two_pools: DevStack) -> None:
    api = two_pools.api_url
    jobs = {}
    for model in ("tiny-sd", "tiny-sd-b", "tiny-sd", "tiny-sd-b"):
        status, body = call("POST", f"{api}/v1/jobs", {"pipeline": "txt2img", "model": model, "inputs": {
            "prompt": "a fox", "width": 64, "height": 64, "steps": 2}})
        assert status == 202, body
        jobs[body["id"]] = model
    for job_id in jobs:
        assert wait_for(api, job_id, timeout=120)["state"] == "succeeded"
    assert two_pools.log_dir is not None
    default = (two_pools.log_dir / "worker-0.log").read_text()
    pool_b = (two_pools.log_dir / "worker-b-0.log").read_text()
    for job_id, model in jobs.items():
        ran_on = pool_b if model == "tiny-sd-b" else default
        other = default if model == "tiny-sd-b" else pool_b
        assert f"run_job[{job_id}] received" in ran_on and job_id not in other
