"""Retrying AWS calls through an outage: what is retried, for how long, and what is not."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from botocore.parsers import ResponseParserError

from runtime.storage.retry import Retry, backoff, transient


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutObject")


@pytest.mark.parametrize(("exc", "retried"), [
    (EndpointConnectionError(endpoint_url="http://x"), True),
    (ReadTimeoutError(endpoint_url="http://x"), True),
    (ResponseParserError("not HTTP"), True),
    (ConnectionResetError(), True),
    (client_error("SlowDown", 503), True),
    (client_error("RequestThrottled", 400), True),
    (client_error("Whatever", 502), True),
    (client_error("AccessDenied", 403), False),
    (client_error("PreconditionFailed", 412), False),
    (client_error("NoSuchKey", 404), False),
    (ValueError("a bug"), False),
])
def test_only_errors_that_may_pass_are_retried(exc: Exception, retried: bool) -> None:
    assert transient(exc) is retried


def test_a_call_is_retried_until_it_works_within_the_budget() -> None:
    slept: list[float] = []
    answers = iter([EndpointConnectionError(endpoint_url="http://x")] * 3 + ["ok"])

    def call() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    retry = Retry(60, sleep=slept.append)
    assert retry(call, "putting") == "ok"
    assert retry.retries == 3 and len(slept) == 3 and all(0 <= s <= 10 for s in slept)


def test_past_the_budget_the_last_error_is_raised_and_the_budget_is_shared() -> None:
    clock = [0.0]
    retry = Retry(5, sleep=lambda s: clock.__setitem__(0, clock[0] + s), clock=lambda: clock[0])

    def down() -> None:
        clock[0] += 0.5
        raise EndpointConnectionError(endpoint_url="http://x")

    with pytest.raises(EndpointConnectionError):
        retry(down, "first call")
    assert 5 <= clock[0] < 7
    with pytest.raises(EndpointConnectionError):  # the stage's budget is spent: one try, no wait
        retry(down, "second call")
    assert clock[0] < 8


def test_a_permanent_error_is_raised_at_once() -> None:
    calls = []

    def denied() -> None:
        calls.append(1)
        raise client_error("AccessDenied", 403)

    with pytest.raises(ClientError):
        Retry(60, sleep=lambda s: None)(denied, "denied")
    assert calls == [1]


def test_backoff_grows_with_full_jitter_and_a_cap() -> None:
    assert all(0 <= backoff(1, 0.25, 10) <= 0.25 for _ in range(100))
    assert max(backoff(3, 0.25, 10) for _ in range(500)) > 0.5  # up to 1 s on the third attempt
    assert all(backoff(30, 0.25, 10) <= 10 for _ in range(100))
