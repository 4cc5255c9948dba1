"""kombu's SQS receive chain through a failed receive: the upstream failure, reproduced, and the fix.

kombu's own event loop and async SQS client, a real emulator, and the fault proxy between them: no Celery, no
worker, just the chain that ``runtime.worker.sqs`` repairs. With the stock transport a receive that meets a
refused connection throws ``AttributeError: 'list' object has no attribute 'get'`` out of the event loop and
no receive is ever scheduled again; with spotgen's, the failure is reported and receiving starts again once
the network is back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from kombu import Connection, Consumer, Queue
from kombu.asynchronous import Hub, set_event_loop

from runtime.worker.sqs import RECEIVE_HOOK
from tests.harness.faultproxy import FaultProxy

QUEUE = "outage-test"


@pytest.fixture
def queue_url(emulator: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A queue of the test's own, named ``QUEUE`` for kombu (predefined queues map the name to the URL)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=emulator)
    return sqs.create_queue(QueueName=request.node.name[:70])["QueueUrl"]


def consume(proxy: FaultProxy, queue_url: str, transport: str, received: list[Any], hook: Any = None) -> Any:
    """A kombu connection through ``proxy`` consuming ``QUEUE`` on a hub of its own; returns the hub's loop."""
    hub = Hub()
    set_event_loop(hub)
    options = {"region": "us-east-1", "is_secure": False, "wait_time_seconds": 1, "polling_interval": 0,
               "predefined_queues": {QUEUE: {"url": queue_url.replace(urlsplit(queue_url).netloc,
                                                                      f"127.0.0.1:{proxy.port}")}}}
    if hook is not None:
        options[RECEIVE_HOOK] = hook
    conn = Connection(f"sqs://@127.0.0.1:{proxy.port}", transport=transport, transport_options=options)
    channel = conn.channel()
    consumer = Consumer(channel, [Queue(QUEUE)], callbacks=[lambda body, message: received.append(body)],
                        accept=["json"])
    consumer.consume()
    return hub.create_loop()


def run(loop: Any, seconds: float, until: Callable[[], bool] = lambda: False) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        next(loop)


def send(queue_url: str, emulator: str) -> None:
    from kombu import Connection as Producer

    with Producer(f"sqs://@{urlsplit(emulator).netloc}", transport_options={
            "region": "us-east-1", "is_secure": False,
            "predefined_queues": {QUEUE: {"url": queue_url}}}) as conn:
        conn.SimpleQueue(QUEUE).put({"hello": "again"})


def test_stock_kombu_loses_its_receive_chain_when_a_receive_fails(emulator: str, queue_url: str) -> None:
    """The upstream failure: kombu 5.7's AsyncAWSQueryConnection._on_list_ready answers a failed request
    with [], and SQS.Channel._on_messages_ready calls [].get('Messages')."""
    upstream = urlsplit(emulator)
    with FaultProxy((upstream.hostname, upstream.port)) as proxy:
        loop = consume(proxy, queue_url, "sqs", [])
        proxy.down()
        with pytest.raises(AttributeError, match="'list' object has no attribute 'get'"):
            run(loop, 10)


def test_spotgens_transport_reports_the_failure_and_receives_again(emulator: str, queue_url: str) -> None:
    upstream = urlsplit(emulator)
    reports: list[tuple[bool, str]] = []
    with FaultProxy((upstream.hostname, upstream.port)) as proxy:
        loop = consume(proxy, queue_url, "runtime.worker.sqs:Transport", received := [],
                       hook=lambda ok, exc: reports.append((ok, type(exc).__name__)))
        run(loop, 3, until=lambda: bool(reports))
        assert reports and reports[-1] == (True, "NoneType")  # a long poll of 1 s that found nothing
        proxy.down()
        run(loop, 4)  # failures, each followed by a backoff, not a busy loop and not an exception
        failures = [r for r in reports if not r[0]]
        assert failures and {name for _, name in failures} <= {"ReceiveFailed"}, reports
        assert len(failures) < 40, f"{len(failures)} failed receives in 4 s: the backoff does not hold"
        proxy.up()
        proxy.fail("sqs", 3, 400)  # throttling fails in another place of kombu's chain (_on_list_ready itself)
        proxy.fail("sqs", 2, 500)
        run(loop, 30, until=lambda: proxy.injected.total() >= 5 and reports[-1][0])
        assert proxy.injected.total() == 5 and reports[-1][0], (proxy.injected, reports[-3:])
        assert {"Exception", "ReceiveFailed"} <= {name for ok, name in reports if not ok}
        send(queue_url, emulator)
        run(loop, 15, until=lambda: bool(received))
        assert received == [{"hello": "again"}]
        assert reports[-1][0], "the last receive reached SQS again"
