"""Hostile requests (tests/lambdas/hostile_cases.py) against every route that takes a body, over HTTP through the
local gateway with the production authorizer and handlers on the real emulator: each gets a 4xx naming what is
wrong, and nothing is stored (both buckets stay empty) or queued (the work queue stays empty).

The stack has no worker: nothing should reach one. Before these checks, ``NaN`` raised ``KeyError`` in WebUI's
``eta`` lookup, ``1e400`` an ``OverflowError``, nesting 10,000 deep a ``RecursionError`` and a 5,000-digit integer a
``ValueError``, each a Lambda error (a 500) on AWS; a context holding NaN was stored as null.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lambdas import authorizer
from runtime.local.devstack import DevStack
from tests.conftest import in_process_stack
from tests.lambdas.hostile_cases import (
    CONTEXT_NAN,
    RAWS,
    ROUTES,
    TOO_LARGE_AN_ANSWER,
    VALUES,
    WHOLES,
    Raw,
    Route,
)
from tests.lambdas.hostile_cases import KEY as RAW_KEY

KEY = "hostile-test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def api(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """``spotgen dev`` in this process without workers, its compatibility routes behind an API key."""
    try:
        with in_process_stack(tiny_models, tmp_path_factory.mktemp("hostile"), workers=0,
                              api_key=KEY) as stack:
            yield stack
    finally:
        authorizer.keys.cache_clear()  # its warm authorizer's keys: a later test must not inherit them


def post(api: DevStack, path: str, body: bytes, headers: dict[str, str] | None = None,
         method: str = "POST") -> tuple[int, Any]:
    host, port = api.api_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(method, path, body=body, headers={"content-type": "application/json", **(headers or {})})
        answer = connection.getresponse()
        data = answer.read()
        return answer.status, json.loads(data) if data else None
    finally:
        connection.close()


def keyed(route: Route) -> dict[str, str]:
    return {"x-api-key": KEY} if route.keyed else {}


def refused(status: int, answer: Any, code: str, field: str, what: str) -> None:
    assert 400 <= status < 500, f"{what}: {status} {answer}"
    error = answer["error"]
    assert (error["code"], error["field"]) == (code, field), f"{what}: {answer}"
    assert field in error["message"] or field == "body", f"{what}: the message names no field: {answer}"


#: Every key in both buckets, and the work queue's message counts.
Kept = tuple[set[str], dict[str, str]]


def kept(api: DevStack) -> Kept:
    """Every key in both buckets, and the work queue's message counts."""
    from runtime.storage import aws

    settings = api.settings
    s3, sqs = aws.client("s3", settings), aws.client("sqs", settings)
    keys = {f"{bucket}/{o['Key']}" for bucket in (settings.input_bucket, settings.output_bucket)
            for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    counts = sqs.get_queue_attributes(QueueUrl=settings.queue_url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return keys, counts


@pytest.fixture(autouse=True)
def before(api: DevStack) -> Kept:
    """What the buckets and the queue held before the test: moto keeps one state per process, and modules that
    ran earlier in this test process may have left objects under the same bucket names."""
    return kept(api)


def nothing_kept(api: DevStack, before: Kept) -> None:
    """No object written and no message queued since ``before``: no job was stored, queued or half-written."""
    keys, counts = kept(api)
    assert keys == before[0], f"written: {sorted(keys - before[0])}"
    assert counts == before[1] and set(counts.values()) == {"0"}, counts


@pytest.mark.parametrize("route", ROUTES, ids=[r.path for r in ROUTES])
def test_hostile_values_are_refused_naming_their_field(api: DevStack, route: Route, before: Kept) -> None:
    for case in VALUES:
        status, answer = post(api, route.path, route.place(case.key, case.value), keyed(route))
        refused(status, answer, case.code, case.field(route.prefix), f"{route.path} {case.name}")
    if route.context is not None:
        key, field = route.context
        status, answer = post(api, route.path, route.place(key, CONTEXT_NAN), keyed(route))
        refused(status, answer, "invalid_number", f"{field}.score", f"{route.path} context with NaN")
    for whole in WHOLES:
        status, answer = post(api, route.path, whole.body, keyed(route))
        refused(status, answer, whole.code, "body", f"{route.path} {whole.name}")
    nothing_kept(api, before)


def test_an_answer_that_cannot_fit_lambdas_response_is_refused_before_queueing(api: DevStack, before: Kept) -> None:
    """8 PNGs of 1536 x 1536 would succeed and then be a 502 on AWS; 1 of 1024 x 1024 fits, 2 do not."""
    status, answer = post(api, "/sdapi/v1/txt2img", json.dumps(TOO_LARGE_AN_ANSWER).encode(), {"x-api-key": KEY})
    refused(status, answer, "answer_too_large", "width", "8 x 1536²")  # not even one of that size fits
    for key in ("batch_size", "n_iter", "width", "height", "response limit"):
        assert key in answer["error"]["message"], answer
    status, answer = post(api, "/sdapi/v1/txt2img", json.dumps(
        {**TOO_LARGE_AN_ANSWER, "batch_size": 2, "width": 1024, "height": 1024}).encode(), {"x-api-key": KEY})
    refused(status, answer, "answer_too_large", "batch_size", "2 x 1024²")
    assert "at most 1 image of this size" in answer["error"]["message"], answer
    status, answer = post(api, "/sdapi/v1/txt2img", json.dumps(
        {**TOO_LARGE_AN_ANSWER, "batch_size": 1, "n_iter": 3, "width": 768, "height": 768}).encode(),
        {"x-api-key": KEY})
    refused(status, answer, "answer_too_large", "n_iter", "3 x 768²")
    nothing_kept(api, before)


def send_raw(api: DevStack, route: Route, case: Raw) -> tuple[int, bytes]:
    """``case`` on a fresh connection, as bytes: its status and body (none for HEAD, whatever it announces)."""
    headers = [(name, value.replace(RAW_KEY, KEY)) for name, value in case.headers]
    if route.keyed and not any(name == "x-api-key" for name, _ in headers):
        headers.append(("x-api-key", KEY))
    if not any(name == "Content-Length" for name, _ in headers):
        headers.append(("Content-Length", str(len(case.body))))
    head = "\r\n".join([f"{case.method} {route.path} HTTP/1.1", "Host: local", *(f"{k}: {v}" for k, v in headers)])
    host, port = api.api_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + case.body)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536) or b"\r\n\r\n"
        top, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in top.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while case.method != "HEAD" and len(body) < length and (chunk := sock.recv(65536)):
            body += chunk
    return int(top.split(b" ")[1]), body


@pytest.mark.parametrize("route", ROUTES, ids=[r.path for r in ROUTES])
def test_hostile_requests_get_api_gateways_own_answers(api: DevStack, route: Route, before: Kept) -> None:
    """What a client library will not send, on raw sockets: malformed or repeated headers, methods no route
    takes, sizes over AWS's limits. Each is answered as API Gateway answers it, and reaches no handler."""
    for case in RAWS:
        if case.keyed and not route.keyed:
            continue
        status, body = send_raw(api, route, case)
        assert status == case.status, f"{route.path} {case.name}: {status} {body[:200]!r}"
        if case.method != "HEAD" and case.message:
            assert json.loads(body) == {"message": case.message}, f"{route.path} {case.name}: {body[:200]!r}"
    nothing_kept(api, before)
