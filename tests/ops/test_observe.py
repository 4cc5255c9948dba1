"""Operations tooling without a stack: the observer hooks, phases, log lines, probes' logic, the metric names,
and the Grafana dashboard and alerting rules checked against the metrics that exist."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from runtime.config import Settings
from runtime.ops.health import Health
from runtime.ops.logs import JobContext, JobLog, JsonFormatter, cut, redact
from runtime.ops.metrics import Metrics, QueueDepth
from runtime.ops.observe import JobInfo, Observer, Observers, PhaseClock, combine, trace_id_from
from runtime.worker.interrupt import Interruption
from runtime.worker.stages import observing
from tests.conftest import ROOT

DASHBOARD = ROOT / "infra/grafana/spotgen.json"
RULES = ROOT / "infra/prometheus/alerts.yaml"


def promtool() -> str:
    """promtool from Debian's `prometheus` package (or $PROMTOOL). The checks that run it fail, with the reason,
    where it is absent: a check that silently does nothing would pass while checking nothing."""
    installed = Path(sys.executable).parent / "promtool"  # where `make install` puts it
    tool = os.environ.get("PROMTOOL") or shutil.which("promtool") or (str(installed) if installed.is_file() else None)
    if tool is None:
        pytest.fail(f"promtool is not installed: `make install` puts it at {installed} (from Debian's `prometheus` "
                    "package, fetched with apt-get download), or set PROMTOOL to one")
    return tool


def sample_names(exposition: str) -> set[str]:
    """Every series name the exposition defines, including those of families without samples yet."""
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.add(family.name)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def fresh_exposition() -> str:
    metrics = Metrics(device="cpu", queue="q", version="test", model_memory=lambda: 0)
    metrics.registry.register(QueueDepth(None, {}))
    return generate_latest(metrics.registry).decode()


class Recorder(Observer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def job_begin(self, job: JobInfo) -> None:
        self.calls.append(("begin", job.id))

    def job_end(self, job: JobInfo) -> None:
        self.calls.append(("end", job.outcome))

    def heartbeat(self, ok: bool) -> None:
        raise RuntimeError("a broken observer")


def job(**changes: Any) -> JobInfo:
    return JobInfo(**{"id": "j1", "pipeline": "txt2img", "model": "tiny-sd", **changes})


def test_observers_fan_out_and_survive_a_broken_one() -> None:
    first, second = Recorder(), Recorder()
    both = combine([first, second])
    assert isinstance(both, Observers) and combine([first]) is first
    both.heartbeat(True)  # raises in both; logged, not propagated
    with pytest.raises(ValueError), observing(both, job()):
        raise ValueError("transient")
    assert first.calls == second.calls == [("begin", "j1"), ("end", "error")]
    with observing(both, job()) as j:
        j.outcome = "succeeded"
    assert first.calls[-1] == ("end", "succeeded")


def test_phases_from_marks_and_estimated_from_steps() -> None:
    clock = PhaseClock()
    clock.mark("encode")
    time.sleep(0.01)
    clock.mark("denoise")
    for step in range(1, 5):
        time.sleep(0.005)
        assert clock.step(step, 4) is not None
    time.sleep(0.01)
    encode, denoise, decode = clock.phases()
    assert [p.name for p in (encode, denoise, decode)] == ["encode", "denoise", "decode"]
    assert encode.end_ns == denoise.start_ns and denoise.end_ns == decode.start_ns
    assert encode.seconds >= 0.009 and denoise.seconds >= 0.019 and decode.seconds >= 0.009
    assert not denoise.estimated

    unmarked = PhaseClock()  # a plugin that marks nothing and stops after 2 of 4 steps: no decode
    time.sleep(0.01)
    assert unmarked.step(1, 4) is None
    time.sleep(0.005)
    unmarked.step(2, 4)
    phases = unmarked.phases()
    assert [p.name for p in phases] == ["encode", "denoise"] and phases[0].estimated
    assert PhaseClock().phases() == []  # no steps, no phases


def test_trace_id_from_traceparent_or_xray() -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert trace_id_from(traceparent) == "0af7651916cd43dd8448eb211c80319c"
    assert trace_id_from(None, "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1") \
        == "5759e988bd862e3fe1be46a994272793"
    assert trace_id_from("garbage", None) is None


def test_log_lines_are_json_with_the_job_and_no_secrets_or_long_prompts() -> None:
    context = JobContext()
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Capture()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(context)
    logger = logging.getLogger("spotgen.job")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        observer = JobLog(context, prompt_chars=20)
        info = job(prompt="a" * 30 + "SECRET-TAIL", trace_id="ab" * 16, attempt=2)
        observer.job_begin(info)
        observer.job_started(info)
        logging.getLogger("spotgen.job").warning("url https://b.s3/x?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA"
                                                 "IOSFODNN7EXAMPLE/2026 key AKIAIOSFODNN7EXAMPLE")
        observer.job_end(info)
        logger.info("after the job")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = [json.loads(line) for line in records]
    assert {"job_id": "j1", "trace_id": "ab" * 16, "pipeline": "txt2img", "model": "tiny-sd", "attempt": 2}.items() \
        <= lines[0].items()
    assert lines[0]["level"] == "info" and "started" in lines[0]["message"]
    assert "a" * 20 in lines[0]["message"] and "SECRET-TAIL" not in lines[0]["message"]
    assert "deadbeef" not in lines[1]["message"] and "IOSFODNN7EXAMPLE" not in lines[1]["message"]
    assert "job_id" not in lines[-1]
    assert cut("short", 80) == "short" and cut("long prompt", 0) is None
    assert redact("plain text") == "plain text"


def test_readiness_drops_at_once_when_an_interruption_starts() -> None:
    interruption = Interruption(deadline_s=3600)
    health = Health(interruption, stall_s=5, clock=lambda: now[0])
    now = [0.0]
    assert health.live()[0] and not health.ready()[0]  # starting: alive, not ready
    health.preloaded()
    assert health.ready()[1]["queue"] == "not consuming"
    health.consuming(True)
    assert health.ready()[0]
    now[0] = 10.0
    live, checks = health.live()
    assert not live and "no receive has finished for 10 s (bound 5 s)" in checks["consumer"]  # the chain stopped
    health.received(False, "ReceiveFailed: no connection")  # a failed receive is progress: not wedged, not ready
    assert health.live()[0]
    ready, checks = health.ready()
    assert not ready and checks["aws"] == "SQS unreachable: ReceiveFailed: no connection"
    now[0] = 14.0
    health.received(True)
    assert health.live()[0] and health.ready()[0]

    class DeadLease:
        alive, handed_back = False, False

    interruption.leases = [DeadLease()]
    assert health.live()[1] == {"heartbeat": "the lease heartbeat thread died"}
    interruption.leases = []
    interruption._event.set()  # what request() sets first (request() also starts the exit watchdog)
    interruption.reason = "SIGTERM"
    ready, checks = health.ready()
    assert not ready and checks["shutdown"] == "shutting down (SIGTERM)"


def test_metric_names_follow_prometheus_conventions() -> None:
    exposition = fresh_exposition()
    families = list(text_string_to_metric_families(exposition))
    ours = [f for f in families if f.name.startswith("spotgen_")]
    assert len(ours) >= 30
    for family in ours:
        assert re.fullmatch(r"spotgen_[a-z0-9_]+", family.name) and family.documentation
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        assert not family.name.endswith("_total")  # the parser strips it from counters: it was there
    assert "spotgen_jobs_total" in sample_names(exposition)
    result = subprocess.run([promtool(), "check", "metrics"], input=exposition, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_metrics_record_a_job_its_steps_and_its_cache_lookups() -> None:
    metrics = Metrics(process_metrics=False)
    info = job(attempt=1, submitted_at=datetime.now(UTC) - timedelta(seconds=3))
    with observing(metrics, info):
        metrics.job_started(info)
        for step in range(1, 4):
            metrics.step(info, step, 3, 0.01)
        metrics.cache_lookup("memory", True, "tiny-sd")
        info.outcome, info.images = "succeeded", 2
    value = metrics.registry.get_sample_value
    labels = {"pipeline": "txt2img", "model": "tiny-sd"}
    assert value("spotgen_jobs_total", {**labels, "state": "succeeded"}) == 1
    assert value("spotgen_jobs_total", {**labels, "state": "failed"}) == 0
    assert value("spotgen_denoising_steps_total", labels) == 3
    assert value("spotgen_images_generated_total", labels) == 2
    assert value("spotgen_job_queue_wait_seconds_sum", {"pipeline": "txt2img"}) >= 3
    assert value("spotgen_model_cache_hits_total", {"tier": "memory"}) == 1
    assert value("spotgen_jobs_in_flight") == 0
    for n in range(60):  # label values stay bounded whatever messages name
        metrics.step(job(model=f"made-up-{n}"), 1, 1, None)
    models = {s.labels["model"] for s in metrics.steps.collect()[0].samples}
    assert len(models) == 51 and "other" in models  # 50 values, then "other"


# -- dashboards and alerts as files -------------------------------------------------------------------


def exprs_in_dashboard() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["panels"] and dashboard["uid"]
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    assert isinstance(doc["groups"], list) and doc["groups"]
    found = []
    for group in doc["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
            assert rule["alert"] and rule["expr"] and rule["annotations"]["summary"]
            assert rule["labels"]["severity"] in ("info", "warning", "critical")
            found.append(rule)
    return found


def test_dashboard_and_alerts_use_only_metrics_that_exist() -> None:
    names = sample_names(fresh_exposition())
    exprs = exprs_in_dashboard() + [rule["expr"] for rule in rules()]
    used = {name for expr in exprs for name in re.findall(r"\bspotgen_[a-z0-9_]+", expr)}
    assert used and used <= names, used - names
    alerts = {rule["alert"] for rule in rules()}
    for wanted in ("QueueWait", "DeadLetterQueueNotEmpty", "FailureRatio", "InterruptionStorm", "ModelLoadSlow",
                   "WorkerNotReceiving", "AwsErrors"):
        assert any(wanted in alert for alert in alerts), wanted


def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_settings_for_operations() -> None:
    settings = Settings.from_env({"SPOTGEN_METRICS_PORT": "0", "SPOTGEN_LOG_FORMAT": "text"})
    assert (settings.metrics_port, settings.log_format) == (0, "text")
    assert Settings().metrics_port == 9400
    assert Path(DASHBOARD).is_file() and Path(RULES).is_file()
