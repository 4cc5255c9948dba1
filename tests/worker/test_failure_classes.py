"""The failure policy's mapping and what it does to a message, in this process against the emulator.

tests/worker/test_failure_policy.py runs the same policy through a real worker; here each class is checked on its
own: the mapping (``classify``), the backoff that grows with the receive count, the visibility it sets on the
message, the job restarted from step 0 after a checkpoint that does not fit (which once skipped the mapping),
and the metric that counts each class.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
import torch
from botocore.exceptions import ClientError
from PIL import Image

from runtime.config import Settings
from runtime.contract import ContractError, JobState, StatusDoc, utcnow
from runtime.models.catalog import ModelError
from runtime.models.store import ModelStore
from runtime.ops.metrics import Metrics
from runtime.plugins import CheckpointError, Pipeline, Registry, RetryableError, RunContext, StepState
from runtime.storage.jobstore import JobStore
from runtime.worker import checkpoint, deadletter, failures
from runtime.worker.errors import PermanentError
from runtime.worker.runner import JobRunner
from tests.plugins import FailInputs

Kind = failures.Kind


@pytest.mark.parametrize(("exc", "in_pipeline", "kind", "code"), [
    (PermanentError("invalid_inputs", "too wide", "inputs.width"), False, Kind.input, "invalid_inputs"),
    (ContractError("lora_family", "an SDXL LoRA on an SD 1.5 model", "inputs.loras[0]"), True, Kind.input,
     "lora_family"),
    (ModelError("unknown_model", "unknown base model 'x'"), True, Kind.input, "unknown_model"),
    (ModelError("model_missing", "model 'm': directory /efs/m does not exist"), True, Kind.infrastructure,
     "model_missing"),
    (ModelError("model_unreadable", "model 'm': cannot read /efs/m: EIO"), False, Kind.infrastructure,
     "model_unreadable"),
    (ModelError("unsafe_weights", "a pickle checkpoint"), True, Kind.pipeline, "unsafe_weights"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True, Kind.infrastructure,
     "out_of_memory"),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), True, Kind.infrastructure,
     "device_error"),
    (OSError(5, "Input/output error"), True, Kind.infrastructure, "storage_error"),
    (ClientError({"Error": {"Code": "SlowDown", "Message": "slow"}}, "GetObject"), False, Kind.infrastructure,
     "storage_error"),
    (RetryableError("the upstream service is unavailable"), True, Kind.transient, "retryable"),
    (CheckpointError("the checkpoint's latents do not fit"), True, Kind.pipeline, "pipeline_error"),
    (RuntimeError("a plugin's bug"), True, Kind.pipeline, "pipeline_error"),
    (RuntimeError("something outside the pipeline"), False, Kind.transient, "error"),
])
def test_each_failure_has_its_class(exc: Exception, in_pipeline: bool, kind: Kind, code: str) -> None:
    failure = failures.classify(exc, in_pipeline)
    assert (failure.kind, failure.code) == (kind, code)
    verdict = failures.judge(failure, 1, 3)
    assert verdict.final is kind.permanent
    if not kind.permanent:
        assert failures.judge(failure, 3, 3).error.code == "retries_exhausted"  # type: ignore[union-attr]


def test_an_input_error_names_its_field() -> None:
    verdict = failures.judge(failures.classify(PermanentError("invalid_inputs", "too wide", "inputs.width")), 1, 5)
    assert verdict.error is not None and verdict.error.field == "inputs.width"


def test_the_backoff_grows_with_the_receive_count_with_jitter() -> None:
    for receive in range(1, 12):
        ceiling = min(failures.RETRY_MAX_S, failures.RETRY_FIRST_S * 2 ** (receive - 1))
        delays = {failures.retry_delay_s(receive) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays) and len(delays) > 1
    verdict = failures.judge(failures.classify(OSError("EIO")), 2, 5)
    assert verdict.retry_in_s is not None and 2.0 <= verdict.retry_in_s <= 4.0


def test_a_retried_message_is_hidden_for_its_backoff(emulator: str) -> None:
    sqs = boto3.client("sqs", endpoint_url=emulator, region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    url = sqs.create_queue(QueueName=f"backoff-{uuid.uuid4().hex[:8]}",
                           Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="job")
    (raw,) = sqs.receive_message(QueueUrl=url, AttributeNames=["All"])["Messages"]
    hooks = SimpleNamespace(sqs=sqs, settings=SimpleNamespace(queue_url=url))
    verdict = failures.Verdict(failures.classify(OSError("EIO")), None, 1, retry_in_s=1.5)
    assert deadletter.settle(hooks, raw, verdict) is False  # not deleted
    assert sqs.receive_message(QueueUrl=url).get("Messages") is None  # hidden for the backoff...
    # ... and back after it, not after the queue's 60 s visibility timeout
    back = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=10, AttributeNames=["All"]).get("Messages")
    assert back and back[0]["Attributes"]["ApproximateReceiveCount"] == "2"


class RestartsIntoABug(Pipeline):
    """Its checkpoint never fits (so the job restarts from step 0), and the restarted run hits a bug."""

    name = "restarts-into-a-bug"
    Inputs = FailInputs
    checkpoints = True

    def run(self, inputs: FailInputs, ctx: RunContext) -> list[Image.Image]:
        if ctx.resume_from is not None:
            raise CheckpointError("the checkpoint's latents do not fit this run")
        raise RuntimeError("a bug in the pipeline")


def test_a_job_restarted_from_step_0_goes_through_the_mapping(emulator: str, tiny_models: Path) -> None:
    """The restart once ran outside the mapping: its bug was retried as a transient error, maxReceiveCount times,
    instead of failing the job at once."""
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(aws_endpoint_url=emulator, input_bucket=f"in-{suffix}", output_bucket=f"out-{suffix}")
    s3: Any = boto3.client("s3", endpoint_url=emulator, region_name=settings.region, aws_access_key_id="testing",
                           aws_secret_access_key="testing")
    for bucket in (settings.input_bucket, settings.output_bucket):
        s3.create_bucket(Bucket=bucket)
    registry = Registry()
    registry.register(RestartsIntoABug)
    runner = JobRunner(settings, JobStore(s3, settings), None, registry, ModelStore(tiny_models))
    message = {"id": "restarted", "pipeline": RestartsIntoABug.name, "model": "tiny-sd", "seed": 1,
               "inputs": {"prompt": "x"}, "output_prefix": "outputs", "submitted_at": "2026-01-01T00:00:00Z",
               "request_hash": "0" * 64}
    spec = runner.parse(message)
    now = utcnow()  # an earlier attempt ran and left a checkpoint that passes its checks
    runner.store.create_status(StatusDoc(id=spec.id, state=JobState.queued, pipeline=spec.pipeline, model=spec.model,
                                         seed=1, attempts=1, created_at=now, updated_at=now))
    runner.store.put_checkpoint(spec.id, checkpoint.dump(StepState(step=2, values={"k": 1}), spec.fingerprint()))
    job = runner.receive(message)
    runner.advance(job)  # prepare: the checkpoint is found
    assert job.resume is not None and job.resume.step == 2
    with pytest.raises(failures.PipelineFailed):
        runner.advance(job)  # generate: restarted, and the bug is the pipeline's
    assert job.verdict is not None and job.verdict.final
    assert (job.verdict.failure.kind, job.verdict.failure.code) == (Kind.pipeline, "pipeline_error")
    doc = runner.store.read_status(spec.id)
    assert doc is not None and doc.state is JobState.failed and "a bug in the pipeline" in doc.error.message


def test_the_metrics_count_each_class() -> None:
    metrics = Metrics(process_metrics=False)
    metrics.job_failure(None, "infrastructure", "retried")
    metrics.job_failure(None, "infrastructure", "recovered")
    metrics.job_failure(None, "input", "failed")
    value = metrics.registry.get_sample_value
    assert value("spotgen_job_failures_total", {"class": "infrastructure", "result": "retried"}) == 1
    assert value("spotgen_job_failures_total", {"class": "infrastructure", "result": "recovered"}) == 1
    assert value("spotgen_job_failures_total", {"class": "input", "result": "failed"}) == 1
