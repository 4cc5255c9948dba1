"""Operations with real processes: traces from the Lambda through the worker, metrics, probes and JSON logs.

One in-process stack (the API's Lambda runs in this process, its spans go to an in-memory exporter) and
`spotgen worker` processes started here, which export their spans over OTLP/HTTP to a receiver on loopback,
serve metrics and probes on ports of their own and log JSON lines. Worker A runs every test; worker B joins
for the interruption at the end.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from runtime.config import Settings
from runtime.local.devstack import EMULATOR_CREDENTIALS, DevStack
from runtime.local.spanreceiver import SpanReceiver
from runtime.ops.health import LIVE_PATH, READY_PATH
from runtime.worker.steplog import read as read_steplog
from tests.conftest import ROOT, zygote
from tests.events import until
from tests.ops.test_observe import promtool
from tests.rest import call, wait_for
from tests.zygote import Forked

LONG_PROMPT = "a lighthouse at dusk, " * 12 + "THE-END-OF-THE-PROMPT"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return None, ""


@dataclass
class Worker:
    name: str
    proc: Forked
    port: int
    log: Path
    #: (live status, ready status, readiness checks) each time they changed while the worker started.
    startup: list[tuple[int | None, int | None, str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metrics(self) -> dict[str, float]:
        status, text = get(f"{self.url}/metrics")
        assert status == 200, text
        return {f"{s.name}{json.dumps(s.labels, sort_keys=True) if s.labels else ''}": s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def lines(self) -> list[str]:
        return [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]


class Ops:
    def __init__(self, stack: DevStack, receiver: SpanReceiver, lambda_spans: Any, tmp: Path) -> None:
        self.stack, self.receiver, self.lambda_spans, self.tmp = stack, receiver, lambda_spans, tmp
        self.steplog = tmp / "steps.log"
        self.workers: list[Worker] = []

    def spawn(self, name: str, **env: str) -> Worker:
        port = free_port()
        log = self.tmp / f"worker-{name}.log"
        environ = {**os.environ, "PYTHONPATH": str(ROOT), **self.stack.settings.to_env(), **EMULATOR_CREDENTIALS,
                   "SPOTGEN_METRICS_PORT": str(port), "SPOTGEN_LOG_FORMAT": "json", "OMP_NUM_THREADS": "1",
                   "SPOTGEN_CHECKPOINT_EVERY": "2", "SPOTGEN_STEP_LOG": str(self.steplog),
                   "SPOTGEN_PROGRESS_INTERVAL_S": "0.2", "SPOTGEN_HEARTBEAT_S": "1", "SPOTGEN_LEASE_S": "10",
                   "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": self.receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50",
                   **env}
        proc = zygote().spawn(environ, log)
        worker = Worker(name, proc, port, log)
        self.workers.append(worker)
        return worker

    def wait_ready(self, worker: Worker, timeout: float = 120) -> None:
        """Poll both probes until ready, recording every change of what they answer."""
        deadline = time.monotonic() + timeout
        while True:
            live, _ = get(worker.url + LIVE_PATH)
            ready, body = get(worker.url + READY_PATH)
            state = (live, ready, body and json.dumps(json.loads(body)["checks"], sort_keys=True))
            if not worker.startup or worker.startup[-1] != state:
                worker.startup.append(state)
            if ready == 200:
                return
            assert worker.proc.poll() is None, worker.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"worker {worker.name} not ready: {worker.startup[-3:]}"
            time.sleep(0.02)

    def submit(self, body: dict[str, Any]) -> str:
        status, answer = call("POST", f"{self.stack.api_url}/v1/jobs", body)
        assert status == 202, answer
        return answer["id"]

    def finished(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        return wait_for(self.stack.api_url, job_id, timeout=timeout)

    def trace(self, trace_id: str, until: str = "spotgen.job", count: int = 1) -> list[Any]:
        """The workers' spans of one trace, once ``count`` spans named ``until`` have arrived."""
        spans = self.receiver.wait(lambda got: sum(s.trace_id == trace_id and s.name == until for s in got) >= count)
        return [s for s in spans if s.trace_id == trace_id]


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[Ops]:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from runtime.ops import tracing

    lambda_spans = InMemorySpanExporter()
    tracing.setup("spotgen-api", lambda_spans)  # this process is the API's Lambda
    tmp = tmp_path_factory.mktemp("ops")
    saved = dict(os.environ)
    receiver = SpanReceiver().start()
    settings = Settings(models_dir=tiny_models, poll_wait_s=1, plugins=["tests.plugins:AlwaysFails"],
                        extra_pipelines=["always-fails"])
    stack = DevStack(settings, port=0, aws_port=0, workers=0, log_dir=tmp / "logs")
    running = Ops(stack, receiver, lambda_spans, tmp)
    try:
        stack.start()
        yield running
    finally:
        for worker in running.workers:
            if worker.proc.poll() is None:
                worker.proc.kill()
            worker.proc.wait()
        stack.stop()
        receiver.stop()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def worker_a(ops: Ops) -> Worker:
    worker = ops.spawn("a", SPOTGEN_PRELOAD="tiny-sd", SPOTGEN_NODE_CACHE_DIR=str(ops.tmp / "node-cache"))
    ops.wait_ready(worker)
    return worker


