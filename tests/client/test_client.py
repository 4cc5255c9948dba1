"""``spotgen.Client`` against a real ``spotgen dev`` stack: submit, wait and save for every built-in pipeline,
cancel, errors that carry the field, a retried submit that never makes a second job, and SigV4 signatures checked
by a loopback server that recomputes them with botocore."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

import spotgen
from tests.client.conftest import SECRET, use_credentials
from tests.conftest import ROOT, Stack
from tests.lambdas.test_api import png_bytes

SMALL = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 4, "seed": 3}


def test_import_spotgen_stays_light() -> None:
    code = ("import sys, spotgen; heavy = [m for m in ('torch', 'diffusers', 'celery', 'transformers') "
            "if m in sys.modules]; print(heavy); sys.exit(bool(heavy))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("pipeline", ["txt2img", "img2img", "controlnet"])
def test_submit_wait_and_save_each_pipeline(stack: Stack, tmp_path: Path, pipeline: str) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(64, 64))
    extra = {"img2img": {"image": spotgen.inline_image(photo), "strength": 0.5},
             "controlnet": {"control_image": spotgen.inline_image(photo), "controlnet": "tiny-controlnet"}}
    with spotgen.Client(stack.api_url) as client:
        job = client.submit(pipeline, "tiny-sd", {**SMALL, **extra.get(pipeline, {})})
        seen: list[str] = []
        status = job.wait(timeout=120, on_progress=lambda s: seen.append(s.state))
        assert isinstance(status, spotgen.JobStatus) and status.state == "succeeded", status
        assert seen[-1] == "succeeded" and status.outputs[0].url
        (path,) = job.save(tmp_path / "out")
        assert Image.open(path).size == (64, 64)
        assert job.images()[0].size == (64, 64)


def test_a_bad_request_raises_with_code_message_and_field(stack: Stack) -> None:
    with spotgen.Client(stack.api_url) as client, pytest.raises(spotgen.ApiError) as caught:
        client.submit("txt2img", "tiny-sd", {**SMALL, "width": 65})
    assert (caught.value.status, caught.value.code, caught.value.field) == (400, "invalid_field", "inputs.width")
    assert "multiple of 8" in caught.value.message


def test_cancel_and_a_failed_wait(stack: Stack) -> None:
    with spotgen.Client(stack.api_url) as client:
        job = client.submit("slow", "tiny-sd", {"prompt": "x", "steps": 200, "delay": 0.05})
        deadline = time.monotonic() + 60
        while job.refresh().state != "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert job.cancel().cancel_requested_at is not None
        with pytest.raises(spotgen.JobFailed, match="cancelled"):
            job.wait(timeout=60, raise_on_failure=True)


def test_a_retried_submit_whose_answer_was_lost_makes_one_job(stack: Stack, dropping_proxy: str) -> None:
    with spotgen.Client(dropping_proxy, retry_budget_s=30) as client:
        job = client.submit("txt2img", "tiny-sd", SMALL)  # no id: the client makes the idempotency key
        assert job.submitted.get("existing") is True  # the retry found the job the lost attempt created
        status = job.wait(timeout=120)
    assert status.state == "succeeded" and status.attempts == 1 and len(status.outputs) == 1
    bucket = stack.env["SPOTGEN_OUTPUT_BUCKET"]
    listed = stack.s3.list_objects_v2(Bucket=bucket, Prefix="jobs/").get("Contents", [])
    assert sum(1 for o in listed if o["Key"].startswith(f"jobs/{job.id}/status")) == 1


def test_the_client_says_when_the_api_is_unreachable() -> None:
    with spotgen.Client("http://127.0.0.1:9", retry_budget_s=0.5) as client, pytest.raises(spotgen.Unreachable):
        client.status("nope")


@pytest.mark.parametrize(("secret", "ok"), [(SECRET, True), ("not-the-secret", False)])
def test_sigv4_signatures_are_what_api_gateway_recomputes(iam_api: str, monkeypatch: pytest.MonkeyPatch,
                                                          secret: str, ok: bool) -> None:
    use_credentials(monkeypatch, secret)
    with spotgen.Client(iam_api, auth="sigv4", region="eu-west-1", retry_budget_s=0) as client:
        if ok:
            assert client.status("j").state == "queued"
        else:
            with pytest.raises(spotgen.ApiError) as caught:
                client.status("j")
            assert (caught.value.status, caught.value.code) == (403, "forbidden")


def test_api_key_auth_sends_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("x-api-key", ""))
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no job", "field": "id"}})

    with spotgen.Client("http://api.invalid", auth=spotgen.ApiKey("k-123"), transport=httpx.MockTransport(answer),
                        retry_budget_s=0) as client, pytest.raises(spotgen.ApiError):
        client.status("x")
    assert seen == ["k-123"]

