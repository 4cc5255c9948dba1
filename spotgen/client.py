"""The HTTP client of spotgen's API: submit a job, follow it, download its images. ``spotgen.AsyncClient``
(``spotgen/aio.py``) is the same client for asyncio; both share the rules in ``spotgen/retry.py``.

Retries never duplicate a job: a submit without an ``id`` gets one made here (a random idempotency key) before
the first attempt, so a submit retried after a timeout, a cut connection or a 503 names the same job, and the API
answers the second time with the job the first created.

Auth, chosen by ``auth`` (``spotgen/auth.py``): ``"sigv4"`` for the deployed API, an ``ApiKey``, or ``None`` for
``spotgen dev``. Statuses and errors are the contract's own models (``runtime.contract``), so the client reads
exactly what the worker writes. Importing this module imports httpx and pydantic, never torch, diffusers or celery.
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx

from runtime.contract import MAX_IMAGE_BYTES, JobStatus
from spotgen.auth import ApiKey, http_options
from spotgen.errors import JobFailed
from spotgen.retry import Again, Budget, downloaded, json_answer, unreachable

#: The states after which a job never changes.
FINAL = frozenset({"succeeded", "failed", "cancelled", "expired"})
DEFAULT_URL = "http://127.0.0.1:8080"
T = TypeVar("T")


def api_url_of(api_url: str | None) -> str:
    """``api_url``, else ``SPOTGEN_API_URL``, else ``spotgen dev``'s address."""
    return (api_url or os.environ.get("SPOTGEN_API_URL") or DEFAULT_URL).rstrip("/")


def submit_body(pipeline: str, model: str, inputs: Mapping[str, Any] | None, id: str | None,
                **optional: Any) -> dict[str, Any]:
    """The body of ``POST /v1/jobs``, with an idempotency key made here when ``id`` is None."""
    body: dict[str, Any] = {"id": id or uuid.uuid4().hex, "pipeline": pipeline, "model": model,
                            "inputs": dict(inputs or {})}
    body.update({name: value for name, value in optional.items() if value is not None})
    return body


