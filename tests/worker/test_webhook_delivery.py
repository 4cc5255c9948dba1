"""Webhooks in process: the signature against a second implementation of Standard Webhooks (``standardwebhooks``)
and spotgen's own ``verify``, the secret read from Secrets Manager and SSM on the emulator and rotated, the
submit API's refusals, and the sender's retry policy against a real HTTP receiver on loopback.

The worker's side end to end (real worker processes) is tests/worker/test_webhooks.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import boto3
import pytest
from standardwebhooks.webhooks import Webhook as StandardWebhook

from lambdas.submit import check_webhook
from runtime.config import Settings
from runtime.contract import ContractError, JobState, StatusDoc, parse_request
from runtime.contract.webhook import Webhook, signature_header, webhook_id
from runtime.local.devsettings import new_webhook_secret
from runtime.storage.jobstore import JobStore
from runtime.worker.webhooks import SecretSource, Webhooks
from spotgen.webhooks import WebhookVerificationError, verify
from tests.harness.webhook_receiver import Receiver

OLD, NEW = new_webhook_secret(), new_webhook_secret()
LOCAL = Settings(webhook_loopback=True, webhook_secret=NEW, webhook_timeout_s=1, webhook_retry_s=3)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    running = Receiver(NEW).start()
    yield running
    running.stop()


def store() -> JobStore:
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:9",
                      aws_access_key_id="test", aws_secret_access_key="test")
    return JobStore(s3, Settings(output_bucket="outputs"))


def final_doc(job_id: str, url: str) -> StatusDoc:
    now = datetime.now(UTC)
    return StatusDoc(id=job_id, state=JobState.succeeded, pipeline="txt2img", model="tiny-sd", seed=1,
                     outputs=[f"outputs/{job_id}/0.png"], created_at=now, updated_at=now,
                     webhook=Webhook(url=url, events=["completed"]))


def test_a_rotating_secret_signs_twice_and_both_secrets_verify() -> None:
    body, stamp = b'{"id": "j1", "event": "completed"}', int(time.time())
    headers = {"webhook-id": webhook_id("j1", "completed"), "webhook-timestamp": str(stamp),
               "webhook-signature": signature_header([NEW, OLD], "msg_j1_completed", stamp, body)}
    assert len(headers["webhook-signature"].split()) == 2
    for secret in (NEW, OLD):  # a receiver with either secret accepts it, with either implementation
        StandardWebhook(secret).verify(body, headers)
        assert verify(headers, body, secret) == {"id": "j1", "event": "completed"}
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(headers, body, new_webhook_secret())
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(headers, body.replace(b"j1", b"j2"), NEW)
    with pytest.raises(WebhookVerificationError, match="more than 300 s"):
        verify(headers, body, NEW, now=stamp + 301)
    with pytest.raises(WebhookVerificationError, match="webhook-signature header is missing"):
        verify({k: v for k, v in headers.items() if k != "webhook-signature"}, body, NEW)


def test_the_secret_comes_from_secrets_manager_or_ssm_and_is_cached(emulator: str) -> None:
    def client(service: str) -> object:
        return boto3.client(service, region_name="us-east-1", endpoint_url=emulator, aws_access_key_id="test",
                            aws_secret_access_key="test")

    arn = client("secretsmanager").create_secret(Name="webhook-test", SecretString=f"{NEW} {OLD}")["ARN"]
    client("ssm").put_parameter(Name="/spotgen/webhook-test", Type="SecureString", Value=OLD)
    from_sm = SecretSource(Settings(webhook_secret_arn=arn), client)
    assert from_sm.current() == [NEW, OLD]
    client("secretsmanager").put_secret_value(SecretId=arn, SecretString=NEW)  # the old one retired
    assert from_sm.current() == [NEW, OLD]  # until the cache ends
    assert SecretSource(Settings(webhook_secret_arn=arn, webhook_secret_cache_s=0), client).current() == [NEW]
    assert SecretSource(Settings(webhook_secret_parameter="/spotgen/webhook-test"), client).current() == [OLD]
    with pytest.raises(RuntimeError, match="no webhook signing secret"):
        SecretSource(Settings(), client).current()


def test_submit_refuses_a_host_not_allowed_a_private_address_and_plain_http_naming_the_field() -> None:
    allowed = Settings(webhook_allowed_hosts=["hooks.example.com"])

    def resolving(*addresses: str):  # noqa: ANN202
        return lambda host, port: list(addresses)

    cases = [
        (Settings(), "https://hooks.example.com/x", "webhooks are not accepted here"),
        (allowed, "https://evil.example.com/x", "the host 'evil.example.com' is not allowed"),
        (allowed, "http://hooks.example.com/x", "only https://"),
        (allowed, "https://hooks.example.com:8443/x", "port 443"),
        (allowed, "https://u:p@hooks.example.com/x", "user information"),
        (LOCAL, "http://10.0.0.5:8000/x", "only https://"),  # loopback mode allows loopback, nothing else
        (LOCAL, "https://10.0.0.5/x", "the host '10.0.0.5' is not allowed"),
    ]
    for settings, url, message in cases:
        with pytest.raises(ContractError, match=message) as caught:
            check_webhook(settings, url, resolve=resolving("93.184.216.34"))
        assert caught.value.field == "webhook.url" and caught.value.code == "url_not_allowed"
    for address, why in (("10.1.2.3", "a private address"), ("169.254.169.254", "the cloud metadata service"),
                         ("127.0.0.1", "a loopback address"), ("::ffff:192.168.0.1", "a private address")):
        with pytest.raises(ContractError, match=why) as caught:  # one bad address among good ones is enough
            check_webhook(allowed, "https://hooks.example.com/x", resolve=resolving("93.184.216.34", address))
        assert caught.value.field == "webhook.url"
    check_webhook(allowed, "https://hooks.example.com/x", resolve=resolving("93.184.216.34"))
    check_webhook(LOCAL, "http://127.0.0.1:8000/x")


def test_the_request_names_the_events_field() -> None:
    base = {"pipeline": "txt2img", "model": "tiny-sd", "inputs": {}}
    assert parse_request({**base, "webhook": {"url": "https://h.example.com"}}).webhook.events == ["completed"]
    for webhook, field in (({"url": "https://h.example.com", "events": ["finished"]}, "webhook.events.0"),
                           ({"url": "https://h.example.com", "events": []}, "webhook.events"),
                           ({"url": "https://h.example.com", "events": ["started", "started"]}, "webhook.events"),
                           ({"events": ["started"]}, "webhook.url"),
                           ({"url": "https://h.example.com", "secret": "x"}, "webhook.secret")):
        with pytest.raises(ContractError) as caught:
            parse_request({**base, "webhook": webhook})
        assert caught.value.field == field, (webhook, caught.value)


def test_the_sender_retries_what_may_pass_and_stops_at_what_will_not(receiver: Receiver) -> None:
    hooks = Webhooks(LOCAL, store(), SecretSource(LOCAL, lambda service: None))

    flaky = hooks.send(final_doc("d-flaky", receiver.url("/flaky/a")), "completed", LOCAL.webhook_retry_s)
    assert [a.status for a in flaky] == [500, 500, 200] and flaky[-1].error is None
    assert receiver.accepted("d-flaky") == {"completed": 1}
    assert len({r.id for r in receiver.of("d-flaky")}) == 1  # one webhook-id for every retry

    redirect = hooks.send(final_doc("d-redirect", receiver.url("/redirect/a")), "completed", LOCAL.webhook_retry_s)
    assert [(a.status, a.error) for a in redirect] == [(302, "HTTP 302 (redirects are not followed)")]
    assert not [r for r in receiver.received if r.path == "/ok/redirected"]

    refused = hooks.send(final_doc("d-refused", "https://elsewhere.example.com/x"), "completed", 3)
    assert len(refused) == 1 and refused[0].error.startswith("refused: the host 'elsewhere.example.com'")

    started = time.monotonic()
    silent = hooks.send(final_doc("d-silent", receiver.url("/silent/a")), "completed", LOCAL.webhook_retry_s)
    spent = time.monotonic() - started
    assert len(silent) >= 2 and all(a.status is None and "no answer within 1 s" in a.error for a in silent)
    # the product's promise: the budget plus one POST's timeout at most (SPOTGEN_WEBHOOK_RETRY_S, _TIMEOUT_S)
    assert spent <= LOCAL.webhook_retry_s + LOCAL.webhook_timeout_s + 1

    for record in receiver.received:
        assert record.verified, record
        body = json.loads(record.body)
        assert body["type"] == "job.completed" and body["outputs"][0].startswith("http://127.0.0.1:9/outputs/")
        lives = datetime.fromisoformat(body["outputs_expire_at"]) - datetime.fromisoformat(body["timestamp"])
        assert lives.total_seconds() == LOCAL.webhook_url_ttl_s == 86400


def test_spotgen_dev_allows_loopback_and_signs_with_the_given_secret_or_a_new_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.local.devsettings import dev_webhooks

    for name in ("SPOTGEN_WEBHOOK_LOOPBACK", "SPOTGEN_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    given, made = dev_webhooks(Settings(), NEW)
    assert (given.webhook_secret, given.webhook_loopback, made) == (NEW, True, None)
    fresh, made = dev_webhooks(Settings(), None)
    assert made is not None and fresh.webhook_secret == made and made != NEW
    StandardWebhook(made)  # a secret the specification's libraries take
    with pytest.raises(SystemExit, match="--webhook-secret: a webhook secret is base64"):
        dev_webhooks(Settings(), "whsec_not base64!")
    deployed, made = dev_webhooks(Settings(webhook_secret_arn="arn:aws:secretsmanager:x"), None)
    assert made is None and deployed.webhook_secret is None  # a configured secret is kept
