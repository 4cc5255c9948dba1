"""SNS active tracing, emulated in moto, so the local stack carries an X-Ray trace across SNS and SQS as AWS does.

On AWS, a topic with ``TracingConfig: Active`` (``lambdas/template.yaml``) takes the ``X-Amzn-Trace-Id`` header of
each Publish request and hands it to every SQS subscription as the message's ``AWSTraceHeader`` system attribute.
A publisher that never wrote a W3C ``traceparent`` (the submit Lambda without the OpenTelemetry layer, whose boto3
sends the Lambda's own X-Ray trace id, or any other service of yours) is still followed into the worker this way.
moto keeps the topic's setting but does not do the hand-over, so this module does it, in the emulator's process.
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any

#: The trace header of the Publish being handled, while its deliveries are made (moto delivers synchronously).
_HEADER: contextvars.ContextVar[str | None] = contextvars.ContextVar("spotgen_sns_trace_header", default=None)
TRACE_HEADER = "X-Amzn-Trace-Id"


def install() -> None:
    """Wrap moto's Publish and SQS SendMessage once per process (idempotent)."""
    from moto.sns.responses import SNSResponse
    from moto.sqs.models import SQSBackend

    if getattr(SNSResponse.publish, "_spotgen_tracing", False):
        return
    publish, send = SNSResponse.publish, SQSBackend.send_message

    @functools.wraps(publish)
    def traced_publish(self: Any) -> Any:
        topic = self.backend.topics.get(self._get_param("TopicArn") or self._get_param("TargetArn") or "")
        active = getattr(topic, "tracing_config", None) == "Active"
        token = _HEADER.set(self.headers.get(TRACE_HEADER) if active else None)
        try:
            return publish(self)
        finally:
            _HEADER.reset(token)

    @functools.wraps(send)
    def traced_send(self: Any, *args: Any, system_attributes: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        header = _HEADER.get()
        if header and not system_attributes:
            system_attributes = {"AWSTraceHeader": {"DataType": "String", "StringValue": header}}
        return send(self, *args, system_attributes=system_attributes, **kwargs)

    traced_publish._spotgen_tracing = True  # type: ignore[attr-defined]
    SNSResponse.publish, SQSBackend.send_message = traced_publish, traced_send
