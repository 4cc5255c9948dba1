"""The Celery app: SQS transport with predefined queues, late acks, one job at a time per process.

A GPU runs one job at a time, so the worker uses the solo pool (the job runs in the process that holds the
models) with prefetch 1: a second message is never held back while the first runs. The running job holds
a ``Lease`` on its message (visibility heartbeat); Celery's warm shutdown on SIGTERM is joined by an
``Interruption`` that checkpoints the job and bounds the time to exit (``runtime.worker.interrupt``). Once a
job is prepared, the task hands it to a device thread and returns, so the next message is received and prepared
while it generates and stores its outputs; that thread deletes the message last (``runtime.worker.handoff``).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from celery import Celery, bootsteps, signals

from runtime.config import Settings
from runtime.contract.envelope import TASK_NAME
from runtime.models.catalog import ModelError
from runtime.models.nodecache import compile_toolchain_problem
from runtime.models.store import ModelStore
from runtime.ops.observe import NOOP, Observer, trace_id_from
from runtime.plugins import PluginError, Registry
from runtime.storage import aws
from runtime.storage.jobstore import JobStore
from runtime.storage.retry import Retry, transient
from runtime.worker import deadletter, sqs
from runtime.worker.errors import PermanentError
from runtime.worker.handoff import Handoff
from runtime.worker.interrupt import Interruption, watch_imds
from runtime.worker.job import Job
from runtime.worker.lease import Lease
from runtime.worker.preload import Preload, fetch_ahead
from runtime.worker.runner import JobRunner
from runtime.worker.stages import Stage

log = logging.getLogger("spotgen.worker")


@dataclass
class Hooks:
    """What the Celery extension points (dead-letter consumer and request) need from the runtime."""

    settings: Settings
    sqs: Any
    runner: Callable[[], JobRunner]
    interruption: Interruption
    #: The runner's model store, built before the runner (``build_models``); None: the runner builds its own.
    models: Callable[[], ModelStore] | None = None
    #: Metrics, traces and log context (``runtime.ops.telemetry``); probes' state.
    observer: Observer = NOOP
    health: Any = None
    #: Seconds a job's lease waits before its first extension (``first_beat_s``, set at start-up).
    first_beat_s: float = 0.0
    #: The device and output threads the jobs run on after their task (``runtime.worker.handoff``).
    handoff: Handoff | None = None
    #: When this worker's receive in flight ends at the latest (monotonic). A worker going away abandons that
    #: long poll, and SQS may still give it a message: a copy handed back before then would stay hidden for a
    #: visibility timeout. So a copy is sent with a delay until then (``copy_delay_s``).
    receive_ends_at: float = 0.0

    def receive_started(self, ends_at: float) -> bool:
        """From the receive chain (``runtime.worker.sqs``), before each receive; False once interrupted."""
        if self.interruption.requested:
            return False
        self.receive_ends_at = ends_at
        return True

    def copy_delay_s(self) -> int:
        """Seconds a handed-back copy waits, so that this worker's own last long poll cannot take it."""
        return min(900, max(0, math.ceil(self.receive_ends_at - time.monotonic())))

    def aws_error(self, service: str, operation: str, code: str) -> None:
        self.observer.aws_error(service, operation, code)

    def received(self, ok: bool, error: BaseException | None = None) -> None:
        """From the receive chain (``runtime.worker.sqs``): one receive finished or failed."""
        self.observer.received(ok, None if ok else f"{type(error).__name__}: {error}")


