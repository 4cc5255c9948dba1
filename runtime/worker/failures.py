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
- ``infrastructure``: what the worker stands on failed for a moment: storage (S3, SQS, the model files on EFS:
  ``model_missing``, ``model_unreadable``, ``storage_error``), device memory (``out_of_memory``) or the device
  itself (``device_error``). Out of memory first frees what it can (``free_memory``: idle models of tier 2, the
  device cache) and runs the job once more in the process (``JobRunner``); past that, as below.
- ``transient``: a condition that may pass (a plugin's ``RetryableError``, another delivery sending the
  notification, anything unexpected outside the pipeline).

Both retried classes leave the message for redelivery after a backoff that grows with its receive count, with
jitter (``retry_delay_s``: its visibility timeout is set to that), the status ``retrying`` with the reason; on
the last delivery the queue's maxReceiveCount allows, the job ends ``failed`` (``retries_exhausted``) with the
last error, and the message goes to the dead-letter queue.
"""

from __future__ import annotations

import gc
import random
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from runtime.contract import ContractError, ImageRefError, JobErrorInfo
from runtime.models.catalog import ModelError
from runtime.plugins import RetryableError
from runtime.worker.errors import PermanentError

if TYPE_CHECKING:
    from runtime.models.store import ModelStore


class Kind(StrEnum):
    input = "input"
    pipeline = "pipeline"
    infrastructure = "infrastructure"
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


#: Model-file errors that storage causes (EFS could not show or read a file for a moment), not the catalog.
MODEL_STORAGE_CODES = ("model_missing", "model_unreadable", "model_cache_error")
#: Model errors that name a model the request asked for: the request's fault.
MODEL_INPUT_CODES = ("unknown_model", "invalid_model_id", "wrong_model_kind")
#: What a lost or broken device says (torch raises a plain RuntimeError for most of it).
DEVICE_ERRORS = ("CUDA error", "CUDA driver", "no CUDA-capable device", "cuDNN error", "CUBLAS_STATUS",
                 "device-side assert", "NVML")
#: The backoff before a retried message comes back: this many seconds at the first receive, doubling with each
#: receive, up to ``RETRY_MAX_S``; the second half of each is jitter, so workers that failed together (a storage
#: blink) do not come back in step.
RETRY_FIRST_S = 2.0
RETRY_MAX_S = 300.0


def _named(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")  # never import torch here: a job that never touched it has no such error
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def device_lost(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    accelerator = getattr(torch, "AcceleratorError", None) if torch is not None else None
    if accelerator is not None and isinstance(exc, accelerator):
        return True
    return isinstance(exc, RuntimeError) and any(sign in str(exc) for sign in DEVICE_ERRORS)


def classify(exc: BaseException, in_pipeline: bool = False) -> Failure:
    """The class of ``exc``. ``in_pipeline``: raised by the pipeline's run, where anything unexpected is the
    pipeline's (it fails the same way again); elsewhere it is the worker's surroundings, which pass."""
    if isinstance(exc, PipelineFailed):
        return exc.failure
    if isinstance(exc, PermanentError):
        info = exc.info
        return Failure(Kind.input if info.field else Kind.pipeline, info.code, info.message, info.field)
    if isinstance(exc, RetryableError):
        return Failure(Kind.transient, "retryable", _named(exc))
    if isinstance(exc, ContractError):  # an input only the model can judge (a LoRA's family, a prompt too long)
        return Failure(Kind.input, exc.code, exc.message, exc.field)
    if out_of_memory(exc):
        return Failure(Kind.infrastructure, "out_of_memory", _named(exc))
    if device_lost(exc):
        return Failure(Kind.infrastructure, "device_error", _named(exc))
    if isinstance(exc, ModelError):
        if exc.code in MODEL_STORAGE_CODES:
            return Failure(Kind.infrastructure, exc.code, str(exc))
        if exc.code in MODEL_INPUT_CODES:
            return Failure(Kind.input, exc.code, str(exc), None if in_pipeline else "model")
        return Failure(Kind.pipeline, exc.code, str(exc))  # the deployment's: a catalog or model layout to fix
    if isinstance(exc, BotoCoreError | ClientError | OSError):  # S3 or SQS past its retry budget, a file read
        return Failure(Kind.infrastructure, "storage_error", _named(exc))
    if not in_pipeline:
        return Failure(Kind.transient, "error", _named(exc))
    if isinstance(exc, ImageRefError):
        return Failure(Kind.input, "invalid_image", str(exc))
    return Failure(Kind.pipeline, "pipeline_error", _named(exc))  # a plugin's bug, a checkpoint that does not fit


def retry_delay_s(receive_count: int) -> float:
    """How long a retried message stays hidden after its ``receive_count``-th delivery failed."""
    ceiling = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (max(1, receive_count) - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not a secret


def free_memory(models: ModelStore, keep: Iterable[str] = ()) -> int:
    """After an out-of-memory error: drop the idle models of tier 2 (all but ``keep``, the job's own) and give
    the device cache back, so that one more run in the process has room. The bytes of models dropped."""
    freed = models.release_idle(keep=tuple(keep))
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    return freed


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
    return Verdict(failure, None, receive_count, retry_delay_s(receive_count))
