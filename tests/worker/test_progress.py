"""Progress: throttled, written off the pipeline's thread, flushed before the final status, best effort."""

from __future__ import annotations

import threading
import time

from tests.conftest import Stack
from tests.rest import call


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throttled_and_flushed_on_close() -> None:
    from runtime.worker.progress import ProgressWriter

    clock, written, threads = FakeClock(), [], set()

    def write(step: int, total: int) -> None:
        threads.add(threading.get_ident())
        written.append((step, total))

    writer = ProgressWriter(write, interval_s=1.0, clock=clock)
    for step in range(1, 21):  # 20 steps, 0.25 s apart: one write a second at most
        clock.now += 0.25
        writer(step, 20)
    writer.close()
    # at most one per second of the clock, latest value wins, the last report is flushed by close();
    # the last step itself is left to the final status
    assert written[-1] == (16, 20)
    assert set(written) <= {(4, 20), (8, 20), (12, 20), (16, 20)} and written == sorted(written)
    assert threads and threading.get_ident() not in threads


def test_a_failing_write_does_not_fail_the_job() -> None:
    from runtime.worker.progress import ProgressWriter

    clock = FakeClock()

    def write(step: int, total: int) -> None:
        raise OSError("S3 is down")

    writer = ProgressWriter(write, interval_s=0.0, clock=clock)
    writer(1, 2)
    writer.close()
    assert writer.writes == 0


def test_progress_shows_in_the_status_while_running(stack: Stack) -> None:
    status, answer = call("POST", f"{stack.api_url}/v1/jobs", {"pipeline": "slow", "model": "tiny-sd",
                                                               "inputs": {"prompt": "wait"}})
    assert status == 202
    seen = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        doc = call("GET", answer["status_url"])[1]
        seen.add((doc["state"], doc["progress"]["step"], doc["progress"]["total"]))
        if doc["state"] == "succeeded":
            break
        time.sleep(0.1)
    middle = [s for s in seen if s[0] == "running" and 0 < s[1] < 10]
    assert middle and all(total == 10 for _, _, total in middle), seen
    assert ("succeeded", 10, 10) in seen
