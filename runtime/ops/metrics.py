"""Prometheus metrics of one worker process, as an ``Observer`` of the runtime's hooks.

One worker process per GPU (the solo pool, concurrency 1: see ``runtime.worker.app``), so each process
serves its own registry on its own port and Prometheus adds the processes up; no multiprocess mode, no
shared directory. The registry is created per ``Metrics`` object, never at import, so tests and tools can
make as many as they like.

Names follow Prometheus conventions: prefix ``spotgen_``, base units (seconds, bytes), ``_total`` on
counters, and bounded label values: pipelines and models come from this worker's registry and catalog,
capped all the same (``_Bounded``) since a message may name anything; job ids are never labels.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from runtime.ops.observe import JobInfo, Observer, Phase

log = logging.getLogger("spotgen.metrics")

FINAL_STATES = ("succeeded", "failed", "cancelled", "expired")
#: More distinct values than this for one label (a message naming made-up models, say) become "other".
MAX_LABEL_VALUES = 50

SECONDS_JOB = (0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
SECONDS_WAIT = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
SECONDS_STEP = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SECONDS_PHASE = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
SECONDS_LOAD = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
SECONDS_IO = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _Bounded:
    """Label values as seen, up to ``limit`` distinct ones per label; later newcomers read ``other``."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self.limit = limit
        self.seen: dict[str, set[str]] = {}

    def __call__(self, label: str, value: str | None) -> str:
        value = value or "unknown"
        seen = self.seen.setdefault(label, set())
        if value in seen:
            return value
        if len(seen) >= self.limit:
            return "other"
        seen.add(value)
        return value


