"""One X-Ray trace across the SNS/SQS hop, carried by SQS's ``AWSTraceHeader`` alone, as on AWS with active
tracing on the topic (the local stack emulates it: ``runtime/local/snstracing.py``).

The submit Lambda here runs as it runs on AWS without the OpenTelemetry layer: in a process of its own with the
Lambda's trace in ``_X_AMZN_TRACE_ID`` and no OpenTelemetry SDK, so it writes no ``traceparent``. boto3 passes the
trace on to SNS; SNS hands it to SQS; the worker continues it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

from runtime.contract import JobSpec, Txt2ImgInputs, utcnow
from runtime.contract.envelope import build_celery_message
from runtime.local.devstack import EMULATOR_CREDENTIALS
from runtime.storage import aws
from tests.conftest import ROOT
from tests.ops.test_ops import Ops, Worker, ops, worker_a  # noqa: F401 - ops and worker_a are fixtures
from tests.rest import call

SUBMIT = ("import json, sys; from lambdas.common import deployment; from lambdas.submit import submit; "
          "print(json.dumps(submit(deployment(), sys.argv[1].encode())))")


def xray_header() -> tuple[str, str, str]:
    """A fresh X-Ray trace header as Lambda sets it, with its trace id in W3C form and its parent."""
    epoch, rest, parent = f"{int(time.time()):08x}", f"{random.getrandbits(96):024x}", f"{random.getrandbits(64):016x}"
    return f"Root=1-{epoch}-{rest};Parent={parent};Sampled=1", epoch + rest, parent


def submit_as_lambda(running: Ops, body: dict[str, object], header: str) -> dict[str, object]:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **running.stack.settings.to_env(),
           **EMULATOR_CREDENTIALS, "AWS_LAMBDA_FUNCTION_NAME": "spotgen-submit", "_X_AMZN_TRACE_ID": header}
    out = subprocess.run([sys.executable, "-c", SUBMIT, json.dumps(body)], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def job(seed: int) -> dict[str, object]:
    return {"pipeline": "txt2img", "model": "tiny-sd",
            "inputs": {"prompt": "x-ray", "width": 64, "height": 64, "steps": 2, "seed": seed}}


def test_the_lambdas_xray_trace_reaches_the_worker_through_sns_and_sqs(ops: Ops, worker_a: Worker) -> None:  # noqa: F811
    header, trace_id, parent = xray_header()
    answer = submit_as_lambda(ops, job(11), header)
    assert answer["statusCode"] == 202, answer
    job_id = json.loads(str(answer["body"]))["id"]
    doc = ops.finished(job_id)
    assert doc["state"] == "succeeded", doc
    (task,) = [s for s in ops.trace(trace_id) if s.name == "run/spotgen.run_job"]
    assert task.parent_id == parent  # the Lambda's segment: the worker joined its trace
    assert {"spotgen.generate", "spotgen.denoise", "spotgen.store_outputs"} <= {s.name for s in ops.trace(trace_id)}

    # Without active tracing on the topic, SQS gets no AWSTraceHeader and the worker starts a trace of its own.
    sns = aws.client("sns", ops.stack.settings)
    topic = ops.stack.settings.jobs_topic_arn
    sns.set_topic_attributes(TopicArn=topic, AttributeName="TracingConfig", AttributeValue="PassThrough")
    try:
        header, trace_id, _ = xray_header()
        answer = submit_as_lambda(ops, job(12), header)
        other = ops.finished(json.loads(str(answer["body"]))["id"])
    finally:
        sns.set_topic_attributes(TopicArn=topic, AttributeName="TracingConfig", AttributeValue="Active")
    assert other["state"] == "succeeded" and other.get("trace_id") != trace_id
    tasks = ops.receiver.wait(lambda got: any(s.name == "run/spotgen.run_job" and s.attributes.get(
        "spotgen.job_id") == other["id"] for s in got))
    assert not [s for s in tasks if s.trace_id == trace_id]


def test_aws_trace_header_continues_an_xray_trace(ops: Ops, worker_a: Worker) -> None:  # noqa: F811
    """A message without traceparent (sent by something else than our Lambda) but with SQS's AWSTraceHeader."""
    job_id = f"xray{int(time.time() * 1000)}"
    inputs = Txt2ImgInputs(prompt="x-ray", width=64, height=64, steps=2, seed=1).model_dump(mode="json")
    spec = JobSpec(id=job_id, pipeline="txt2img", model="tiny-sd", inputs=inputs, seed=1, output_prefix="outputs",
                   submitted_at=utcnow(), request_hash="0" * 64)
    aws.client("sqs", ops.stack.settings).send_message(
        QueueUrl=ops.stack.settings.queue_url,
        MessageAttributes={"job_id": {"DataType": "String", "StringValue": job_id}},
        MessageBody=build_celery_message(job_id, [spec.model_dump(mode="json")], queue=ops.stack.settings.queue_name),
        MessageSystemAttributes={"AWSTraceHeader": {"DataType": "String", "StringValue":
                                 "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"}})
    deadline = time.monotonic() + 60
    while call("GET", f"{ops.stack.api_url}/v1/jobs/{job_id}")[0] == 404:  # the worker writes its status
        assert time.monotonic() < deadline
        time.sleep(0.1)
    doc = ops.finished(job_id)
    assert doc["state"] == "succeeded" and doc["trace_id"] == "5759e988bd862e3fe1be46a994272793"
    (task,) = [s for s in ops.trace(doc["trace_id"]) if s.name == "run/spotgen.run_job"]
    assert task.parent_id == "53995c3f42cd8ad8"


