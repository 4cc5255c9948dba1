"""Log lines: JSON objects (one per line, for log collectors) or text (for people), with the job in each.

While a job runs, every line carries its id, trace id, pipeline, model and attempt, whichever thread logs it.
A worker process has up to two jobs in hand, one generating and the one before it storing its outputs
(``runtime.worker.handoff``), so the job is a context variable of the ``JobContext`` filter, and the threads a
job starts (its lease heartbeat, progress and checkpoint uploads, its output stage) run in a copy of the job's
context.

What never reaches a log line: credentials (AWS access keys, presigned-URL signatures and tokens are masked)
and prompts longer than ``Settings.log_prompt_chars`` (cut; the whole prompt stays in the job's documents).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from typing import Any

from runtime.config import Settings
from runtime.ops.observe import JobInfo, Observer

log = logging.getLogger("spotgen.job")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOB_FIELDS = ("job_id", "trace_id", "pipeline", "model", "attempt")

_SECRETS = [
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), r"\1****************"),
    (re.compile(r"(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s\"']+", re.IGNORECASE), r"\1****"),
    (re.compile(r"((?:aws_)?(?:secret_access_key|session_token|secret|password|token)[\"']?\s*[:=]\s*[\"']?)"
                r"[^\s\"',}]+", re.IGNORECASE), r"\1****"),
]


def redact(text: str) -> str:
    """``text`` with anything that looks like a credential masked."""
    if "=" not in text and ":" not in text and "AKIA" not in text and "ASIA" not in text:
        return text  # the common case, at the cost of three scans for a substring
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def cut(prompt: str | None, limit: int) -> str | None:
    """A prompt as logs may show it: at most ``limit`` characters (0: not at all)."""
    if not prompt or limit <= 0:
        return None
    return prompt if len(prompt) <= limit else prompt[:limit] + f"... ({len(prompt)} chars)"


class JobContext(logging.Filter):
    """Adds the running job's fields to every record; never drops one."""

    def __init__(self) -> None:
        super().__init__()
        self._job: contextvars.ContextVar[JobInfo | None] = contextvars.ContextVar("spotgen_job", default=None)

    @property
    def job(self) -> JobInfo | None:
        """The job of the context logging now."""
        return self._job.get()

    @job.setter
    def job(self, job: JobInfo | None) -> None:
        self._job.set(job)

    def filter(self, record: logging.LogRecord) -> bool:
        job = self._job.get()
        if job is not None and not hasattr(record, "job_id"):
            record.job_id, record.trace_id = job.id, job.trace_id
            record.pipeline, record.model, record.attempt = job.pipeline, job.model, job.attempt or None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the job's fields when in a job, the exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name in JOB_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The classic line plus ``[job=... attempt=... trace=...]`` while in a job."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = redact(super().format(record))
        job_id = getattr(record, "job_id", None)
        if job_id is None:
            return line
        extra = f"job={job_id} attempt={getattr(record, 'attempt', None) or '-'}"
        trace_id = getattr(record, "trace_id", None)
        return f"{line} [{extra}{f' trace={trace_id}' if trace_id else ''}]"


def configure(settings: Settings, stream: Any = None) -> JobContext:
    """Log to stdout in ``settings.log_format`` at ``settings.log_level``; returns the job filter to feed.

    Replaces the root logger's handlers (Celery is told not to add its own: ``runtime.ops.telemetry``), and routes
    Python warnings through logging so that they are lines in the same format."""
    context = JobContext()
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(context)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    logging.captureWarnings(True)
    return context


class JobLog(Observer):
    """Puts the job into every log line while it runs, and says when it starts and how it ends."""

    def __init__(self, context: JobContext, prompt_chars: int) -> None:
        self.context, self.prompt_chars = context, prompt_chars

    def job_begin(self, job: JobInfo) -> None:
        self.context.job = job

    def job_started(self, job: JobInfo) -> None:
        prompt = cut(job.prompt, self.prompt_chars)
        log.info("job %s started: %s on %s, attempt %d%s%s", job.id, job.pipeline, job.model, job.attempt,
                 f" from step {job.from_step}" if job.from_step else "",
                 f", prompt {prompt!r}" if prompt is not None else "")

    def job_end(self, job: JobInfo) -> None:
        try:
            log.info("job %s ended: %s", job.id, job.outcome)
        finally:
            self.context.job = None