class Client:
    """One API endpoint: ``api_url`` (``SPOTGEN_API_URL``, else ``spotgen dev``'s address) and its auth."""

    def __init__(self, api_url: str | None = None, auth: str | ApiKey | None = None, *, region: str | None = None,
                 timeout_s: float = 30.0, retry_budget_s: float = 60.0, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.api_url = api_url_of(api_url)
        self.http = httpx.Client(timeout=timeout_s, transport=transport, **http_options(auth, region))
        self.downloads = httpx.Client(timeout=timeout_s)  # presigned URLs carry their own signature: no API auth
        self.retry_budget_s, self.sleep = retry_budget_s, sleep

    def close(self) -> None:
        self.http.close()
        self.downloads.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _retrying(self, attempt: Callable[[], T]) -> T:
        budget = Budget(self.retry_budget_s)
        while True:
            try:
                return attempt()
            except Again as again:
                self.sleep(budget.delay(again))

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON answer of one API call, retried through connection errors, 429 and 5xx within the budget."""
        def attempt() -> Any:
            try:
                return json_answer(self.http.request(method, f"{self.api_url}{path}", json=body))
            except httpx.TransportError as exc:
                raise unreachable(f"{method} {path}", exc) from None

        return self._retrying(attempt)

    def submit(self, pipeline: str, model: str, inputs: Mapping[str, Any] | None = None, *, id: str | None = None,
               context: Mapping[str, Any] | None = None, ttl_seconds: int | None = None,
               output_prefix: str | None = None) -> Job:
        """Queue a job and return it; ``id`` is the idempotency key (one is made when none is given)."""
        body = submit_body(pipeline, model, inputs, id, context=context, ttl_seconds=ttl_seconds,
                           output_prefix=output_prefix)
        answer = self.request("POST", "/v1/jobs", body)
        return Job(self, answer["id"], answer)

    def job(self, job_id: str) -> Job:
        return Job(self, job_id, {})

    def status(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(self.request("GET", f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(self.request("POST", f"/v1/jobs/{job_id}/cancel"))

    def download(self, url: str) -> bytes:
        """An output by its presigned URL."""
        def attempt() -> bytes:
            try:
                return downloaded(url, self.downloads.get(url))
            except httpx.TransportError as exc:
                raise unreachable(f"download {url.split('?')[0]}", exc) from None

        return self._retrying(attempt)


class JobBase:
    """What a job is whether followed with or without asyncio: its id, the submit answer, the last status read."""

    def __init__(self, client: Any, job_id: str, submitted: Mapping[str, Any]) -> None:
        self.client, self.id = client, job_id
        #: The submit answer: ``seed``, ``status_url``, and ``existing`` when the id named a job already there.
        self.submitted = dict(submitted)
        self.status: JobStatus | None = None

    def _ended(self, status: JobStatus, deadline: float | None, timeout: float | None,
               raise_on_failure: bool) -> bool:
        """Whether ``wait`` is done at ``status``; ``TimeoutError`` past the deadline."""
        if status.state in FINAL:
            if raise_on_failure and status.state != "succeeded":
                raise JobFailed(status)
            return True
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"job {self.id} is still {status.state} after {timeout} s")
        return False

    def _known_final(self) -> JobStatus | None:
        return self.status if self.status is not None and self.status.state in FINAL else None

    def _write(self, directory: str | Path, pngs: list[bytes]) -> list[Path]:
        """Each output as ``{id}-{n}.{ext}``, the extension its key has (``png``, ``webp`` or ``jpg``)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        keys = [output.key for output in self.status.outputs] if self.status is not None else []
        extensions = [key.rsplit(".", 1)[-1] if "." in key else "png" for key in keys] or ["png"] * len(pngs)
        paths = [out / f"{self.id}-{index}.{extension}" for index, extension in enumerate(extensions)]
        for path, data in zip(paths, pngs, strict=True):
            path.write_bytes(data)
        return paths


def deadline_of(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def succeeded(status: JobStatus) -> JobStatus:
    if status.state != "succeeded":
        raise JobFailed(status)
    return status


def as_images(pngs: list[bytes]) -> list[Any]:
    """PNG bytes as PIL images (Pillow is then needed)."""
    import io

    from PIL import Image

    return [Image.open(io.BytesIO(data)) for data in pngs]


class Job(JobBase):
    """A submitted job: ``refresh`` its status, ``wait`` for the end, ``cancel`` it, get its ``images``."""

    client: Client

    def refresh(self) -> JobStatus:
        self.status = self.client.status(self.id)
        return self.status

    def wait(self, timeout: float | None = None, on_progress: Callable[[JobStatus], None] | None = None,
             poll_s: float = 0.5, raise_on_failure: bool = False) -> JobStatus:
        """Poll until the job ends (or ``timeout`` seconds pass: ``TimeoutError``); ``on_progress`` sees every
        status read. The final status is returned, whatever the state, unless ``raise_on_failure``."""
        deadline = deadline_of(timeout)
        while True:
            status = self.refresh()
            if on_progress is not None:
                on_progress(status)
            if self._ended(status, deadline, timeout, raise_on_failure):
                return status
            time.sleep(poll_s)

    def cancel(self) -> JobStatus:
        self.status = self.client.cancel(self.id)
        return self.status

    def png_bytes(self) -> list[bytes]:
        """The outputs' bytes, in order (the job must have succeeded): PNG unless the job asked for another
        ``format`` (each output's ``content_type`` says which)."""
        status = succeeded(self._known_final() or self.refresh())
        return [self.client.download(output.url) for output in status.outputs]

    def images(self) -> list[Any]:
        """The outputs as PIL images (Pillow is then needed)."""
        return as_images(self.png_bytes())

    def save(self, directory: str | Path) -> list[Path]:
        """Write the outputs to ``directory`` as ``{id}-{n}.png`` (``.webp``, ``.jpg``); returns the paths."""
        return self._write(directory, self.png_bytes())


def inline_image(path: str | Path) -> str:
    """An image file as the API takes it inline (base64), refused before upload when over the API's limit."""
    data = Path(path).read_bytes()
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"{path}: {len(data)} bytes is over the API's limit of {MAX_IMAGE_BYTES} bytes per image")
    return base64.b64encode(data).decode()
