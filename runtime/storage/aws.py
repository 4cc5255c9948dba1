"""boto3 clients configured from Settings: one place for endpoint, region, retries and timeouts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config

from runtime.config import Settings

#: Throttling and 5xx answers are retried by botocore with backoff and jitter ("standard" mode). That gives up
#: within about a second; what must outlast an outage is retried on top (``runtime.storage.retry``).
_CONFIG = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30)

#: ``on_error(service, operation, code)``: an AWS call failed, after botocore's own retries.
ErrorHook = Callable[[str, str, str], None]


def client(service: str, settings: Settings, on_error: ErrorHook | None = None, config: Config | None = None) -> Any:
    """A client of ``service`` for this deployment. ``config`` overrides parts of the shared configuration, for a
    caller whose whole answer has a deadline of its own (the API-key authorizer gives SSM a few seconds, not the
    minutes the defaults allow)."""
    made = boto3.session.Session().client(
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
