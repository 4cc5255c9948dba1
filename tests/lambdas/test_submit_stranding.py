"""Submit leaves no job stranded (issue 33, item 1): wherever it dies, a retry with the same id or the sweep queues
the job once, and a concurrent request reusing the id never touches the first job's inputs.

The real submit handler runs in this process against the AWS emulator behind the fault proxy
(tests/harness/faultproxy.py): for each of submit's AWS calls in turn, the connection is cut just after the call
reached the emulator (its answer lost), and the proxy stays down for the rest of the invocation, which leaves AWS
as a submit killed right there would. Then either the client retries with the same id, or nobody does and the sweep
runs; the work queue (read straight from the emulator) then holds the job's message, with the same spec each time,
inputs that are the client's own, and no pending object is left.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest

from lambdas import sample
from lambdas.common import Deployment
from lambdas.outbox import WINDOW_S
from lambdas.submit import submit
from lambdas.sweep import sweep
from runtime.config import Runtime, Settings
from runtime.contract import JobSpec, JobState, utcnow
from runtime.contract.envelope import read_celery_message
from runtime.local.devstack import EMULATOR_CREDENTIALS
from runtime.local.provision import provision
from runtime.storage import aws
from runtime.storage.jobstore import JobStore
from tests.contract.sample_cases import V1ALPHA2_T2I
from tests.harness.faultproxy import FaultProxy, Request
from tests.lambdas.test_api import png_bytes

Match = Callable[[Request], bool]


@dataclass
class Env:
    dep: Deployment  # the Lambda's clients, through the proxy, configured as on AWS (aws.bounded)
    proxy: FaultProxy
    s3: Any  # straight to the emulator: what is really there
    sqs: Any
    queue_url: str
    settings: Settings
    sns_cut: Deployment  # S3 straight to the emulator, SNS through the proxy: a cut that loses SNS alone


@pytest.fixture(scope="module")
def env(emulator: str) -> Iterator[Env]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in EMULATOR_CREDENTIALS.items():
            patch.setenv(name, value)
        url = urlsplit(emulator)
        proxy = FaultProxy((url.hostname or "127.0.0.1", url.port or 80)).start()
        direct = Settings(aws_endpoint_url=emulator)
        s3, sns, sqs = (aws.client(service, direct) for service in ("s3", "sns", "sqs"))
        made = provision(s3, sns, sqs, prefix=f"strand-{uuid.uuid4().hex[:8]}")
        settings = Settings(aws_endpoint_url=proxy.url, input_bucket=made.input_bucket,
                            output_bucket=made.output_bucket, jobs_topic_arn=made.jobs_topic_arn,
                            queue_name=made.queue_name, models=["tiny-sd"])
        config = aws.bounded(15)
        dep = Deployment(settings, JobStore(aws.client("s3", settings, config=config), settings),
                         aws.client("sns", settings, config=config))
        store = settings.model_copy(update={"aws_endpoint_url": emulator})
        sns_cut = Deployment(settings, JobStore(aws.client("s3", store, config=config), settings), dep.sns)
        try:
            yield Env(dep, proxy, s3, sqs, made.queue_url, settings, sns_cut)
        finally:
            proxy.stop()


@pytest.fixture(autouse=True)
def healthy(env: Env) -> Iterator[None]:
    yield
    env.proxy.disarm()
    env.proxy.up()
    drain(env)


def request(job_id: str, image: bytes, **extra: Any) -> bytes:
    """An img2img request with an inline image (so one input upload) and no seed (so the server picks one: a
    second submission of it would pick another)."""
    return json.dumps({"id": job_id, "pipeline": "img2img", "model": "tiny-sd", **extra,
                       "inputs": {"prompt": "a fox", "width": 64, "height": 64,
                                  "image": base64.b64encode(image).decode()}}).encode()


def drain(env: Env) -> list[dict[str, Any]]:
    """Every message on the work queue (taken off it): each one's job spec."""
    specs = []
    while messages := env.sqs.receive_message(QueueUrl=env.queue_url, MaxNumberOfMessages=10,
                                              WaitTimeSeconds=0).get("Messages", []):
        for message in messages:
            _, args, _ = read_celery_message(message["Body"])
            specs.append(args[0])
            env.sqs.delete_message(QueueUrl=env.queue_url, ReceiptHandle=message["ReceiptHandle"])
    return specs


