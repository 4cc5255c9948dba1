"""The checks of tests/infra/test_alarms.py: the template's tracing settings, the collector's role and the
CloudWatch alarms, against the collector's config (infra/otel/config.yaml) and the worker's real metrics.

Each check takes loaded documents and returns the problems it finds, so the tests run it on the real files and on
deliberately broken copies. An alarm may only name a metric that exists: one AWS publishes (``AWS_METRICS``, from
the services' metric references), with the dimensions AWS gives it, or one of the worker's, declared for EMF by
the collector with exactly the alarm's dimensions.
"""

from __future__ import annotations

import re
from typing import Any

from tests.harness.infra_docs import Doc, as_list, policy_actions, resolve

#: The AWS metrics an alarm may use, with their dimensions: the SQS, Lambda and API Gateway (HTTP API) metric
#: references in the CloudWatch documentation ("Available CloudWatch metrics for Amazon SQS", "Types of metrics for
#: Lambda functions", "Monitor CloudWatch metrics for HTTP APIs").
AWS_METRICS: dict[str, dict[str, set[str]]] = {
    "AWS/SQS": {name: {"QueueName"} for name in (
        "ApproximateAgeOfOldestMessage", "ApproximateNumberOfMessagesDelayed", "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesVisible", "NumberOfEmptyReceives", "NumberOfMessagesDeleted",
        "NumberOfMessagesReceived", "NumberOfMessagesSent", "SentMessageSize")},
    "AWS/Lambda": {name: {"FunctionName", "Resource", "ExecutedVersion"} for name in (
        "Invocations", "Errors", "Throttles", "Duration", "ConcurrentExecutions", "DeadLetterErrors")},
    "AWS/ApiGateway": {name: {"ApiId", "Stage", "Method", "Resource"} for name in (
        "4xx", "5xx", "Count", "Latency", "IntegrationLatency", "DataProcessed")},
}
#: What a dimension's value must refer to: the resource type of the stack it names.
DIMENSION_TARGETS = {"QueueName": "AWS::SQS::Queue", "FunctionName": "AWS::Serverless::Function",
                     "ApiId": "AWS::Serverless::HttpApi"}
#: The worker's metrics in CloudWatch (infra/otel/config.yaml: awsemf's namespace).
EMF_NAMESPACE = "spotgen"
#: What the issue asks an alarm for, as (namespace, metric, what it is on).
REQUIRED_ALARMS = {
    ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "DeadLetterQueue"),
    ("AWS/SQS", "ApproximateAgeOfOldestMessage", "WorkQueue"),
    *(("AWS/Lambda", metric, function) for metric in ("Errors", "Throttles")
      for function in ("SubmitFunction", "StatusFunction", "CancelFunction", "CompatFunction", "AuthorizerFunction",
                       "ComfyWsFunction", "ComfyWsNotifyFunction")),  # a throttled $connect: no client connects
    ("AWS/Lambda", "Errors", "SweepFunction"),  # a sweep that fails queues no stranded job (lambdas/sweep.py)
    ("AWS/ApiGateway", "5xx", "Api"),
    (EMF_NAMESPACE, "spotgen_jobs_total", "state=failed"),
    (EMF_NAMESPACE, "spotgen_jobs_total", "state=succeeded"),
    (EMF_NAMESPACE, "spotgen_interruptions_total", "pool"),
}
#: What each of the collector's exporters calls, so its role can grant exactly that.
EXPORTER_ACTIONS = {"awsxray": {"xray:PutTraceSegments", "xray:PutTelemetryRecords"},
                    "awsemf": {"logs:CreateLogStream", "logs:PutLogEvents"}}
_INSIGHTS = re.compile(r"^SELECT\s+(?:SUM|AVG|MIN|MAX|COUNT)\((\w+)\)\s+FROM\s+SCHEMA\((\S+?),\s*([\w, ]*)\)\s*$",
                       re.IGNORECASE)


def emf_declarations(config: Doc) -> dict[str, list[frozenset[str]]]:
    """metric name selector (a regex) -> the dimension sets awsemf declares for it."""
    emf = config.get("exporters", {}).get("awsemf", {})
    out: dict[str, list[frozenset[str]]] = {}
    for declaration in emf.get("metric_declarations", []):
        for selector in declaration.get("metric_name_selectors", []):
            out.setdefault(selector, []).extend(frozenset(dims) for dims in declaration.get("dimensions", []))
    return out


