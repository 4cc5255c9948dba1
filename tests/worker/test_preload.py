"""Preloading: a worker loads its configured models before taking jobs, and refuses to start without them."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from runtime.models.nodecache import NodeCache
from tests.conftest import ROOT, Stack, spawn_worker, zygote


def log_of(stack: Stack, name: str) -> str:
    return (stack.log_dir / f"worker-{name}.log").read_text(errors="replace")


def test_preload_failure_stops_start_up_with_the_reason(stack: Stack) -> None:
    proc = spawn_worker(stack, "preload-missing", {"SPOTGEN_PRELOAD": "tiny-sd,no-such-model"})
    assert proc.wait(120) == 1
    log = log_of(stack, "preload-missing")
    assert "cannot start" in log and "'no-such-model' is not in the catalog" in log
    assert "ready." not in log  # it never consumed


def test_an_attention_kernel_that_cannot_run_stops_start_up(stack: Stack) -> None:
    proc = spawn_worker(stack, "attention", {"SPOTGEN_ATTENTION": "xformers"})
    assert proc.wait(120) == 1
    log = log_of(stack, "attention")
    assert "cannot start" in log and "xformers is not installed" in log


def test_a_plugin_that_cannot_set_up_stops_start_up(stack: Stack) -> None:
    proc = spawn_worker(stack, "setup-fails", {"SPOTGEN_PLUGINS": "tests.plugins:NeedsAService"})
    assert proc.wait(120) == 1
    log = log_of(stack, "setup-fails")
    assert "cannot start: pipeline 'needs-service' failed to set up: ConnectionError: the upscaling service" in log
    assert "ready." not in log


def test_a_model_no_pipeline_loads_is_refused_by_kind(tiny_models: Path) -> None:
    """Preloading goes through the pipelines' ``load`` hook: with no pipeline that takes ControlNets, a ControlNet
    in the preload list stops start-up, naming its kind; the built-ins' hook loads what it takes."""
    from runtime.config import Settings
    from runtime.models.catalog import ModelError
    from runtime.models.store import ModelStore
    from runtime.plugins import Registry, load_object
    from runtime.worker.runner import JobRunner
    from tests.plugins import SolidColor

    def runner(*pipelines: type) -> JobRunner:
        registry = Registry()
        for cls in pipelines:
            registry.register(cls)
        return JobRunner(Settings(), None, None, registry, ModelStore(tiny_models))

    with pytest.raises(ModelError, match="'tiny-controlnet' is a controlnet model, and no pipeline of this worker "
                                         "loads controlnet models"):
        runner(SolidColor, load_object("pipelines.txt2img:Txt2Img")).preload(["tiny-controlnet"])
    loading = runner(load_object("pipelines.txt2img:Txt2Img"), load_object("pipelines.controlnet:ControlNet"))
    loading.preload(["tiny-sd", "tiny-controlnet"])
    assert loading.models.resident("tiny-sd") and loading.models.resident("tiny-controlnet")
    assert loading.models.loads == 2


def test_preloaded_models_are_loaded_before_the_worker_is_ready(stack: Stack, tmp_path: Path) -> None:
    proc = spawn_worker(stack, "preload-ok", {"SPOTGEN_PRELOAD": "tiny-sd,tiny-controlnet",
                                              "SPOTGEN_NODE_CACHE_DIR": str(tmp_path / "node-cache")})
    try:
        deadline = time.monotonic() + 120
        while " ready." not in log_of(stack, "preload-ok"):
            assert proc.poll() is None and time.monotonic() < deadline, log_of(stack, "preload-ok")
            time.sleep(0.1)
        log = log_of(stack, "preload-ok")
        order = [log.index(text) for text in ("preloaded model tiny-sd", "preloaded model tiny-controlnet", " ready.")]
        assert order == sorted(order)
        assert "tiny-sd: copied" in log and "tiny-controlnet: copied" in log  # through the node cache
        assert NodeCache(tmp_path / "node-cache", 1024**3).is_cached("tiny-sd")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_attention_kernels_are_chosen_and_refused_clearly() -> None:
    """On a CPU (no xformers) auto means PyTorch SDPA; insisting on xformers fails with the reason."""
    from pipelines.attention import choose
    from runtime.models.catalog import ModelError

    assert choose("cpu") == "sdpa" and choose("cpu", "sdpa") == "sdpa"
    with pytest.raises(ModelError, match="xformers"):
        choose("cpu", "xformers")
    with pytest.raises(ModelError, match="not one of auto, sdpa, xformers"):
        choose("cpu", "flash")


def test_a_worker_without_credentials_stops_at_once_saying_it_did_not_retry(stack: Stack) -> None:
    """No credentials is not an outage: no retrying for the start-up budget, and no claim that it did."""
    env = {k: v for k, v in {**os.environ, **stack.env}.items() if not k.startswith("AWS_")}
    env.update({"PYTHONPATH": str(ROOT), "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_CONFIG_FILE": os.devnull,
                "AWS_EC2_METADATA_DISABLED": "true", "SPOTGEN_STORE_RETRY_S": "600"})
    proc = zygote().spawn(env, stack.log_dir / "worker-no-credentials.log")
    assert proc.wait(120) == 1
    log = log_of(stack, "no-credentials")
    assert "cannot start: cannot reach the SQS queue" in log and "not retried): NoCredentialsError" in log, log
