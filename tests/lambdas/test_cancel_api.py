"""``POST /v1/jobs/{id}/cancel`` on the running stack.

Jobs that must stay ``queued`` or ``running`` get a status document written straight into S3 and are never
published, so the live workers cannot race the test; what the worker does on a cancel is tested elsewhere.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from lambdas.cancel import MAX_TRIES, cancel
from lambdas.common import Deployment
from runtime.config import Settings
from runtime.contract import JobErrorInfo, JobState, Progress, StatusDoc, utcnow
from runtime.storage.jobstore import JobStore, StatusConflict, status_key
from tests.conftest import Stack
from tests.rest import call, wait_for


def put_status(stack: Stack, state: JobState, **fields: Any) -> StatusDoc:
    """A status document of a job nobody will run, as submit (or a worker) would have left it."""
    now = utcnow() - timedelta(seconds=5)
    doc = StatusDoc(id=f"cancel-{uuid.uuid4().hex[:12]}", state=state, pipeline="solid", model="tiny-sd", seed=7,
                    created_at=now, updated_at=now, **fields)
    stack.s3.put_object(Bucket=stack.env["SPOTGEN_OUTPUT_BUCKET"], Key=status_key(doc.id),
                        Body=doc.model_dump_json(), ContentType="application/json")
    return doc


def stored(stack: Stack, job_id: str) -> tuple[StatusDoc, str]:
    obj = stack.s3.get_object(Bucket=stack.env["SPOTGEN_OUTPUT_BUCKET"], Key=status_key(job_id))
    return StatusDoc.model_validate_json(obj["Body"].read()), obj["ETag"]


def post_cancel(stack: Stack, job_id: str) -> tuple[int, Any]:
    return call("POST", f"{stack.api_url}/v1/jobs/{job_id}/cancel")


def test_cancel_unknown_job_is_404(stack: Stack) -> None:
    status, answer = post_cancel(stack, "no-such-job")
    assert (status, answer["error"]["code"], answer["error"]["field"]) == (404, "not_found", "id")


@pytest.mark.parametrize("job_id", ["bad.id", "x" * 65, "a%20b"])
def test_cancel_bad_id_is_400(stack: Stack, job_id: str) -> None:
    status, answer = post_cancel(stack, job_id)
    assert (status, answer["error"]["code"], answer["error"]["field"]) == (400, "invalid_field", "id")
    assert answer["error"]["message"] == call("GET", f"{stack.api_url}/v1/jobs/{job_id}")[1]["error"]["message"]


def test_cancel_route_methods(stack: Stack) -> None:
    status, answer = call("GET", f"{stack.api_url}/v1/jobs/some-job/cancel")
    assert (status, answer["error"]["code"]) == (405, "method_not_allowed")
    assert "POST" in answer["error"]["message"]
    assert call("DELETE", f"{stack.api_url}/v1/jobs/some-job/cancel")[0] == 405
    assert call("POST", f"{stack.api_url}/v1/jobs/some-job/cancel/now")[0] == 404
    assert call("POST", f"{stack.api_url}/v1/jobs/some-job")[0] == 405  # status stays GET only


def test_cancel_finished_job_is_409(stack: Stack) -> None:
    status, answer = call("POST", f"{stack.api_url}/v1/jobs",
                          {"pipeline": "solid", "model": "tiny-sd", "inputs": {"prompt": "done"}})
    assert status == 202, answer
    done = wait_for(stack.api_url, answer["id"], timeout=120)
    assert done["state"] == "succeeded", done
    status, answer = post_cancel(stack, done["id"])
    assert (status, answer["error"]["code"], answer["error"]["field"]) == (409, "job_finished", "id")
    assert "succeeded" in answer["error"]["message"]
    after = call("GET", f"{stack.api_url}/v1/jobs/{done['id']}")[1]
    assert (after["state"], after["updated_at"], after["cancel_requested_at"]) == ("succeeded", done["updated_at"],
                                                                                   None)


@pytest.mark.parametrize("state", [JobState.failed, JobState.cancelled, JobState.expired])
def test_cancel_other_final_states_is_409(stack: Stack, state: JobState) -> None:
    doc = put_status(stack, state, finished_at=utcnow())
    _, etag = stored(stack, doc.id)
    status, answer = post_cancel(stack, doc.id)
    assert (status, answer["error"]["code"]) == (409, "job_finished")
    assert str(state) in answer["error"]["message"]
    assert stored(stack, doc.id)[1] == etag  # nothing written


def test_cancel_queued_job_ends_it(stack: Stack) -> None:
    doc = put_status(stack, JobState.queued, context={"order": 42})
    before = utcnow()
    status, answer = post_cancel(stack, doc.id)
    assert status == 200, answer
    assert answer == call("GET", f"{stack.api_url}/v1/jobs/{doc.id}")[1]  # the status document, same shape
    assert (answer["id"], answer["state"], answer["error"], answer["context"]) == (doc.id, "cancelled", None,
                                                                                 {"order": 42})
    assert answer["finished_at"] == answer["cancel_requested_at"] == answer["updated_at"]
    assert before <= datetime.fromisoformat(answer["finished_at"]) <= utcnow()
    assert answer["created_at"] == doc.model_dump(mode="json")["created_at"]
    assert answer["status_url"].endswith(f"/v1/jobs/{doc.id}") and "request_hash" not in answer
    status, again = post_cancel(stack, doc.id)
    assert (status, again["error"]["code"]) == (409, "job_finished")
    assert "cancelled" in again["error"]["message"]


def test_cancel_running_job_requests_a_stop(stack: Stack) -> None:
    started = utcnow() - timedelta(seconds=2)
    doc = put_status(stack, JobState.running, started_at=started, attempts=1, progress=Progress(step=3, total=10))
    status, answer = post_cancel(stack, doc.id)
    assert status == 202, answer
    assert answer["state"] == "running" and answer["cancel_requested_at"] is not None
    assert (answer["progress"], answer["attempts"], answer["finished_at"]) == ({"step": 3, "total": 10}, 1, None)
    kept, etag = stored(stack, doc.id)
    assert kept.cancel_requested_at == datetime.fromisoformat(answer["cancel_requested_at"])
    assert kept.model_dump(exclude={"cancel_requested_at", "updated_at"}) == doc.model_dump(
        exclude={"cancel_requested_at", "updated_at"})
    status, again = post_cancel(stack, doc.id)  # idempotent: the first request's time stands, nothing written
    assert status == 202 and again == answer
    assert stored(stack, doc.id)[1] == etag


# -- a worker writing between the cancel's read and its conditional write ---------------------------------------


class RacingStore(JobStore):
    """Real S3 (the emulator), but before each of the cancel's writes ``worker`` changes the document first."""

    def __init__(self, s3: Any, settings: Settings, worker: Iterator[dict[str, Any]]) -> None:
        super().__init__(s3, settings)
        self.worker, self.writes = worker, 0

    def write_status(self, doc: StatusDoc, if_match: str | None = None) -> str:
        self.writes += 1
        changes = next(self.worker, None)
        if changes is not None:
            current, etag = self.read_status_tagged(doc.id)
            assert current is not None
            super().write_status(current.model_copy(update=changes), if_match=etag)
        return super().write_status(doc, if_match=if_match)


