"""ComfyUI's ``/ws`` on AWS: the WebSocket API's handlers (``lambdas/comfy_ws.py``, ``lambdas/comfy_ws_notify.py``)
against the AWS emulator for S3 and SSM, and a loopback stand-in for API Gateway's Management API.

moto's server has an ``apigatewaymanagementapi`` backend, but it appends every post to one byte string per
connection (the frames run together) and never answers 410 (any id is a live connection), so these tests run
their own endpoint: it records each signed ``POST /ws/@connections/{id}`` and answers 410 for a gone connection,
5xx or throttling where a test injects them.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import pytest

from lambdas import authorizer, comfy_ws, comfy_ws_notify
from lambdas.authorizer import hash_key
from lambdas.comfy_events import Watch
from lambdas.comfy_history import prompt_key
from lambdas.common import deployment
from runtime.contract import JobErrorInfo, JobState, Notification, StatusDoc
from runtime.contract.comfy.graph import check_graph
from runtime.contract.status import Progress

KEY, OTHER = "k3y-Alpha-0123456789abcdefghij", "k3y-Bravo-0123456789abcdefghij"
CALLER, OTHER_CALLER = (hashlib.sha256(k.encode()).hexdigest()[:16] for k in (KEY, OTHER))
GRAPH = check_graph(json.loads((Path(__file__).resolve().parent.parent / "comfy" / "workflows" /
                                "default_txt2img.json").read_text()))


@dataclass
class Management:
    """API Gateway's Management API for the tests: what each connection was sent, and how it answers."""

    posts: dict[str, list[bytes]] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    signed: list[str] = field(default_factory=list)
    gone: set[str] = field(default_factory=set)
    #: Connections that answer 500 to every post.
    broken: set[str] = field(default_factory=set)
    #: Answers to give a connection before it accepts posts, one per post.
    faults: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def answer(self, path: str, body: bytes, authorization: str) -> tuple[int, str]:
        connection = unquote(path.removeprefix("/ws/@connections/"))
        with self.lock:
            self.attempts[connection] = self.attempts.get(connection, 0) + 1
            self.signed.append(authorization)
            if connection in self.gone:
                return 410, "GoneException"
            if connection in self.broken:
                return 500, ""
            pending = self.faults.get(connection)
            if pending:
                return pending.pop(0), ""
            self.posts.setdefault(connection, []).append(body)
            return 200, ""


def serve(management: Management) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if not self.path.startswith("/ws/@connections/"):
                status, kind = 404, "NotFoundException"
            else:
                status, kind = management.answer(self.path, body, self.headers.get("authorization", ""))
            kind = kind or {429: "LimitExceededException"}.get(status, "InternalServerErrorException")
            payload = b"" if status == 200 else json.dumps({"message": kind}).encode()
            self.send_response(status)
            if status != 200:
                self.send_header("x-amzn-ErrorType", kind)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def management() -> Iterator[Management]:
    recorded = Management()
    server = serve(recorded)
    recorded.url = f"http://127.0.0.1:{server.server_address[1]}/ws"
    yield recorded
    server.shutdown()
    server.server_close()