def _target(value: Any, tpl: Doc) -> str | None:
    """The logical id a dimension value refers to (Ref or GetAtt), or None for a literal."""
    if isinstance(value, dict) and "Ref" in value:
        return value["Ref"]
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        attribute = value["Fn::GetAtt"]
        return (attribute.split(".")[0] if isinstance(attribute, str) else attribute[0])
    return None


def alarm_metrics(alarm: Doc) -> list[tuple[str, str, dict[str, Any]]]:
    """(namespace, metric, {dimension: value}) of each metric the alarm reads; a Metrics Insights query
    ``SELECT SUM(m) FROM SCHEMA(ns, d1, d2)`` gives its schema's dimensions with the value ``None`` (all)."""
    props = alarm["Properties"]
    if "MetricName" in props:
        return [(props["Namespace"], props["MetricName"], {d["Name"]: d["Value"] for d in props.get("Dimensions", [])})]
    found = []
    for query in props.get("Metrics", []):
        if "MetricStat" in query:
            metric = query["MetricStat"]["Metric"]
            found.append((metric["Namespace"], metric["MetricName"],
                          {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}))
        elif (match := _INSIGHTS.match(query.get("Expression", "").strip())) is not None:
            dims = [d.strip() for d in match[3].split(",") if d.strip()]
            found.append((match[2].strip('"'), match[1], dict.fromkeys(dims)))
    return found


def _emf_problem(name: str, dims: frozenset[str], declared: dict[str, list[frozenset[str]]],
                 exposed: set[str]) -> str | None:
    if name not in exposed:
        return f"names {name}, which the worker does not expose (runtime/ops/metrics.py)"
    sets = [s for selector, sets in declared.items() if re.fullmatch(selector.strip("^$"), name) for s in sets]
    if not sets:
        return f"names {name}, which the collector does not send to CloudWatch (infra/otel/config.yaml awsemf)"
    if dims not in sets:
        return (f"reads {name} by {sorted(dims)}, a dimension set the collector does not declare for it "
                f"({[sorted(s) for s in sets]})")
    return None


def _threshold_problem(props: Doc, tpl: Doc) -> str | None:
    threshold = props.get("Threshold")
    if isinstance(threshold, dict):
        if threshold.get("Ref") not in tpl.get("Parameters", {}):
            return f"has a threshold {threshold} that is no parameter"
    elif threshold != 0:
        return f"has a fixed threshold {threshold}: make it a parameter with a default (or 0 for 'any')"
    return None


def check_alarms(tpl: Doc, config: Doc, exposed: set[str]) -> list[str]:
    """Every alarm reads metrics that exist, with dimensions that name this stack's resources, sends to the
    alarm topic, takes its threshold from a parameter; together they cover REQUIRED_ALARMS."""
    declared, errors, covered = emf_declarations(config), [], set()
    resources = tpl["Resources"]
    alarms = {name: res for name, res in resources.items() if res["Type"] == "AWS::CloudWatch::Alarm"}
    for name, alarm in sorted(alarms.items()):
        props = alarm["Properties"]
        if problem := _threshold_problem(props, tpl):
            errors.append(f"alarm {name} {problem}")
        if {"Ref": "AlarmTopic"} not in as_list(props.get("AlarmActions")):
            errors.append(f"alarm {name} does not notify the AlarmTopic")
        for namespace, metric, dims in alarm_metrics(alarm):
            if namespace == EMF_NAMESPACE:
                problem = _emf_problem(metric, frozenset(dims), declared, exposed)
                covered |= {(namespace, metric, f"{k}={v}" if isinstance(v, str) else k) for k, v in dims.items()}
            elif metric not in AWS_METRICS.get(namespace, {}):
                problem = f"names {namespace} {metric}, which is not in the documented set (AWS_METRICS)"
            elif unknown := set(dims) - AWS_METRICS[namespace][metric]:
                problem = f"reads {namespace} {metric} by {sorted(unknown)}, which AWS does not publish it by"
            else:
                problem = None
                for dim, value in dims.items():
                    target = _target(value, tpl)
                    if target not in resources or resources[target]["Type"] != DIMENSION_TARGETS.get(dim):
                        problem = f"reads {metric} of {value}, which is not a {DIMENSION_TARGETS.get(dim)} here"
                    else:
                        covered.add((namespace, metric, target))
            if problem:
                errors.append(f"alarm {name} {problem}")
    errors += [f"no alarm reads {namespace} {metric} of {what}"
               for namespace, metric, what in sorted(REQUIRED_ALARMS - covered)]
    return errors


