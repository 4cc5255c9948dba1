"""Retrying AWS calls through an outage, for a bounded time.

botocore's own retries (standard mode, ``runtime.storage.aws``) give up within about a second: right for a
request that a caller can simply make again, wrong for a finished image that exists nowhere else. ``Retry``
keeps calling for as long as its budget lasts, with exponential backoff and full jitter, but only on errors
that may pass: no connection, a cut or timed-out one, an answer that is not HTTP, throttling and 5xx. Anything
else (access denied, a precondition that failed, a missing key) is the answer and is raised at once.

One ``Retry`` is one budget: give the same object to every call of a stage, and the stage as a whole waits at
most that long.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from botocore import exceptions as boto
from botocore.parsers import ResponseParserError

log = logging.getLogger("spotgen.retry")

T = TypeVar("T")

#: Error codes of AWS answers that say "not now" rather than "no".
TRANSIENT_CODES = frozenset({
    "SlowDown", "ServiceUnavailable", "InternalError", "InternalFailure", "RequestTimeout", "RequestTimeTooSkewed",
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled", "RequestLimitExceeded",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "KMSThrottlingException",
    "RequestThrottledException", "BandwidthLimitExceeded", "EC2ThrottledException", "PriorRequestNotComplete",
})


def transient(exc: BaseException) -> bool:
    """True for an error that may pass if the same call is made again later."""
    if isinstance(exc, boto.ConnectionError | boto.HTTPClientError | ResponseParserError | OSError):
        return True
    if isinstance(exc, boto.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code") in TRANSIENT_CODES or status >= 500 or status == 429
    return False


def backoff(attempt: int, first: float = 0.25, cap: float = 10.0) -> float:
    """Exponential backoff with full jitter for attempt 1, 2, ...: uniform up to first * 2^(attempt-1), at most
    ``cap``; workers that lost the network together do not come back in step."""
    return random.uniform(0, min(cap, first * 2 ** (attempt - 1)))


class Retry:
    """A time budget for a stage's AWS calls (``budget_s`` from the first call of the stage)."""

    def __init__(self, budget_s: float, cap_s: float = 10.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_s, self.cap_s, self.sleep, self.clock = budget_s, cap_s, sleep, clock
        self.deadline: float | None = None
        self.retries = 0

    def remaining(self) -> float:
        if self.deadline is None:
            return self.budget_s
        return max(0.0, self.deadline - self.clock())

    def __call__(self, fn: Callable[[], T], what: str) -> T:
        """``fn()``, again after each transient error until the budget is spent; then that error is raised."""
        if self.deadline is None:
            self.deadline = self.clock() + self.budget_s
        attempt = 0
        while True:
            attempt += 1
            try:
                result = fn()
            except Exception as exc:
                left = self.remaining()
                if not transient(exc) or left <= 0:
                    raise
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("%s failed (%s: %s); retrying for up to %.0f s more", what, type(exc).__name__,
                                exc, left)
                self.retries += 1
                self.sleep(min(backoff(attempt, cap=self.cap_s), left))
                continue
            if attempt > 1:
                log.info("%s succeeded after %d attempts", what, attempt)
            return result
