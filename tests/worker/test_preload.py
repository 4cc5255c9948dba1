"""Preloading: a worker loads its configured models before taking jobs (or, with SPOTGEN_SERVE_AFTER_PRELOAD=first,
the first before and the rest while serving), and refuses to start or serve without them."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from runtime.models.nodecache import NodeCache
from runtime.plugins import Pipeline, RunContext, SetupContext
from tests.conftest import ROOT, Stack, spawn_worker, zygote
from tests.events import until
from tests.plugins import FailInputs
from tests.rest import call, wait_for
from tests.zygote import Forked


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
        assert log.count("tiny-sd: copied") == 1  # fetched ahead of the preload (fetch_ahead), not twice
        assert NodeCache(tmp_path / "node-cache", 1024**3).is_cached("tiny-sd")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_the_first_preload_model_is_fetched_ahead_once_and_a_failure_is_left_to_the_preload(
        tiny_models: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from runtime.models.store import ModelStore
    from runtime.worker.preload import fetch_ahead

    assert fetch_ahead(ModelStore(tiny_models), ["tiny-sd"]) is None  # no node cache: nothing to fetch ahead
    store = ModelStore(tiny_models, "cpu", NodeCache(tmp_path / "node-cache", 1024**3))
    caplog.set_level("INFO", "spotgen")
    thread = fetch_ahead(store, ["tiny-sd"])
    assert thread is not None
    thread.join(60)
    assert store.node_cache is not None and store.node_cache.is_cached("tiny-sd")
    assert store.source("tiny-sd").path.is_relative_to(tmp_path / "node-cache")  # the preload's: a hit
    assert sum("tiny-sd: copied" in record.getMessage() for record in caplog.records) == 1
    catalog = json.loads((tiny_models / "catalog.json").read_text())
    broken = tmp_path / "models"
    broken.mkdir()
    catalog["models"] = {"gone": {**catalog["models"]["tiny-sd"], "path": "missing-dir"}}
    (broken / "catalog.json").write_text(json.dumps(catalog))
    thread = fetch_ahead(ModelStore(broken, "cpu", NodeCache(tmp_path / "other-cache", 1024**3)), ["gone", "nope"])
    assert thread is not None
    thread.join(60)  # logged, not raised: the preload's own fetch says what is wrong
    assert any("gone: fetch ahead of the preload failed" in record.getMessage() and "does not exist"
               in record.getMessage() for record in caplog.records)


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


# -- serving while the rest load (SPOTGEN_SERVE_AFTER_PRELOAD) ---------------------------------------------------
class GatedLoad(Pipeline):
    """Preloads LoRA ids (no built-in pipeline does) through the model store, each load held until the test writes
    the model's gate file (``$SPOTGEN_TEST_GATE-<id>``): "ok" lets it finish, "fail" makes it raise. A model whose
    load the test controls, instead of one that takes long enough."""

    name = "gated-load"
    Inputs = FailInputs

    def setup(self, ctx: SetupContext) -> None:
        self.models = ctx.models

    def load(self, model_id: str, kind: str) -> bool:
        if kind != "lora":
            return False
        gate = Path(f"{os.environ['SPOTGEN_TEST_GATE']}-{model_id}")

        def held() -> dict[str, str]:
            while not gate.exists():
                time.sleep(0.02)
            if gate.read_text() == "fail":
                raise OSError(f"{model_id}: the test failed this load")
            return {"model": model_id}

        self.models.get(f"gated:{model_id}", held, model_id)
        return True

    def run(self, inputs: FailInputs, ctx: RunContext) -> list[Image.Image]:
        return [Image.new("RGB", (8, 8))]


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[Any]:
    """An API and emulator with no worker of their own: every job goes to the worker a test starts."""
    from runtime.config import Settings
    from runtime.local.devstack import DevStack

    saved = dict(os.environ)
    tmp = tmp_path_factory.mktemp("preload-serve")
    stack = DevStack(Settings(models_dir=tiny_models, poll_wait_s=1), port=0, aws_port=0, workers=0,
                     log_dir=tmp / "logs")
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        os.environ.clear()
        os.environ.update(saved)


def gated_worker(stack: Any, tmp: Path, serve: str) -> tuple[Forked, str, Path, Path]:
    """A worker preloading tiny-sd, then tiny-lora-sd1 behind a gate; (process, probe URL, gate, log)."""
    from runtime.local.devstack import EMULATOR_CREDENTIALS

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gate, log = tmp / "gate-tiny-lora-sd1", tmp / "worker.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), **stack.settings.to_env(), **EMULATOR_CREDENTIALS,
           "SPOTGEN_METRICS_PORT": str(port), "SPOTGEN_METRICS_HOST": "127.0.0.1", "OMP_NUM_THREADS": "1",
           "SPOTGEN_PLUGINS": "tests.worker.test_preload:GatedLoad", "SPOTGEN_TEST_GATE": str(tmp / "gate"),
           "SPOTGEN_PRELOAD": "tiny-sd,tiny-lora-sd1", "SPOTGEN_SERVE_AFTER_PRELOAD": serve}
    return zygote().spawn(env, log), f"http://127.0.0.1:{port}/readyz", gate, log


def readyz(url: str) -> tuple[int | None, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return None, {}


def models_are(url: str, proc: Forked, loaded: list[str], loading: list[str]) -> tuple[int | None, dict[str, Any]]:
    """/readyz's first answer whose models are as given (the process must stay up meanwhile)."""
    def check() -> tuple[int | None, dict[str, Any]] | None:
        assert proc.poll() is None, "the worker exited"
        status, body = readyz(url)
        models = body.get("models") or {}
        return (status, body) if (models.get("loaded"), models.get("loading")) == (loaded, loading) else None
    return until(f"/readyz models loaded={loaded} loading={loading}", check, timeout=120, every=0.05)


