"""``spotgen.AsyncClient`` against a real ``spotgen dev`` stack: many jobs followed at once on one event loop,
outputs downloaded concurrently, a retried submit that never makes a second job, SigV4 and unreachable APIs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from PIL import Image

import spotgen
from tests.client.conftest import SECRET, use_credentials
from tests.conftest import Stack
from tests.lambdas.test_api import png_bytes

SMALL = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 4, "seed": 3}


def test_jobs_of_every_pipeline_followed_at_once(stack: Stack, tmp_path: Path) -> None:
    photo = spotgen.inline_image(_photo(tmp_path))
    requests = {"txt2img": {**SMALL, "num_images": 2}, "img2img": {**SMALL, "image": photo, "strength": 0.5},
                "controlnet": {**SMALL, "control_image": photo, "controlnet": "tiny-controlnet"}}
    seen: dict[str, list[str]] = {name: [] for name in requests}

    async def follow(client: spotgen.AsyncClient, pipeline: str) -> tuple[spotgen.JobStatus, list[Path]]:
        job = await client.submit(pipeline, "tiny-sd", requests[pipeline])

        async def progress(status: spotgen.JobStatus) -> None:  # a coroutine callback is awaited
            seen[pipeline].append(status.state)

        status = await job.wait(timeout=120, on_progress=progress, poll_s=0.1)
        return status, await job.save(tmp_path / "out")

    async def main() -> list[tuple[spotgen.JobStatus, list[Path]]]:
        async with spotgen.AsyncClient(stack.api_url) as client:
            return list(await asyncio.gather(*(follow(client, pipeline) for pipeline in requests)))

    results = asyncio.run(main())
    for pipeline, (status, paths) in zip(requests, results, strict=True):
        assert isinstance(status, spotgen.JobStatus) and status.state == "succeeded", status
        assert status.pipeline == pipeline and seen[pipeline][-1] == "succeeded"
        assert len(paths) == requests[pipeline].get("num_images", 1)
        assert [Image.open(path).size for path in paths] == [(64, 64)] * len(paths)
    first, second = results[0][1]  # two outputs of one job, downloaded concurrently, kept in order
    assert (first.name[-6:], second.name[-6:]) == ("-0.png", "-1.png")
    assert first.read_bytes() != second.read_bytes()


def _photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes(64, 64))
    return path


def test_a_bad_request_and_a_failed_job(stack: Stack) -> None:
    async def main() -> None:
        async with spotgen.AsyncClient(stack.api_url) as client:
            with pytest.raises(spotgen.ApiError) as caught:
                await client.submit("txt2img", "tiny-sd", {**SMALL, "width": 65})
            assert (caught.value.status, caught.value.field) == (400, "inputs.width")
            job = await client.submit("slow", "tiny-sd", {"prompt": "x", "steps": 200, "delay": 0.05})
            await job.cancel()
            with pytest.raises(spotgen.JobFailed, match="cancelled"):
                await job.wait(timeout=60, raise_on_failure=True, poll_s=0.1)
            with pytest.raises(spotgen.JobFailed):
                await job.images()

    asyncio.run(main())


def test_a_retried_submit_whose_answer_was_lost_makes_one_job(stack: Stack, dropping_proxy: str) -> None:
    async def main() -> spotgen.AsyncJob:
        async with spotgen.AsyncClient(dropping_proxy, retry_budget_s=30) as client:
            job = await client.submit("txt2img", "tiny-sd", SMALL)
            assert job.submitted.get("existing") is True
            assert (await job.wait(timeout=120, poll_s=0.1)).attempts == 1
            return job

    job = asyncio.run(main())
    assert job.status is not None and job.status.state == "succeeded"
    listed = stack.s3.list_objects_v2(Bucket=stack.env["SPOTGEN_OUTPUT_BUCKET"], Prefix="jobs/").get("Contents", [])
    assert sum(1 for o in listed if o["Key"].startswith(f"jobs/{job.id}/status")) == 1


def test_an_unreachable_api_is_said_after_the_budget() -> None:
    async def main() -> None:
        async with spotgen.AsyncClient("http://127.0.0.1:9", retry_budget_s=0.5) as client:
            await client.status("nope")

    with pytest.raises(spotgen.Unreachable):
        asyncio.run(main())


@pytest.mark.parametrize(("secret", "ok"), [(SECRET, True), ("not-the-secret", False)])
def test_sigv4_from_the_async_client(iam_api: str, monkeypatch: pytest.MonkeyPatch, secret: str, ok: bool) -> None:
    use_credentials(monkeypatch, secret)

    async def main() -> str:
        async with spotgen.AsyncClient(iam_api, auth="sigv4", region="eu-west-1", retry_budget_s=0) as client:
            return (await client.status("j")).state

    if ok:
        assert asyncio.run(main()) == "queued"
    else:
        with pytest.raises(spotgen.ApiError) as caught:
            asyncio.run(main())
        assert (caught.value.status, caught.value.code) == (403, "forbidden")
