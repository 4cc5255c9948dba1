"""boto3 clients configured from Settings: one place for endpoint, region, retries and timeouts."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from runtime.config import Settings

#: Throttling and 5xx answers are retried by botocore with backoff and jitter ("standard" mode).
_CONFIG = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30)


def client(service: str, settings: Settings) -> Any:
    return boto3.session.Session().client(
        service,
        region_name=settings.region,
        endpoint_url=settings.aws_endpoint_url or None,
        config=_CONFIG,
    )
