"""A minimal OTLP/HTTP trace receiver on loopback, keeping spans in memory: for ``spotgen dev --demo`` and tests.

Workers are separate processes that export spans the way they do in production (OTLP over HTTP, protobuf,
to ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); this receiver stands in for the OpenTelemetry collector, so the
dev stack can show where a request's time went and tests can follow one trace across processes. Spans made
in this process (the in-process Lambda) come in through ``exporter()`` without a round trip.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

TRACES_PATH = "/v1/traces"
#: protobuf's Span.SpanKind numbering (SPAN_KIND_INTERNAL = 1 ...).
KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass(frozen=True)
class SpanRecord:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    start_ns: int
    end_ns: int
    service: str = ""
    attributes: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def decode(data: bytes) -> list[SpanRecord]:
    """The spans of an OTLP ``ExportTraceServiceRequest`` (protobuf)."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(data)
    out = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(SpanRecord(
                    trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                    parent_id=span.parent_span_id.hex() or None, name=span.name, kind=KINDS.get(span.kind, "?"),
                    start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                    service=str(resource.get("service.name", "")),
                    attributes={a.key: _value(a.value) for a in span.attributes}))
    return out


class SpanReceiver:
    """``start()`` serves ``POST /v1/traces`` on 127.0.0.1; ``spans()`` is everything received so far."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self._spans: list[SpanRecord] = []
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        """The value for ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``."""
        assert self._server is not None
        return f"http://{self.host}:{self._server.server_port}{TRACES_PATH}"

    def add(self, spans: Sequence[SpanRecord]) -> None:
        with self._cond:
            self._spans.extend(spans)
            self._cond.notify_all()

    def spans(self, trace_id: str | None = None) -> list[SpanRecord]:
        with self._cond:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id]

    def wait(self, done: Callable[[list[SpanRecord]], bool], timeout_s: float = 10.0) -> list[SpanRecord]:
        """Wait until ``done(spans)`` holds (spans arrive in batches); returns the spans either way."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not done(list(self._spans)) and time.monotonic() < deadline:
                self._cond.wait(max(0.0, min(0.5, deadline - time.monotonic())))
            return list(self._spans)

    def exporter(self) -> SpanExporter:
        """A span exporter into this receiver, for the spans of this process."""
        return _LocalExporter(self)

    def start(self) -> SpanReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path.split("?", 1)[0] != TRACES_PATH:
                    self._send(404, b"")
                    return
                try:
                    receiver.add(decode(body))
                except Exception:  # noqa: BLE001 - a bad request is the sender's problem
                    self._send(400, b"")
                    return
                self._send(200, ExportTraceServiceResponse().SerializeToString())

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = _QuietServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="span-receiver", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a worker killed in the middle of an export: nothing to report


class _LocalExporter(SpanExporter):
    def __init__(self, receiver: SpanReceiver) -> None:
        self.receiver = receiver

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        records = []
        for span in spans:
            ctx, parent = span.get_span_context(), span.parent
            records.append(SpanRecord(
                trace_id=format(ctx.trace_id, "032x"), span_id=format(ctx.span_id, "016x"),
                parent_id=format(parent.span_id, "016x") if parent is not None else None, name=span.name,
                kind=span.kind.name, start_ns=span.start_time or 0, end_ns=span.end_time or 0,
                service=str(span.resource.attributes.get("service.name", "")), attributes=dict(span.attributes or {})))
        self.receiver.add(records)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass
