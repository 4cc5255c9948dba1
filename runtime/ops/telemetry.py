"""Wiring the worker's operations tooling: logs, metrics, traces and the probes' HTTP server.

``start`` runs once per worker process, before the preload, so that logs are in their final format and
``/livez`` answers while models load. Each concern is an ``Observer`` of its own (``runtime.ops.observe``); this
module only builds the ones the settings ask for and returns the combination; the worker installs it (it
knows nothing of the worker beyond what ``start`` is handed). Nothing here runs at import time.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from importlib import metadata
from typing import Any

from celery import signals

from runtime.config import Settings
from runtime.ops import logs
from runtime.ops.health import Health, serve
from runtime.ops.observe import JobInfo, Observer, combine

log = logging.getLogger("spotgen.telemetry")

class HealthObserver(Observer):
    """Feeds the probes: every finished receive, and a job's end (a job holds the consumer, solo pool, so its
    duration is not a stall)."""

    def __init__(self, health: Health) -> None:
        self.health = health

    def job_end(self, job: JobInfo) -> None:
        self.health.progress()

    def received(self, ok: bool, error: str | None = None) -> None:
        self.health.received(ok, error)


@dataclass
class Telemetry:
    observer: Observer
    health: Health
    metrics: Any = None
    server: ThreadingHTTPServer | None = None


def _version() -> str:
    try:
        return metadata.version("spotgen")
    except metadata.PackageNotFoundError:
        return "unknown"


def start(settings: Settings, interruption: Any, sqs: Any, model_memory: Callable[[], int],
          stall_s: float) -> Telemetry:
    """Configure logging, build the observers and start the metrics/probe server for one worker process.

    What the tooling reads of the worker it is handed here: the ``interruption`` (readiness turns false when
    it is requested, ``/livez`` reads its lease), an SQS client for the queue-depth gauges, and a function that
    returns the bytes of models held in memory, and ``stall_s``, the liveness bound on receive progress. The
    caller installs ``observer`` where the runtime calls it."""
    context = logs.configure(settings)
    signals.setup_logging.connect(_keep_logging, weak=False)  # Celery leaves our handlers alone
    _library_logging()
    _celery_notices_as_records()
    health = Health(interruption, stall_s)
    observers: list[Observer] = [logs.JobLog(context, settings.log_prompt_chars), HealthObserver(health)]
    metrics = None
    if settings.metrics_port:
        from runtime.ops.metrics import Metrics, QueueDepth

        metrics = Metrics(device=settings.device, queue=settings.queue_name, version=_version(),
                          model_memory=model_memory)
        metrics.ready.set_function(lambda: float(health.ready()[0]))
        metrics.queue = QueueDepth(sqs, {"work": settings.queue_url,
                                               "dead_letter": settings.dead_letter_queue_url})
        metrics.registry.register(metrics.queue)
        observers.append(metrics)
    from runtime.ops import tracing

    if tracing.enabled():
        provider = tracing.setup("spotgen-worker")
        tracing.instrument(provider)
        observers.append(tracing.Tracing(provider))
        log.info("tracing on: spans go to the OTLP endpoint in OTEL_EXPORTER_OTLP_*")
    observer = combine(observers)
    server = None
    if settings.metrics_port:
        exposition = _exposition(metrics)
        try:
            server = serve(health, exposition, settings.metrics_host, settings.metrics_port)
        except OSError as exc:
            raise SystemExit(f"spotgen worker: cannot serve metrics and probes on {settings.metrics_host}:"
                             f"{settings.metrics_port}: {exc}") from None
        if metrics is not None and metrics.queue is not None:
            metrics.queue.start()
        log.info("metrics and probes on http://%s:%d (/metrics, /livez, /readyz)", settings.metrics_host,
                 server.server_port)
    return Telemetry(observer, health, metrics, server)


def _library_logging() -> None:
    """transformers and diffusers write to stderr through handlers of their own, in their own format, and draw
    progress bars there; send their records through ours instead, so that every line has the one format."""
    for library in ("transformers", "diffusers"):
        try:
            module = importlib.import_module(f"{library}.utils.logging")
        except ImportError:
            continue
        module.disable_default_handler()
        module.enable_propagation()
        module.disable_progress_bar()  # tqdm bars on stderr ("Loading pipeline components...") are no log lines


def _celery_notices_as_records() -> None:
    """Celery prints a few notices ("worker: Warm shutdown (MainProcess)") straight to stdout from its signal
    handlers; as log records they keep the one format (the interruption logs from that handler already)."""
    from celery.apps import worker

    notices = logging.getLogger("celery.apps.worker")
    worker.safe_say = lambda msg, f=None: notices.warning("%s", str(msg).strip())


def _keep_logging(**_: Any) -> None:
    """A ``setup_logging`` receiver: its presence tells Celery not to configure logging itself."""


def _exposition(metrics: Any) -> Any:
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

    def render() -> tuple[bytes, str]:
        return generate_latest(metrics.registry), CONTENT_TYPE_LATEST

    return render
