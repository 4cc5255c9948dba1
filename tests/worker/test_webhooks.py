"""Webhooks end to end on the session's stack (``spotgen dev``: loopback receivers allowed, its own signing
secret; tests/conftest.py gives POSTs 1 s and each event 3 s): real workers send them, a loopback receiver
verifies every signature with the ``standardwebhooks`` package, and each job's status records the attempts.

Jobs run together (each its own receiver path), so the module costs about one job's time plus the receiver
budgets. The killed-sender case is tests/worker/test_webhook_kill.py."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest

from spotgen.webhooks import verify
from tests.conftest import Stack
from tests.events import until as wait_for
from tests.harness.webhook_receiver import Receiver
from tests.rest import call
from tests.worker.test_outages import final, status_of, submit

SHORT = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}
BOTH = ["started", "completed"]


@pytest.fixture(scope="module")
def receiver(stack: Stack) -> Iterator[Receiver]:
    running = Receiver(stack.env["SPOTGEN_WEBHOOK_SECRET"]).start()
    yield running
    running.stop()


def settled(stack: Stack, job_id: str, event: str = "completed") -> dict:
    return wait_for(f"job {job_id}'s {event} webhook settled", lambda: (doc := status_of(stack, job_id)).get(
        "webhooks", {}).get(event, {}).get("settled_at") and doc, 60, 0.2)


def test_webhooks_are_signed_once_per_event_and_a_flaky_or_silent_receiver_costs_the_job_nothing(
        stack: Stack, receiver: Receiver) -> None:
    ok = submit(stack, "txt2img", {**SHORT, "seed": 11}, webhook={"url": receiver.url("/ok/1"), "events": BOTH})
    flaky = submit(stack, "txt2img", {**SHORT, "seed": 12}, webhook={"url": receiver.url("/flaky/1"), "events": BOTH})
    silent = submit(stack, "txt2img", {**SHORT, "seed": 13}, webhook={"url": receiver.url("/silent/1")})

    # a receiver that never answers: the job is final while its webhook is still unanswered
    receiver.wait_for("the silent job's first POST", lambda: receiver.of(silent) or None, 120)
    assert final(stack, silent, 5)["state"] == "succeeded"
    doc = settled(stack, silent)
    assert doc["webhooks"]["completed"]["delivered"] is False
    assert doc["webhook_attempts"] and all("no answer within 1 s" in a["error"] for a in doc["webhook_attempts"])

    for job in (ok, flaky):
        doc = settled(stack, job)
        assert doc["state"] == "succeeded" and doc["webhooks"]["completed"]["delivered"] is True
    receiver.wait_for("both events of both jobs", lambda: all(receiver.accepted(j) == {"started": 1, "completed": 1}
                                                               for j in (ok, flaky)), 30)
    assert [a["status"] for a in settled(stack, flaky)["webhook_attempts"] if a["event"] == "completed"] == \
        [500, 500, 200]

    for record in [*receiver.of(ok), *receiver.of(flaky)]:
        assert record.verified, record  # standardwebhooks, with the secret spotgen dev made
        assert verify(record.headers, record.body, stack.env["SPOTGEN_WEBHOOK_SECRET"])["id"] == record.job
        assert record.id == f"msg_{record.job}_{record.event}"
    body = json.loads(next(r for r in receiver.of(ok) if r.event == "completed").body)
    assert body["state"] == "succeeded" and body["output_keys"] == [f"outputs/{ok}/0.png"]
    with urllib.request.urlopen(body["outputs"][0], timeout=10) as answer:  # the presigned URL works as sent
        assert answer.read()[:8] == b"\x89PNG\r\n\x1a\n"
    started = json.loads(next(r for r in receiver.of(ok) if r.event == "started").body)
    assert started["state"] == "running" and started["outputs"] == []


def test_jobs_without_a_webhook_record_nothing_and_a_host_not_allowed_is_refused(stack: Stack) -> None:
    job = submit(stack, "txt2img", {**SHORT, "seed": 14})
    doc = final(stack, job)
    assert doc["webhook"] is None and doc["webhooks"] == {} and doc["webhook_attempts"] == []
    for url, message in (("https://hooks.example.com/x", "not allowed"), ("http://10.0.0.8:80/x", "only https")):
        status, body = call("POST", f"{stack.api_url}/v1/jobs", {"pipeline": "txt2img", "model": "tiny-sd",
                                                                 "inputs": SHORT, "webhook": {"url": url}})
        assert status == 400 and body["error"]["field"] == "webhook.url", body
        assert body["error"]["code"] == "url_not_allowed" and message in body["error"]["message"], body


def test_a_receiver_that_does_not_answer_holds_up_no_other_job(stack: Stack, receiver: Receiver) -> None:
    """The stack's one worker stores the next job while this one's webhook waits for its receiver: the next job
    ends before this one's webhook is settled. Were the webhook sent inside the output stage's slot, the next job
    (its outputs, and the device it keeps until it may store them) would wait for the whole webhook budget."""
    silent = submit(stack, "txt2img", {**SHORT, "seed": 14}, webhook={"url": receiver.url("/silent/2")})
    receiver.wait_for("the silent job's first POST", lambda: receiver.of(silent) or None, 120)
    other = submit(stack, "solid", {"prompt": "next"})
    ended = final(stack, other, 60)
    assert ended["state"] == "succeeded", ended
    doc = settled(stack, silent)
    assert doc["webhooks"]["completed"]["delivered"] is False
    assert ended["finished_at"] < doc["webhooks"]["completed"]["settled_at"], (ended, doc["webhooks"])
