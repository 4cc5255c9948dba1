"""Operations on AWS, offline: X-Ray tracing on the Lambdas and topics, the ADOT collector's role, and CloudWatch
alarms that name only metrics that exist (tests/harness/alarm_checks.py). Each check also runs on a broken copy,
which it must catch."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tests.harness.alarm_checks import check_alarms, check_collector_role, check_tracing
from tests.harness.infra_docs import OVERLAY, REPO, Doc, read_env, render, template
from tests.ops.test_observe import fresh_exposition, sample_names

CONFIG = REPO / "infra/otel/config.yaml"


@pytest.fixture(scope="module")
def exposed() -> set[str]:
    return sample_names(fresh_exposition())


def config() -> Doc:
    return yaml.safe_load(CONFIG.read_text())


def collector_role_problems(tpl: Doc | None = None, cfg: Doc | None = None, env: dict[str, str] | None = None,
                            docs: list[Doc] | None = None) -> list[str]:
    return check_collector_role(tpl or template(), cfg or config(), docs or render(REPO / "infra/otel"),
                                env or read_env(OVERLAY / "otel.env"))


# == the real files ===========================================================================================
def test_tracing_is_active_on_functions_and_topics() -> None:
    assert check_tracing(template()) == []


def test_alarms_name_metrics_that_exist(exposed: set[str]) -> None:
    assert check_alarms(template(), config(), exposed) == []


def test_collector_role_is_exactly_its_exporters_calls() -> None:
    assert collector_role_problems() == []


# == deliberately broken copies ===============================================================================
def _alarm(tpl: Doc, name: str) -> Doc:
    return tpl["Resources"][name]["Properties"]


def _only(errors: list[str], *words: str) -> None:
    assert errors and all(all(word in error for word in words) for error in errors), errors


def test_broken_tracing() -> None:
    tpl = template()
    tpl["Resources"]["JobsTopic"]["Properties"].pop("TracingConfig")
    _only(check_tracing(tpl), "JobsTopic", "AWSTraceHeader")
    tpl = template()
    tpl["Resources"]["StatusFunction"]["Properties"]["Tracing"] = "PassThrough"
    _only(check_tracing(tpl), "StatusFunction", "Tracing: Active")
    tpl = template()
    tpl["Globals"]["Function"]["Environment"]["Variables"]["AWS_LAMBDA_EXEC_WRAPPER"] = "/opt/otel-instrument"
    _only(check_tracing(tpl), "one condition")


@pytest.mark.parametrize(("alarm", "change", "words"), [
    ("DeadLetterAlarm", lambda p: p.update(MetricName="ApproximateNumberOfMessagesWaiting"),
     ("not in the documented set",)),
    ("Api5xxAlarm", lambda p: p["Dimensions"].append({"Name": "Route", "Value": "x"}), ("does not publish it by",)),
    ("OldestJobAlarm", lambda p: p["Dimensions"][0].update(Value={"Ref": "JobsTopic"}), ("not a AWS::SQS::Queue",)),
    ("WorkerFailureRatioAlarm", lambda p: p["Metrics"][1]["MetricStat"]["Metric"].update(
        MetricName="spotgen_jobs_failed_total"), ("does not expose",)),
    ("WorkerFailureRatioAlarm", lambda p: p["Metrics"][1]["MetricStat"]["Metric"]["Dimensions"].append(
        {"Name": "job_id", "Value": "x"}), ("dimension set the collector does not declare",)),
    ("InterruptionStormAlarm", lambda p: p["Metrics"][0].update(
        Expression="SELECT SUM(spotgen_model_cache_evictions_total) FROM SCHEMA(spotgen, pool)"),
     ("does not send to CloudWatch",)),
    ("Api5xxAlarm", lambda p: p.update(Threshold=25), ("fixed threshold",)),
    ("DeadLetterAlarm", lambda p: p.update(AlarmActions=[]), ("AlarmTopic",)),
])
def test_broken_alarm(exposed: set[str], alarm: str, change: Any, words: tuple[str, ...]) -> None:
    tpl = template()
    change(_alarm(tpl, alarm))
    errors = check_alarms(tpl, config(), exposed)
    assert any(all(w in e for w in words) and alarm in e for e in errors), errors


def test_a_missing_alarm_is_named(exposed: set[str]) -> None:
    tpl = template()
    del tpl["Resources"]["ApiLambdaThrottlesAlarm"]
    errors = check_alarms(tpl, config(), exposed)
    assert errors and all("no alarm reads AWS/Lambda Throttles" in e for e in errors), errors


def test_an_emf_declaration_removed_breaks_its_alarm(exposed: set[str]) -> None:
    cfg = config()
    for declaration in cfg["exporters"]["awsemf"]["metric_declarations"]:
        declaration["dimensions"] = [d for d in declaration["dimensions"] if d != ["state"]]
    errors = check_alarms(template(), cfg, exposed)
    assert any("WorkerFailureRatioAlarm" in e and "['state']" in e for e in errors), errors


def test_broken_collector_role() -> None:
    tpl = template()
    statements = tpl["Resources"]["CollectorPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    statements[0]["Action"].append("xray:GetSamplingRules")
    _only(collector_role_problems(tpl), "grants xray:GetSamplingRules")
    tpl = template()
    tpl["Resources"]["CollectorPolicy"]["Properties"]["PolicyDocument"]["Statement"][1]["Resource"] = "*"
    _only(collector_role_problems(tpl), "outside /spotgen/spotgen/metrics")
    cfg = copy.deepcopy(config())
    cfg["exporters"]["awscloudwatchlogs"] = {}
    cfg["exporters"].pop("awsxray")
    assert any("grants xray:PutTraceSegments" in e for e in collector_role_problems(cfg=cfg))
    _only(collector_role_problems(env={"EMF_LOG_GROUP": "/elsewhere"}), "EMF_LOG_GROUP")
    tpl = template()
    tpl["Resources"]["CollectorPodIdentity"]["Properties"]["ServiceAccount"] = "otel"
    _only(collector_role_problems(tpl), "CollectorPodIdentity", "spotgen/otel")
