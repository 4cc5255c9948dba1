"""Raw HTTP against the API, for tests that look at status codes and documents as they are on the wire (the
client, ``spotgen.Client``, turns them into exceptions and models; its own tests are in ``tests/client/``)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from runtime.contract import JobState


def call(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 30,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """The status code and the JSON answer of one request; errors are answers too."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def download(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def wait_for(api_url: str, job_id: str, timeout: float = 300, poll_s: float = 0.1) -> dict[str, Any]:
    """The job's status document once it ends; ``AssertionError`` if it does not end within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        status, doc = call("GET", f"{api_url}/v1/jobs/{job_id}")
        assert status == 200, f"GET status of {job_id}: {status} {doc}"
        if JobState(doc["state"]).final:
            return doc
        assert time.monotonic() <= deadline, f"job {job_id} did not finish within {timeout} s (state {doc['state']})"
        time.sleep(poll_s)