def test_serving_the_first_preload_model_while_the_next_loads(own_stack: Any, tmp_path: Path) -> None:
    proc, url, gate, log = gated_worker(own_stack, tmp_path, "first")
    try:
        until("/readyz to pass", lambda: readyz(url)[0] == 200 or proc.poll() is not None, timeout=120, every=0.05)
        status, body = models_are(url, proc, ["tiny-sd"], ["tiny-lora-sd1"])
        assert status == 200 and body["checks"]["preload"] == "ok", body  # serving: tiny-sd can run now
        answer = call("POST", f"{own_stack.api_url}/v1/jobs", {"pipeline": "txt2img", "model": "tiny-sd", "inputs": {
            "prompt": "a red fox", "width": 64, "height": 64, "steps": 2, "seed": 3}})
        assert answer[0] == 202, answer
        assert wait_for(own_stack.api_url, answer[1]["id"], timeout=120)["state"] == "succeeded"
        status, body = readyz(url)  # the gate is still shut: the job ran while tiny-lora-sd1 was loading
        assert (status, body["models"]["loading"], body["models"]["loaded"]) == (200, ["tiny-lora-sd1"], ["tiny-sd"])
        gate.write_text("ok")
        status, body = models_are(url, proc, ["tiny-sd", "tiny-lora-sd1"], [])
        assert status == 200 and body["models"]["failed"] == {} and body["models"]["waiting"] == []
        assert "preload finished while serving: tiny-lora-sd1" in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_without_the_setting_the_worker_takes_no_job_before_every_model_is_loaded(own_stack: Any,
                                                                                    tmp_path: Path) -> None:
    proc, url, gate, log = gated_worker(own_stack, tmp_path, "all")
    try:
        status, body = models_are(url, proc, ["tiny-sd"], ["tiny-lora-sd1"])
        assert status == 503 and body["checks"]["preload"] == "loading models", body
        assert " ready." not in log.read_text()  # the consumer waits behind the gate: it cannot have started
        gate.write_text("ok")
        until("/readyz to pass", lambda: readyz(url)[0] == 200 or proc.poll() is not None, timeout=120, every=0.05)
        text = log.read_text()
        assert text.index("preloaded model tiny-lora-sd1") < text.index(" ready.")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_a_preload_model_failing_while_serving_ends_the_worker_with_the_reason(own_stack: Any,
                                                                                tmp_path: Path) -> None:
    """Today's rule under the setting: a worker does not serve without a preload model; it leaves as a drain does
    and exits 1, naming the model."""
    proc, url, gate, log = gated_worker(own_stack, tmp_path, "first")
    try:
        models_are(url, proc, ["tiny-sd"], ["tiny-lora-sd1"])
        until("the consumer to start", lambda: " ready." in log.read_text(), timeout=120, every=0.05)
        gate.write_text("fail")
        assert proc.wait(120) == 1
        assert "cannot serve without preload model tiny-lora-sd1" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(60)


def test_readiness_says_which_preload_model_failed() -> None:
    """A failed preload model fails readiness whatever else holds, naming it (the worker then leaves)."""
    from runtime.ops.health import Health

    health = Health()
    health.preloaded()
    health.consuming(True)
    report = {"loaded": ["tiny-sd"], "loading": [], "waiting": [], "failed": {}}
    health.models = lambda: report
    assert health.ready() == (True, {"preload": "ok", "queue": "ok", "aws": "ok", "shutdown": "ok"})
    report["failed"] = {"tiny-lora-sd1": "preload model 'tiny-lora-sd1' failed to load: OSError: gone"}
    ok, checks = health.ready()
    assert not ok and checks["preload"] == "failed: preload model 'tiny-lora-sd1' failed to load: OSError: gone"


def test_a_job_for_the_model_the_preload_is_loading_gets_that_load(tiny_models: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """No second copy in memory: a job's lookup of the model the preload thread is loading (on a thread of its own,
    as the device thread's) ends with that one load, whichever of the two reaches the store first."""
    import threading

    from runtime.config import Settings
    from runtime.models.store import ModelStore
    from runtime.plugins import Registry
    from runtime.worker.preload import Preload, PreloadReport
    from runtime.worker.runner import JobRunner

    monkeypatch.setenv("SPOTGEN_TEST_GATE", str(tmp_path / "gate"))
    registry = Registry()
    registry.register(GatedLoad)
    runner = JobRunner(Settings(), None, None, registry, ModelStore(tiny_models))
    runner.setup()
    (tmp_path / "gate-tiny-lora-sd1").write_text("ok")
    preload = Preload(runner, ["tiny-lora-sd1", "tiny-lora-sd1-kohya"], "first")
    preload.start()  # returns with the first loaded, the second's load held at its gate
    assert preload.report().loaded == ["tiny-lora-sd1"] and runner.models.loads == 1
    until("the preload thread to start the second load", lambda: preload.report().loading == ["tiny-lora-sd1-kohya"])
    job = threading.Thread(target=runner.pipeline("gated-load").load, args=("tiny-lora-sd1-kohya", "lora"))
    job.start()
    (tmp_path / "gate-tiny-lora-sd1-kohya").write_text("ok")
    job.join(60)
    assert preload.thread is not None
    preload.thread.join(60)
    assert not job.is_alive() and not preload.thread.is_alive()
    assert runner.models.loads == 2  # one per model
    assert preload.report() == PreloadReport(loaded=["tiny-lora-sd1", "tiny-lora-sd1-kohya"])
