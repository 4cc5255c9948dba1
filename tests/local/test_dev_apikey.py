"""``spotgen dev --api-key`` end to end: the compatibility routes are behind the production authorizer (the key's
digest in the emulator's SSM), the native routes stay open on loopback, and the key is written nowhere.

Whatever the router answers once a request is authorized (a compatibility route, or its 404 where the route does
not exist yet) proves the authorizer let it through; only the gateway answers 401 and 403.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import Stack, start_stack, stop_stack
from tests.rest import call

KEY = "dev-key-Ua8f3bS2x9QpLm4Zr7Tk"


def with_key(method: str, url: str, key: str | None, body: Any = None) -> tuple[int, Any]:
    headers = {"content-type": "application/json", **({"x-api-key": key} if key is not None else {})}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Iterator[tuple[Stack, Path]]:
    tmp = tmp_path_factory.mktemp("dev-apikey")
    stack = start_stack(tmp, tiny_models, args=("--api-key", KEY), workers=0)
    yield stack, tmp
    stop_stack(stack)


def test_compat_routes_need_the_key(keyed: tuple[Stack, Path]) -> None:
    stack, _ = keyed
    sample = {"task": {"metadata": {"id": "t1", "runtime": "sdruntime", "tasktype": "text-to-image"},
                       "content": {"prompt": "a fox", "steps": 1}}}
    assert with_key("POST", f"{stack.api_url}/v1alpha2", None, sample) == (401, {"message": "Unauthorized"})
    assert with_key("POST", f"{stack.api_url}/v1alpha2", "wrong-" + KEY, sample) == (403, {"message": "Forbidden"})
    assert with_key("GET", f"{stack.api_url}/sdapi/v1/options", None)[0] == 401
    for method, path, body in (("POST", "/v1alpha2", sample), ("GET", "/sdapi/v1/options", None)):
        status, answer = with_key(method, stack.api_url + path, KEY, body)
        assert status not in (401, 403), (path, status, answer)


def test_native_routes_stay_open(keyed: tuple[Stack, Path]) -> None:
    stack, _ = keyed
    status, doc = call("POST", f"{stack.api_url}/v1/jobs",
                       {"pipeline": "txt2img", "model": "tiny-sd", "inputs": {"prompt": "a fox", "steps": 1}})
    assert status == 202, doc
    assert call("GET", f"{stack.api_url}/v1/jobs/{doc['id']}")[0] == 200


def test_the_key_is_written_nowhere(keyed: tuple[Stack, Path]) -> None:
    stack, tmp = keyed
    assert stack.state["api_key_required"] is True
    assert stack.env["SPOTGEN_API_KEYS_PARAMETER"] == "/spotgen/api-keys"
    written = [path for path in tmp.rglob("*") if path.is_file() and KEY.encode() in path.read_bytes()]
    assert written == [] and KEY not in json.dumps(stack.state)
    ssm = boto3.client("ssm", endpoint_url=stack.state["aws_endpoint_url"], region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    stored = ssm.get_parameter(Name="/spotgen/api-keys", WithDecryption=True)["Parameter"]
    assert stored["Type"] == "SecureString" and stored["Value"].startswith("sha256:") and KEY not in stored["Value"]


def test_without_the_flag_compat_routes_are_open(tmp_path: Path, tiny_models: Path) -> None:
    stack = start_stack(tmp_path, tiny_models, workers=0)
    try:
        assert stack.state["api_key_required"] is False
        status, answer = with_key("GET", f"{stack.api_url}/sdapi/v1/options", None)
        assert status not in (401, 403), answer
    finally:
        stop_stack(stack)
