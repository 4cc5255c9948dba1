"""boto3 clients configured from Settings: one place for endpoint, region, retries and timeouts."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config

from runtime.config import Settings

#: Throttling and 5xx answers are retried by botocore with backoff and jitter ("standard" mode). That gives up
#: within about a second; what must outlast an outage is retried on top (``runtime.storage.retry``).
_CONFIG = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30)

#: Attempts of one call in a function with a deadline (a Lambda): the first and one retry, for throttling or a blip.
BOUNDED_ATTEMPTS = 2
#: The share of the function's timeout that one call may take, all its attempts and backoff together: a call that
#: fails leaves the handler the other half to answer (and undo what it wrote) instead of being ended by Lambda.
BOUNDED_SHARE = 0.5


def backoff_s(attempts: int) -> float:
    """The longest botocore's standard mode sleeps between ``attempts`` tries: up to 2**(n-1) s before try n+1."""
    return float(2 ** (attempts - 1) - 1)


def bounded(timeout_s: float) -> Config:
    """Connect and read timeouts and an attempt count for the clients of a function that Lambda ends after
    ``timeout_s``: ``BOUNDED_ATTEMPTS`` tries of at most connect + read seconds each, plus botocore's backoff, take
    at most ``BOUNDED_SHARE`` of it (``worst_case_s``). 15 s gives 2 tries of 0.94 + 2.31 s; 29 s, 1 + 5.75 s."""
    budget = timeout_s * BOUNDED_SHARE
    connect = min(1.0, budget / 8)
    read = (budget - backoff_s(BOUNDED_ATTEMPTS)) / BOUNDED_ATTEMPTS - connect
    if read <= 0.1:
        raise ValueError(f"a function timeout of {timeout_s} s leaves no time for an AWS call")
    return Config(retries={"total_max_attempts": BOUNDED_ATTEMPTS, "mode": "standard"}, connect_timeout=connect,
                  read_timeout=read)


def worst_case_s(config: Config) -> float:
    """The longest one call of a client with ``config`` can take before it gives up (each try times out)."""
    attempts = int(config.retries["total_max_attempts"])
    return attempts * (float(config.connect_timeout) + float(config.read_timeout)) + backoff_s(attempts)


#: ``on_error(service, operation, code)``: an AWS call failed, after botocore's own retries.
ErrorHook = Callable[[str, str, str], None]


@functools.cache
def data_loader() -> botocore.loaders.Loader:
    """botocore's reader of its service models and endpoint data, one per process: each session otherwise reads
    and parses them again (endpoints.json alone is a megabyte of JSON), which made every client cost about 0.15 s
    of CPU, a worker's five about 0.7 s of its start. What it caches is botocore's own read-only data."""
    return botocore.loaders.create_loader()


def session() -> boto3.session.Session:
    """A session of its own per client (its credentials and events are resolved apart, so clients made from
    different threads share nothing mutable), reading botocore's data through the process's one loader."""
    core = botocore.session.get_session()
    core.register_component("data_loader", data_loader())
    return boto3.session.Session(botocore_session=core)


def client(service: str, settings: Settings, on_error: ErrorHook | None = None, config: Config | None = None) -> Any:
    """A client of ``service`` for this deployment. ``config`` overrides parts of the shared configuration, for a
    caller whose whole answer has a deadline of its own (the API-key authorizer gives SSM a few seconds, not the
    minutes the defaults allow)."""
    made = session().client(
        service,
        region_name=settings.region,
        endpoint_url=settings.aws_endpoint_url or None,
        config=_CONFIG.merge(config) if config is not None else _CONFIG,
    )
    if on_error is not None:
        watch_errors(made, on_error)
    return made


def watch_errors(made: Any, on_error: ErrorHook) -> None:
    """Report every failed call of ``made``: answered with an error (throttling, 5xx, access denied...), or
    with no answer at all (a refused or cut connection, a timeout). botocore's own events, so nothing wraps
    the client."""

    def answered(event_name: str, http_response: Any = None, parsed: Any = None, **_: Any) -> None:
        status = getattr(http_response, "status_code", 200)
        if status >= 300 and status != 304:
            _, service, operation = event_name.split(".", 2)
            code = (parsed or {}).get("Error", {}).get("Code") if isinstance(parsed, dict) else None
            on_error(service, operation, str(code or status))

    def unanswered(event_name: str, exception: BaseException | None = None, **_: Any) -> None:
        _, service, operation = event_name.split(".", 2)
        on_error(service, operation, type(exception).__name__)

    made.meta.events.register("after-call", answered)
    made.meta.events.register("after-call-error", unanswered)
