"""No job waits longer than its queue message lives without its status saying so (issue 34, item 3).

SQS drops a message after its retention without dead-lettering it, and in a spot drought no worker may ever
receive it to end the job ``expired``. So every job gets a deadline (``expiry``), and the routes show a job still
``queued`` past it, or not ended when its message must be gone, as ``expired``. The routes run in-process against
the AWS emulator (moto on loopback), with the resources runtime/local/provision.py makes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from lambdas.cancel import cancel
from lambdas.common import Deployment
from lambdas.status import status
from lambdas.submit import submit
from runtime.config import Settings
from runtime.contract import JobState, StatusDoc, utcnow
from runtime.contract.envelope import read_celery_message
from runtime.contract.jobs import MAX_TTL_S, QUEUE_RETENTION_S
from runtime.contract.status import EXPIRY_GRACE_S
from runtime.local.provision import provision
from runtime.storage import aws
from runtime.storage.jobstore import JobStore


@pytest.fixture
def dep(emulator: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Deployment, Any, str]]:
    """A deployment of the API on the emulator, with the work queue its jobs land in."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    base = Settings(aws_endpoint_url=emulator)
    s3, sns, sqs = (aws.client(service, base) for service in ("s3", "sns", "sqs"))
    made = provision(s3, sns, sqs, prefix=f"expiry-{uuid.uuid4().hex[:8]}")
    settings = Settings(aws_endpoint_url=emulator, input_bucket=made.input_bucket, output_bucket=made.output_bucket,
                        jobs_topic_arn=made.jobs_topic_arn, queue_name=made.queue_name, models=["sd15"])
    yield Deployment(settings, JobStore(s3, settings), sns), sqs, made.queue_url


def queued(dep: Deployment, *, age: timedelta, deadline_in: timedelta | None, state: JobState = JobState.queued) -> str:
    """A status document as the submit route writes it, ``age`` ago, with its deadline ``deadline_in`` from now."""
    now = utcnow()
    doc = StatusDoc(id=uuid.uuid4().hex, state=state, pipeline="txt2img", model="sd15", seed=1,
                    created_at=now - age, updated_at=now - age,
                    expires_at=now + deadline_in if deadline_in is not None else None)
    assert dep.store.create_status(doc)
    return doc.id


def body(answer: dict[str, Any]) -> dict[str, Any]:
    return json.loads(answer["body"])


def test_a_job_without_a_deadline_gets_one_inside_the_retention(dep: tuple[Deployment, Any, str]) -> None:
    deployment, sqs, queue_url = dep
    before = utcnow()
    answer = submit(deployment, json.dumps({"pipeline": "txt2img", "model": "sd15",
                                            "inputs": {"prompt": "a fox"}}).encode())
    assert answer["statusCode"] == 202, answer
    doc = deployment.store.read_status(body(answer)["id"])
    assert doc is not None and doc.expires_at == doc.created_at + timedelta(seconds=MAX_TTL_S)
    assert before + timedelta(seconds=MAX_TTL_S) <= doc.expires_at < before + timedelta(seconds=QUEUE_RETENTION_S)
    message = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)["Messages"][0]
    _, args, _ = read_celery_message(message["Body"])
    assert datetime.fromisoformat(args[0]["expires_at"]) == doc.expires_at  # the worker ends it expired after it


def test_a_job_queued_past_its_deadline_shows_expired(dep: tuple[Deployment, Any, str]) -> None:
    deployment, _, _ = dep
    late = queued(deployment, age=timedelta(days=8), deadline_in=-timedelta(seconds=EXPIRY_GRACE_S + 60))
    shown = body(status(deployment, late))
    assert shown["state"] == "expired" and shown["error"]["code"] == "expired", shown
    assert shown["finished_at"] is not None
    assert deployment.store.read_status(late).state is JobState.queued  # shown, not written: the worker may still
    answer = cancel(deployment, late)
    assert answer["statusCode"] == 409 and "expired" in body(answer)["error"]["message"], answer


def test_a_job_just_past_its_deadline_stays_queued(dep: tuple[Deployment, Any, str]) -> None:
    """A worker that took it just before the deadline has not yet written ``running``."""
    deployment, _, _ = dep
    fresh = queued(deployment, age=timedelta(hours=1), deadline_in=-timedelta(seconds=EXPIRY_GRACE_S - 60))
    assert body(status(deployment, fresh))["state"] == "queued"
    waiting = queued(deployment, age=timedelta(days=6), deadline_in=timedelta(days=1))
    assert body(status(deployment, waiting))["state"] == "queued"


def test_a_job_older_than_the_retention_shows_expired(dep: tuple[Deployment, Any, str]) -> None:
    """Its message is gone: a ``running`` job whose worker died, or a job an older API queued with no deadline."""
    deployment, _, _ = dep
    old = timedelta(seconds=QUEUE_RETENTION_S + 60)
    for job in (queued(deployment, age=old, deadline_in=None),
                queued(deployment, age=old, deadline_in=-timedelta(days=7), state=JobState.running)):
        shown = body(status(deployment, job))
        assert shown["state"] == "expired" and "14 days" in shown["error"]["message"], shown
    running = queued(deployment, age=timedelta(days=8), deadline_in=-timedelta(days=1), state=JobState.running)
    assert body(status(deployment, running))["state"] == "running"  # started in time: it may still finish
