"""Spans of the API Lambdas, when OpenTelemetry is there; nothing at all when it is not.

A Lambda must start fast and stay small, so the OpenTelemetry API is optional here (the guarded import
below): with it and a configured SDK (the ADOT Lambda layer in production, ``spotgen dev`` locally) the
submit handler's span and its publish span are recorded and the publish writes the W3C ``traceparent`` into
the Celery message, where the worker's Celery instrumentation continues the trace. Without an SDK, the API's
spans are non-recording and ``carrier`` returns nothing: the cost is a few microseconds per request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

try:
    from opentelemetry import propagate, trace
except ImportError:  # pragma: no cover - a deployment without the OpenTelemetry API
    propagate = trace = None  # type: ignore[assignment]

TRACER_NAME = "spotgen.api"


@contextlib.contextmanager
def span(name: str, kind: str = "INTERNAL", headers: Mapping[str, str] | None = None,
         **attributes: Any) -> Iterator[None]:
    """A span named ``name`` (kind: SERVER, PRODUCER, INTERNAL...), continuing the trace of ``headers``
    (an incoming ``traceparent``) when they carry one."""
    if trace is None:
        yield
        return
    parent = propagate.extract(dict(headers)) if headers else None
    tracer = trace.get_tracer(TRACER_NAME)
    attrs = {f"spotgen.{key}": value for key, value in attributes.items() if value is not None}
    with tracer.start_as_current_span(name, context=parent, kind=getattr(trace.SpanKind, kind), attributes=attrs):
        yield


def carrier() -> dict[str, str]:
    """The current trace as message headers (``traceparent``...), or {} when nothing is recorded."""
    headers: dict[str, str] = {}
    if propagate is not None:
        propagate.inject(headers)
    return headers


def trace_id() -> str | None:
    """The current trace id (32 hex digits), or None."""
    if trace is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