class Metrics(Observer):
    """Every metric the worker exports (docs/operations.md lists them), fed by the runtime's hooks."""

    def __init__(self, registry: CollectorRegistry | None = None, *, device: str = "cpu", queue: str = "",
                 version: str = "", model_memory: Callable[[], int] | None = None,
                 process_metrics: bool = True) -> None:
        disable_created_metrics()  # `_created` series double the output and no query here needs them
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.label = _Bounded()
        self._known: set[tuple[str, str]] = set()
        self._step_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        r = self.registry
        if process_metrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=r)

        def histogram(name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, labels, registry=r, buckets=buckets)

        pm = ("pipeline", "model")
        self.info = Gauge("spotgen_worker_info", "Always 1; labels describe the worker.",
                          ("version", "device", "queue"), registry=r)
        self.info.labels(version or "unknown", device, queue or "unknown").set(1)
        self.ready = Gauge("spotgen_worker_ready", "1 while the worker's readiness check passes.", registry=r)
        self.jobs = counter("spotgen_jobs", "Jobs this worker brought to a final state.", (*pm, "state"))
        self.errors = counter("spotgen_job_errors", "Job deliveries that failed transiently; SQS delivers them "
                              "again.", pm)
        self.duplicates = counter("spotgen_job_duplicates", "Deliveries of jobs that were already final.")
        self.in_flight = Gauge("spotgen_jobs_in_flight", "Jobs in hand in this worker: generating, storing outputs "
                               "or waiting for the device (0 to 3).", registry=r)
        self.duration = histogram("spotgen_job_duration_seconds", "Seconds from the start of a delivery to its "
                                  "final status and notification, for succeeded jobs.", pm, SECONDS_JOB)
        self.queue_wait = histogram("spotgen_job_queue_wait_seconds", "Seconds from submit to the start of a "
                                    "job's first attempt.", ("pipeline",), SECONDS_WAIT)
        self.phase_seconds = histogram("spotgen_job_phase_duration_seconds", "Seconds per pipeline phase "
                                       "(encode, denoise, decode) of a run.", ("pipeline", "phase"), SECONDS_PHASE)
        self.steps = counter("spotgen_denoising_steps", "Denoising steps completed.", pm)
        self.step_seconds = histogram("spotgen_denoising_step_duration_seconds", "Seconds per denoising step.",
                                      pm, SECONDS_STEP)
        self.images = counter("spotgen_images_generated", "Images of succeeded jobs.", pm)
        self.interruptions = counter("spotgen_interruptions", "Jobs interrupted (checkpointed and handed back).",
                                     ("pipeline",))
        self.checkpoints = counter("spotgen_checkpoints_written", "Checkpoints stored.", ("pipeline",))
        self.checkpoint_bytes = counter("spotgen_checkpoint_written_bytes", "Bytes of checkpoints stored.")
        self.checkpoint_seconds = histogram("spotgen_checkpoint_write_duration_seconds", "Seconds to store one "
                                            "checkpoint.", (), SECONDS_IO)
        self.resumes = counter("spotgen_resumes", "Later attempts of a job: from a checkpoint or from the start "
                               "(restart).", ("pipeline", "source"))
        self.recomputed = counter("spotgen_steps_recomputed", "Denoising steps an earlier attempt had done that "
                                  "a resumed attempt does again (a lower bound).", ("pipeline",))
        self.cache_hits = counter("spotgen_model_cache_hits", "Model cache hits, by tier (memory: loaded in this "
                                  "worker; node: node-local disk).", ("tier",))
        self.cache_misses = counter("spotgen_model_cache_misses", "Model cache misses, by tier.", ("tier",))
        self.cache_evictions = counter("spotgen_model_cache_evictions", "Models dropped to stay within a tier's "
                                       "budget.", ("tier",))
        self.copied_bytes = counter("spotgen_model_cache_copied_bytes", "Bytes copied into the node cache.")
        self.copy_seconds = histogram("spotgen_model_cache_copy_duration_seconds", "Seconds to copy one model "
                                      "into the node cache.", (), SECONDS_LOAD)
        self.load_seconds = histogram("spotgen_model_load_duration_seconds", "Seconds to load a model into "
                                      "memory (including a node-cache copy).", ("model",), SECONDS_LOAD)
        self.extensions = counter("spotgen_lease_extensions", "Visibility extensions of running jobs' messages "
                                  "(the lease heartbeat), by result.", ("result",))
        self.failures = counter("spotgen_job_failures", "Failed deliveries by class of failure (input, pipeline, "
                                "infrastructure, transient) and result (failed, retried, recovered).",
                                ("class", "result"))
        self.dead = counter("spotgen_dead_lettered", "Messages this worker moved to the dead-letter queue, by "
                            "error code.", ("code",))
        self.aws_errors = counter("spotgen_aws_errors", "Failed AWS call attempts (network failures, throttling, "
                                  "5xx...), by service and operation.", ("service", "operation"))
        self.last_receive = Gauge("spotgen_receive_last_success_timestamp_seconds", "When a receive from the work "
                                  "queue last reached SQS (Unix time; 0 before the first).", registry=r)
        self.model_memory = Gauge("spotgen_model_memory_bytes", "Bytes of model weights loaded in this worker "
                                  "(tier 2).", registry=r)
        if model_memory is not None:
            self.model_memory.set_function(lambda: float(model_memory()))
        r.register(DeviceMemory(device))
        for tier in ("memory", "node"):
            self.cache_hits.labels(tier)
            self.cache_misses.labels(tier)
        self.cache_evictions.labels("memory")
        for result in ("ok", "error"):
            self.extensions.labels(result)
        self.queue: QueueDepth | None = None

    def _labels(self, job: JobInfo) -> tuple[str, str]:
        pipeline, model = self.label("pipeline", job.pipeline), self.label("model", job.model)
        if (pipeline, model) not in self._known:  # every final state from 0, so rate() sees the first one
            self._known.add((pipeline, model))
            for state in FINAL_STATES:
                self.jobs.labels(pipeline, model, state)
            self.interruptions.labels(pipeline)
            self.resumes.labels(pipeline, "checkpoint")
            self.resumes.labels(pipeline, "restart")
            self.recomputed.labels(pipeline)
            self.checkpoints.labels(pipeline)
        return pipeline, model

    # -- hooks ---------------------------------------------------------------------------------------------
    def job_begin(self, job: JobInfo) -> None:
        self.in_flight.inc()

    def job_started(self, job: JobInfo) -> None:
        pipeline, _ = self._labels(job)
        if job.attempt == 1 and job.submitted_at is not None:
            from runtime.contract import utcnow

            self.queue_wait.labels(pipeline).observe(max(0.0, (utcnow() - job.submitted_at).total_seconds()))

    def job_end(self, job: JobInfo) -> None:
        import time

        self.in_flight.dec()
        pipeline, model = self._labels(job)
        outcome = job.outcome
        if outcome in FINAL_STATES:
            self.jobs.labels(pipeline, model, outcome).inc()
            if outcome == "succeeded":
                self.duration.labels(pipeline, model).observe(time.perf_counter() - job.started)
                self.images.labels(pipeline, model).inc(job.images)
        elif outcome == "interrupted":
            self.interruptions.labels(pipeline).inc()
        elif outcome == "error":
            self.errors.labels(pipeline, model).inc()
        elif outcome == "duplicate":
            self.duplicates.inc()

    def step(self, job: JobInfo, step: int, total: int, seconds: float | None) -> None:
        children = self._step_children.get((job.pipeline, job.model))
        if children is None:  # once per pipeline and model: steps are the one hook called thousands of times
            labels = self.label("pipeline", job.pipeline), self.label("model", job.model)
            children = self.steps.labels(*labels), self.step_seconds.labels(*labels)
            if len(self._step_children) < 4 * MAX_LABEL_VALUES:
                self._step_children[(job.pipeline, job.model)] = children
        children[0].inc()
        if seconds is not None:
            children[1].observe(seconds)

    def phases(self, job: JobInfo, phases: list[Phase]) -> None:
        pipeline = self.label("pipeline", job.pipeline)
        for phase in phases:
            self.phase_seconds.labels(pipeline, phase.name).observe(phase.seconds)

    def checkpoint_written(self, job: JobInfo, nbytes: int, seconds: float) -> None:
        self.checkpoints.labels(self.label("pipeline", job.pipeline)).inc()
        self.checkpoint_bytes.inc(nbytes)
        self.checkpoint_seconds.observe(seconds)

    def resumed(self, job: JobInfo, from_checkpoint: bool, recomputed_steps: int) -> None:
        pipeline, _ = self._labels(job)
        self.resumes.labels(pipeline, "checkpoint" if from_checkpoint else "restart").inc()
        self.recomputed.labels(pipeline).inc(max(0, recomputed_steps))

    def cache_lookup(self, tier: str, hit: bool, model: str) -> None:
        (self.cache_hits if hit else self.cache_misses).labels(tier).inc()

    def model_loaded(self, model: str, seconds: float) -> None:
        self.load_seconds.labels(self.label("model", model)).observe(seconds)

    def model_copied(self, model: str, nbytes: int, seconds: float) -> None:
        self.copied_bytes.inc(nbytes)
        self.copy_seconds.observe(seconds)

    def model_evicted(self, tier: str, model: str) -> None:
        self.cache_evictions.labels(tier).inc()

    def heartbeat(self, ok: bool) -> None:
        self.extensions.labels("ok" if ok else "error").inc()

    def dead_lettered(self, code: str) -> None:
        self.dead.labels(self.label("code", code)).inc()
        if self.queue is not None:
            self.queue.refresh_soon()

    def job_failure(self, job: JobInfo | None, kind: str, result: str) -> None:
        self.failures.labels(self.label("class", kind), self.label("result", result)).inc()

    def received(self, ok: bool, error: str | None = None) -> None:
        if ok:
            self.last_receive.set_to_current_time()
        else:
            self.aws_error("sqs", "ReceiveMessage", error or "")

    def aws_error(self, service: str, operation: str, code: str) -> None:
        self.aws_errors.labels(self.label("service", service), self.label("operation", operation)).inc()


