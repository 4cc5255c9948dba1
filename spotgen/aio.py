"""``spotgen.AsyncClient``: the client for asyncio programs (bots, web backends, load generators) that follow
many jobs at once without a thread each. Same calls, same retry rules (``spotgen/retry.py``), same idempotency
keys and auth as ``spotgen.Client``; every network call is awaited, and a job's outputs download concurrently.

    async with spotgen.AsyncClient() as client:
        job = await client.submit("txt2img", "tiny-sd", {"prompt": "a red fox", "width": 64, "height": 64})
        await job.wait()
        await job.save("out/")
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx

from runtime.contract import JobStatus
from spotgen.auth import ApiKey, http_options
from spotgen.client import JobBase, api_url_of, as_images, deadline_of, submit_body, succeeded
from spotgen.retry import Again, Budget, downloaded, json_answer, unreachable

T = TypeVar("T")


class AsyncClient:
    """One API endpoint, as ``spotgen.Client``, for asyncio. Use ``async with``, or ``await client.aclose()``."""

    def __init__(self, api_url: str | None = None, auth: str | ApiKey | None = None, *, region: str | None = None,
                 timeout_s: float = 30.0, retry_budget_s: float = 60.0,
                 transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.api_url = api_url_of(api_url)
        self.http = httpx.AsyncClient(timeout=timeout_s, transport=transport, **http_options(auth, region))
        self.downloads = httpx.AsyncClient(timeout=timeout_s)  # presigned URLs carry their own signature
        self.retry_budget_s, self.sleep = retry_budget_s, sleep

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.downloads.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        budget = Budget(self.retry_budget_s)
        while True:
            try:
                return await attempt()
            except Again as again:
                await self.sleep(budget.delay(again))

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON answer of one API call, retried through connection errors, 429 and 5xx within the budget."""
        async def attempt() -> Any:
            try:
                return json_answer(await self.http.request(method, f"{self.api_url}{path}", json=body))
            except httpx.TransportError as exc:
                raise unreachable(f"{method} {path}", exc) from None

        return await self._retrying(attempt)

    async def submit(self, pipeline: str, model: str, inputs: Mapping[str, Any] | None = None, *,
                     id: str | None = None, context: Mapping[str, Any] | None = None, ttl_seconds: int | None = None,
                     output_prefix: str | None = None) -> AsyncJob:
        """Queue a job and return it; ``id`` is the idempotency key (one is made when none is given)."""
        body = submit_body(pipeline, model, inputs, id, context=context, ttl_seconds=ttl_seconds,
                           output_prefix=output_prefix)
        answer = await self.request("POST", "/v1/jobs", body)
        return AsyncJob(self, answer["id"], answer)

    def job(self, job_id: str) -> AsyncJob:
        return AsyncJob(self, job_id, {})

    async def status(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(await self.request("GET", f"/v1/jobs/{job_id}"))

    async def cancel(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(await self.request("POST", f"/v1/jobs/{job_id}/cancel"))

    async def download(self, url: str) -> bytes:
        """An output by its presigned URL."""
        async def attempt() -> bytes:
            try:
                return downloaded(url, await self.downloads.get(url))
            except httpx.TransportError as exc:
                raise unreachable(f"download {url.split('?')[0]}", exc) from None

        return await self._retrying(attempt)


class AsyncJob(JobBase):
    """A submitted job, as ``spotgen.Job``, with every network call awaited."""

    client: AsyncClient

    async def refresh(self) -> JobStatus:
        self.status = await self.client.status(self.id)
        return self.status

    async def wait(self, timeout: float | None = None, on_progress: Callable[[JobStatus], Any] | None = None,
                   poll_s: float = 0.5, raise_on_failure: bool = False) -> JobStatus:
        """Poll until the job ends (or ``timeout`` seconds pass: ``TimeoutError``); ``on_progress`` sees every
        status read and may be a coroutine function. The final status is returned, whatever the state, unless
        ``raise_on_failure``."""
        deadline = deadline_of(timeout)
        while True:
            status = await self.refresh()
            if on_progress is not None and inspect.isawaitable(seen := on_progress(status)):
                await seen
            if self._ended(status, deadline, timeout, raise_on_failure):
                return status
            await asyncio.sleep(poll_s)

    async def cancel(self) -> JobStatus:
        self.status = await self.client.cancel(self.id)
        return self.status

    async def png_bytes(self) -> list[bytes]:
        """The outputs' PNG bytes, in order, downloaded concurrently (the job must have succeeded)."""
        status = succeeded(self._known_final() or await self.refresh())
        return list(await asyncio.gather(*(self.client.download(output.url) for output in status.outputs)))

    async def images(self) -> list[Any]:
        """The outputs as PIL images (Pillow is then needed)."""
        return as_images(await self.png_bytes())

    async def save(self, directory: str | Path) -> list[Path]:
        """Write the outputs to ``directory`` as ``{id}-{n}.png`` (``.webp``, ``.jpg``); returns the paths."""
        return self._write(directory, await self.png_bytes())
