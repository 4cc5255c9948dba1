"""Wiring the worker's operations tooling: logs, metrics, traces and the probes' HTTP server.

``start`` runs once per worker process, before the preload, so that logs are in their final format and
``/livez`` answers while models load. Each concern is an ``Observer`` of its own (``runtime.observe``); this
module only builds the ones the settings ask for and hands the combination to the runtime through the
Celery app's hooks. Nothing here runs at import time.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from importlib import metadata
from typing import Any

from celery import bootsteps, signals

from runtime import logs
from runtime.config import Settings
from runtime.health import Health, serve
from runtime.observe import JobInfo, Observer, combine

log = logging.getLogger("spotgen.telemetry")

#: Seconds between two ticks of the idle consumer loop (``/livez`` sees a loop that stopped ticking).
TICK_S = 1.0


class HealthObserver(Observer):
    """A job holds the consumer loop (solo pool); count its end as a tick so ``/livez`` does not read the
    job's duration as a stall."""

    def __init__(self, health: Health) -> None:
        self.health = health

    def job_end(self, job: JobInfo) -> None:
        self.health.tick()


class ConsumerHealth(bootsteps.StartStopStep):
    """A consumer bootstep: ready while the consumer consumes (restarted after a lost connection, it stops
    and starts again), and a timer on the consumer's event loop that proves the loop runs."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.tref: Any = None

    def start(self, c: Any) -> None:
        health: Health = c.app.spotgen.health
        health.consuming(True)
        if c.timer is not None:
            self.tref = c.timer.call_repeatedly(TICK_S, health.tick)

    def stop(self, c: Any) -> None:
        c.app.spotgen.health.consuming(False)
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop


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


def start(app: Any, settings: Settings) -> Telemetry:
    """Configure logging, build the observers and start the metrics/probe server for the worker ``app``."""
    hooks = app.spotgen
    context = logs.configure(settings)
    signals.setup_logging.connect(_keep_logging, weak=False)  # Celery leaves our handlers alone
    _library_logging()
    _celery_notices_as_records()
    health = Health(hooks.interruption)
    observers: list[Observer] = [logs.JobLog(context, settings.log_prompt_chars), HealthObserver(health)]
    metrics = None
    if settings.metrics_port:
        from runtime.metrics import Metrics, QueueDepth

        metrics = Metrics(device=settings.device, queue=settings.queue_name, version=_version(),
                          model_memory=lambda: hooks.runner().models.memory_bytes())
        metrics.ready.set_function(lambda: float(health.ready()[0]))
        metrics.queue = QueueDepth(hooks.sqs, {"work": settings.queue_url,
                                               "dead_letter": settings.dead_letter_queue_url})
        metrics.registry.register(metrics.queue)
        observers.append(metrics)
    from runtime import tracing

    if tracing.enabled():
        provider = tracing.setup("spotgen-worker")
        tracing.instrument(provider)
        observers.append(tracing.Tracing(provider))
        log.info("tracing on: spans go to the OTLP endpoint in OTEL_EXPORTER_OTLP_*")
    hooks.observer = combine(observers)
    hooks.health = health
    app.steps["consumer"].add(ConsumerHealth)
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
    return Telemetry(hooks.observer, health, metrics, server)


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
