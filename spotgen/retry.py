"""What the sync and async clients share about one HTTP exchange: which answers are worth another try, how long
to wait before it, and what to raise once the budget is spent. No I/O here, so both clients run the same rules.

Connection errors, 429 and 5xx are tried again with exponential backoff and full jitter until the budget is
spent; any other answer is final. A submit is safe to retry because it always carries its idempotency key.
"""

from __future__ import annotations

import random
import time
from typing import Any

import httpx

from spotgen.errors import ApiError, Unreachable


class Again(Exception):
    """An attempt that may succeed if made again; ``error`` is what to raise once the budget is spent."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def backoff(attempt: int, cap: float = 8.0) -> float:
    return random.uniform(0, min(cap, 0.25 * 2 ** (attempt - 1)))


class Budget:
    """The retry budget of one call: ``delay`` says how long to wait before the next attempt, or raises the error
    the last attempt carried when the budget is spent."""

    def __init__(self, seconds: float) -> None:
        self.deadline, self.tries = time.monotonic() + seconds, 0

    def delay(self, again: Again) -> float:
        self.tries += 1
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise again.error from None
        return min(backoff(self.tries), left)


def api_error(response: httpx.Response) -> ApiError:
    try:
        error = response.json()["error"]
        return ApiError(response.status_code, error["code"], error["message"], error.get("field"))
    except (ValueError, KeyError, TypeError):
        return ApiError(response.status_code, "http_error", response.text[:200] or response.reason_phrase)


def unreachable(what: str, exc: httpx.TransportError) -> Again:
    return Again(Unreachable(f"{what}: {type(exc).__name__}: {exc}"))


def json_answer(response: httpx.Response) -> Any:
    """The JSON of a success; ``Again`` for 429 and 5xx; ``ApiError`` for the rest."""
    if response.status_code < 400:
        return response.json()
    if response.status_code == 429 or response.status_code >= 500:
        raise Again(api_error(response))
    raise api_error(response)


def downloaded(url: str, response: httpx.Response) -> bytes:
    """The bytes of an output; ``Again`` for a 5xx of the store."""
    if response.status_code >= 500:
        raise Again(Unreachable(f"could not download {url.split('?')[0]}: {response.status_code}"))
    response.raise_for_status()
    return response.content
