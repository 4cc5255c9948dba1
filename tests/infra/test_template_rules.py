"""What the API stack (lambdas/template.yaml) must hold beyond tests/harness/template_checks.py (issue 34):

- the work queue keeps a message longer than any job may wait, so SQS never drops one whose status says
  ``queued`` (item 3); both sides read from their sources, the template and runtime/contract;
- SNS's active tracing may write to X-Ray, for this stack's topics only (item 7);
- every function logs to a log group of the stack, kept ``LogRetentionDays``; the output bucket's prefixes expire
  after their parameters' days (item 8).

Each check returns the problems it finds, and the ``test_broken_*`` tests run it on a broken copy.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from runtime.contract import ContractError, JobRequest
from runtime.contract.jobs import MAX_TTL_S, QUEUE_RETENTION_S, expiry
from runtime.contract.status import EXPIRY_GRACE_S
from tests.harness.infra_docs import DEPLOY_DOC, EXAMPLE_STACK, Doc, resolve, sam_transform, template
from tests.harness.ws_checks import broken, check_comfy_ws

DAY_S = 24 * 3600
#: Each expiring prefix of the output bucket and the parameter that holds its days.
EXPIRING_PREFIXES = {"outputs/": "OutputsExpirationDays", "jobs/": "JobsExpirationDays",
                     "checkpoints/": "CheckpointsExpirationDays"}
#: What SNS needs of X-Ray to write the segments of a topic with active tracing (the SNS developer guide).
SNS_XRAY_ACTIONS = {"xray:PutTraceSegments", "xray:GetSamplingRules", "xray:GetSamplingTargets"}
LAMBDA_LOGS_POLICY = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"


def of_type(tpl: Doc, kind: str) -> dict[str, Doc]:
    return {name: res for name, res in tpl["Resources"].items() if res["Type"] == kind}


# == item 3: retention against the longest wait ===============================================================
def longest_wait_s(now: datetime) -> float:
    """The longest a job may wait for a worker, as the code decides it: the latest deadline a request may give
    (``ttl_seconds``' bound, ``expires_at`` probed just inside and outside it) and the one a job without a deadline
    gets (``expiry``)."""
    ttl_bound = JobRequest.model_json_schema()["properties"]["ttl_seconds"]["anyOf"][0]["maximum"]
    request = JobRequest(pipeline="txt2img", model="sd15", ttl_seconds=ttl_bound)
    longest = max((request.deadline(now) - now).total_seconds(), (expiry(now, None) - now).total_seconds())
    too_far = JobRequest(pipeline="txt2img", model="sd15", expires_at=now + timedelta(seconds=longest + 1))
    with pytest.raises(ContractError):  # else expires_at would allow a longer wait than ttl_seconds
        too_far.deadline(now)
    return longest


def check_retention(tpl: Doc) -> list[str]:
    """SQS keeps a job's message past its deadline plus the grace the status route gives (so a worker, or the
    status route, says ``expired`` first), as long as runtime/contract assumes, and the dead-letter queue at least
    as long as the work queue (a dead-lettered message keeps its first enqueue time)."""
    res = tpl["Resources"]
    work = int(resolve(res["WorkQueue"]["Properties"]["MessageRetentionPeriod"], tpl))
    dead = int(resolve(res["DeadLetterQueue"]["Properties"]["MessageRetentionPeriod"], tpl))
    longest = longest_wait_s(datetime.now(UTC))
    errors = []
    if work < longest + EXPIRY_GRACE_S:
        errors.append(f"the work queue keeps messages {work} s, but a job may wait {longest:.0f} s "
                      f"(+ {EXPIRY_GRACE_S} s grace): SQS would drop it unseen while its status says queued")
    if work != QUEUE_RETENTION_S:
        errors.append(f"the work queue keeps messages {work} s, runtime/contract/jobs.py's QUEUE_RETENTION_S says "
                      f"{QUEUE_RETENTION_S}: the status route would call jobs lost at the wrong time")
    if dead < work:
        errors.append(f"the dead-letter queue keeps messages {dead} s, less than the work queue's {work} s: a "
                      "dead-lettered message keeps its enqueue time and would vanish early")
    inputs = next(rule for rule in res["InputBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
                  if rule.get("Prefix") == "inputs/")
    if int(inputs["ExpirationInDays"]) * DAY_S < longest:
        errors.append(f"inputs expire after {inputs['ExpirationInDays']} days, before a job that may wait "
                      f"{longest:.0f} s runs")
    return errors


# == item 7: SNS may write its traces ========================================================================
def check_sns_tracing(tpl: Doc) -> list[str]:
    """An X-Ray resource policy lets sns.amazonaws.com write segments, only for this account and exactly the
    stack's topics with active tracing."""
    traced = {resolve({"Ref": name}, tpl) for name, topic in of_type(tpl, "AWS::SNS::Topic").items()
              if topic["Properties"].get("TracingConfig") == "Active"}
    policies = of_type(tpl, "AWS::XRay::ResourcePolicy")
    if traced and not policies:
        return ["topics have active tracing, but no AWS::XRay::ResourcePolicy lets SNS write their segments"]
    allowed: set[str] = set()
    errors = []
    for name, policy in policies.items():
        document = json.loads(resolve(policy["Properties"]["PolicyDocument"], tpl))
        for statement in document["Statement"]:
            if statement.get("Principal") != {"Service": "sns.amazonaws.com"}:
                continue
            actions = set(statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
            if actions != SNS_XRAY_ACTIONS:
                errors.append(f"{name} grants SNS {sorted(actions)}, not exactly {sorted(SNS_XRAY_ACTIONS)}")
            condition = statement.get("Condition", {})
            account = condition.get("StringEquals", {}).get("aws:SourceAccount")
            if account != EXAMPLE_STACK["AWS::AccountId"]:
                errors.append(f"{name} does not limit SNS to this account (aws:SourceAccount {account!r})")
            arns = next((c["aws:SourceArn"] for c in condition.values() if "aws:SourceArn" in c), [])
            arns = set(arns if isinstance(arns, list) else [arns])
            if any("*" in arn for arn in arns):
                errors.append(f"{name} admits topics by wildcard ({sorted(arns)}), not just the stack's")
            allowed |= arns
    if allowed != traced:
        errors.append(f"the X-Ray resource policy admits topics {sorted(allowed)}, the traced topics are "
                      f"{sorted(traced)}")
    return errors


# == item 8: log groups and lifecycle rules ===================================================================
def check_log_groups(tpl: Doc) -> list[str]:
    """Each function logs to a log group of the stack that keeps its events ``LogRetentionDays``, and its role
    may write there."""
    groups = of_type(tpl, "AWS::Logs::LogGroup")
    transformed = sam_transform(tpl)
    errors = []
    for name, function in of_type(tpl, "AWS::Serverless::Function").items():
        target = function["Properties"].get("LoggingConfig", {}).get("LogGroup", {})
        group = groups.get(target.get("Ref", "")) if isinstance(target, dict) else None
        if group is None:
            errors.append(f"{name} logs to {target or 'the log group Lambda creates'}, not a log group of the stack: "
                          "it would never expire and outlive the stack")
            continue
        if group["Properties"].get("RetentionInDays") != {"Ref": "LogRetentionDays"}:
            errors.append(f"{name}'s log group keeps {group['Properties'].get('RetentionInDays', 'for ever')}, not "
                          "LogRetentionDays")
        if not str(resolve(group["Properties"].get("LogGroupName"), tpl)).startswith("/aws/lambda/"):
            errors.append(f"{name}'s log group is not under /aws/lambda/, where its logs are looked for")
        role = transformed["Resources"].get(f"{name}Role", {}).get("Properties", {})
        if LAMBDA_LOGS_POLICY not in role.get("ManagedPolicyArns", []):
            errors.append(f"{name}'s role lacks {LAMBDA_LOGS_POLICY}: it could not write its logs")
    return errors


def lifecycle_rules(tpl: Doc, parameters: dict[str, Any]) -> dict[str, Doc]:
    """The output bucket's enabled rules by prefix, as CloudFormation builds them for these parameter values."""
    stack = {**EXAMPLE_STACK, **{name: str(value) for name, value in parameters.items()}}
    rules = resolve(tpl["Resources"]["OutputBucket"]["Properties"]["LifecycleConfiguration"]["Rules"], tpl, stack)
    return {rule["Prefix"]: rule for rule in rules if rule and rule.get("Status") == "Enabled" and "Prefix" in rule}


def check_lifecycle(tpl: Doc) -> list[str]:
    """``outputs/``, ``jobs/`` and ``checkpoints/`` expire after their parameters' days; ``OutputsExpirationDays``
    0 keeps outputs for ever; a status document outlives its queue message, a checkpoint its job's deadline."""
    params = tpl["Parameters"]
    errors = []
    for days in (7, 30):
        rules = lifecycle_rules(tpl, dict.fromkeys(EXPIRING_PREFIXES.values(), days))
        for prefix, parameter in EXPIRING_PREFIXES.items():
            got = rules.get(prefix, {}).get("ExpirationInDays")
            if str(got) != str(days):
                errors.append(f"with {parameter}={days}, objects under {prefix} expire after {got} days")
    kept = lifecycle_rules(tpl, {"OutputsExpirationDays": 0})
    if "outputs/" in kept:
        errors.append(f"OutputsExpirationDays=0 must keep outputs for ever, not {kept['outputs/']}")
    if int(params["JobsExpirationDays"].get("MinValue", 0)) * DAY_S <= QUEUE_RETENTION_S:
        errors.append("JobsExpirationDays may be shorter than the queue's retention: a worker could receive a job "
                      "whose status document is gone")
    if int(params["CheckpointsExpirationDays"].get("MinValue", 0)) * DAY_S < MAX_TTL_S:
        errors.append("CheckpointsExpirationDays may be shorter than the longest wait: a waiting job would lose "
                      "its checkpoint")
    return errors


def teardown_commands(doc: str) -> list[str]:
    """The command lines of docs/deploy.md's "Tear down", continuation lines joined."""
    section = doc.split("## 10. Tear down", 1)[1].split("\n## ", 1)[0]
    block = "\n".join(re.findall(r"```sh\n(.*?)```", section, re.S))
    return [line.strip() for line in re.sub(r"\\\n\s*", " ", block).splitlines() if line.strip()]


def check_teardown(commands: list[str], tpl: Doc) -> list[str]:
    """The tear-down removes what the stack does not own and in an order that works: attached policies before
    the stack (CloudFormation cannot delete an attached managed policy), buckets emptied before it, the GPU nodes
    gone, the API keys' parameter, EFS's mount targets before the file system before its security group."""
    def at(pattern: str) -> int | None:
        return next((i for i, line in enumerate(commands) if re.search(pattern, line)), None)

    errors = []
    keys = tpl["Parameters"]["ApiKeysParameterName"]["Default"]
    for pattern in (r"detach-user-policy", r"detach-role-policy", r"out ApiInvokePolicyArn",
                    r"kubectl wait --for=delete nodeclaims", rf"ssm delete-parameter --name {re.escape(keys)}\b",
                    r"logs delete-log-group", r"out InputBucketName", r"out OutputBucketName"):
        if at(pattern) is None:
            errors.append(f"the tear-down lacks {pattern!r}")
    for before, after in ((r"detach-user-policy", r"sam delete"), (r"detach-role-policy", r"sam delete"),
                          (r"aws s3 rm", r"sam delete"), (r"kubectl delete -k", r"sam delete"),
                          (r"delete-mount-target", r"delete-file-system"),
                          (r"delete-file-system", r"delete-security-group")):
        first, then = at(before), at(after)
        if first is not None and then is not None and first > then:
            errors.append(f"the tear-down runs {after!r} before {before!r}")
    return errors


# == the real template ========================================================================================
def test_retention_outlasts_the_longest_wait() -> None:
    assert check_retention(template()) == []


def test_sns_may_write_traces_for_its_topics_only() -> None:
    assert check_sns_tracing(template()) == []


def test_every_function_has_its_log_group() -> None:
    assert check_log_groups(template()) == []


def test_lifecycle_rules_follow_the_parameters() -> None:
    assert check_lifecycle(template()) == []


def test_teardown_is_complete_and_in_order() -> None:
    assert check_teardown(teardown_commands(DEPLOY_DOC.read_text()), template()) == []


# == broken copies ============================================================================================
def _broken(change: Any) -> Doc:
    tpl = copy.deepcopy(template())
    change(tpl["Resources"], tpl)
    return tpl


def _says(errors: list[str], *words: str) -> None:
    assert errors, "the check found nothing"
    assert all(any(word in error for error in errors) for word in words), errors


def test_broken_retention() -> None:
    four_days = _broken(lambda res, _: res["WorkQueue"]["Properties"].update(MessageRetentionPeriod=345600))
    _says(check_retention(four_days), "drop it unseen", "QUEUE_RETENTION_S")
    short_dlq = _broken(lambda res, _: res["DeadLetterQueue"]["Properties"].update(MessageRetentionPeriod=345600))
    _says(check_retention(short_dlq), "dead-letter queue")


def test_broken_sns_tracing() -> None:
    _says(check_sns_tracing(_broken(lambda res, _: res.pop("SnsTracingPolicy"))), "no AWS::XRay::ResourcePolicy")

    def widen(res: Doc, tpl: Doc) -> None:
        text = res["SnsTracingPolicy"]["Properties"]["PolicyDocument"]["Fn::Sub"]
        res["SnsTracingPolicy"]["Properties"]["PolicyDocument"]["Fn::Sub"] = text.replace(
            '"aws:SourceAccount": "${AWS::AccountId}"', '"aws:SourceAccount": "*"').replace(
            '["${JobsTopic}", "${ResultsTopic}"]', '"arn:aws:sns:*"')

    _says(check_sns_tracing(_broken(widen)), "account", "wildcard")


def test_broken_log_groups() -> None:
    unconfigured = _broken(lambda res, _: res["StatusFunction"]["Properties"].pop("LoggingConfig"))
    _says(check_log_groups(unconfigured), "StatusFunction logs to the log group Lambda creates")
    for_ever = _broken(lambda res, _: res["SubmitLogGroup"]["Properties"].pop("RetentionInDays"))
    _says(check_log_groups(for_ever), "SubmitFunction's log group keeps for ever")


def test_broken_lifecycle() -> None:
    def fixed(res: Doc, _: Doc) -> None:
        for rule in res["OutputBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]:
            if rule.get("Prefix") == "checkpoints/":
                rule["ExpirationInDays"] = 7

    _says(check_lifecycle(_broken(fixed)), "CheckpointsExpirationDays=30")

    def no_keep(res: Doc, _: Doc) -> None:
        rules = res["OutputBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
        rules[:] = [rule["Fn::If"][2] if "Fn::If" in rule else rule for rule in rules]

    _says(check_lifecycle(_broken(no_keep)), "keep outputs for ever")
    _says(check_lifecycle(_broken(lambda _, tpl: tpl["Parameters"]["JobsExpirationDays"].update(MinValue=1))),
          "status document is gone")


def test_broken_teardown() -> None:
    commands = teardown_commands(DEPLOY_DOC.read_text())
    late = [line for line in commands if "detach-user-policy" not in line] + ["aws iam detach-user-policy --x"]
    _says(check_teardown(late, template()), "before 'detach-user-policy'")
    _says(check_teardown([line for line in commands if "ssm delete-parameter" not in line], template()),
          "ssm delete-parameter")


# == ComfyUI's /ws on AWS (tests/harness/ws_checks.py) ===========================================================
def test_the_comfy_websocket_api_is_wired() -> None:
    assert check_comfy_ws(template()) == []


@pytest.mark.parametrize(("change", "words"), [
    (lambda res: res.pop("ComfyWsDefaultRoute"), ("routes are ['$connect', '$disconnect']",)),
    (lambda res: res["ComfyWsInvokePermission"]["Properties"].update(
        SourceArn={"Fn::Sub": "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:*"}),
     ("may be invoked by any API",)),
    (lambda res: res["ComfyWsStage"]["Properties"].update(StageName="prod"), ("one auto-deployed stage 'ws'",)),
    (lambda res: res["ComfyWsNotifyFunction"]["Properties"]["Policies"][0]["Statement"][-1].update(
        Resource={"Fn::Sub": "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:*"}),
     ("may manage",)),
    (lambda res: res["ComfyWsFunction"]["Properties"]["Policies"][0]["Statement"][2].update(
        Resource={"Fn::Sub": "${OutputBucket.Arn}/*"}), ("beyond comfy/ws/",)),
    (lambda res: res["ComfyWsNotifyFunction"]["Properties"]["Events"]["Results"]["Properties"].pop("FilterPolicy"),
     ("lets the sample's notifications in",)),
    (lambda res: res["ComfyWsFunction"]["Properties"].update(Timeout=5), ("does not outlast its SSM call",)),
])
def test_broken_comfy_websocket_api(change: Any, words: tuple[str, ...]) -> None:
    _says(check_comfy_ws(broken(template(), change)), *words)
