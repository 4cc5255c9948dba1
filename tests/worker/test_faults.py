"""A small run of the network fault harness (tests/harness/faults.py) in `make test-slow`: every kind of fault once,
short, on 2 workers behind the fault proxy. Marked ``slow``: 100 s on two cores and about 65 s of CPU, for what
test_outages.py, test_outage_budget.py and test_sqs_outage.py check one fault at a time in `make test`; its
verdict functions stay in `make test` below.

In a subprocess, like the chaos run, because the harness's embedded stack sets process-wide environment
variables that the other tests' stacks must not inherit.

Its verdict can fail: the checks (``tests.harness.verdicts.faults_checks``) are handed the figures of runs where
a fault never fired or a worker took no job after the faults, and the proxy's triggers say whether they fired,
without a stack.
"""

from __future__ import annotations

import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.conftest import run_harness
from tests.harness.faultproxy import FaultProxy, Request
from tests.harness.verdicts import fault_kinds, faults_checks, jobs_taken, published_unanswered

KINDS = ("outage 3 s", "cut on a receive", "cut mid-denoise", "cut on an output upload", "cut on an ack, answer lost",
         "cut on a notification", "latency 200 ms", "slow trickle", "S3 SlowDown and SQS throttling")


@pytest.mark.slow
@pytest.mark.heavy
def test_faults_small(tiny_models: Path, tmp_path: Path) -> None:
    args = ["--scale", "small", "--repeat", "1", "--workers", "2", "--seed", "3", "--models", str(tiny_models)]
    figures, context = run_harness("tests.harness.faults", args, tmp_path / "logs", 600)
    kinds = {name.split(" (")[0] for name, *_ in figures["fault_log"]}
    assert set(KINDS) <= kinds, context
    assert figures["fault_kinds"] == {kind: {"planned": 1, "fired": 1} for kind in KINDS}, context
    assert figures["jobs"] == figures["succeeded"] > 0 and figures["lost"] == 0, context
    assert figures["duplicate_outputs"] == 0 and figures["duplicate_notifications"] == 0, context
    assert figures["mismatched_outputs"] == 0, context
    assert figures["wedged_workers"] == 0 and figures["kubelet_restarts"] == 0, context
    # each worker alive at the end ran a job submitted after the last fault
    assert len(figures["jobs_after_faults"]) == 2 and all(figures["jobs_after_faults"].values()), context
    assert figures["leftover_checkpoints"] == 0, context
    assert figures["ok"] is True, context


def good_figures() -> dict[str, Any]:
    """The figures of a run where everything held."""
    return {"jobs": 12, "succeeded": 12, "lost": 0, "duplicate_outputs": 0, "duplicate_notifications": 0,
            "mismatched_outputs": 0, "leftover_checkpoints": 0, "not_ready_workers": 0,
            "workers_idle_after_faults": 0, "wedged_workers": 0,
            "fault_kinds": fault_kinds(KINDS, [(kind, 3.0, True) for kind in KINDS])}


def failed(figures: dict[str, Any]) -> set[str]:
    return {name for name, ok in faults_checks(figures).items() if not ok}


def test_the_faults_verdict_passes_a_run_where_everything_held() -> None:
    assert failed(good_figures()) == set()


def test_a_planned_fault_that_never_fired_fails_the_run() -> None:
    """A cut timed on a notification that no job reached: armed, never fired. It used to count as done."""
    figures = good_figures()
    figures["fault_kinds"] = fault_kinds(KINDS, [(kind, 3.0, kind != "cut on a notification") for kind in KINDS])
    assert figures["fault_kinds"]["cut on a notification"] == {"planned": 1, "fired": 0}
    assert failed(figures) == {"every kind of fault planned fired"}
    assert "every kind of fault planned fired" in failed(good_figures() | {"fault_kinds": {}})