def racing(stack: Stack, *changes: dict[str, Any]) -> Deployment:
    settings = Settings.from_env(stack.env)
    return Deployment(settings, RacingStore(stack.s3, settings, iter(changes)), stack.sns)


def test_cancel_retries_after_a_worker_write(stack: Stack) -> None:
    doc = put_status(stack, JobState.running, started_at=utcnow(), attempts=1, progress=Progress(step=1, total=10))
    dep = racing(stack, {"progress": Progress(step=2, total=10)}, {"progress": Progress(step=3, total=10)})
    result = cancel(dep, doc.id)
    assert result["statusCode"] == 202
    kept, _ = stored(stack, doc.id)
    assert kept.progress == Progress(step=3, total=10)  # the worker's writes survive
    assert kept.cancel_requested_at is not None and dep.store.writes == 3


def test_cancel_of_a_queued_job_the_worker_just_started(stack: Stack) -> None:
    doc = put_status(stack, JobState.queued)
    dep = racing(stack, {"state": JobState.running, "started_at": utcnow(), "attempts": 1})
    assert cancel(dep, doc.id)["statusCode"] == 202  # decided again: now running, so only a request
    kept, _ = stored(stack, doc.id)
    assert (kept.state, kept.attempts, kept.finished_at) == (JobState.running, 1, None)
    assert kept.cancel_requested_at is not None


def test_cancel_of_a_job_that_finishes_meanwhile_is_409(stack: Stack) -> None:
    doc = put_status(stack, JobState.running, started_at=utcnow(), attempts=1)
    dep = racing(stack, {"state": JobState.failed, "finished_at": utcnow(),
                         "error": JobErrorInfo(code="pipeline_error", message="boom")})
    result = cancel(dep, doc.id)
    assert result["statusCode"] == 409 and '"job_finished"' in result["body"]
    kept, _ = stored(stack, doc.id)
    assert (kept.state, kept.cancel_requested_at) == (JobState.failed, None)


def test_cancel_gives_up_with_503_when_every_write_conflicts(stack: Stack) -> None:
    doc = put_status(stack, JobState.running, started_at=utcnow(), attempts=1)
    steps = [{"progress": Progress(step=n, total=100)} for n in range(1, MAX_TRIES + 1)]
    dep = racing(stack, *steps)
    result = cancel(dep, doc.id)
    assert result["statusCode"] == 503 and '"conflict"' in result["body"]
    kept, _ = stored(stack, doc.id)
    assert kept.cancel_requested_at is None and kept.progress.step == MAX_TRIES
    with pytest.raises(StatusConflict):  # and the store really refuses a stale ETag
        dep.store.write_status(kept, if_match='"stale"')