class DeviceMemory(Collector):
    """Memory of the worker's CUDA device, read at scrape time. On a CPU worker the families are there
    without samples (host memory is ``process_resident_memory_bytes``)."""

    def __init__(self, device: str) -> None:
        self.device = device

    def collect(self) -> Iterator[Metric]:
        used = GaugeMetricFamily("spotgen_device_memory_used_bytes", "Bytes the worker's tensors occupy on its "
                                 "device (torch allocator).", labels=["device"])
        reserved = GaugeMetricFamily("spotgen_device_memory_reserved_bytes", "Bytes the torch allocator holds on "
                                     "the device (used plus cached).", labels=["device"])
        total = GaugeMetricFamily("spotgen_device_memory_total_bytes", "The device's memory.", labels=["device"])
        torch = sys.modules.get("torch")  # never import torch (or create a CUDA context) from a scrape
        if self.device.startswith("cuda") and torch is not None and torch.cuda.is_initialized():
            index = torch.device(self.device).index
            index = torch.cuda.current_device() if index is None else index
            used.add_metric([self.device], float(torch.cuda.memory_allocated(index)))
            reserved.add_metric([self.device], float(torch.cuda.memory_reserved(index)))
            total.add_metric([self.device], float(torch.cuda.get_device_properties(index).total_memory))
        yield from (used, reserved, total)


class QueueDepth(Collector):
    """Approximate message counts of the work queue and its dead-letter queue (SQS GetQueueAttributes).

    Read by a background thread every ``interval_s`` (and soon after this worker dead-letters a message),
    never during a scrape, so a slow SQS cannot stall ``/metrics``. Every worker reports the same queues:
    aggregate with ``max``, not ``sum``."""

    STATES = {"visible": "ApproximateNumberOfMessages", "in_flight": "ApproximateNumberOfMessagesNotVisible",
              "delayed": "ApproximateNumberOfMessagesDelayed"}

    def __init__(self, sqs: Any, queues: dict[str, str], interval_s: float = 30.0) -> None:
        self.sqs, self.interval_s = sqs, interval_s
        self.queues = {name: url for name, url in queues.items() if url}
        self.values: dict[tuple[str, str], float] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._failures = 0

    def start(self) -> QueueDepth:
        threading.Thread(target=self._run, name="queue-depth", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def refresh_soon(self) -> None:
        self._wake.set()

    def refresh(self) -> None:
        values = {}
        for name, url in self.queues.items():
            got = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(self.STATES.values()))
            attributes = got.get("Attributes", {})
            for state, attribute in self.STATES.items():
                values[(name, state)] = float(attributes.get(attribute, 0))
        self.values = values

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
                self._failures = 0
            except Exception as exc:  # noqa: BLE001 - metrics are best effort; say so once, then rarely
                self._failures += 1
                if self._failures in (1, 20):
                    log.warning("cannot read queue attributes for metrics: %s", exc)
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("spotgen_queue_messages", "Approximate messages in the work queue and its "
                                   "dead-letter queue, by state (as SQS reports them; the same in every worker).",
                                   labels=["queue", "state"])
        for (queue, state), value in sorted(self.values.items()):
            family.add_metric([queue, state], value)
        yield family
