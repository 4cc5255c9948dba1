"""The failure policy: what a job's failure means, in one place.

Every exception that ends a delivery comes here, whichever stage raised it (``runtime.worker.job``) and whether
or not a job was ever made of the message: ``classify`` names its class, ``judge`` decides what happens to the
job and its message. The runner records the verdict in the status; the layer that holds the message acts on it
(``runtime.worker.deadletter.settle``).

Classes:

- ``input``: the request can never succeed as sent (an invalid message or input, an unknown pipeline or
  model): ``failed`` at once, naming the field, and the message goes to the dead-letter queue.
- ``pipeline``: the pipeline, or the deployment, fails the same way on every worker (a plugin's bug, a
  checkpoint that does not fit): ``failed`` at once, dead-lettered.
- ``transient``: a condition that may pass (a plugin's ``RetryableError``, an AWS outage past the stage's retry
  budget, another delivery sending the notification): the message comes back after its lease, and on the last
  delivery the queue's maxReceiveCount allows, the job ends ``failed`` with the last error, dead-lettered.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from runtime.contract import ContractError, ImageRefError, JobErrorInfo
from runtime.models.catalog import ModelError
from runtime.plugins import CheckpointError, RetryableError
from runtime.worker.errors import PermanentError


class Kind(StrEnum):
    input = "input"
    pipeline = "pipeline"
    transient = "transient"

    @property
    def permanent(self) -> bool:
        return self in (Kind.input, Kind.pipeline)


@dataclass(frozen=True)
class Failure:
    """One failure as the policy sees it: its class, and the error a client reads."""

    kind: Kind
    code: str
    message: str
    field: str | None = None

    @property
    def info(self) -> JobErrorInfo:
        return JobErrorInfo(code=self.code, message=self.message, field=self.field)


class PipelineFailed(Exception):  # noqa: N818 - carries a classified failure, raised from the pipeline's run
    """A pipeline's run raised: the original is the cause, ``failure`` its class as the pipeline's."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.code, failure.message, failure.field)
        self.failure = failure

    def __str__(self) -> str:
        return f"{self.failure.code}: {self.failure.message}"


def _named(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def classify(exc: BaseException, in_pipeline: bool = False) -> Failure:
    """The class of ``exc``. ``in_pipeline``: raised by the pipeline's run, where anything unexpected is the
    pipeline's (it fails the same way again); elsewhere it is the worker's surroundings (S3, SQS), which pass."""
    if isinstance(exc, PipelineFailed):
        return exc.failure
    if isinstance(exc, PermanentError):
        info = exc.info
        return Failure(Kind.input if info.field else Kind.pipeline, info.code, info.message, info.field)
    if isinstance(exc, RetryableError):
        return Failure(Kind.transient, "retryable", _named(exc))
    if isinstance(exc, ContractError):  # an input only the model can judge (a LoRA's family, a prompt too long)
        return Failure(Kind.input, exc.code, exc.message, exc.field)
    if not in_pipeline:
        return Failure(Kind.transient, "error", _named(exc))
    if isinstance(exc, ModelError | ImageRefError):
        return Failure(Kind.pipeline, getattr(exc, "code", "invalid_image"), str(exc))
    if isinstance(exc, CheckpointError):
        return Failure(Kind.pipeline, "pipeline_error", _named(exc))
    return Failure(Kind.pipeline, "pipeline_error", _named(exc))


@dataclass(frozen=True)
class Verdict:
    """What a failed delivery does: ``error`` set ends the job ``failed`` with it and dead-letters the message;
    otherwise the message comes back (after ``retry_in_s`` when set, else when its lease runs out)."""

    failure: Failure
    error: JobErrorInfo | None
    receive_count: int
    retry_in_s: float | None = None

    @property
    def final(self) -> bool:
        return self.error is not None


def judge(failure: Failure, receive_count: int, max_receive_count: int) -> Verdict:
    """The verdict on ``failure`` at the ``receive_count``-th delivery of its message."""
    if failure.kind.permanent:
        return Verdict(failure, failure.info, receive_count)
    if receive_count >= max_receive_count:
        return Verdict(failure, JobErrorInfo(
            code="retries_exhausted",
            message=f"failed on each of {receive_count} deliveries; last error: {failure.message}"), receive_count)
    return Verdict(failure, None, receive_count)
