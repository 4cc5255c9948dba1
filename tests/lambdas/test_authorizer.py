"""The API-key authorizer of the compatibility routes (lambdas/authorizer.py) against a real SSM: moto's server over
HTTP on 127.0.0.1, and the fault proxy in front of it for the failures. The keys' cache runs on an injected clock,
so rotation is tested without waiting for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import socket
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from lambdas import authorizer
from lambdas.authorizer import SSM_CONFIG, ApiKeys, KeysUnavailable, hash_key
from runtime.config import Settings
from runtime.storage import aws
from tests.harness.faultproxy import FaultProxy

KEY = "k3y-Alpha-0123456789abcdefghij"
OTHER = "k3y-Bravo-0123456789abcdefghij"


@contextlib.contextmanager
def ssm_emulator() -> Iterator[str]:
    """moto's server on a free loopback port; its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    # moto builds its SSM backend on the first request, which takes seconds on a loaded machine: done here, with
    # the default timeouts, so that the authorizer's tight ones (SSM_CONFIG) measure SSM answering, not moto starting
    boto3.client("ssm", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").describe_parameters()
    try:
        yield url
    finally:
        server.stop()


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ssm_client(endpoint: str) -> Any:
    """An operator's client for ``endpoint`` (the project's default timeouts: the test's own writes must not
    fail on a loaded machine; the authorizer's reads use its SSM_CONFIG)."""
    return aws.client("ssm", Settings(aws_endpoint_url=endpoint))


def authorizer_client(endpoint: str) -> Any:
    """The authorizer's own client configuration (bounded timeouts and attempts), pointed at ``endpoint``."""
    return aws.client("ssm", Settings(aws_endpoint_url=endpoint), config=SSM_CONFIG)


def put_keys(ssm: Any, value: str, name: str | None = None) -> str:
    """A SecureString parameter holding ``value``, as an operator creates it; its name."""
    name = name or f"/spotgen/test/{uuid.uuid4().hex}"
    ssm.put_parameter(Name=name, Type="SecureString", Value=value, Overwrite=True)
    return name


def request(key: str | None) -> dict[str, Any]:
    headers = {} if key is None else {"x-api-key": key}
    return {"version": "2.0", "type": "REQUEST", "rawPath": "/v1alpha2", "headers": headers,
            "requestContext": {"http": {"method": "POST", "path": "/v1alpha2", "sourceIp": "127.0.0.1"}}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with ssm_emulator() as url:
        yield url


@pytest.fixture
def ssm(endpoint: str) -> Any:
    return ssm_client(endpoint)


def test_handler_allows_the_right_key_with_its_caller(endpoint: str, ssm: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The production entry point: settings from the environment, clients built on first use."""
    monkeypatch.setenv("SPOTGEN_AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("SPOTGEN_API_KEYS_PARAMETER", put_keys(ssm, hash_key(KEY)))
    authorizer.keys.cache_clear()
    try:
        answer = authorizer.handler(request(KEY))
        assert answer == {"isAuthorized": True, "context": {"caller": hashlib.sha256(KEY.encode()).hexdigest()[:16]}}
        assert authorizer.handler(request(OTHER)) == {"isAuthorized": False}
    finally:
        authorizer.keys.cache_clear()


def test_wrong_and_missing_keys_are_refused_without_logging_them(ssm: Any, caplog: pytest.LogCaptureFixture) -> None:
    keys = ApiKeys(ssm, put_keys(ssm, hash_key(KEY)))
    with caplog.at_level(logging.WARNING, "spotgen.authorizer"):
        assert keys.authorize(request(OTHER)) == {"isAuthorized": False}
        assert keys.authorize(request(None)) == {"isAuthorized": False}
        assert keys.authorize(request("   ")) == {"isAuthorized": False}
        assert keys.authorize(request(KEY + "x")) == {"isAuthorized": False}
    assert "refused" in caplog.text and hashlib.sha256(OTHER.encode()).hexdigest()[:16] in caplog.text
    assert OTHER not in caplog.text and KEY not in caplog.text


def test_surrounding_whitespace_is_not_part_of_a_key(ssm: Any) -> None:
    keys = ApiKeys(ssm, put_keys(ssm, hash_key(KEY)))
    assert keys.authorize(request(f" {KEY}\n"))["isAuthorized"] is True


def test_several_keys_each_with_its_own_caller(ssm: Any) -> None:
    third = "k3y-Charlie-0123456789abcdefgh"
    keys = ApiKeys(ssm, put_keys(ssm, f"{hash_key(KEY)}\n{hash_key(OTHER)}, {hash_key(third)}\n"))
    callers = {key: keys.authorize(request(key))["context"]["caller"] for key in (KEY, OTHER, third)}
    assert len(set(callers.values())) == 3
    assert keys.authorize(request("k3y-Delta-0123456789abcdefghij")) == {"isAuthorized": False}


def test_malformed_entries_are_logged_by_position_and_match_nothing(ssm: Any,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A raw key pasted by mistake, a truncated or foreign digest: each is named by line and entry (never its
    text), the valid entries (upper-case hex, after a comment) still work."""
    upper = "sha256:" + hashlib.sha256(OTHER.encode()).hexdigest().upper()
    value = "\n".join([
        "# spotgen API keys",
        f"{KEY}",  # the key itself, not its digest
        f"{hash_key(KEY)[:-1]}, md5:{'0' * 32}",
        f"sha512:{hashlib.sha512(KEY.encode()).hexdigest()}",
        f"{upper}   # bravo's key",
        "",
    ])
    keys = ApiKeys(ssm, put_keys(ssm, value))
    with caplog.at_level(logging.WARNING, "spotgen.authorizer"):
        assert keys.authorize(request(KEY)) == {"isAuthorized": False}
        assert keys.authorize(request(OTHER))["isAuthorized"] is True
    warnings = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(warnings) == 4, warnings
    assert any("entry 1 of line 2" in w for w in warnings) and any("entry 2 of line 3" in w for w in warnings)
    assert KEY not in caplog.text and hashlib.sha256(KEY.encode()).hexdigest()[:40] not in caplog.text


def test_a_parameter_without_any_valid_entry_refuses_every_key(ssm: Any, caplog: pytest.LogCaptureFixture) -> None:
    keys = ApiKeys(ssm, put_keys(ssm, "not-a-digest"))
    with caplog.at_level(logging.ERROR, "spotgen.authorizer"):
        assert keys.authorize(request(KEY)) == {"isAuthorized": False}
    assert "lists no valid key digest" in caplog.text


def test_rotation_is_picked_up_after_the_cache_time(ssm: Any) -> None:
    clock = Clock()
    name = put_keys(ssm, hash_key(KEY))
    keys = ApiKeys(ssm, name, cache_s=60, clock=clock)
    assert keys.authorize(request(KEY))["isAuthorized"] is True
    put_keys(ssm, hash_key(OTHER), name)  # KEY revoked, OTHER issued
    clock.now += 59
    assert keys.authorize(request(KEY))["isAuthorized"] is True, "the warm cache is used within its time"
    assert keys.authorize(request(OTHER))["isAuthorized"] is False
    clock.now += 1
    assert keys.authorize(request(KEY))["isAuthorized"] is False
    assert keys.authorize(request(OTHER))["isAuthorized"] is True


def test_the_cli_prints_what_the_authorizer_accepts(ssm: Any, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.cli import main

    assert main(["apikey", "hash", KEY]) == 0
    printed = capsys.readouterr().out.strip()
    monkeypatch.setattr(sys, "stdin", io.StringIO(OTHER + "\n"))
    assert main(["apikey", "hash", "-"]) == 0
    from_stdin = capsys.readouterr().out.strip()
    assert printed == f"sha256:{hashlib.sha256(KEY.encode()).hexdigest()}"
    keys = ApiKeys(ssm, put_keys(ssm, f"{printed}\n{from_stdin}"))
    assert keys.authorize(request(KEY))["isAuthorized"] and keys.authorize(request(OTHER))["isAuthorized"]
    assert main(["apikey", "hash", "short"]) == 0
    assert "fewer than 20 characters" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert main(["apikey", "hash", "-"]) == 1


# == SSM unavailable: refused after a bounded number of attempts, nothing cached from the failure ============
#: What bounds the authorizer's time: so many attempts, each within SSM_CONFIG's connect and read timeouts (the
#: template's function timeout outlasts them: tests/infra). Counted, not timed: a loaded machine stretches time.
ATTEMPTS = SSM_CONFIG.retries["total_max_attempts"]


def _refused(keys: ApiKeys) -> None:
    with pytest.raises(KeysUnavailable):
        keys.authorize(request(KEY))


def test_unreachable_ssm_fails_closed_promptly(caplog: pytest.LogCaptureFixture) -> None:
    keys = ApiKeys(authorizer_client(f"http://127.0.0.1:{closed_port()}"), "/spotgen/api-keys")
    with caplog.at_level(logging.ERROR, "spotgen.authorizer"):
        _refused(keys)
    assert "cannot reach SSM" in caplog.text and "EndpointConnectionError" in caplog.text


def test_missing_parameter_or_setting_fails_closed(ssm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _refused(ApiKeys(ssm, f"/spotgen/test/{uuid.uuid4().hex}"))
    monkeypatch.delenv("SPOTGEN_API_KEYS_PARAMETER", raising=False)
    authorizer.keys.cache_clear()
    with pytest.raises(KeysUnavailable, match="SPOTGEN_API_KEYS_PARAMETER"):
        authorizer.handler(request(KEY))


@pytest.fixture
def proxy(endpoint: str) -> Iterator[FaultProxy]:
    host, port = endpoint.removeprefix("http://").split(":")
    with FaultProxy((host, int(port))) as running:
        yield running


def test_throttled_or_failing_ssm_fails_closed_and_recovers(ssm: Any, proxy: FaultProxy) -> None:
    """503s and throttling (every attempt) refuse promptly; an expired list is not used meanwhile; once SSM
    answers again the next request is authorized (the failure is not cached)."""
    clock = Clock()
    keys = ApiKeys(authorizer_client(proxy.url), put_keys(ssm, hash_key(KEY)), cache_s=60, clock=clock)
    assert keys.authorize(request(KEY))["isAuthorized"] is True
    clock.now += 60
    proxy.fail("ssm", ATTEMPTS, 503)  # every attempt
    _refused(keys)
    proxy.fail("ssm", ATTEMPTS, 400)  # ThrottlingException, every attempt
    _refused(keys)
    assert proxy.injected == {"ssm 503": ATTEMPTS, "ssm 400": ATTEMPTS}, proxy.injected  # and no more
    assert keys.authorize(request(KEY))["isAuthorized"] is True


def test_a_black_holed_ssm_does_not_hang_the_authorizer(ssm: Any, proxy: FaultProxy) -> None:
    """SSM accepts the connection and never answers: the read timeout and bounded attempts end it in seconds,
    inside the function's timeout (tests/infra checks the template's)."""
    keys = ApiKeys(authorizer_client(proxy.url), put_keys(ssm, hash_key(KEY)))
    proxy.latency = 30
    try:
        _refused(keys)  # it returns: each attempt ended at the read timeout, far before the 30 s answer
        assert proxy.fired["latency"] == ATTEMPTS, proxy.fired
    finally:
        proxy.latency = 0
