"""Hooks for what operators watch (metrics, traces, log context), kept out of the code that runs jobs.

The runtime calls an ``Observer`` at a few points of a job's life (it started, a step finished, a checkpoint
was stored, a model was loaded...). The base class does nothing, so code that runs without operations
tooling (tools, tests, the benchmark's direct runs) pays one empty method call per hook; ``Observers`` fans
each call out to several, so metrics, tracing and log context stay independent modules that can each be
left out. An observer must never fail a job: ``Observers`` logs and swallows what one raises.

``JobInfo`` is what observers know about the running job; ``PhaseClock`` turns the pipeline's step callbacks
(and the boundaries a pipeline may mark itself) into encode / denoise / decode phases with start and end
times, for spans and histograms alike.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

log = logging.getLogger("spotgen.observe")

#: Final states of a job plus what else a delivery can end in (see ``JobInfo.outcome``).
OUTCOMES = ("succeeded", "failed", "cancelled", "expired", "interrupted", "handed_back", "duplicate", "error")


@dataclass
class JobInfo:
    """The job a delivery runs, as observers see it. Filled in as the runner learns more."""

    id: str
    pipeline: str
    model: str
    submitted_at: datetime | None = None
    prompt: str | None = None
    #: W3C trace id (32 hex digits) of the request's trace, when there is one.
    trace_id: str | None = None
    attempt: int = 0
    from_step: int = 0
    #: How the delivery ended: a final state, ``interrupted`` (checkpointed and handed back), ``handed_back``
    #: (received while shutting down), ``duplicate`` (already final) or ``error`` (redelivered later).
    outcome: str | None = None
    images: int = 0
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def of(cls, spec: Any, trace_id: str | None = None) -> JobInfo:
        prompt = spec.inputs.get("prompt") if isinstance(spec.inputs, dict) else None
        return cls(id=spec.id, pipeline=spec.pipeline, model=spec.model, submitted_at=spec.submitted_at,
                   prompt=prompt if isinstance(prompt, str) else None, trace_id=trace_id)


@dataclass(frozen=True)
class Phase:
    """One phase of a pipeline run, in epoch nanoseconds (what OpenTelemetry takes for explicit times)."""

    name: str
    start_ns: int
    end_ns: int
    #: True when a boundary was estimated from step timings rather than marked by the pipeline.
    estimated: bool = False

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


class Observer:
    """No-op hooks. Subclasses override what they care about; every method must be cheap and must not block."""

    def job_begin(self, job: JobInfo) -> None:
        """A delivery of ``job`` is being handled (before its status is read)."""

    def job_started(self, job: JobInfo) -> None:
        """The job runs: its status says ``running``; ``attempt`` and ``from_step`` are known."""

    def job_end(self, job: JobInfo) -> None:
        """The delivery is over; ``job.outcome`` says how."""

    def step(self, job: JobInfo, step: int, total: int, seconds: float | None) -> None:
        """A denoising step finished; ``seconds`` is its duration when known."""

    def phases(self, job: JobInfo, phases: list[Phase]) -> None:
        """The pipeline run's phases, once it returned or stopped."""

    def checkpoint_written(self, job: JobInfo, nbytes: int, seconds: float) -> None:
        """A checkpoint of ``job`` is stored (called from the upload thread)."""

    def resumed(self, job: JobInfo, from_checkpoint: bool, recomputed_steps: int) -> None:
        """A later attempt started: from a checkpoint or from the beginning, redoing ``recomputed_steps``."""

    def cache_lookup(self, tier: str, hit: bool, model: str) -> None:
        """The model cache was asked for ``model`` on ``tier`` (``memory``: loaded objects, ``node``: disk)."""

    def model_loaded(self, model: str, seconds: float) -> None:
        """``model`` was loaded into memory (a tier-2 miss), taking ``seconds``."""

    def model_copied(self, model: str, nbytes: int, seconds: float) -> None:
        """``model`` was copied to the node cache (a tier-1 miss)."""

    def model_evicted(self, tier: str, model: str) -> None:
        """A model was dropped from ``tier`` to stay under its budget."""

    def heartbeat(self, ok: bool) -> None:
        """The lease tried to extend the running job's message visibility."""

    def dead_lettered(self, code: str) -> None:
        """A message was moved to the dead-letter queue for ``code``."""

    def job_failure(self, job: JobInfo | None, kind: str, result: str) -> None:
        """A delivery failed, of class ``kind`` (``runtime.worker.failures``: input, pipeline, infrastructure,
        transient): ``result`` ``failed`` (the job ended), ``retried`` (its message comes back) or ``recovered``
        (out of memory: memory freed, the job runs again in the process). ``job`` is None for a message that
        never became a job."""

    def received(self, ok: bool, error: str | None = None) -> None:
        """A receive from the work queue finished: ``ok`` (with or without messages), or failed with ``error``."""

    def aws_error(self, service: str, operation: str, code: str) -> None:
        """An AWS call failed (one attempt): ``code`` is AWS's error code, or the exception's name for a network
        failure. Called from whichever thread made the call."""

    @contextlib.contextmanager
    def phase(self, name: str, job: JobInfo | None = None, **attributes: Any) -> Iterator[None]:
        """A timed section (a span when tracing); ``job`` names the job when called off the job's thread."""
        yield


