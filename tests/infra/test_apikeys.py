"""The compatibility routes in the deployed stack, offline: API-key authorized (lambdas/authorizer.py) while the
native routes keep IAM, served by lambdas/api.py's router, the authorizer able to read exactly its parameter and
to answer before its timeout. Like tests/infra/test_infra.py, each check also runs on broken copies it must catch.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from lambdas import api
from tests.harness.infra_docs import sam_transform, template
from tests.harness.template_checks import check_api, check_authorizer, check_function_policies
from tests.infra.test_infra import _only


def _events(tpl: dict[str, Any]) -> dict[str, Any]:
    return tpl["Resources"]["CompatFunction"]["Properties"]["Events"]


def _authorizer(tpl: dict[str, Any]) -> dict[str, Any]:
    return tpl["Resources"]["Api"]["Properties"]["Auth"]["Authorizers"]["ApiKeyAuthorizer"]


def _statements(tpl: dict[str, Any], function: str) -> list[dict[str, Any]]:
    return tpl["Resources"][function]["Properties"]["Policies"][0]["Statement"]


def test_the_compat_routes_take_api_keys_and_the_native_routes_iam() -> None:
    transformed = sam_transform(template())
    assert check_api(transformed) == []
    paths = next(r for r in transformed["Resources"].values()  # the HTTP API (the WebSocket API has no Body)
                 if r["Type"] == "AWS::ApiGatewayV2::Api" and "Body" in r["Properties"])["Properties"]["Body"]["paths"]
    assert {"/v1alpha1", "/v1alpha2", "/sdapi/v1/{proxy+}"} <= paths.keys()
    assert set(paths["/sdapi/v1/{proxy+}"]) == {"get", "post"}


def test_the_authorizer_reads_its_parameter_only_and_answers_in_time() -> None:
    assert check_authorizer(template()) == []
    assert check_function_policies(template()) == []


def test_router_compat_routes_are_covered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compatibility routes lambdas/api.py will route (added there by their own change) are served by the
    template's, and one the template lacks is named."""
    routes = [*api.ROUTES, ("POST", re.compile(r"^/v1alpha2/?$"), api.handler),
              ("POST", re.compile(r"^/v1alpha1$"), api.handler),
              ("POST", re.compile(r"^/sdapi/v1/txt2img$"), api.handler),
              ("GET", re.compile(r"^/sdapi/v1/progress$"), api.handler)]
    monkeypatch.setattr(api, "ROUTES", routes)
    assert check_api(sam_transform(template())) == []
    monkeypatch.setattr(api, "ROUTES", [*routes, ("DELETE", re.compile(r"^/sdapi/v1/options$"), api.handler)])
    _only(check_api(sam_transform(template())), "DELETE ^/sdapi/v1/options$", "the API lacks")


# == deliberately broken copies ===============================================================================
def test_broken_compat_route_auth() -> None:
    tpl = template()
    _events(tpl)["SampleV1Alpha2"]["Properties"].pop("Auth")  # falls back to the default: IAM
    _only(check_api(sam_transform(tpl)), "POST /v1alpha2", "ApiKeyAuthorizer", "alone")
    tpl = template()
    _events(tpl)["WebuiGet"]["Properties"]["Auth"] = {"Authorizer": "NONE"}
    _only(check_api(sam_transform(tpl)), "GET /sdapi/v1/{proxy+}", "ApiKeyAuthorizer")
    tpl = template()
    tpl["Resources"]["CompatFunction"]["Properties"]["Handler"] = "lambdas.submit.handler"
    _only(check_api(sam_transform(tpl)), "POST /v1alpha1 runs lambdas.submit.handler", "lambdas.api.handler")


def test_broken_native_route_on_api_key() -> None:
    tpl = template()
    tpl["Resources"]["SubmitFunction"]["Properties"]["Events"]["Submit"]["Properties"]["Auth"] = {
        "Authorizer": "ApiKeyAuthorizer"}
    _only(check_api(sam_transform(tpl)), "POST /v1/jobs", "does not require IAM")


@pytest.mark.parametrize(("change", "words"), [
    (lambda a: a["Identity"].update(Headers=["authorization"]), ("request authorizer on $request.header.x-api-key",)),
    (lambda a: a.update(EnableSimpleResponses=False), ("simple responses",)),
    (lambda a: a["Identity"].update(ReauthorizeEvery=3600), ("3600 s", "revoked key")),
    (lambda a: a.pop("EnableFunctionDefaultPermissions"), ("may not invoke AuthorizerFunction",)),
])
def test_broken_authorizer_scheme(change: Any, words: tuple[str, ...]) -> None:
    tpl = template()
    change(_authorizer(tpl))
    _only(check_api(sam_transform(tpl)), *words)


def test_broken_authorizer_function() -> None:
    tpl = template()
    tpl["Resources"]["AuthorizerFunction"]["Properties"]["Handler"] = "lambdas.api.handler"
    _only(check_api(sam_transform(tpl)), "does not run lambdas.authorizer.handler")
    tpl = template()
    tpl["Resources"]["AuthorizerFunction"]["Properties"]["Timeout"] = 5
    _only(check_authorizer(tpl), "Timeout (5 s)", "SSM_CONFIG")
    tpl = template()
    tpl["Resources"]["AuthorizerFunction"]["Properties"]["Environment"]["Variables"].pop("SPOTGEN_API_KEYS_PARAMETER")
    _only(check_authorizer(tpl), "SPOTGEN_API_KEYS_PARAMETER")


def test_broken_authorizer_policy() -> None:
    tpl = template()
    _statements(tpl, "AuthorizerFunction")[0]["Resource"] = {"Fn::Sub": "arn:${AWS::Partition}:ssm:*:*:parameter/*"}
    _only(check_authorizer(tpl), "may read", "not just the API keys parameter")
    tpl = template()
    _statements(tpl, "AuthorizerFunction")[1].pop("Condition")
    _only(check_authorizer(tpl), "kms:Decrypt beyond SSM")
    tpl = template()
    _statements(tpl, "AuthorizerFunction")[0]["Action"] = ["ssm:GetParameter", "ssm:GetParametersByPath"]
    _only(check_function_policies(tpl), "AuthorizerFunction grants ssm:GetParametersByPath")
    tpl = template()
    next(s for s in _statements(tpl, "CompatFunction") if s["Sid"] == "PublishJobs")["Action"] = "sns:ListTopics"
    _only(check_function_policies(tpl), "CompatFunction lacks sns:Publish")