def pending(env: Env, job_id: str) -> list[str]:
    listed = env.s3.list_objects_v2(Bucket=env.settings.output_bucket, Prefix=f"pending/{job_id}/")
    return [o["Key"] for o in listed.get("Contents", [])]


def s3_call(method: str, key_part: str, header: bytes | None = None) -> Match:
    return lambda r: (r.service == "s3" and r.method == method and key_part in r.path
                      and (header is None or header in r.head.lower()))


def published(r: Request) -> bool:
    return r.service == "sns" and r.operation == "Publish"


def body(answer: dict[str, Any]) -> dict[str, Any]:
    return json.loads(answer["body"])


def runs_once(env: Env, job_id: str, image: bytes | None, copies: int) -> None:
    """The queue holds ``copies`` messages of the job, all the same spec; the spec is the status's (its seed),
    its input is the client's image, the status is queued, and nothing is pending (SNS took the message)."""
    specs = drain(env)
    assert len(specs) == copies and all(spec == specs[0] for spec in specs), specs
    spec = JobSpec.model_validate(specs[0])
    assert spec.id == job_id
    doc = env.dep.store.read_status(job_id)
    assert doc is not None and doc.state is JobState.queued and doc.seed == spec.seed, doc
    if image is not None:
        bucket, key = spec.inputs["image"][len("s3://"):].split("/", 1)
        assert env.s3.get_object(Bucket=bucket, Key=key)["Body"].read() == image
    assert pending(env, job_id) == []


#: Each of submit's AWS calls in order, then the undo's (SNS refusing twice: sure it has no message). The case's
#: cut lands right after the call reached the emulator; ``copies``: the messages a retry (or the sweep) leaves,
#: two only where the cut publish had landed (the worker runs the job once: tests/worker/test_outages.py).
CASES: dict[str, tuple[Match, bool, int]] = {  # name: (the call, SNS refuses first, the first answer)
    "status read": (s3_call("GET", "/status.json"), False, 503),
    "input upload": (s3_call("PUT", "/inputs/"), False, 503),
    "pending message": (s3_call("PUT", "/pending/"), False, 503),
    "status create": (s3_call("PUT", "/status.json", b"if-none-match"), False, 503),
    "publish": (published, False, 503),
    "pending delete": (s3_call("DELETE", "/pending/"), False, 202),
    "undo: status delete": (s3_call("DELETE", "/status.json"), True, 503),
    "undo: pending delete": (s3_call("DELETE", "/pending/"), True, 503),
}
#: The cases where a job exists after the cut (the rest left nothing that can run, and the client was told 503).
KEPT = {"status create": 1, "publish": 2, "pending delete": 1}


def cut_submit(env: Env, case: str, job_id: str, image: bytes) -> datetime:
    match, refuse, first = CASES[case]
    if refuse:
        env.proxy.fail("sns", 2)  # both tries answered 503: SNS surely has no message, so submit undoes
    fired = env.proxy.on(match, 120, after=True)
    now = utcnow()
    answer = submit(env.dep, request(job_id, image), now=now)
    assert fired.is_set(), f"no {case} call was made"
    assert answer["statusCode"] == first, answer
    if first == 503:
        assert body(answer)["error"]["code"] == "enqueue_failed" and "retry" in body(answer)["error"]["message"]
    env.proxy.disarm()
    env.proxy.up()
    return now


