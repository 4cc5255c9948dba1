"""The HTTP client of spotgen's API: submit a job, follow it, download its images.

Retries never duplicate a job: a submit without an ``id`` gets one made here (a random idempotency key) before
the first attempt, so a submit retried after a timeout, a cut connection or a 503 names the same job, and the API
answers the second time with the job the first created. Connection errors, 429 and 5xx are retried with
exponential backoff and full jitter until ``retry_budget_s`` is spent; anything else is the answer.

Auth, chosen by ``auth``: ``"sigv4"`` signs every request with botocore's SigV4 signer (service ``execute-api``)
and the standard AWS credential chain (profile, environment, IMDS, Pod Identity), for the deployed API; an
``ApiKey`` sends ``x-api-key``; ``None`` sends nothing, for ``spotgen dev``.

Statuses and errors are the contract's own models (``runtime.contract``), so the client reads exactly what the
worker writes. Importing this module imports httpx and pydantic, never torch, diffusers or celery.
"""

from __future__ import annotations

import base64
import os
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from runtime.contract import MAX_IMAGE_BYTES, JobErrorInfo, JobStatus

#: The states after which a job never changes.
FINAL = frozenset({"succeeded", "failed", "cancelled", "expired"})
DEFAULT_URL = "http://127.0.0.1:8080"
T = TypeVar("T")


class ApiError(Exception):
    """An answer that is not a success: the HTTP status and the API's ``{code, message, field}``."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (field {field})" if field else ""))
        self.status, self.code, self.message, self.field = status, code, message, field


class Unreachable(ApiError):
    """The API could not be reached (or kept failing) within the retry budget."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "unreachable", message)


class _Again(Exception):
    """An attempt that may succeed if made again; ``error`` is what to raise once the budget is spent."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class JobFailed(Exception):
    """``Job.wait(raise_on_failure=True)`` on a job that ended other than ``succeeded``."""

    def __init__(self, status: JobStatus) -> None:
        error = status.error or JobErrorInfo(code=status.state, message=f"the job ended {status.state}")
        super().__init__(f"job {status.id} {status.state}: {error.code}: {error.message}")
        self.status = status


@dataclass(frozen=True)
class ApiKey:
    """``x-api-key`` auth (the compatibility routes)."""

    key: str


class _SigV4Auth(httpx.Auth):
    """Signs each request as API Gateway's IAM auth expects, with credentials from the standard chain."""

    def __init__(self, region: str | None) -> None:
        import botocore.session  # only when SigV4 is asked for

        session = botocore.session.Session()
        credentials = session.get_credentials()
        if credentials is None:
            raise ApiError(0, "no_credentials", "SigV4 needs AWS credentials: none were found in the environment, "
                           "the profile, or the instance or pod identity")
        self.credentials = credentials
        self.region = region or session.get_config_variable("region") or "us-east-1"

    def auth_flow(self, request: httpx.Request) -> Any:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        signed = AWSRequest(method=request.method, url=str(request.url), data=request.content,
                            headers={"content-type": request.headers.get("content-type", "application/json")})
        SigV4Auth(self.credentials.get_frozen_credentials(), "execute-api", self.region).add_auth(signed)
        request.headers.update(dict(signed.headers.items()))
        yield request


def _backoff(attempt: int, cap: float = 8.0) -> float:
    return random.uniform(0, min(cap, 0.25 * 2 ** (attempt - 1)))


def _error(response: httpx.Response) -> ApiError:
    try:
        error = response.json()["error"]
        return ApiError(response.status_code, error["code"], error["message"], error.get("field"))
    except (ValueError, KeyError, TypeError):
        return ApiError(response.status_code, "http_error", response.text[:200] or response.reason_phrase)


