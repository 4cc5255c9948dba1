"""The local gateway in front of the production authorizer (lambdas/authorizer.py, keys in moto's SSM on
127.0.0.1): the compatibility paths answer as API Gateway does (401 without a key, 403 with a wrong one, 500
when the authorizer fails) and reach the handler with the caller's context; other paths, and a gateway without
an authorizer, are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lambdas import authorizer
from lambdas.authorizer import COMPAT_PATH_RE, hash_key
from runtime.local.gateway import make_server, serve_in_thread
from tests import rest
from tests.lambdas.test_authorizer import KEY, OTHER, closed_port, put_keys, ssm_client, ssm_emulator


def echo(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """A route that answers with what reached it: the authorizer's context, the path."""
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps({"authorizer": event["requestContext"].get("authorizer"), "path": event["rawPath"]})}


def call(url: str, key: str | None = None, method: str = "POST") -> tuple[int, Any]:
    return rest.call(method, url, {} if method == "POST" else None, headers=None if key is None else {"x-api-key": key})


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with ssm_emulator() as url:
        yield url


@pytest.fixture
def gateway(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The gateway with ``lambdas.authorizer.handler`` configured from the environment, as ``spotgen dev`` has it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("SPOTGEN_AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("SPOTGEN_API_KEYS_PARAMETER", put_keys(ssm_client(endpoint), hash_key(KEY)))
    authorizer.keys.cache_clear()
    server = make_server(echo, port=0, authorize=authorizer.handler)
    serve_in_thread(server)
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    authorizer.keys.cache_clear()


def test_compat_paths() -> None:
    for path in ("/v1alpha1", "/v1alpha2", "/v1alpha2/", "/sdapi/v1", "/sdapi/v1/txt2img", "/sdapi/v1/sd-models",
                 "/sdapi/v1/spotgen/jobs/3f2c"):  # the status route of API-key callers takes the key too
        assert COMPAT_PATH_RE.match(path), path
    for path in ("/v1/jobs", "/v1/jobs/x", "/v1alpha3", "/sdapi/v2/txt2img", "/sdapi/v10", "/x/sdapi/v1/txt2img"):
        assert not COMPAT_PATH_RE.match(path), path


def test_missing_key_is_401_and_wrong_key_403(gateway: str) -> None:
    assert call(f"{gateway}/v1alpha2") == (401, {"message": "Unauthorized"})
    assert call(f"{gateway}/v1alpha2", "") == (401, {"message": "Unauthorized"})
    assert call(f"{gateway}/sdapi/v1/options", OTHER, "GET") == (403, {"message": "Forbidden"})


def test_the_right_key_reaches_the_handler_with_its_caller(gateway: str) -> None:
    status, body = call(f"{gateway}/sdapi/v1/txt2img", KEY)
    assert status == 200
    assert body == {"authorizer": {"lambda": {"caller": hashlib.sha256(KEY.encode()).hexdigest()[:16]}},
                    "path": "/sdapi/v1/txt2img"}


def test_native_paths_need_no_key(gateway: str) -> None:
    assert call(f"{gateway}/v1/jobs") == (200, {"authorizer": None, "path": "/v1/jobs"})


def test_an_unreadable_key_list_is_a_prompt_500(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("SPOTGEN_AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("SPOTGEN_API_KEYS_PARAMETER", "/spotgen/api-keys")
    authorizer.keys.cache_clear()
    server = make_server(echo, port=0, authorize=authorizer.handler)
    serve_in_thread(server)
    try:
        started = time.monotonic()
        assert call(f"http://127.0.0.1:{server.server_port}/v1alpha2", KEY) == (
            500, {"message": "Internal Server Error"})
        assert time.monotonic() - started < 5
    finally:
        server.shutdown()
        server.server_close()
        authorizer.keys.cache_clear()


def test_without_an_authorizer_nothing_changes() -> None:
    server = make_server(echo, port=0)
    serve_in_thread(server)
    try:
        assert call(f"http://127.0.0.1:{server.server_port}/v1alpha2") == (
            200, {"authorizer": None, "path": "/v1alpha2"})
    finally:
        server.shutdown()
        server.server_close()
