"""AWS outages and bad networks, with a real worker behind the fault proxy (tests/harness/faultproxy.py).

One ``spotgen dev`` stack without workers of its own; the worker under test reaches the emulator only through
the proxy, while the test and the API talk to the emulator directly. Each test breaks the network in one way
and checks what a user would: the job ends once with the same bytes, nothing is recomputed, the worker keeps
consuming, and its probes tell the truth meanwhile.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack, spawn_worker
from tests.events import until as wait_for
from tests.harness.faultproxy import FaultProxy, Request
from tests.lambdas.test_api import png_bytes
from tests.rest import call
from tests.zygote import Forked

TXT2IMG = {"prompt": "a red fox", "width": 32, "height": 32, "steps": 6, "seed": 11, "scheduler": "dpmpp_2m"}


@dataclass
class Worker:
    proc: Forked
    port: int
    log: Path

    def probe(self, path: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:  # noqa: S310
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:  # noqa: S310
            text = resp.read().decode()
        return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                   if sample.name == name and labels.items() <= sample.labels.items())

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_worker(stack: Stack, proxy: FaultProxy, name: str, **env: str) -> Worker:
    port = free_port()
    proc = spawn_worker(stack, name, {"SPOTGEN_AWS_ENDPOINT_URL": proxy.url, "SPOTGEN_METRICS_PORT": str(port),
                                      "SPOTGEN_LEASE_S": "20", "SPOTGEN_HEARTBEAT_S": "2", **env})
    worker = Worker(proc, port, stack.log_dir / f"worker-{name}.log")
    wait_for(f"worker {name} ready", lambda: proc.poll() is not None or " ready." in worker.text(), 120)
    assert proc.poll() is None, worker.text()[-3000:]
    return worker


def stop_worker(worker: Worker) -> None:
    worker.proc.send_signal(signal.SIGTERM)
    try:
        worker.proc.wait(60)
    except subprocess.TimeoutExpired:
        worker.proc.kill()


@pytest.fixture(scope="module")
def worker(env: tuple[Stack, FaultProxy]) -> Iterator[Worker]:
    stack, proxy = env
    # TXT2IMG saves a checkpoint; no receive-ahead, so that a second delivery of a job it runs (the two-deliveries
    # test) goes to the other, idle worker and not to this one, to wait for its device
    running = start_worker(stack, proxy, "behind-proxy", SPOTGEN_CHECKPOINT_EVERY="4", SPOTGEN_RECEIVE_AHEAD="false")
    yield running
    stop_worker(running)


@pytest.fixture(autouse=True)
def healthy_network(env: tuple[Stack, FaultProxy]) -> Iterator[None]:
    yield
    proxy = env[1]
    proxy.latency, proxy.trickle, proxy.garbage = 0.0, 0, False
    if proxy.is_down:
        proxy.up()


def submit(stack: Stack, pipeline: str, inputs: dict[str, Any], **extra: Any) -> str:
    status, body = call("POST", f"{stack.api_url}/v1/jobs", {"pipeline": pipeline, "model": "tiny-sd",
                                                             "inputs": inputs, **extra})
    assert status == 202, body
    return body["id"]


def status_of(stack: Stack, job_id: str) -> dict[str, Any]:
    return call("GET", f"{stack.api_url}/v1/jobs/{job_id}")[1]


def final(stack: Stack, job_id: str, timeout: float = 90) -> dict[str, Any]:
    return wait_for(f"job {job_id} to end", lambda: (doc := status_of(stack, job_id)).get("state") in (
        "succeeded", "failed", "cancelled", "expired") and doc, timeout, 0.2)


def outputs(stack: Stack, job_id: str) -> list[bytes]:
    bucket = stack.env["SPOTGEN_OUTPUT_BUCKET"]
    keys = sorted(o["Key"] for o in stack.s3.list_objects_v2(Bucket=bucket, Prefix=f"outputs/{job_id}/")
                  .get("Contents", []))
    return [stack.s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys]


def notifications(stack: Stack, job_id: str) -> list[str]:
    """The states of every notification the job will ever get (``Inbox.settled``: no delivery left)."""
    return [n["state"] for n in stack.inbox.settled(job_id)]


def operation(service: str, name: str, path_part: str = "") -> Callable[[Request], bool]:
    return lambda r: r.service == service and r.operation == name and path_part in r.path


def test_an_idle_worker_rides_out_an_outage_and_its_probes_say_so(env: tuple[Stack, FaultProxy],
                                                                  worker: Worker) -> None:
    stack, proxy = env
    assert worker.probe("/readyz")[0] == 200
    proxy.outage(4)
    status, body = wait_for("/readyz to fail", lambda: (r := worker.probe("/readyz"))[0] == 503 and r, 5)
    assert body["checks"]["aws"].startswith("SQS unreachable: ReceiveFailed")
    assert worker.probe("/livez")[0] == 200  # failing receives are progress: a restart would not help
    healed = wait_for("the network back", lambda: not proxy.is_down, 10)
    assert healed
    # Ready again once a receive succeeds: one poll interval and the backoff (up to 5 s) on an idle machine. The
    # deadline is for a hang; how soon is not asserted (a loaded machine delays it without anything being wrong).
    wait_for("/readyz back to 200", lambda: worker.probe("/readyz")[0] == 200, 60)
    job = submit(stack, "solid", {"prompt": "after the outage"})
    assert final(stack, job, 30)["state"] == "succeeded"
    assert worker.proc.poll() is None
    assert worker.metric("spotgen_aws_errors_total", service="sqs", operation="ReceiveMessage") >= 1
    assert "Unrecoverable error" not in worker.text() and "Error in timer" not in worker.text()


def test_an_outage_mid_job_costs_no_step_and_the_same_worker_goes_on(env: tuple[Stack, FaultProxy],
                                                                    worker: Worker) -> None:
    stack, proxy = env
    job = submit(stack, "slow", {"prompt": "through the outage", "steps": 16, "delay": 0.25})
    wait_for("the job to run", lambda: status_of(stack, job)["progress"]["step"] >= 2, 30)
    proxy.outage(6)  # denoising goes on; progress writes fail quietly; the output stage waits for the network
    doc = final(stack, job)
    assert doc["state"] == "succeeded" and doc["attempts"] == 1 and doc["interruptions"] == 0, doc
    assert len(outputs(stack, job)) == 1
    assert worker.proc.poll() is None
    nxt = submit(stack, "solid", {"prompt": "the next one"})
    assert final(stack, nxt, 30)["state"] == "succeeded"


@pytest.mark.parametrize(("where", "match", "after"), [
    ("output upload", operation("s3", "PutObject", "/outputs/"), False),
    ("result document, answer lost", operation("s3", "PutObject", "/result.json"), True),
    ("notification", operation("sns", "Publish"), False),
    ("ack, answer lost", operation("sqs", "DeleteMessage"), True),
    ("checkpoint delete", operation("s3", "DeleteObject", "/checkpoints/"), False),
])
def test_a_cut_at_each_stage_of_the_output_gives_one_identical_result(
        env: tuple[Stack, FaultProxy], worker: Worker, where: str, match: Callable[[Request], bool],
        after: bool) -> None:
    stack, proxy = env
    reference = submit(stack, "txt2img", TXT2IMG)
    assert final(stack, reference)["state"] == "succeeded"
    proxy.on(match, seconds=3, after=after)
    job = submit(stack, "txt2img", TXT2IMG)
    doc = final(stack, job)
    assert doc["state"] == "succeeded" and doc["attempts"] == 1, (where, doc)
    # the ack and the checkpoint delete come after the final status: the cut may be a moment later
    wait_for(f"the cut at the {where}", lambda: any(what.startswith("cut") for _, what in proxy.log), 30)
    assert outputs(stack, job) == outputs(stack, reference), where
    assert notifications(stack, job) == ["succeeded"], where
    wait_for(f"the checkpoint deleted after a cut at the {where}",  # the last call of the stage: it may still wait
             lambda: stack.s3.list_objects_v2(Bucket=stack.env["SPOTGEN_OUTPUT_BUCKET"],
                                              Prefix=f"checkpoints/{job}/")["KeyCount"] == 0, 30, 0.5)
    assert worker.proc.poll() is None


def test_a_cut_while_the_input_image_is_read_is_waited_out(env: tuple[Stack, FaultProxy], worker: Worker) -> None:
    """The input image is read during the job: a cut there is retried like the output stage, not a failed job."""
    stack, proxy = env
    bucket = stack.env["SPOTGEN_INPUT_BUCKET"]
    stack.s3.put_object(Bucket=bucket, Key="uploads/outage.png", Body=png_bytes(32, 32))
    inputs = {**TXT2IMG, "image": f"s3://{bucket}/uploads/outage.png", "strength": 0.5}
    reference = submit(stack, "img2img", inputs)
    assert final(stack, reference)["state"] == "succeeded"
    proxy.on(operation("s3", "GetObject", "/uploads/outage.png"), seconds=3)
    job = submit(stack, "img2img", inputs)
    doc = final(stack, job)
    assert doc["state"] == "succeeded" and doc["attempts"] == 1, doc
    assert any(what.startswith("cut") for _, what in proxy.log), "the cut on the input image never happened"
    assert outputs(stack, job) == outputs(stack, reference)


def test_throttling_and_server_errors_are_waited_out(env: tuple[Stack, FaultProxy], worker: Worker) -> None:
    stack, proxy = env
    proxy.fail("s3", 4, 503)  # SlowDown
    proxy.fail("sqs", 4, 400)  # RequestThrottled
    proxy.fail("sns", 3, 500)
    job = submit(stack, "txt2img", TXT2IMG)
    doc = final(stack, job)
    assert doc["state"] == "succeeded" and doc["attempts"] == 1, doc
    assert sum(proxy.injected.values()) >= 5, proxy.injected
    assert worker.proc.poll() is None


def test_latency_and_a_slow_trickle_only_slow_things_down(env: tuple[Stack, FaultProxy], worker: Worker) -> None:
    stack, proxy = env
    proxy.latency, proxy.trickle = 0.2, 20_000
    job = submit(stack, "txt2img", TXT2IMG)
    assert final(stack, job, 120)["state"] == "succeeded"


def test_a_proxy_that_answers_garbage_does_not_crash_the_worker(env: tuple[Stack, FaultProxy],
                                                               worker: Worker) -> None:
    stack, proxy = env
    proxy.garbage = True
    before = proxy.injected["garbage"]
    wait_for("three answers of garbage to the worker", lambda: proxy.injected["garbage"] >= before + 3, 60)
    assert worker.proc.poll() is None and worker.probe("/livez")[0] == 200
    proxy.garbage = False
    job = submit(stack, "solid", {"prompt": "after the garbage"})
    assert final(stack, job, 30)["state"] == "succeeded"


def test_an_outage_at_start_up_is_retried_then_ends_start_up_with_the_reason(env: tuple[Stack, FaultProxy]) -> None:
    stack, proxy = env
    proxy.down()
    proc = spawn_worker(stack, "start-in-outage", {"SPOTGEN_AWS_ENDPOINT_URL": proxy.url,
                                                   "SPOTGEN_STORE_RETRY_S": "3", "SPOTGEN_METRICS_PORT": "0"})
    assert proc.wait(120) == 1
    log = (stack.log_dir / "worker-start-in-outage.log").read_text(errors="replace")
    assert "cannot start: cannot reach the SQS queue" in log and "retried for 3 s" in log, log[-2000:]


def test_two_deliveries_of_one_job_at_once_make_one_result(env: tuple[Stack, FaultProxy], worker: Worker) -> None:
    """SQS delivers at least once: a copy of a job's message, sent while the job runs, reaches a second
    worker, which runs it too. One set of outputs, one result, one notification; the status never goes back."""
    import threading
    import uuid

    from runtime.contract import JobSpec, utcnow
    from runtime.contract.envelope import build_celery_message

    stack, proxy = env
    second = start_worker(stack, proxy, "second", SPOTGEN_RECEIVE_AHEAD="false")
    try:
        spec = JobSpec(id=f"twice-{uuid.uuid4().hex[:8]}", pipeline="slow", model="tiny-sd",
                       inputs={"prompt": "twice", "steps": 40, "delay": 0.2}, seed=5, output_prefix="outputs",
                       submitted_at=utcnow(), request_hash="0" * 64)
        body = build_celery_message(spec.id, [spec.model_dump(mode="json")], queue=stack.env["SPOTGEN_QUEUE_NAME"])
        attributes = {"job_id": {"DataType": "String", "StringValue": spec.id}}

        def send() -> None:
            stack.sqs.send_message(QueueUrl=stack.env["SPOTGEN_QUEUE_URL"], MessageBody=body,
                                   MessageAttributes=attributes)

        seen: list[str] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                seen.append(status_of(stack, spec.id).get("state", "none"))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        send()
        wait_for("the first delivery to run", lambda: status_of(stack, spec.id).get("progress", {}).get("step", 0) >= 3)
        send()  # the copy, while the first delivery runs: the other, idle worker takes it
        # within a receive after its backoff (up to 5 s after a fault of an earlier test, then a 1 s poll): the job
        # runs 8 s, and the copy's start is waited for, so that under load it is not the next job's
        wait_for("the copy to start on the other worker while the first runs",
                 lambda: all(f"job {spec.id} started" in w.text() for w in (worker, second)), 30)
        doc = final(stack, spec.id)
        stack.inbox.wait_idle()  # the second delivery notices within a step, stops and acks
        stop.set()
        watcher.join()
        assert doc["state"] == "succeeded", doc
        ran = [w for w in (worker, second) if f"job {spec.id} started" in w.text()]
        assert len(ran) == 2, "the copy did not run while the first delivery ran: nothing was tested"
        keys = [f"outputs/{spec.id}/0.png"]
        assert len(outputs(stack, spec.id)) == 1 and [o["key"] for o in doc["outputs"]] == keys
        result = json.loads(stack.s3.get_object(Bucket=stack.env["SPOTGEN_OUTPUT_BUCKET"],
                                                Key=f"jobs/{spec.id}/result.json")["Body"].read())
        assert result["state"] == "succeeded" and result["outputs"] == keys
        states = [s for s in seen if s != "none"]
        assert "succeeded" in states and set(states[states.index("succeeded"):]) == {"succeeded"}, states
        assert "queued" not in states[states.index("running"):], states
        assert notifications(stack, spec.id) == ["succeeded"]
        assert status_of(stack, spec.id)["state"] == "succeeded"
    finally:
        stop_worker(second)


def test_submit_answers_503_and_keeps_nothing_when_sns_is_unreachable(env: tuple[Stack, FaultProxy], worker: Worker,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The submit Lambda's publish goes through the proxy (its S3 calls do not): SNS refusing every try (an error
    answer each time, so surely no message), it answers 503 and deletes the status it wrote, so a retry with the
    same id starts clean. (A try whose connection is cut may have been published: then the status stays, and the
    retry publishes it again, tests/lambdas/test_submit_stranding.py.)"""
    from lambdas.common import Deployment
    from lambdas.submit import submit as submit_job
    from runtime.config import Settings
    from runtime.local.devstack import EMULATOR_CREDENTIALS
    from runtime.storage import aws
    from runtime.storage.jobstore import JobStore

    stack, proxy = env
    for name, value in EMULATOR_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env(stack.env)
    through_proxy = settings.model_copy(update={"aws_endpoint_url": proxy.url})
    dep = Deployment(settings, JobStore(aws.client("s3", settings), settings), aws.client("sns", through_proxy))
    body = json.dumps({"id": "refused-once", "pipeline": "solid", "model": "tiny-sd", "inputs": {"prompt": "x"}})
    proxy.fail("sns", 10)
    answer = submit_job(dep, body.encode())
    assert answer["statusCode"] == 503 and "nothing was kept" in answer["body"], answer
    assert status_of(stack, "refused-once").get("error", {}).get("code") == "not_found"
    proxy.disarm()
    answer = submit_job(dep, body.encode())
    assert answer["statusCode"] == 202, answer
    # the retry's job runs (and leaves nothing queued for the next module on this shared stack)
    assert final(stack, "refused-once")["state"] == "succeeded"
