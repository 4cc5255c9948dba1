"""The compatibility routes' extra field for webhooks (docs/api.md "Webhooks"): ``task.metadata.webhook`` in the AWS
sample's v1alpha2, ``alwayson_scripts.webhook`` in its v1alpha1, ``webhook`` in a WebUI body; each taken out of
what WebUI sees, and refused naming its place in the body."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lambdas.sdapi import webhook_of
from runtime.contract import ContractError, parse_v1alpha1, parse_v1alpha2
from tests.contract.sample_cases import RUNTIMES, V1ALPHA1_T2I_EKS, V1ALPHA2_T2I

HOOK = {"url": "https://hooks.example.com/x", "events": ["started", "completed"]}


def v2(webhook: Any) -> dict[str, Any]:
    body = json.loads(V1ALPHA2_T2I)
    body["task"]["metadata"]["webhook"] = webhook
    return body


def v1(webhook: Any) -> dict[str, Any]:
    body = json.loads(V1ALPHA1_T2I_EKS)
    body["alwayson_scripts"]["webhook"] = webhook
    return body


def test_the_sample_routes_carry_the_webhook_beside_their_routing_keys() -> None:
    two = parse_v1alpha2(v2(HOOK), RUNTIMES)
    assert two.webhook is not None and two.webhook.model_dump() == HOOK
    assert two.webhook_field == "task.metadata.webhook"
    one = parse_v1alpha1(v1(HOOK))
    assert one.webhook is not None and one.webhook.events == ["started", "completed"]
    assert "webhook" not in one.body["alwayson_scripts"] and one.webhook_field == "alwayson_scripts.webhook"
    assert parse_v1alpha2(json.loads(V1ALPHA2_T2I), RUNTIMES).webhook is None


@pytest.mark.parametrize(("parse", "field"), [
    (lambda hook: parse_v1alpha2(v2(hook), RUNTIMES), "task.metadata.webhook"),
    (lambda hook: parse_v1alpha1(v1(hook)), "alwayson_scripts.webhook"),
    (lambda hook: webhook_of({"prompt": "x", "webhook": hook}), "webhook"),
])
def test_a_bad_webhook_is_refused_naming_its_place(parse: Any, field: str) -> None:
    for hook, where in (({"events": ["completed"]}, "url"), ({**HOOK, "events": ["done"]}, "events.0")):
        with pytest.raises(ContractError) as caught:
            parse(hook)
        assert caught.value.field == f"{field}.{where}", caught.value


def test_a_webui_body_gives_its_webhook_up_before_webui_reads_it() -> None:
    body = {"prompt": "x", "webhook": HOOK}
    assert webhook_of(body).model_dump() == HOOK and body == {"prompt": "x"}
    assert webhook_of({"prompt": "x"}) is None