def test_a_kind_that_fired_once_of_twice_still_counts_as_fired() -> None:
    done = [("cut on a receive", 2.0, False), ("cut on a receive", 2.0, True)]
    assert fault_kinds(["cut on a receive"] * 2, done) == {"cut on a receive": {"planned": 2, "fired": 1}}


def test_a_ready_worker_that_took_no_job_after_the_faults_fails_the_run() -> None:
    """/readyz said 200 (the last receive reached SQS), yet the worker never took a job submitted after the
    last fault: wedged, which the readiness probe alone did not show."""
    figures = good_figures() | {"workers_idle_after_faults": 1, "wedged_workers": 1}
    assert failed(figures) == {"every worker took a job after the last fault", "no worker wedged"}
    assert failed(good_figures() | {"not_ready_workers": 1, "wedged_workers": 1}) == {
        "every worker ready at the end", "no worker wedged"}


def test_jobs_taken_counts_only_the_jobs_submitted_after_the_faults() -> None:
    records = [(10, "faults-0001", 1, 0), (10, "faults-0001", 1, 1), (11, "faults-0002", 1, 0),
               (10, "faults-0009", 1, 0), (10, "faults-0010", 2, 3)]
    assert jobs_taken(records, {"faults-0009", "faults-0010"}) == {10: 2}  # pid 11 ran only older jobs
    assert jobs_taken(records, set()) == {}


def test_only_a_publish_whose_answer_was_lost_excuses_a_second_notification() -> None:
    def publish(message: str) -> Request:
        body = urlencode({"Action": "Publish", "TopicArn": "arn:aws:sns:us-east-1:0:results", "Message": message})
        return Request("POST", "/", "sns", "Publish", b"POST / HTTP/1.1\r\n\r\n", body.encode())

    lost = [publish('{"id": "faults-0018", "state": "succeeded"}'), publish("not json"),
            Request("POST", "/", "sqs", "DeleteMessage", b"", b'{"QueueUrl": "q"}')]
    assert published_unanswered(lost) == {"faults-0018"}
    assert published_unanswered([]) == frozenset()


class _Upstream(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def test_the_proxy_says_whether_a_timed_cut_fired() -> None:
    """A trigger that no request matched did nothing, and says so; ``disarm`` drops it so that it cannot land
    later on something else. One that matched cuts the connection and says it fired."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with FaultProxy(("127.0.0.1", server.server_address[1])) as proxy:
            never = proxy.on(lambda r: "/never" in r.path, seconds=0.2)
            with urllib.request.urlopen(f"{proxy.url}/other", timeout=10) as answer:  # noqa: S310
                assert answer.read() == b"ok"
            assert not never.is_set() and proxy.fired["cut"] == 0
            proxy.disarm()
            with urllib.request.urlopen(f"{proxy.url}/never", timeout=10) as answer:  # noqa: S310 - disarmed
                assert answer.read() == b"ok"
            assert not never.is_set() and proxy.lost == []  # every request so far was answered
            cut = proxy.on(lambda r: "/cut" in r.path, seconds=0.2, after=True)
            with pytest.raises(OSError):
                urllib.request.urlopen(f"{proxy.url}/cut", timeout=10)  # noqa: S310
            assert cut.is_set() and proxy.fired["cut"] == 1
            for _ in range(100):  # noted as the proxy's thread for that connection ends
                if proxy.lost:
                    break
                threading.Event().wait(0.02)
            assert [r.path for r in proxy.lost] == ["/cut"]  # it reached upstream; its answer was lost
            proxy.latency = 0.01
            before = proxy.fired["latency"]
            for _ in range(50):  # the cut's outage is over within 0.2 s
                try:
                    with urllib.request.urlopen(f"{proxy.url}/slow", timeout=10) as answer:  # noqa: S310
                        answer.read()
                    break
                except OSError:
                    threading.Event().wait(0.05)
            assert proxy.fired["latency"] > before
    finally:
        server.shutdown()