def check_tracing(tpl: Doc) -> list[str]:
    """X-Ray from the Lambda on: active tracing on every function and topic; the OpenTelemetry layer and its
    wrapper come and go together."""
    errors = []
    function = tpl.get("Globals", {}).get("Function", {})
    resources = tpl["Resources"]
    for name, res in sorted(resources.items()):
        props = res.get("Properties", {})
        if res["Type"] == "AWS::Serverless::Function" and props.get("Tracing", function.get("Tracing")) != "Active":
            errors.append(f"{name} has no active X-Ray tracing (Tracing: Active)")
        if res["Type"] == "AWS::SNS::Topic" and name != "AlarmTopic" and props.get("TracingConfig") != "Active":
            errors.append(f"topic {name} has no active tracing: SQS would not get the publisher's AWSTraceHeader")
    layers = function.get("Layers", {})
    wrapper = function.get("Environment", {}).get("Variables", {}).get("AWS_LAMBDA_EXEC_WRAPPER")
    layer_if, wrapper_if = (x.get("Fn::If", [None])[0] if isinstance(x, dict) else None for x in (layers, wrapper))
    if layer_if is None or layer_if != wrapper_if or (isinstance(wrapper, dict) and
                                                      wrapper["Fn::If"][1] != "/opt/otel-instrument"):
        errors.append("the OpenTelemetry layer and AWS_LAMBDA_EXEC_WRAPPER=/opt/otel-instrument must be set under "
                      "one condition: the wrapper without the layer breaks every start, the layer without it "
                      "records nothing")
    return errors


def check_collector_role(tpl: Doc, config: Doc, collector: list[Doc], otel_env: dict[str, str]) -> list[str]:
    """The collector's role allows exactly what its exporters call, its logs only in the stack's EMF log group;
    the Pod Identity association names the collector's service account; the overlay's log group is the stack's."""
    errors = []
    res = tpl["Resources"]
    exporters = set(config.get("exporters", {}))
    wanted = set().union(*(EXPORTER_ACTIONS.get(e.split("/")[0], set()) for e in exporters))
    granted, _ = policy_actions(res["CollectorPolicy"]["Properties"]["PolicyDocument"])
    errors += [f"CollectorPolicy lacks {a}, which the collector's exporters call" for a in sorted(wanted - granted)]
    errors += [f"CollectorPolicy grants {a}, which no exporter of infra/otel/config.yaml calls"
               for a in sorted(granted - wanted)]
    group = resolve(res["CollectorMetricsLogGroup"]["Properties"]["LogGroupName"], tpl)
    for statement in as_list(res["CollectorPolicy"]["Properties"]["PolicyDocument"]["Statement"]):
        if any(str(a).startswith("logs:") for a in as_list(statement["Action"])):
            for resource in as_list(resolve(statement["Resource"], tpl)):
                if f":log-group:{group}:" not in str(resource):
                    errors.append(f"CollectorPolicy lets the collector write logs outside {group} ({resource})")
    if otel_env.get("EMF_LOG_GROUP") != group:
        errors.append(f"the overlay's EMF_LOG_GROUP ({otel_env.get('EMF_LOG_GROUP')}) is not the stack's log group "
                      f"({group})")
    association = res["CollectorPodIdentity"]["Properties"]
    accounts = {(d["metadata"].get("namespace"), d["metadata"]["name"]) for d in collector
                if d["kind"] == "ServiceAccount"}
    named = (resolve(association["Namespace"], tpl), resolve(association["ServiceAccount"], tpl))
    if named not in accounts:
        errors.append(f"CollectorPodIdentity names {named[0]}/{named[1]}, which infra/otel does not create "
                      f"({sorted(accounts)})")
    return errors