@pytest.fixture
def aws_env(emulator: str, management: Management, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A deployment of the two functions: its own output bucket and key list in the emulator, the stand-in's
    endpoint; the functions' warm clients are built from it and forgotten afterwards."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    bucket, parameter = f"ws-{uuid.uuid4().hex[:12]}", f"/spotgen/test/{uuid.uuid4().hex}"
    s3 = boto3.client("s3", endpoint_url=emulator, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    ssm = boto3.client("ssm", endpoint_url=emulator, region_name="us-east-1")
    ssm.put_parameter(Name=parameter, Type="SecureString", Value=f"{hash_key(KEY)}\n{hash_key(OTHER)}")
    monkeypatch.setenv("SPOTGEN_AWS_ENDPOINT_URL", emulator)
    monkeypatch.setenv("FUNCTION_TIMEOUT_S", "30")  # the notifier's, as the template sets it
    monkeypatch.setenv("SPOTGEN_OUTPUT_BUCKET", bucket)
    monkeypatch.setenv("SPOTGEN_API_KEYS_PARAMETER", parameter)
    monkeypatch.setenv(comfy_ws_notify.ENDPOINT_VARIABLE, management.url)
    caches = (deployment, authorizer.keys, comfy_ws_notify.management)
    for cache in caches:
        cache.cache_clear()
    yield s3, bucket
    for cache in caches:
        cache.cache_clear()


def registry(s3: Any, bucket: str) -> list[str]:
    return sorted(obj["Key"] for obj in s3.list_objects_v2(Bucket=bucket, Prefix=comfy_ws.PREFIX).get("Contents", []))


def connect(connection: str, client_id: str | None, key: str | None, in_query: bool = False) -> dict[str, Any]:
    query = {"clientId": client_id} if client_id is not None else {}
    headers = {"Host": "abc.execute-api.us-east-1.amazonaws.com"}
    if key is not None:
        (query if in_query else headers).update({"x-api-key" if in_query else "X-Api-Key": key})
    return comfy_ws.handler({"headers": headers, "queryStringParameters": query or None, "isBase64Encoded": False,
                             "requestContext": {"routeKey": "$connect", "eventType": "CONNECT",
                                                "connectionId": connection, "identity": {"sourceIp": "192.0.2.1"}}})


def disconnect(connection: str) -> dict[str, Any]:
    return comfy_ws.handler({"headers": {}, "requestContext": {"routeKey": "$disconnect", "eventType": "DISCONNECT",
                                                               "connectionId": connection}})


def finished(s3: Any, bucket: str, client_id: str, state: JobState = JobState.succeeded,
             caller: str = CALLER) -> tuple[dict[str, Any], StatusDoc]:
    """A prompt ``POST /prompt`` kept, whose job ended as ``state``: what the notifier reads."""
    job_id, now = uuid.uuid4().hex, datetime.now(UTC)
    kept = {"caller": caller, "number": 1, "prompt": GRAPH, "graph": GRAPH, "extra_data": {}, "client_id": client_id}
    error = JobErrorInfo(code="pipeline_error", message="out of memory") if state is JobState.failed else None
    doc = StatusDoc(id=job_id, state=state, pipeline="comfyui", model="tiny-sd", seed=1, created_at=now,
                    updated_at=now, progress=Progress(step=4, total=4), error=error,
                    outputs=[f"outputs/{job_id}/0.png"] if state is JobState.succeeded else [])
    s3.put_object(Bucket=bucket, Key=prompt_key(job_id), Body=json.dumps(kept).encode())
    s3.put_object(Bucket=bucket, Key=f"jobs/{job_id}/status.json", Body=doc.model_dump_json().encode())
    return kept, doc


def notify(doc: StatusDoc, **attributes: str) -> dict[str, int]:
    """The results topic's delivery of the worker's notification for ``doc``."""
    note = Notification(id=doc.id, state=doc.state, outputs=[f"s3://bucket/{key}" for key in doc.outputs])
    sns = {"Message": note.model_dump_json(), "MessageAttributes": {
        "state": {"Type": "String", "Value": doc.state.value},
        **{name: {"Type": "String", "Value": value} for name, value in attributes.items()}}}
    return comfy_ws_notify.handler({"Records": [{"EventSource": "aws:sns", "Sns": sns}]})


def without_stamps(message: dict[str, Any]) -> dict[str, Any]:
    return {**message, "data": {k: v for k, v in message["data"].items() if k != "timestamp"}}


def test_connect_takes_only_a_valid_key_and_a_client_id(aws_env: Any) -> None:
    s3, bucket = aws_env
    assert connect("bad1=", "alpha", "not-a-key")["statusCode"] == 403
    assert connect("none1=", "alpha", None)["statusCode"] == 401
    assert connect("noid1=", None, KEY)["statusCode"] == 400
    assert registry(s3, bucket) == []  # a refused handshake records nothing
    assert connect("good1=", "alpha", KEY)["statusCode"] == 200
    assert connect("query1=", "alpha", KEY, in_query=True)["statusCode"] == 200  # a browser's way
    assert registry(s3, bucket) == sorted([f"comfy/ws/clients/{CALLER}/alpha/good1=",
                                           f"comfy/ws/clients/{CALLER}/alpha/query1=",
                                           "comfy/ws/connections/good1=.json", "comfy/ws/connections/query1=.json"])
    assert disconnect("good1=") == {"statusCode": 200}
    assert disconnect("never-connected=") == {"statusCode": 200}
    assert registry(s3, bucket) == [f"comfy/ws/clients/{CALLER}/alpha/query1=", "comfy/ws/connections/query1=.json"]


def test_connect_fails_closed_when_the_keys_cannot_be_read(aws_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    s3, bucket = aws_env
    monkeypatch.setenv("SPOTGEN_API_KEYS_PARAMETER", f"/spotgen/test/missing-{uuid.uuid4().hex}")
    authorizer.keys.cache_clear()
    assert connect("k1=", "alpha", KEY)["statusCode"] == 500  # as the authorizer: nothing let through
    assert registry(s3, bucket) == []


def test_a_finished_prompt_reaches_exactly_its_clients_connections_in_comfyui_order(
        aws_env: Any, management: Management) -> None:
    s3, bucket = aws_env
    for connection, client_id, key in (("a1", "alpha", KEY), ("a2", "alpha", KEY), ("b1", "beta", KEY),
                                       ("o1", "alpha", OTHER)):  # another caller's client of the same name
        assert connect(connection, client_id, key)["statusCode"] == 200
    kept, doc = finished(s3, bucket, "alpha")
    assert notify(doc) == {"served": 2, "gone": 0, "failed": 0, "skipped": 0}
    assert set(management.posts) == {"a1", "a2"}
    expected = [without_stamps(m) for m in Watch().messages(kept, doc)]
    for connection in ("a1", "a2"):
        got = [json.loads(frame) for frame in management.posts[connection]]  # each post one JSON text frame
        assert [without_stamps(m) for m in got] == expected
    sink = next(key for key, node in GRAPH.items() if node["class_type"] == "SaveImage")
    assert [(m["type"], m["data"].get("node")) for m in expected][-4:] == [
        ("executing", sink), ("executed", sink), ("execution_success", None), ("executing", None)]
    assert expected[-3]["data"]["output"] == {"images": [{"filename": "0.png", "subfolder": f"outputs/{doc.id}",
                                                          "type": "output"}]}
    assert all(sig.startswith("AWS4-HMAC-SHA256 ") and "/execute-api/aws4_request" in sig
               for sig in management.signed)  # SigV4 for the execute-api service, as API Gateway requires


def test_a_failed_prompt_ends_with_execution_error(aws_env: Any, management: Management) -> None:
    s3, bucket = aws_env
    connect("a1", "alpha", KEY)
    _, doc = finished(s3, bucket, "alpha", JobState.failed)
    notify(doc)
    got = [json.loads(frame) for frame in management.posts["a1"]]
    assert [m["type"] for m in got][-2:] == ["execution_error", "executing"]
    assert got[-2]["data"]["exception_message"] == "out of memory" and got[-1]["data"]["node"] is None


def test_a_gone_connection_is_dropped(aws_env: Any, management: Management) -> None:
    s3, bucket = aws_env
    connect("gone1", "alpha", KEY)
    connect("live1", "alpha", KEY)
    management.gone.add("gone1")
    _, doc = finished(s3, bucket, "alpha")
    assert notify(doc) == {"served": 1, "gone": 1, "failed": 0, "skipped": 0}
    assert management.attempts["gone1"] == 1  # a 410 is not retried
    assert registry(s3, bucket) == [f"comfy/ws/clients/{CALLER}/alpha/live1", "comfy/ws/connections/live1.json"]
    _, second = finished(s3, bucket, "alpha")
    notify(second)
    assert management.attempts["gone1"] == 1  # forgotten: never tried again


def test_other_jobs_and_prompts_without_a_client_send_nothing(aws_env: Any, management: Management) -> None:
    s3, bucket = aws_env
    connect("a1", "alpha", KEY)
    connect("e1", "alpha", KEY)
    _, no_client = finished(s3, bucket, "")
    txt2img = StatusDoc(id=uuid.uuid4().hex, state=JobState.succeeded, pipeline="txt2img", model="tiny-sd", seed=1,
                        created_at=datetime.now(UTC), updated_at=datetime.now(UTC), outputs=["outputs/x/0.png"])
    s3.put_object(Bucket=bucket, Key=f"jobs/{txt2img.id}/status.json", Body=txt2img.model_dump_json().encode())
    _, sample = finished(s3, bucket, "alpha")  # as if it were: the sample's notifications are never read
    zero = {"served": 0, "gone": 0, "failed": 0, "skipped": 0}
    assert notify(no_client) == zero
    assert notify(txt2img) == zero  # another pipeline: no prompt was kept for it
    assert notify(sample, format="aws-sample") == zero
    assert comfy_ws_notify.handler({"Records": [{"Sns": {"Message": "{\"not\": \"ours\"}"}}]}) == zero
    assert management.attempts == {}


def test_throttling_and_5xx_are_retried_and_a_failing_connection_spares_the_others(
        aws_env: Any, management: Management) -> None:
    s3, bucket = aws_env
    for connection in ("a-broken", "b-throttled", "c-blip"):  # listed in this order: the broken one first
        connect(connection, "alpha", KEY)
    management.broken.add("a-broken")
    management.faults.update({"b-throttled": [429], "c-blip": [503]})
    kept, doc = finished(s3, bucket, "alpha")
    assert notify(doc) == {"served": 2, "gone": 0, "failed": 1, "skipped": 0}
    frames = len(Watch().messages(kept, doc))
    attempts = comfy_ws_notify.POST_CONFIG.retries["total_max_attempts"]
    assert management.attempts["a-broken"] == attempts  # botocore tried it as often as it may, then gave up
    assert management.attempts["b-throttled"] == frames + 1 and management.attempts["c-blip"] == frames + 1
    assert len(management.posts["b-throttled"]) == len(management.posts["c-blip"]) == frames
    assert "a-broken" not in management.posts
    assert len(registry(s3, bucket)) == 6  # a failing connection is not forgotten: only a 410 says it is gone