class ConsumerHealth(bootsteps.StartStopStep):
    """A consumer bootstep: ready while the consumer consumes (restarted after a lost connection, it stops and
    starts again). Liveness reads receive progress, which the receive chain reports (``Hooks.received``)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        c.app.spotgen.health.consuming(True)

    def stop(self, c: Any) -> None:
        c.app.spotgen.health.consuming(False)

    shutdown = stop


def broker_url(settings: Settings) -> str:
    """``sqs://`` in production; ``sqs://@host:port`` points kombu at an emulator."""
    if not settings.aws_endpoint_url:
        return "sqs://"
    parts = urlsplit(settings.aws_endpoint_url)
    return f"sqs://@{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def build_models(settings: Settings, observer: Observer = NOOP) -> ModelStore:
    """The worker's model store (the node cache, tier 1, and memory, tier 2). Apart from the runner, so that it
    exists before the pipelines are imported (seconds): the preload's first model is fetched meanwhile."""
    node_cache = None
    if settings.node_cache_dir is not None:
        from runtime.models.nodecache import NodeCache

        node_cache = NodeCache(settings.node_cache_dir, settings.node_cache_bytes)
    models = ModelStore(settings.models_dir, settings.device, node_cache, settings.model_memory_bytes,
                        settings.lora_memory_bytes)
    models.attention, models.channels_last = settings.attention, settings.channels_last
    models.compile = settings.compile
    if settings.compile != "off":
        from runtime.models.nodecache import use_compile_cache

        cache = settings.compile_cache_dir or (settings.node_cache_dir / "compile" if settings.node_cache_dir else None)
        if cache is not None:
            use_compile_cache(cache)
    models.observer = observer
    return models


def build_runner(settings: Settings, interruption: Interruption | None = None,
                 observer: Observer = NOOP, models: ModelStore | None = None) -> JobRunner:
    registry = Registry.default(settings.plugins)
    store = JobStore(aws.client("s3", settings, observer.aws_error), settings)
    return JobRunner(settings, store, aws.client("sns", settings, observer.aws_error), registry,
                     models or build_models(settings, observer), interruption, observer)


def make_app(settings: Settings) -> Celery:
    app = Celery("spotgen", broker=broker_url(settings), set_as_current=False)
    interruption = Interruption(settings.interrupt_deadline_s)
    models = functools.cache(lambda: build_models(settings, hooks.observer))
    runner = functools.cache(lambda: build_runner(settings, interruption, hooks.observer, models()))
    hooks = Hooks(settings, aws.client("sqs", settings, lambda *error: hooks.aws_error(*error)), runner,
                  interruption, models=models)
    app.spotgen = hooks
    # An ack retried past the lease would race a redelivery for nothing: the job is final either way.
    delete_retry_s = min(settings.store_retry_s, settings.lease_s)
    hooks.handoff = handoff = Handoff(hooks.sqs, settings.queue_url, delete_retry_s, interruption,
                                      lambda job: runner().advance(job), lambda job, exc: job_failed(hooks, job, exc),
                                      settings.receive_ahead)
    app.conf.update(
        broker_transport="runtime.worker.sqs:Transport",  # kombu's, surviving outages (see that module)
        broker_transport_options={
            sqs.RECEIVE_HOOK: hooks.received,
            sqs.RECEIVE_START: hooks.receive_started,
            sqs.ACK_RETRY: delete_retry_s,
            "region": settings.region,
            "is_secure": (settings.aws_endpoint_url or "https").startswith("https"),
            "predefined_queues": {settings.queue_name: {"url": settings.queue_url}},
            "wait_time_seconds": settings.poll_wait_s,
            # Long polling already waits server-side; kombu's extra client-side pause (1 s by default) after a
            # poll that got nothing would hold an idle worker back from the next job.
            "polling_interval": 0,
            "fetch_message_attributes": {
                "MessageSystemAttributeNames": ["ApproximateReceiveCount", "AWSTraceHeader"],
                "MessageAttributeNames": [".*"],  # forwarded as they are to the dead-letter queue
            },
        },
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue_name,
        task_acks_late=True,
        task_acks_on_failure_or_timeout=False,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_pool="solo",
        worker_consumer="runtime.worker.deadletter:DeadLetterConsumer",
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_enable_remote_control=False,
    )

    @app.task(name=TASK_NAME, Request="runtime.worker.deadletter:JobRequest", acks_late=True, ignore_result=True)
    def run_job(*args: Any, **kwargs: Any) -> None:
        if len(args) != 1 or kwargs:
            raise PermanentError("invalid_message", "a job message carries exactly one argument, the job")
        delivery: deadletter.Delivery | None = getattr(run_job.request, deadletter.DELIVERY, None)
        request = run_job.request
        trace_id = trace_id_from(getattr(request, "traceparent", None), getattr(request, "X-Amzn-Trace-Id", None))
        if delivery is None or delivery.raw is None:  # called directly, not from a queue
            runner().run(args[0], trace_id=trace_id)
            return
        raw = delivery.raw
        lease = Lease(hooks.sqs, settings.queue_url, raw, settings.heartbeat_s, settings.lease_s, settings.max_job_s,
                      hooks.observer, first_beat_s=hooks.first_beat_s, copy_delay=hooks.copy_delay_s)
        interruption.hold(lease)
        handed_over, job = False, None
        try:
            context = contextvars.copy_context()  # the job's (its log fields and trace), on every thread it runs on
            job = context.run(runner().receive, args[0], lease, trace_id)  # receive
            context.run(runner().advance, job)  # prepare
            if job.stage is Stage.generate and handoff.start(job, context):  # generate, store and ack: its thread's
                delivery.keep()
                handed_over = True
        except Exception as exc:  # noqa: BLE001 - judged here, like a failure on the job's own thread
            if not job_failed(hooks, job or raw, exc):
                delivery.keep()  # the ack leaves it to come back
        finally:
            if not handed_over:
                lease.stop()
                interruption.drop(lease)
            _poll_soon()

    return app