@pytest.mark.parametrize("case", list(CASES))
def test_a_retry_with_the_same_id_after_a_cut_queues_the_job_once(env: Env, case: str) -> None:
    job_id, image = f"retry-{uuid.uuid4().hex[:8]}", png_bytes(16, 16 + len(case))
    now = cut_submit(env, case, job_id, image)
    later = now + timedelta(seconds=WINDOW_S + 1)  # the first submit is gone: Lambda would have ended it
    answer = submit(env.dep, request(job_id, image), now=later)
    assert answer["statusCode"] in (200, 202), answer
    assert body(answer)["id"] == job_id and body(answer)["status"] == "queued", answer
    sweep(env.dep, now=later)  # after a retry the sweep has nothing to publish, and removes what was left
    runs_once(env, job_id, image, KEPT.get(case, 0) // 2 + 1)


@pytest.mark.parametrize("case", list(CASES))
def test_a_job_nobody_retries_is_queued_by_the_sweep(env: Env, case: str) -> None:
    job_id, image = f"sweep-{uuid.uuid4().hex[:8]}", png_bytes(16, 16 + len(case))
    now = cut_submit(env, case, job_id, image)
    publishes = env.proxy.seen["sns", "Publish"]
    sweep(env.dep, now=now)  # the submit could still be running: the sweep leaves its job alone
    assert env.proxy.seen["sns", "Publish"] == publishes
    sweep(env.dep, now=now + timedelta(seconds=WINDOW_S + 1))
    if case in KEPT:
        runs_once(env, job_id, image, KEPT[case])
    else:  # the client was told 503 and nothing runs: no status, no message, nothing pending
        assert env.dep.store.read_status(job_id) is None
        assert drain(env) == [] and pending(env, job_id) == []


def test_a_publish_whose_answer_was_lost_is_never_undone(env: Env) -> None:
    """SNS took the message and the answer was lost, while S3 still answers: the status must stay (SNS may have
    the job), so that the retry publishes the same job again rather than a second job with another seed."""
    job_id, image = f"lost-{uuid.uuid4().hex[:8]}", png_bytes(40, 16)
    fired = env.proxy.on(published, 120, after=True)
    now = utcnow()
    answer = submit(env.sns_cut, request(job_id, image), now=now)
    assert fired.is_set() and answer["statusCode"] == 503, answer
    assert env.sns_cut.store.read_status(job_id) is not None
    env.proxy.up()
    answer = submit(env.sns_cut, request(job_id, image), now=now + timedelta(seconds=WINDOW_S + 1))
    assert answer["statusCode"] == 200, answer
    runs_once(env, job_id, image, 2)


def test_a_submit_whose_calls_hang_answers_before_its_function_timeout(env: Env) -> None:
    """Every AWS answer held back far longer than Lambda would wait: the handler's clients, bounded by the
    function's timeout (``aws.bounded``), give up in time for it to answer 503 before Lambda would end it."""
    timeout_s = 4.0  # a function Timeout; its clients' tries take at most half of it (aws.BOUNDED_SHARE)
    config = aws.bounded(timeout_s)
    dep = Deployment(env.settings, JobStore(aws.client("s3", env.settings, config=config), env.settings),
                     aws.client("sns", env.settings, config=config))
    env.proxy.latency = 60
    try:
        started = time.monotonic()
        answer = submit(dep, request(f"hang-{uuid.uuid4().hex[:8]}", png_bytes()))
        took = time.monotonic() - started
    finally:
        env.proxy.latency = 0
    assert answer["statusCode"] == 503, answer
    assert took < timeout_s, f"the answer took {took:.1f} s, past the function's timeout of {timeout_s:g} s"


def test_a_retry_while_the_first_submit_may_still_run_is_told_to_retry(env: Env) -> None:
    job_id, image = f"early-{uuid.uuid4().hex[:8]}", png_bytes()
    now = cut_submit(env, "status create", job_id, image)
    answer = submit(env.dep, request(job_id, image), now=now + timedelta(seconds=2))
    assert answer["statusCode"] == 503 and body(answer)["error"]["code"] == "in_progress", answer
    assert "retry-after" in answer["headers"]
    assert drain(env) == []
    answer = submit(env.dep, request(job_id, image), now=now + timedelta(seconds=WINDOW_S + 1))
    assert answer["statusCode"] == 200 and body(answer)["existing"] is True, answer
    runs_once(env, job_id, image, 1)


def test_a_concurrent_request_reusing_the_id_never_overwrites_the_first_jobs_inputs(env: Env) -> None:
    """A's status create waits until B has uploaded its own image for the same id; A wins the id, B is told it
    is taken, and A's job reads A's image."""
    job_id = f"twice-{uuid.uuid4().hex[:8]}"
    images = {"A": png_bytes(16, 16), "B": png_bytes(24, 24)}
    release = {who: threading.Event() for who in images}
    held = {who: env.proxy.hold(lambda r, who=who: s3_call("PUT", "/status.json", b"if-none-match")(r)
                                and f'"who":"{who}"'.encode() in r.body, release[who]) for who in images}
    answers: dict[str, dict[str, Any]] = {}

    def send(who: str) -> None:
        answers[who] = submit(env.dep, request(job_id, images[who], context={"who": who}))

    threads = {who: threading.Thread(target=send, args=(who,)) for who in images}
    threads["A"].start()
    assert held["A"].wait(30)
    threads["B"].start()
    assert held["B"].wait(30)  # B's image is stored by now
    release["A"].set()
    threads["A"].join(30)
    release["B"].set()
    threads["B"].join(30)
    assert answers["A"]["statusCode"] == 202, answers
    assert answers["B"]["statusCode"] == 409 and body(answers["B"])["error"]["code"] == "id_conflict", answers
    runs_once(env, job_id, images["A"], 1)


@pytest.mark.parametrize("case", ["status create", "publish"])
def test_the_samples_route_shares_the_retry(env: Env, case: str) -> None:
    """The compatibility routes queue through the same ``enqueue``: the AWS sample's ``/v1alpha2`` after a cut,
    retried with its task id once its first submit is gone (its ``created_at`` moved back past the window, as the
    route takes no clock), queues its job once."""
    job_id = f"sample-{uuid.uuid4().hex[:8]}"
    task = json.loads(V1ALPHA2_T2I)
    task["task"]["metadata"]["id"] = job_id
    settings = env.settings.model_copy(update={"runtimes": {"sdruntime": Runtime(model="tiny-sd")}})
    dep = Deployment(settings, env.dep.store, env.dep.sns)
    fired = env.proxy.on(CASES[case][0], 120, after=True)
    answer = sample.v1alpha2(dep, json.dumps(task).encode())
    assert fired.is_set() and answer["statusCode"] == 503, answer
    env.proxy.disarm()
    env.proxy.up()
    doc, etag = env.dep.store.read_status_tagged(job_id)
    assert doc is not None
    env.dep.store.write_status(doc.model_copy(update={"created_at": doc.created_at - timedelta(seconds=WINDOW_S + 1)}),
                               if_match=etag)
    answer = sample.v1alpha2(dep, json.dumps(task).encode())
    assert answer["statusCode"] == 200, answer
    runs_once(env, job_id, None, KEPT[case])


def test_a_submit_writes_nothing_to_the_status_after_the_publish(env: Env) -> None:
    # The worker may have read the status by the time SNS answers: a write then would make the worker's first
    # conditional write fail and read again, two requests more per job (tests/worker/test_requests.py's count).
    before = Counter(env.proxy.seen)
    job_id = f"happy-{uuid.uuid4().hex[:8]}"
    answer = submit(env.dep, request(job_id, png_bytes()))
    assert answer["statusCode"] == 202, answer
    used = Counter(env.proxy.seen) - before
    assert used == Counter({("s3", "GetObject"): 1, ("s3", "PutObject"): 3, ("sns", "Publish"): 1,
                            ("s3", "DeleteObject"): 1}), dict(used)  # status read, input, pending, status create
    runs_once(env, job_id, png_bytes(), 1)