class Client:
    """One API endpoint: ``api_url`` (``SPOTGEN_API_URL``, else ``spotgen dev``'s address) and its auth."""

    def __init__(self, api_url: str | None = None, auth: str | ApiKey | None = None, *, region: str | None = None,
                 timeout_s: float = 30.0, retry_budget_s: float = 60.0, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.api_url = (api_url or os.environ.get("SPOTGEN_API_URL") or DEFAULT_URL).rstrip("/")
        headers = {"x-api-key": auth.key} if isinstance(auth, ApiKey) else {}
        if auth not in (None, "sigv4") and not isinstance(auth, ApiKey):
            raise ValueError(f"auth is None, 'sigv4' or ApiKey(...), not {auth!r}")
        self.http = httpx.Client(timeout=timeout_s, headers=headers, transport=transport,
                                 auth=_SigV4Auth(region) if auth == "sigv4" else None)
        self.retry_budget_s, self.sleep = retry_budget_s, sleep

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """``attempt()``, again after each ``_Again`` it raises, with backoff, until the budget is spent; then the
        error it carried is raised."""
        deadline, tries = time.monotonic() + self.retry_budget_s, 0
        while True:
            tries += 1
            try:
                return attempt()
            except _Again as again:
                if time.monotonic() >= deadline:
                    raise again.error from None
                self.sleep(min(_backoff(tries), max(0.0, deadline - time.monotonic())))

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON answer of one API call, retried through connection errors, 429 and 5xx within the budget."""
        def attempt() -> Any:
            try:
                response = self.http.request(method, f"{self.api_url}{path}", json=body)
            except httpx.TransportError as exc:
                raise _Again(Unreachable(f"{method} {path}: {type(exc).__name__}: {exc}")) from None
            if response.status_code < 400:
                return response.json()
            if response.status_code == 429 or response.status_code >= 500:
                raise _Again(_error(response))
            raise _error(response)

        return self._retrying(attempt)

    def submit(self, pipeline: str, model: str, inputs: Mapping[str, Any] | None = None, *, id: str | None = None,
               context: Mapping[str, Any] | None = None, ttl_seconds: int | None = None,
               output_prefix: str | None = None) -> Job:
        """Queue a job and return it; ``id`` is the idempotency key (one is made when none is given)."""
        body: dict[str, Any] = {"id": id or uuid.uuid4().hex, "pipeline": pipeline, "model": model,
                                "inputs": dict(inputs or {})}
        for name, value in (("context", context), ("ttl_seconds", ttl_seconds), ("output_prefix", output_prefix)):
            if value is not None:
                body[name] = value
        answer = self.request("POST", "/v1/jobs", body)
        return Job(self, answer["id"], answer)

    def job(self, job_id: str) -> Job:
        return Job(self, job_id, {})

    def status(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(self.request("GET", f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(self.request("POST", f"/v1/jobs/{job_id}/cancel"))

    def download(self, url: str) -> bytes:
        """An output by its presigned URL (no API auth: the URL carries its own signature)."""
        def attempt() -> bytes:
            try:
                response = httpx.get(url, timeout=self.http.timeout)
            except httpx.TransportError:
                raise _Again(Unreachable(f"could not download {url.split('?')[0]}")) from None
            if response.status_code >= 500:
                raise _Again(Unreachable(f"could not download {url.split('?')[0]}: {response.status_code}"))
            response.raise_for_status()
            return response.content

        return self._retrying(attempt)


class Job:
    """A submitted job: ``refresh`` its status, ``wait`` for the end, ``cancel`` it, get its ``images``."""

    def __init__(self, client: Client, job_id: str, submitted: Mapping[str, Any]) -> None:
        self.client, self.id = client, job_id
        #: The submit answer: ``seed``, ``status_url``, and ``existing`` when the id named a job already there.
        self.submitted = dict(submitted)
        self.status: JobStatus | None = None

    def refresh(self) -> JobStatus:
        self.status = self.client.status(self.id)
        return self.status

    def wait(self, timeout: float | None = None, on_progress: Callable[[JobStatus], None] | None = None,
             poll_s: float = 0.5, raise_on_failure: bool = False) -> JobStatus:
        """Poll until the job ends (or ``timeout`` seconds pass: ``TimeoutError``); ``on_progress`` sees every
        status read. The final status is returned, whatever the state, unless ``raise_on_failure``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.refresh()
            if on_progress is not None:
                on_progress(status)
            if status.state in FINAL:
                if raise_on_failure and status.state != "succeeded":
                    raise JobFailed(status)
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} is still {status.state} after {timeout} s")
            time.sleep(poll_s)

    def cancel(self) -> JobStatus:
        self.status = self.client.cancel(self.id)
        return self.status

    def png_bytes(self) -> list[bytes]:
        """The outputs' PNG bytes, in order (the job must have succeeded)."""
        status = self.status if self.status is not None and self.status.state in FINAL else self.refresh()
        if status.state != "succeeded":
            raise JobFailed(status)
        return [self.client.download(output.url) for output in status.outputs]

    def images(self) -> list[Any]:
        """The outputs as PIL images (Pillow is then needed)."""
        import io

        from PIL import Image

        return [Image.open(io.BytesIO(data)) for data in self.png_bytes()]

    def save(self, directory: str | Path) -> list[Path]:
        """Write the outputs to ``directory`` as ``{id}-{n}.png``; returns the paths."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, data in enumerate(self.png_bytes()):
            path = out / f"{self.id}-{index}.png"
            path.write_bytes(data)
            paths.append(path)
        return paths


def inline_image(path: str | Path) -> str:
    """An image file as the API takes it inline (base64), refused before upload when over the API's limit."""
    data = Path(path).read_bytes()
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"{path}: {len(data)} bytes is over the API's limit of {MAX_IMAGE_BYTES} bytes per image")
    return base64.b64encode(data).decode()