def job_failed(hooks: Hooks, job: Job | dict[str, Any], exc: BaseException) -> bool:
    """A failed job (or a message that never became one): the failure policy's verdict acted on for its message
    (``runtime.worker.deadletter.settle``). True when the job ended for good and its message was dead-lettered,
    so that it may be deleted."""
    if isinstance(job, Job):
        raw = job.lease.raw if job.lease is not None else None
        verdict = job.verdict or deadletter.verdict_on(hooks, raw, exc)
        if job.lease is not None:
            job.lease.stop()  # no extension may undo the backoff
    else:
        raw, verdict = job, deadletter.verdict_on(hooks, job, exc)
        hooks.observer.job_failure(None, verdict.failure.kind, "failed" if verdict.final else "retried")
    return deadletter.settle(hooks, raw, verdict)


def _poll_soon() -> None:
    """Keep kombu's event loop turning for a moment after a job, so that the next receive starts at once.

    Between the ack and the next long poll no socket is registered, and the loop then sleeps until its next
    timer, up to 100 ms (kombu.asynchronous.hub); a few empty timers bound that sleep to a few milliseconds."""
    from kombu.asynchronous import get_event_loop

    hub = get_event_loop()
    if hub is not None:
        for delay in (0.002, 0.005, 0.01, 0.02, 0.04, 0.08):
            hub.call_later(delay, _nothing)


def _nothing() -> None:
    pass


class Unreachable(Exception):
    """AWS could not be reached at start-up within the retry budget."""


def reach_aws(settings: Settings, sqs_client: Any) -> int:
    """The work queue and the output bucket answer, retried for ``store_retry_s``: a worker that cannot reach
    them exits with the reason instead of sitting unready, and a short outage at start-up costs only a wait.
    Returns the queue's visibility timeout."""
    retry = Retry(settings.store_retry_s)
    s3 = aws.client("s3", settings)
    checks = ((f"SQS queue {settings.queue_url}", lambda: sqs_client.get_queue_attributes(
                   QueueUrl=settings.queue_url, AttributeNames=["QueueArn", "VisibilityTimeout"])),
              (f"S3 bucket {settings.output_bucket}", lambda: s3.list_objects_v2(
                   Bucket=settings.output_bucket, Prefix="jobs/", MaxKeys=1)))
    answers = []
    for what, call in checks:
        try:
            answers.append(retry(call, f"reaching the {what}"))
        except Exception as exc:
            # a permanent error (no credentials, access denied) is not retried: say so, not the budget
            tried = f"retried for {settings.store_retry_s:.0f} s" if transient(exc) else "not retried"
            raise Unreachable(f"cannot reach the {what} (endpoint {settings.aws_endpoint_url or 'AWS'}, {tried}): "
                              f"{type(exc).__name__}: {exc}") from None
    return int(answers[0].get("Attributes", {}).get("VisibilityTimeout", 0))