#: The shared do-nothing observer, for code that has no real one.
NOOP = Observer()


HOOKS = ("job_begin", "job_started", "job_end", "step", "phases", "checkpoint_written", "resumed", "cache_lookup",
         "model_loaded", "model_copied", "model_evicted", "heartbeat", "dead_lettered", "job_failure", "received",
         "aws_error")


def _fan_out(name: str) -> Any:
    def method(self: Observers, *args: Any, **kwargs: Any) -> None:
        for observer in self.observers:
            try:
                getattr(observer, name)(*args, **kwargs)
            except Exception:  # noqa: BLE001 - operations tooling must never fail a job
                log.warning("observer %s.%s failed", type(observer).__name__, name, exc_info=True)

    method.__name__ = name
    return method


class Observers(Observer):
    """Fans every hook out to ``observers`` in order; one that raises is logged and skipped."""

    def __init__(self, observers: list[Observer]) -> None:
        self.observers = list(observers)

    @contextlib.contextmanager
    def phase(self, name: str, job: JobInfo | None = None, **attributes: Any) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for observer in self.observers:
                stack.enter_context(observer.phase(name, job, **attributes))
            yield


for _hook in HOOKS:
    setattr(Observers, _hook, _fan_out(_hook))


def combine(observers: list[Observer]) -> Observer:
    """One observer for all of ``observers`` (the no-op one for none)."""
    return NOOP if not observers else observers[0] if len(observers) == 1 else Observers(observers)


class PhaseClock:
    """Times one pipeline run: start, the boundaries the pipeline marks (``encode``: its diffusers call
    starts, ``denoise``: the latents are ready), every step, end.

    Phases: ``encode`` from the call (or the run's start) to the first step's start, ``denoise`` over the
    steps, ``decode`` from the last step to the end when the run completed all its steps. A pipeline that
    marks nothing gets the first step's start estimated as one median step before its end.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start over (a run restarted from the beginning)."""
        self.offset_ns = time.time_ns() - time.perf_counter_ns()
        self.start = time.perf_counter_ns()
        self.marks: dict[str, int] = {}
        self.steps: list[tuple[int, int]] = []  # (step number, perf ns at its end)
        self.total = 0
        self.end: int | None = None

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, time.perf_counter_ns())

    def step(self, step: int, total: int) -> float | None:
        """Record the end of ``step``; returns its duration in seconds when known."""
        now = time.perf_counter_ns()
        previous = self.steps[-1][1] if self.steps else self.marks.get("denoise")
        self.steps.append((step, now))
        self.total = total
        return None if previous is None else (now - previous) / 1e9

    def stop(self) -> None:
        if self.end is None:
            self.end = time.perf_counter_ns()

    def phases(self) -> list[Phase]:
        self.stop()
        assert self.end is not None
        epoch = self.offset_ns
        if not self.steps:
            return []
        first_end, last_step, last_end = self.steps[0][1], self.steps[-1][0], self.steps[-1][1]
        estimated = "denoise" not in self.marks
        if estimated:
            durations = sorted(b[1] - a[1] for a, b in zip(self.steps, self.steps[1:], strict=False))
            one = durations[len(durations) // 2] if durations else 0
            denoise_start = max(self.start, first_end - one)
        else:
            denoise_start = self.marks["denoise"]
        encode_start = min(self.marks.get("encode", self.start), denoise_start)
        out = [Phase("encode", epoch + encode_start, epoch + denoise_start, estimated),
               Phase("denoise", epoch + denoise_start, epoch + last_end, estimated)]
        if last_step >= self.total:
            out.append(Phase("decode", epoch + last_end, epoch + self.end))
        return out


_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_XRAY_ROOT = re.compile(r"Root=1-([0-9a-f]{8})-([0-9a-f]{24})")


def trace_id_from(traceparent: Any = None, aws_trace_header: Any = None) -> str | None:
    """The trace id a message carries (W3C ``traceparent`` first, then X-Ray's ``AWSTraceHeader``), without
    importing OpenTelemetry: logs and the status document name the trace even when this worker exports none."""
    if isinstance(traceparent, str):
        match = _TRACEPARENT.match(traceparent.strip())
        if match and match.group(1) != "0" * 32:
            return match.group(1)
    if isinstance(aws_trace_header, str):
        match = _XRAY_ROOT.search(aws_trace_header)
        if match:
            return match.group(1) + match.group(2)
    return None
