"""Every Lambda's AWS calls give up inside the function's timeout, and the sweep's bound holds (issue 33, item 1).

Lambda ends a function at its ``Timeout`` whatever it is doing; botocore's defaults (5 tries of up to 30 s each)
would outlast it many times. So each function's clients get timeouts and an attempt count derived from its
``Timeout`` (``runtime/storage/aws.bounded``), which the template passes on as ``FUNCTION_TIMEOUT_S``. These checks
read the template and the clients the handlers really build; each runs on a broken copy too.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from lambdas.authorizer import SSM_CONFIG
from lambdas.comfy_ws_notify import POST_CONFIG
from lambdas.common import TIMEOUT_VARIABLE, deployment
from lambdas.outbox import CREATOR_MAX_S
from lambdas.sweep import SWEEP_INTERVAL_S, SWEEP_TIMEOUT_S
from runtime.storage import aws
from tests.harness.infra_docs import Doc, template

#: The handlers that create jobs: their function may be running while another finds the job unpublished.
CREATORS = {"lambdas.submit.handler", "lambdas.api.handler"}


def functions(tpl: Doc) -> dict[str, tuple[str, float, Any]]:
    """Each function: its handler, its Timeout and its FUNCTION_TIMEOUT_S, with the Globals applied."""
    common = tpl["Globals"]["Function"]
    out = {}
    for name, res in tpl["Resources"].items():
        if res["Type"] != "AWS::Serverless::Function":
            continue
        props = res["Properties"]
        env = {**common.get("Environment", {}).get("Variables", {}),
               **props.get("Environment", {}).get("Variables", {})}
        out[name] = (props["Handler"], float(props.get("Timeout", common.get("Timeout", 3))), env.get(TIMEOUT_VARIABLE))
    return out


def check_timeouts(tpl: Doc) -> list[str]:
    errors = []
    for name, (handler, timeout, passed) in functions(tpl).items():
        if passed is None or float(passed) != timeout:
            errors.append(f"{name}: {TIMEOUT_VARIABLE} is {passed!r}, its Timeout {timeout:g}")
        worst = aws.worst_case_s(SSM_CONFIG if handler == "lambdas.authorizer.handler" else aws.bounded(timeout))
        if worst > timeout * aws.BOUNDED_SHARE + 1e-9 and handler != "lambdas.authorizer.handler" or worst >= timeout:
            errors.append(f"{name}: one AWS call may take {worst:g} s of its {timeout:g} s")
        if handler in CREATORS and timeout > CREATOR_MAX_S:
            errors.append(f"{name} creates jobs and may run {timeout:g} s, past lambdas/outbox.py CREATOR_MAX_S")
    sweep = tpl["Resources"].get("SweepFunction", {}).get("Properties", {})
    if float(sweep.get("Timeout", 0)) != SWEEP_TIMEOUT_S:
        errors.append(f"SweepFunction's Timeout is {sweep.get('Timeout')}, lambdas/sweep.py says {SWEEP_TIMEOUT_S}")
    schedules = [event["Properties"]["Schedule"] for event in sweep.get("Events", {}).values()
                 if event["Type"] == "Schedule"]
    if schedules != [f"rate({SWEEP_INTERVAL_S // 60} minute{'s' if SWEEP_INTERVAL_S > 60 else ''})"]:
        errors.append(f"SweepFunction runs on {schedules}, lambdas/sweep.py says every {SWEEP_INTERVAL_S} s")
    return errors


def test_every_functions_calls_fit_in_its_timeout() -> None:
    assert check_timeouts(template()) == []


def test_broken_timeouts_are_found() -> None:
    tpl = template()
    longer = copy.deepcopy(tpl)
    longer["Resources"]["CompatFunction"]["Properties"]["Timeout"] = 60
    found = check_timeouts(longer)
    assert any("CompatFunction: FUNCTION_TIMEOUT_S" in e for e in found), found
    assert any("past lambdas/outbox.py CREATOR_MAX_S" in e for e in found), found
    unset = copy.deepcopy(tpl)
    del unset["Globals"]["Function"]["Environment"]["Variables"][TIMEOUT_VARIABLE]
    assert any(e.startswith("SubmitFunction: FUNCTION_TIMEOUT_S is None") for e in check_timeouts(unset))
    hourly = copy.deepcopy(tpl)
    hourly["Resources"]["SweepFunction"]["Properties"]["Events"]["Every"]["Properties"]["Schedule"] = "rate(1 hour)"
    assert any("SweepFunction runs on" in e for e in check_timeouts(hourly))


@pytest.fixture
def fresh_deployment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    deployment.cache_clear()
    yield
    deployment.cache_clear()  # the next user builds its own from its own environment


@pytest.mark.parametrize("function", ["SubmitFunction", "CompatFunction", "SweepFunction"])
def test_the_clients_a_handler_builds_have_its_functions_bounds(function: str, fresh_deployment: None,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _, timeout, passed = functions(template())[function]
    monkeypatch.setenv(TIMEOUT_VARIABLE, passed)
    dep = deployment()
    for client in (dep.store.s3, dep.sns):
        config = client.meta.config
        assert config.retries.get("total_max_attempts") == aws.BOUNDED_ATTEMPTS, config.retries
        assert "max_attempts" not in config.retries, config.retries
        assert aws.worst_case_s(config) <= timeout * aws.BOUNDED_SHARE + 1e-9, (function, aws.worst_case_s(config))


def test_the_comfy_notifiers_posts_fit_in_its_timeout() -> None:
    """A dead websocket costs one bounded post (lambdas/comfy_ws_notify.py POST_CONFIG), half the function's time."""
    _, timeout, _ = functions(template())["ComfyWsNotifyFunction"]
    assert aws.worst_case_s(POST_CONFIG) <= timeout * aws.BOUNDED_SHARE, (aws.worst_case_s(POST_CONFIG), timeout)