def first_beat_s(visibility_s: int, settings: Settings) -> float:
    """When a job's first visibility extension is due. A queue whose visibility timeout is no longer than the
    lease already brings a crashed worker's job back as soon as a lease would, so the extension can wait
    (half the timeout at most): a job shorter than that makes no ChangeMessageVisibility call at all. With a
    longer timeout the first extension comes at once, to shorten that wait to the lease."""
    if 0 < visibility_s <= settings.lease_s:
        return min(settings.heartbeat_s, visibility_s / 2)
    return 0.0


def process_age_s() -> float:
    """Seconds since this process started, from Linux's ``/proc`` (-1 elsewhere): what the imports before any log
    line cost is only seen from the process's own start."""
    try:
        started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22, in ticks
        return float(Path("/proc/uptime").read_text().split()[0]) - started / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return -1.0


def run_worker(settings: Settings, extra_argv: list[str] | None = None) -> None:
    """Start consuming. The runner is built and the preload models loaded first (all, or the first with the rest
    loading while it serves: ``runtime.worker.preload``), so a broken plugin or model stops start-up (exit status
    1, with the reason) instead of failing every job. Logs, metrics, traces and the probes' server start before
    that (``runtime.ops.telemetry``), so ``/livez`` answers during the preload."""
    from runtime.ops import telemetry

    app = make_app(settings)
    hooks = app.spotgen
    ops = telemetry.start(settings, hooks.interruption, hooks.sqs, lambda: hooks.runner().models.memory_bytes(),
                          sqs.receive_bound_s(settings.poll_wait_s))
    hooks.observer, hooks.health = ops.observer, ops.health
    app.steps["consumer"].add(ConsumerHealth)
    try:
        if problem := compile_toolchain_problem(settings.compile, settings.device):  # no compiler in the image
            raise ModelError("compile_unavailable", problem)
        if hooks.models is not None:  # the first preload model's fetch overlaps the pipelines' imports
            fetch_ahead(hooks.models(), settings.preload[:1])
        hooks.first_beat_s = first_beat_s(reach_aws(settings, hooks.sqs), settings)
        runner = app.spotgen.runner()
        runner.setup()  # every pipeline's setup: a plugin that cannot run here (an attention kernel...) stops it
        log.info("worker set up %.2f s after its process started (imports, AWS reached, pipelines' setup)",
                 process_age_s())  # the first phase of a new node's time to its first image (docs/models.md)
        preload = Preload(runner, settings.preload, settings.serve_after_preload,
                          lambda exc: hooks.interruption.leave(f"preload failed: {exc}"))
        ops.health.models = lambda: preload.report().model_dump()
        preload.start()
    except (ModelError, PluginError, Unreachable) as exc:
        raise SystemExit(f"spotgen worker: cannot start: {exc}") from None
    ops.health.preloaded()

    def on_stopped(**_: Any) -> None:  # the consumer has stopped; the jobs in hand end (interrupted or stored)
        if hooks.handoff is not None and hooks.handoff.busy:
            log.info("waiting for the jobs in hand before exiting")
            hooks.handoff.wait()

    # Called from Celery's own signal handler: it only records the signal (runtime.worker.interrupt)
    signals.worker_shutting_down.connect(hooks.interruption.on_worker_shutting_down, weak=False)
    hooks.interruption.last_resort = True  # this process is the worker's: faulthandler may end it
    signals.worker_shutdown.connect(on_stopped, weak=False)
    signals.worker_ready.connect(lambda **_: preload.serving.set(), weak=False)
    if settings.imds_poll_s:
        watch_imds(settings.imds_url, settings.imds_poll_s)
    argv = ["worker", "--pool=solo", "--concurrency=1", f"--queues={settings.queue_name}",
            "--without-gossip", "--without-mingle", "--without-heartbeat", f"--loglevel={settings.log_level}"]
    if settings.log_format == "json":
        argv.insert(0, "--quiet")  # no banner on stdout: every line there is a JSON object
    app.worker_main(argv + (extra_argv or []))
    # after an interruption, no interpreter teardown: it could outlast the deadline; a failed preload exits 1
    hooks.interruption.stopped(1 if preload.failure is not None else 0)
    if preload.failure is not None:  # stopped before an interruption began
        raise SystemExit(f"spotgen worker: cannot start: {preload.failure}")
