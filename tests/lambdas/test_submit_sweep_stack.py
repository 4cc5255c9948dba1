"""A job whose submit died before SNS took its message runs all the same, under ``spotgen dev`` (issue 33, item 1).

The submit handler runs in this process against the shared stack's emulator, its SNS calls through the fault proxy:
the publish is cut before it reaches the emulator, so SNS never has the message and nobody retries. The stack's own
sweep (every ``SWEEP_INTERVAL_S``, as the template's scheduled function on AWS) publishes it once its submit is gone,
and the stack's worker runs it: one result, one notification.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import urlsplit

import pytest

from lambdas.common import Deployment
from lambdas.outbox import WINDOW_S
from lambdas.submit import submit
from runtime.config import Settings
from runtime.local.devstack import EMULATOR_CREDENTIALS, SWEEP_INTERVAL_S
from runtime.storage import aws
from runtime.storage.jobstore import JobStore
from tests.conftest import Stack
from tests.events import until
from tests.harness.faultproxy import FaultProxy, Request
from tests.rest import call


@pytest.fixture
def proxy(stack: Stack) -> Iterator[FaultProxy]:
    url = urlsplit(stack.state["aws_endpoint_url"])
    with FaultProxy((url.hostname or "127.0.0.1", url.port or 80)) as running:
        yield running


def test_a_job_whose_submit_died_before_publishing_is_run_by_the_stacks_sweep(
        stack: Stack, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in EMULATOR_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env(stack.env)
    config = aws.bounded(15)
    sns = aws.client("sns", settings.model_copy(update={"aws_endpoint_url": proxy.url}), config=config)
    dep = Deployment(settings, JobStore(aws.client("s3", settings, config=config), settings), sns)
    job_id = f"stranded-{uuid.uuid4().hex[:8]}"
    fired = proxy.on(lambda r: isinstance(r, Request) and r.service == "sns" and r.operation == "Publish", 600)
    answer = submit(dep, json.dumps({"id": job_id, "pipeline": "solid", "model": "tiny-sd",
                                     "inputs": {"prompt": "x"}}).encode())
    assert fired.is_set() and answer["statusCode"] == 503, answer  # SNS may have it, so the job is kept
    proxy.stop()
    doc, etag = dep.store.read_status_tagged(job_id)
    assert doc is not None and doc.maybe_unpublished, doc
    # its submit is gone (as WINDOW_S after created_at): the sweep's next pass publishes it
    dep.store.write_status(doc.model_copy(update={"created_at": doc.created_at - timedelta(seconds=WINDOW_S + 1)}),
                           if_match=etag)
    ended = until(f"job {job_id} to end", lambda: (d := call("GET", f"{stack.api_url}/v1/jobs/{job_id}")[1])
                  .get("state") in ("succeeded", "failed", "expired", "cancelled") and d, 90 + SWEEP_INTERVAL_S, 0.2)
    assert ended["state"] == "succeeded" and ended["attempts"] == 1, ended
    assert [n["state"] for n in stack.inbox.settled(job_id)] == ["succeeded"]
    assert stack.s3.list_objects_v2(Bucket=settings.output_bucket, Prefix=f"pending/{job_id}/")["KeyCount"] == 0