def png_b64(color: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def request(pipeline: str, prompt: str = "a red fox", steps: int = 6, size: int = 64) -> dict[str, Any]:
    inputs: dict[str, Any] = {"prompt": prompt, "width": size, "height": size, "steps": steps, "seed": 3}
    if pipeline == "img2img":
        inputs |= {"image": png_b64((200, 80, 20)), "strength": 0.8}
    if pipeline == "controlnet":
        inputs |= {"control_image": png_b64((0, 0, 0)), "controlnet": "tiny-controlnet"}
    return {"pipeline": pipeline, "model": "tiny-sd", "inputs": inputs}


# -- start-up ------------------------------------------------------------------------------------------


def test_probes_during_start_up_and_preload(ops: Ops, worker_a: Worker) -> None:
    seen = worker_a.startup
    assert seen[-1][:2] == (200, 200)
    answered = [s for s in seen if s[0] is not None]
    assert answered[0][1] == 503  # the first answer is "alive, not ready"
    assert all(live == 200 for live, _, _ in answered)  # alive all along: preload is no reason to restart
    assert any('"preload": "loading models"' in checks for _, ready, checks in answered if ready == 503), seen
    status, body = get(worker_a.url + READY_PATH)  # the preload's models, each in its place
    assert json.loads(body)["models"] == {"loaded": ["tiny-sd"], "loading": [], "waiting": [], "failed": {}}, body
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    check = [sys.executable, "-m", "runtime.cli", "worker", "--check"]
    ok = subprocess.run(check, env={**env, "SPOTGEN_METRICS_PORT": str(worker_a.port)}, capture_output=True)
    nobody = subprocess.run(check, env={**env, "SPOTGEN_METRICS_PORT": str(free_port())}, capture_output=True)
    assert (ok.returncode, nobody.returncode) == (0, 1), ok.stdout + ok.stderr
    # The idle loop ticks: each finished receive resets consumer_idle_s. Seen as an event (the value falls), not as
    # a bound on it, which a loaded machine can exceed without anything being wrong.
    idle = [json.loads(get(worker_a.url + LIVE_PATH)[1])["consumer_idle_s"]]
    until("consumer_idle_s to fall (a receive finished)",
          lambda: idle.append(json.loads(get(worker_a.url + LIVE_PATH)[1])["consumer_idle_s"])
          or idle[-1] < idle[-2])
    metrics = worker_a.metrics()
    assert metrics["spotgen_worker_ready"] == 1
    assert metrics['spotgen_model_cache_misses_total{"tier": "node"}'] >= 1  # the preload copied tiny-sd
    assert metrics['spotgen_model_cache_misses_total{"tier": "memory"}'] >= 1
    assert metrics["spotgen_model_cache_copied_bytes_total"] > 0
    assert metrics['spotgen_model_load_duration_seconds_count{"model": "tiny-sd"}'] == 1


# -- one trace per request -------------------------------------------------------------------------------


@pytest.mark.parametrize("pipeline", ["txt2img", "img2img", "controlnet"])
def test_one_trace_from_the_lambda_through_the_worker(ops: Ops, worker_a: Worker, pipeline: str) -> None:
    ops.lambda_spans.clear()
    doc = ops.finished(ops.submit(request(pipeline, LONG_PROMPT)))
    assert doc["state"] == "succeeded", doc
    trace_id = doc["trace_id"]
    assert len(trace_id) == 32

    api = {s.name: s for s in ops.lambda_spans.get_finished_spans()}
    submit, publish = api["spotgen.submit"], api["spotgen.publish"]
    assert {format(s.context.trace_id, "032x") for s in (submit, publish)} == {trace_id}
    assert publish.parent.span_id == submit.context.span_id

    spans = ops.trace(trace_id)
    by_name: dict[str, list[Any]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    (task,) = by_name["run/spotgen.run_job"]
    assert task.parent_id == format(publish.context.span_id, "016x")  # the Celery task continues the publish
    assert task.attributes["spotgen.job_id"] == doc["id"]
    (whole,) = by_name["spotgen.job"]  # the job outlives its task, which ends when the device thread takes it
    assert whole.parent_id == task.span_id and whole.attributes["spotgen.outcome"] == "succeeded"
    assert whole.end_ns >= max(s.end_ns for s in by_name["spotgen.notify"])
    (generate,) = by_name["spotgen.generate"]
    assert generate.parent_id == whole.span_id
    phases = [by_name[f"spotgen.{p}"][0] for p in ("encode", "denoise", "decode")]
    assert all(p.parent_id == generate.span_id for p in phases)
    assert generate.start_ns <= phases[0].start_ns <= phases[0].end_ns <= phases[1].start_ns + 1
    assert phases[1].end_ns <= phases[2].start_ns + 1 and phases[2].end_ns <= generate.end_ns
    assert not phases[1].attributes["spotgen.estimated"]  # the built-in pipelines mark their phases
    for name in ("spotgen.checkpoint", "spotgen.store_outputs", "spotgen.notify"):
        assert by_name[name] and all(s.parent_id == whole.span_id for s in by_name[name]), name
    children = {s.parent_id: s.name for s in spans}
    assert children[by_name["spotgen.store_outputs"][0].span_id] == "S3.PutObject"
    assert children[by_name["spotgen.notify"][0].span_id].endswith(" send")  # botocore: "<topic> send"
    assert children[by_name["spotgen.checkpoint"][0].span_id] == "S3.PutObject"
    if pipeline == "controlnet":  # its ControlNet is loaded by this job (tiny-sd was preloaded)
        (load,) = by_name["spotgen.model_load"]
        assert load.parent_id == generate.span_id and load.attributes["spotgen.model"] == "tiny-controlnet"
        assert children[load.span_id] == "spotgen.node_cache_fetch"
    else:
        assert "spotgen.model_load" not in by_name
    # AWS calls outside the job (polls, heartbeats) make no traces of their own
    assert not [s for s in ops.receiver.spans() if s.parent_id is None and s.kind == "CLIENT"]


# -- logs --------------------------------------------------------------------------------------------------


def test_log_lines_are_json_with_job_and_trace_ids(ops: Ops, worker_a: Worker) -> None:
    for pipeline in ("txt2img", "img2img", "controlnet"):  # its own jobs: pytest-xdist may run the others elsewhere
        assert ops.finished(ops.submit(request(pipeline, LONG_PROMPT, steps=2)))["state"] == "succeeded"
    lines = worker_a.lines()
    records = [json.loads(line) for line in lines]  # every line: a JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    jobs = {r["job_id"]: r for r in records if "job_id" in r}
    assert len(jobs) >= 3
    for job_id in jobs:
        doc = call("GET", f"{ops.stack.api_url}/v1/jobs/{job_id}")[1]
        mine = [r for r in records if r.get("job_id") == job_id]
        assert {r["trace_id"] for r in mine} == {doc["trace_id"]}
        assert {(r["pipeline"], r["model"]) for r in mine} == {(doc["pipeline"], "tiny-sd")}
        assert any(r["message"].startswith(f"job {job_id} started") and r["attempt"] == 1 for r in mine)
    text = "\n".join(lines)
    assert LONG_PROMPT[:60] in text and "THE-END-OF-THE-PROMPT" not in text  # cut at log_prompt_chars
    assert EMULATOR_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] + '"' not in text


# -- metrics -------------------------------------------------------------------------------------------


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_after_success_failure_and_cache_hits(ops: Ops, worker_a: Worker) -> None:
    before = worker_a.metrics()
    ok = ops.finished(ops.submit(request("txt2img", steps=4)))
    failed = ops.finished(ops.submit({"pipeline": "always-fails", "model": "tiny-sd", "inputs": {"prompt": "no"}}))
    assert (ok["state"], failed["state"]) == ("succeeded", "failed")
    deadline = time.monotonic() + 10
    while True:  # the failure's counters are updated after its status is written; the queue gauge after that
        after = worker_a.metrics()
        if after.get('spotgen_queue_messages{"queue": "dead_letter", "state": "visible"}', 0) >= 1 \
                or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    txt = '"model": "tiny-sd", "pipeline": "txt2img"'
    assert delta(before, after, f'spotgen_jobs_total{{{txt}, "state": "succeeded"}}') == 1
    assert delta(before, after, 'spotgen_jobs_total{"model": "tiny-sd", "pipeline": "always-fails", '
                 '"state": "failed"}') == 1
    assert delta(before, after, f"spotgen_denoising_steps_total{{{txt}}}") == 4
    assert delta(before, after, f"spotgen_denoising_step_duration_seconds_count{{{txt}}}") == 4
    assert delta(before, after, f"spotgen_images_generated_total{{{txt}}}") == 1
    assert delta(before, after, f"spotgen_job_duration_seconds_count{{{txt}}}") == 1
    assert delta(before, after, 'spotgen_job_queue_wait_seconds_count{"pipeline": "txt2img"}') == 1
    assert delta(before, after, 'spotgen_job_phase_duration_seconds_count{"phase": "denoise", '
                 '"pipeline": "txt2img"}') == 1
    assert delta(before, after, 'spotgen_checkpoints_written_total{"pipeline": "txt2img"}') >= 1
    assert delta(before, after, 'spotgen_model_cache_hits_total{"tier": "memory"}') == 1  # tiny-sd is loaded
    assert delta(before, after, 'spotgen_model_cache_misses_total{"tier": "memory"}') == 0
    assert delta(before, after, 'spotgen_dead_lettered_total{"code": "pipeline_error"}') == 1
    assert after['spotgen_queue_messages{"queue": "dead_letter", "state": "visible"}'] >= 1
    assert delta(before, after, 'spotgen_lease_extensions_total{"result": "ok"}') >= 2  # one per job at least
    assert after["spotgen_jobs_in_flight"] == 0 and after["spotgen_model_memory_bytes"] > 0


def test_exposition_parses_and_passes_promtool(worker_a: Worker) -> None:
    status, text = get(f"{worker_a.url}/metrics")
    assert status == 200
    families = list(text_string_to_metric_families(text))
    assert {f.name for f in families if f.name.startswith("spotgen_")} >= {"spotgen_jobs", "spotgen_queue_messages",
                                                                         "spotgen_device_memory_used_bytes"}
    for family in families:
        for sample in family.samples:
            assert "job_id" not in sample.labels and all(len(v) < 100 for v in sample.labels.values())
    result = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- interruption: readiness drops at once; the job resumes elsewhere, in the same trace -------------------


def running_on(steplog: Path, job_id: str, at_step: int, timeout: float = 60) -> int:
    """The pid of the worker running ``job_id`` once it finished ``at_step`` steps (from the step log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = [r for r in read_steplog(steplog) if r[1] == job_id] if steplog.exists() else []
        if records and records[-1][3] >= at_step:
            return records[-1][0]
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not reach step {at_step}")


def test_interruption_drops_readiness_and_the_resume_is_counted(ops: Ops, worker_a: Worker) -> None:
    worker_b = ops.spawn("b")
    ops.wait_ready(worker_b)
    workers = {w.proc.pid: w for w in (worker_a, worker_b)}
    before = {pid: w.metrics() for pid, w in workers.items()}
    job_id = ops.submit(request("txt2img", steps=60, size=96))
    pid = running_on(ops.steplog, job_id, at_step=4)
    victim, survivor = workers[pid], next(w for p, w in workers.items() if p != pid)
    victim.proc.send_signal(signal.SIGTERM)
    # the signal reaches the worker's main thread asynchronously; readiness must drop while the job is still
    # checkpointing (the worker is alive), not only once it is gone
    status, body = get(victim.url + READY_PATH)
    for _ in range(50):
        if status != 200:
            break
        time.sleep(0.01)
        status, body = get(victim.url + READY_PATH)
    assert status == 503 and "shutting down" in body, (status, body)
    assert get(victim.url + LIVE_PATH)[0] in (200, None)  # alive while it checkpoints (None: already gone)
    assert victim.proc.wait(30) == 0

    doc = ops.finished(job_id)
    assert doc["state"] == "succeeded" and (doc["attempts"], doc["interruptions"]) == (2, 1)
    after = survivor.metrics()
    assert delta(before[survivor.proc.pid], after, 'spotgen_resumes_total{"pipeline": "txt2img", '
                 '"source": "checkpoint"}') == 1
    assert 'spotgen_steps_recomputed_total{"pipeline": "txt2img"}' in after
    spans = ops.trace(doc["trace_id"], "spotgen.job", 2)
    tasks = [s for s in spans if s.name == "run/spotgen.run_job"]
    assert len(tasks) >= 2 and len({s.parent_id for s in tasks}) == 1  # every delivery continues the publish
    # The two attempts; the victim's receive that was under way when the signal came may also have brought it
    # the handed-back copy, which it handed back again untouched.
    outcomes = [s.attributes["spotgen.outcome"] for s in spans if s.name == "spotgen.job"]
    assert sorted(o for o in outcomes if o != "handed_back") == ["interrupted", "succeeded"], outcomes
