"""OpenTelemetry traces: one trace per request, from the submit Lambda through the worker to S3 and SNS.

Off unless an OTLP endpoint is configured (the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``): then, and only then, the SDK is imported, Celery and botocore are
instrumented and ``Tracing`` joins the worker's observers. Off, nothing here is imported by the worker, so
tracing costs nothing.

The submit Lambda writes a W3C ``traceparent`` into the Celery message headers (``runtime.contract.envelope``); the
Celery instrumentation continues that trace in the task span, and ``Tracing`` hangs the job's spans below it.
A message without one but with SQS's ``AWSTraceHeader`` (X-Ray) continues the X-Ray trace instead:
``runtime.worker.deadletter.JobRequest`` hands the header to the X-Ray propagator. Spans:

    spotgen.submit (Lambda) > spotgen.publish > run/spotgen.run_job (Celery: the receive and the job's checks)
        > spotgen.job (the whole job, to its notification) > S3.GetObject (its status) ...
            > spotgen.generate > spotgen.model_load > spotgen.node_cache_fetch
                               > spotgen.encode, spotgen.denoise, spotgen.decode
            > spotgen.checkpoint, spotgen.store_outputs, spotgen.notify  (each > its S3/SNS call)

The task span ends when the job is handed to the device thread (``runtime.worker.handoff``); ``spotgen.job``
goes on until the job's outputs are stored and announced. The threads a job starts (its lease heartbeat, its
progress writes) run in the job's context, so their AWS calls are spans of its trace. AWS calls made outside
any job (the consumer's polls) would each start a trace of one span; the sampler drops such root client spans.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import set_global_textmap
from opentelemetry.propagators.aws import AwsXRayPropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from runtime.ops.observe import JobInfo, Observer, Phase

log = logging.getLogger("spotgen.tracing")

TRACER_NAME = "spotgen"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether traces are exported: an OTLP endpoint is set and the SDK is not disabled."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


class _DropOrphanClientSpans(Sampler):
    """For root spans: keep all but CLIENT spans, which are AWS calls made outside any request's trace."""

    def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: SpanKind | None = None,
                      attributes: Any = None, links: Any = None, trace_state: Any = None) -> SamplingResult:
        if kind == SpanKind.CLIENT:
            return SamplingResult(Decision.DROP)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "DropOrphanClientSpans"


class XRayIdGenerator(RandomIdGenerator):
    """Trace ids whose first 32 bits are the epoch seconds, the rest random: the X-Ray format, which X-Ray
    (through the ADOT collector) requires and every other backend takes as an ordinary W3C trace id."""

    def generate_trace_id(self) -> int:
        return (int(time.time()) << 96) | random.getrandbits(96)


def setup(service_name: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """The process's tracer provider: OTLP over HTTP to the configured endpoint (batched), or ``exporter``
    (spans exported one by one: tests). Also sets the propagators: W3C trace context, then X-Ray."""
    set_global_textmap(CompositePropagator([AwsXRayPropagator(), TraceContextTextMapPropagator()]))
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):  # set once per process (OpenTelemetry refuses a second one)
        provider = current
    else:
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}),
                                  sampler=ParentBased(root=_DropOrphanClientSpans()), id_generator=XRayIdGenerator())
        trace.set_tracer_provider(provider)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def instrument(provider: TracerProvider, celery: bool = True) -> None:
    """Instrument botocore (every AWS call becomes a span of the current trace) and, in the worker, Celery."""
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor

    BotocoreInstrumentor().instrument(tracer_provider=provider)
    # It injects the trace into SNS/SQS message attributes when fewer than 10 would result, and warns otherwise:
    # a dead-lettered message keeps its attributes plus the error's, so that warning would come with each one.
    logging.getLogger("opentelemetry.instrumentation.botocore.extensions._messaging").setLevel(logging.ERROR)
    if celery:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument(tracer_provider=provider)


def trace_id_hex(span: Any) -> str | None:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


class Tracing(Observer):
    """The job's spans below the Celery task span (or a ``spotgen.job`` span of its own when there is none)."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer(TRACER_NAME, tracer_provider=provider)
        #: job id -> (its context, the token to detach, the span this observer opened itself or None)
        self._jobs: dict[str, tuple[Any, Any, Any]] = {}

    def job_begin(self, job: JobInfo) -> None:
        task = trace.get_current_span()  # the instrumented Celery task's, when there is one
        ids = {"spotgen.job_id": job.id, "spotgen.pipeline": job.pipeline, "spotgen.model": job.model}
        in_task = task.get_span_context().is_valid
        if in_task:
            task.set_attributes(ids)
        # The job outlives its task (which ends once the job is handed to the device thread), so it has a span of
        # its own, from its receive to its notification.
        span = self.tracer.start_span("spotgen.job", kind=SpanKind.INTERNAL if in_task else SpanKind.CONSUMER,
                                      attributes=ids)
        token = otel_context.attach(trace.set_span_in_context(span))
        job.trace_id = trace_id_hex(span) or job.trace_id
        self._jobs[job.id] = (trace.set_span_in_context(span), token, span)

    def job_started(self, job: JobInfo) -> None:
        span = self._span(job)
        if span is not None:
            span.set_attributes({"spotgen.attempt": job.attempt, "spotgen.from_step": job.from_step})

    def job_end(self, job: JobInfo) -> None:
        ctx, token, span = self._jobs.pop(job.id, (None, None, None))
        if ctx is None:
            return
        span.set_attribute("spotgen.outcome", job.outcome or "unknown")
        if job.outcome in ("failed", "error"):
            span.set_status(Status(StatusCode.ERROR, job.outcome))
        span.end()
        otel_context.detach(token)

    def resumed(self, job: JobInfo, from_checkpoint: bool, recomputed_steps: int) -> None:
        span = self._span(job)
        if span is not None:
            span.set_attributes({"spotgen.resumed_from_checkpoint": from_checkpoint,
                                 "spotgen.steps_recomputed": recomputed_steps})

    def phases(self, job: JobInfo, phases: list[Phase]) -> None:
        for phase in phases:  # children of the current span (spotgen.generate), with the measured times
            span = self.tracer.start_span(f"spotgen.{phase.name}", start_time=phase.start_ns,
                                          attributes={"spotgen.estimated": phase.estimated})
            span.end(end_time=phase.end_ns)

    def cache_lookup(self, tier: str, hit: bool, model: str) -> None:
        trace.get_current_span().add_event("model_cache", {"tier": tier, "hit": hit, "model": model})

    def dead_lettered(self, code: str) -> None:
        trace.get_current_span().add_event("dead_lettered", {"code": code})

    @contextlib.contextmanager
    def phase(self, name: str, job: JobInfo | None = None, **attributes: Any) -> Iterator[None]:
        parent = self._jobs.get(job.id, (None,))[0] if job is not None else None
        attrs = {f"spotgen.{key}": value for key, value in attributes.items() if value is not None}
        with self.tracer.start_as_current_span(f"spotgen.{name}", context=parent, attributes=attrs):
            yield

    def _span(self, job: JobInfo) -> Any:
        ctx = self._jobs.get(job.id, (None,))[0]
        return None if ctx is None else trace.get_current_span(ctx)
