"""How the client proves who it is: SigV4 for the deployed API (IAM auth on every route), ``x-api-key`` for the
compatibility routes, nothing for ``spotgen dev``."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import httpx

from spotgen.errors import ApiError


@dataclass(frozen=True)
class ApiKey:
    """``x-api-key`` auth (the compatibility routes)."""

    key: str


class SigV4(httpx.Auth):
    """Signs each request as API Gateway's IAM auth expects (service ``execute-api``), with credentials from
    botocore's standard chain: profile, environment, IMDS, Pod Identity. One object serves sync and async clients:
    signing is computation, and botocore refreshes expiring credentials itself."""

    requires_request_body = True

    def __init__(self, region: str | None = None) -> None:
        import botocore.session  # only when SigV4 is asked for

        session = botocore.session.Session()
        credentials = session.get_credentials()
        if credentials is None:
            raise ApiError(0, "no_credentials", "SigV4 needs AWS credentials: none were found in the environment, "
                           "the profile, or the instance or pod identity")
        self.credentials = credentials
        self.region = region or session.get_config_variable("region") or "us-east-1"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        signed = AWSRequest(method=request.method, url=str(request.url), data=request.content,
                            headers={"content-type": request.headers.get("content-type", "application/json")})
        SigV4Auth(self.credentials.get_frozen_credentials(), "execute-api", self.region).add_auth(signed)
        request.headers.update(dict(signed.headers.items()))
        yield request


def http_options(auth: str | ApiKey | None, region: str | None) -> dict[str, Any]:
    """The httpx client options for ``auth``: ``"sigv4"``, an ``ApiKey`` or ``None``."""
    if isinstance(auth, ApiKey):
        return {"headers": {"x-api-key": auth.key}}
    if auth == "sigv4":
        return {"auth": SigV4(region)}
    if auth is None:
        return {}
    raise ValueError(f"auth is None, 'sigv4' or ApiKey(...), not {auth!r}")
