"""The checks of tests/infra/test_infra.py on the AWS SAM template (lambdas/template.yaml): its settings, queue,
names and policies against the code, and the local stack (runtime/local/provision.py) it must match. Each takes
loaded documents and returns the problems it finds, so the tests run it on the real files and on broken copies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from lambdas import api
from lambdas.authorizer import COMPAT_PATH_RE, HEADER, SSM_CONFIG
from runtime.config import PREFIX, Settings
from runtime.local import provision
from tests.harness.infra_docs import (
    EXAMPLE_STACK,
    WORKER,
    Doc,
    docs_of,
    one,
    output_settings,
    pod_spec,
    policy_actions,
    resolve,
    worker_env,
    worker_settings,
)
from tests.harness.pool_checks import Stack
from tests.harness.ws_checks import WS_ACTIONS, http_api

#: Settings the API Lambdas cannot run without.
REQUIRED_API_SETTINGS = {PREFIX + name for name in (
    "REGION", "INPUT_BUCKET", "OUTPUT_BUCKET", "JOBS_TOPIC_ARN", "QUEUE_NAME", "MODELS")}


#: What each API function may do: its calls in lambdas/ and the runtime modules they use.
FUNCTION_ACTIONS = {
    "SubmitFunction": {"s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:ListBucket", "sns:Publish"},
    "StatusFunction": {"s3:GetObject", "s3:ListBucket"},
    "CancelFunction": {"s3:GetObject", "s3:PutObject", "s3:ListBucket"},
    # the compatibility routes: submit's calls, status reads and output images, callers/{caller}.json pointers
    "CompatFunction": {"s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:ListBucket", "sns:Publish"},
    "AuthorizerFunction": {"ssm:GetParameter", "kms:Decrypt"},
    # the sweep (lambdas/sweep.py): lists pending/, reads and updates status documents, publishes, deletes
    "SweepFunction": {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket", "sns:Publish"},
    **WS_ACTIONS,  # ComfyUI's /ws: its connections' function and the notifier (tests/harness/ws_checks.py)
}
#: The compatibility routes' authorizer (the HTTP API's Auth.Authorizers) and the handler that serves them.
COMPAT_AUTHORIZER = "ApiKeyAuthorizer"
COMPAT_HANDLER = f"{api.handler.__module__}.{api.handler.__name__}"
#: The longest API Gateway may keep answering for a key after it was revoked (plus the authorizer's own cache).
MAX_AUTHORIZER_TTL_S = 300


def check_api_settings(tpl: Doc) -> list[str]:
    """The Lambdas' SPOTGEN_* variables exist in Settings, and the required ones are set."""
    known = {PREFIX + name.upper() for name in Settings.model_fields}
    common = tpl["Globals"]["Function"]["Environment"]["Variables"]
    errors = []
    for logical_id in FUNCTION_ACTIONS:
        own = tpl["Resources"][logical_id]["Properties"].get("Environment", {}).get("Variables", {})
        env = {**common, **own}
        errors += [f"{logical_id} sets {name}, but runtime/config.py has no setting {name[len(PREFIX):].lower()!r}"
                   for name in sorted(env) if name.startswith(PREFIX) and name not in known]
        errors += [f"{logical_id} lacks {name}" for name in sorted(REQUIRED_API_SETTINGS - env.keys())]
    return errors


def check_queue(tpl: Doc, docs: list[Doc]) -> list[str]:
    """The work queue fits the worker's lease and heartbeat, and its redrive matches the worker's count."""
    queue = tpl["Resources"]["WorkQueue"]["Properties"]
    settings = worker_settings(docs)
    visibility = int(resolve(queue["VisibilityTimeout"], tpl))
    errors = []
    if settings.heartbeat_s >= visibility:
        errors.append(f"SPOTGEN_HEARTBEAT_S ({settings.heartbeat_s:g}) is not below the work queue's VisibilityTimeout "
                      f"({visibility}): a message could become visible before its first extension")
    if visibility != provision.VISIBILITY_TIMEOUT_S:
        errors.append(f"the work queue's VisibilityTimeout is {visibility}, the local stack's "
                      f"{provision.VISIBILITY_TIMEOUT_S} (runtime/local/provision.py): keep them the same")
    receives = int(resolve(queue["RedrivePolicy"]["maxReceiveCount"], tpl))
    if receives != settings.max_receive_count:
        errors.append(f"the work queue's maxReceiveCount is {receives}, but the workers' SPOTGEN_MAX_RECEIVE_COUNT "
                      f"is {settings.max_receive_count}: the last delivery would not end the job")
    dead_letter = resolve(queue["RedrivePolicy"]["deadLetterTargetArn"], tpl)
    if dead_letter != resolve({"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}, tpl):
        errors.append(f"the work queue redrives to {dead_letter}, not to DeadLetterQueue")
    return errors


class Recorder:
    """Stands in for a boto3 client: records every call, answers what provision() reads back."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Doc]] = []

    def __getattr__(self, method: str) -> Callable[..., Doc]:
        def call(**kwargs: Any) -> Doc:
            self.calls.append((method, kwargs))
            if method == "create_queue":
                return {"QueueUrl": f"https://queue/{kwargs['QueueName']}"}
            if method == "get_queue_attributes":
                return {"Attributes": {"QueueArn": f"arn:aws:sqs:::{kwargs['QueueUrl'].rsplit('/', 1)[1]}"}}
            if method == "create_topic":
                return {"TopicArn": f"arn:aws:sns:::{kwargs['Name']}"}
            return {}

        return call


def local_stack(prefix: str) -> dict[str, Doc]:
    """What runtime/local/provision.py creates for the local stack: queues, topics and the subscription's attributes."""
    s3, sns, sqs = Recorder(), Recorder(), Recorder()
    provision.provision(s3, sns, sqs, prefix=prefix)
    queues = {kw["QueueName"]: kw["Attributes"] for method, kw in sqs.calls if method == "create_queue"}
    topics = {kw["Name"]: kw.get("Attributes", {}) for method, kw in sns.calls if method == "create_topic"}
    subscriptions = {kw["TopicArn"].rsplit(":", 1)[1]: kw["Attributes"] for method, kw in sns.calls
                     if method == "subscribe"}
    blocks = [kw["PublicAccessBlockConfiguration"] for method, kw in s3.calls if method == "put_public_access_block"]
    return {"queues": queues, "topics": topics, "subscriptions": subscriptions, "public_access_blocks": blocks}


def check_matches_local_stack(tpl: Doc) -> list[str]:
    """The template builds what runtime/local/provision.py builds locally: names, queue attributes, raw delivery,
    the filter policy, public access blocks."""
    local = local_stack(EXAMPLE_STACK["AWS::StackName"])
    res = tpl["Resources"]
    errors = []
    work, dead = (resolve(res[name]["Properties"]["QueueName"], tpl) for name in ("WorkQueue", "DeadLetterQueue"))
    for name in (work, dead):
        if name not in local["queues"]:
            errors.append(f"queue {name} of the template is not one the local stack makes ({sorted(local['queues'])})")
    if work in local["queues"]:
        attributes = local["queues"][work]
        for key in ("VisibilityTimeout", "MessageRetentionPeriod"):
            if str(resolve(res["WorkQueue"]["Properties"][key], tpl)) != attributes[key]:
                errors.append(f"WorkQueue {key} differs from runtime/local/provision.py ({attributes[key]})")
        local_redrive = json.loads(attributes["RedrivePolicy"])["maxReceiveCount"]
        if int(resolve(res["WorkQueue"]["Properties"]["RedrivePolicy"]["maxReceiveCount"], tpl)) != local_redrive:
            errors.append(f"WorkQueue maxReceiveCount differs from runtime/local/provision.py ({local_redrive})")
    if dead in local["queues"] and str(res["DeadLetterQueue"]["Properties"]["MessageRetentionPeriod"]) != \
            local["queues"][dead]["MessageRetentionPeriod"]:
        errors.append("DeadLetterQueue MessageRetentionPeriod differs from runtime/local/provision.py")
    for logical_id in ("JobsTopic", "ResultsTopic"):
        topic = resolve(res[logical_id]["Properties"]["TopicName"], tpl)
        if topic not in local["topics"]:
            errors.append(f"{logical_id} is not named as the local stack's topics ({sorted(local['topics'])})")
        elif res[logical_id]["Properties"].get("TracingConfig") != local["topics"][topic].get("TracingConfig"):
            errors.append(f"{logical_id}'s TracingConfig differs from runtime/local/provision.py")
    subscription = res["WorkQueueSubscription"]["Properties"]
    jobs_topic = resolve(res["JobsTopic"]["Properties"]["TopicName"], tpl)
    expected = local["subscriptions"].get(jobs_topic, {})
    if str(subscription.get("RawMessageDelivery")).lower() != expected.get("RawMessageDelivery"):
        errors.append("the work queue's subscription must use raw delivery: the worker reads the SQS body as the "
                      "Celery message")
    if Stack(tpl, {}).value(subscription.get("FilterPolicy")) != json.loads(expected.get("FilterPolicy", "null")):
        errors.append(f"the subscription's FilterPolicy differs from runtime/local/provision.py "
                      f"({expected.get('FilterPolicy')})")
    if subscription.get("FilterPolicyScope") != expected.get("FilterPolicyScope"):
        errors.append("the subscription's FilterPolicyScope differs from runtime/local/provision.py")
    if resolve(subscription["TopicArn"], tpl) != resolve({"Ref": "JobsTopic"}, tpl):
        errors.append("the work queue is not subscribed to the jobs topic")
    for logical_id in ("InputBucket", "OutputBucket"):
        block = res[logical_id]["Properties"].get("PublicAccessBlockConfiguration")
        if block not in local["public_access_blocks"]:
            errors.append(f"{logical_id} does not block public access as the local stack does")
    return errors


def check_names(tpl: Doc, docs: list[Doc]) -> list[str]:
    """Queue, topic and bucket names agree across the template's outputs, the worker's ConfigMap, the
    ScaledObject and the Lambdas; namespaces and service accounts agree with the Pod Identity association."""
    errors = []
    env = worker_env(docs)
    for name, value in output_settings(tpl).items():
        if env.get(name) != value:
            errors.append(f"the worker's {name} is {env.get(name)!r}, but the stack's WorkerSettings output gives "
                          f"{value!r}")
    deployment = one(docs, "Deployment", WORKER)
    namespace = deployment["metadata"].get("namespace")
    for scaled in docs_of(docs, "ScaledObject"):
        target = scaled["spec"]["scaleTargetRef"]
        if target.get("kind", "Deployment") != "Deployment" or target["name"] != WORKER:
            errors.append(f"ScaledObject {scaled['metadata']['name']} scales {target}, not Deployment {WORKER}")
        if scaled["metadata"].get("namespace") != namespace:
            errors.append(f"ScaledObject {scaled['metadata']['name']} is not in the worker's namespace {namespace}")
        for trigger in scaled["spec"]["triggers"]:
            if trigger["type"] != "aws-sqs-queue":
                continue
            if trigger["metadata"].get("queueURL") != env.get(PREFIX + "QUEUE_URL"):
                errors.append(f"the ScaledObject watches {trigger['metadata'].get('queueURL')}, but the worker "
                              f"consumes {env.get(PREFIX + 'QUEUE_URL')}")
            if trigger["metadata"].get("awsRegion") != env.get(PREFIX + "REGION"):
                errors.append(f"the ScaledObject's awsRegion {trigger['metadata'].get('awsRegion')} is not the "
                              f"worker's region {env.get(PREFIX + 'REGION')}")
            auth = trigger.get("authenticationRef", {}).get("name")
            if not any(a["metadata"]["name"] == auth and a["metadata"].get("namespace") == namespace
                       for a in docs_of(docs, "TriggerAuthentication")):
                errors.append(f"the ScaledObject uses TriggerAuthentication {auth}, which is not in {namespace}")
    parameters = tpl["Parameters"]
    account = pod_spec(docs).get("serviceAccountName")
    if parameters["WorkerNamespace"]["Default"] != namespace:
        errors.append(f"the template's WorkerNamespace ({parameters['WorkerNamespace']['Default']}) is not the "
                      f"worker's namespace ({namespace}): Pod Identity would not apply")
    if parameters["WorkerServiceAccount"]["Default"] != account:
        errors.append(f"the template's WorkerServiceAccount ({parameters['WorkerServiceAccount']['Default']}) is "
                      f"not the worker's service account ({account})")
    if not any(sa["metadata"]["name"] == account for sa in docs_of(docs, "ServiceAccount")):
        errors.append(f"the worker's service account {account} is not rendered")
    api_env = resolve(tpl["Globals"]["Function"]["Environment"]["Variables"], tpl)
    for name in ("QUEUE_NAME", "INPUT_BUCKET", "OUTPUT_BUCKET"):
        if api_env.get(PREFIX + name) != env.get(PREFIX + name):
            errors.append(f"the API's {PREFIX + name} is {api_env.get(PREFIX + name)!r}, the worker's "
                          f"{env.get(PREFIX + name)!r}")
    return errors


def check_worker_policy(tpl: Doc, required: dict[str, str]) -> list[str]:
    """WorkerPolicy grants every permission the worker needs and nothing more, with no wildcard."""
    policy = tpl["Resources"]["WorkerPolicy"]["Properties"]["PolicyDocument"]
    granted, wildcards = policy_actions(policy)
    errors = [f"WorkerPolicy lacks {action}, which the worker needs ({required[action]})"
              for action in sorted(required.keys() - granted)]
    errors += [f"WorkerPolicy grants {action}, which no code of the worker uses: remove it, or name the library "
               "call in tests/infra/test_infra.py (LIBRARY_CALLS)" for action in sorted(granted - required.keys())]
    errors += [f"WorkerPolicy has a wildcard: {wildcard}" for wildcard in wildcards]
    errors += check_models_read(policy)
    role = tpl["Resources"]["WorkerRole"]["Properties"]
    if role.get("ManagedPolicyArns") != [{"Ref": "WorkerPolicy"}] or role.get("Policies"):
        errors.append("WorkerRole must have WorkerPolicy and nothing else")
    return errors


def check_models_read(policy: Doc) -> list[str]:
    """S3 model sources: the worker lists and reads ModelsPrefix of ModelsBucket, nothing more, if there is one."""
    found = {s["Fn::If"][1].get("Sid"): s["Fn::If"] for s in policy["Statement"] if "Fn::If" in s}
    arn, errors = "arn:${AWS::Partition}:s3:::${ModelsBucket}", []
    for sid, action, resource, condition in (
            ("ReadModels", "s3:GetObject", arn + "/${ModelsPrefix}/*", None),
            ("ListModels", "s3:ListBucket", arn, {"StringLike": {"s3:prefix": {"Fn::Sub": "${ModelsPrefix}/*"}}})):
        if found.get(sid) != ["HasModelsBucket", {"Sid": sid, "Effect": "Allow", "Action": action, "Resource": {
                "Fn::Sub": resource}, **({"Condition": condition} if condition else {})}, {"Ref": "AWS::NoValue"}]:
            errors.append(f"WorkerPolicy's {sid} must be, if HasModelsBucket, {action} on {resource} alone"
                          + (f" with the condition {json.dumps(condition)}" if condition else ""))
    return errors


def check_function_policies(tpl: Doc) -> list[str]:
    """Each API function may do exactly what its code does (FUNCTION_ACTIONS), with no wildcard."""
    errors = []
    for logical_id, expected in FUNCTION_ACTIONS.items():
        granted: set[str] = set()
        for policy in tpl["Resources"][logical_id]["Properties"].get("Policies", []):
            if not isinstance(policy, dict) or "Statement" not in policy:
                errors.append(f"{logical_id} uses policy {policy}: list the statements instead")
                continue
            actions, wildcards = policy_actions(policy)
            granted |= actions
            errors += [f"{logical_id} has a wildcard: {wildcard}" for wildcard in wildcards]
        errors += [f"{logical_id} lacks {action}" for action in sorted(expected - granted)]
        errors += [f"{logical_id} grants {action}, which its code does not use"
                   for action in sorted(granted - expected)]
    return errors


def _literal(pattern: re.Pattern[str]) -> str:
    """The path a route pattern starts with, up to its first regex syntax (``^/v1alpha2/?$`` -> ``/v1alpha2``)."""
    text = pattern.pattern.removeprefix("^")
    end = next((i for i, c in enumerate(text) if c in "()[]?*+{}$\\.|"), len(text))
    return text[: end - 1 if end < len(text) and text[end] in "?*{" else end]


def _handler(transformed: Doc, operation: Doc) -> str | None:
    uri = json.dumps(operation.get("x-amazon-apigateway-integration", {}).get("uri"))
    function = re.search(r"\$\{(\w+)\.Arn\}", uri)
    return transformed["Resources"][function.group(1)]["Properties"]["Handler"] if function else None


def check_api(transformed: Doc) -> list[str]:
    """The native routes require IAM auth and are those of lambdas/api.py with the same handlers; the compatibility
    routes (``COMPAT_PATH_RE``) are authorized by the API-key authorizer alone and served by lambdas/api.py's
    router, and cover its compatibility routes."""
    http, routes, errors = http_api(transformed)  # ComfyUI's WebSocket API is ws_checks.py's
    if http is None:
        return errors
    errors += [f"route {r['Properties'].get('RouteKey')} is not IAM-authorized" for r in routes
               if r["Properties"].get("AuthorizationType") != "AWS_IAM"]
    seen: set[int] = set()
    compat: list[tuple[str, str]] = []
    body = http["Properties"]["Body"]
    for path, methods in body["paths"].items():
        for method, operation in methods.items():
            key = f"{method.upper()} {path}"
            handler = _handler(transformed, operation)
            security = operation.get("security", [])
            if COMPAT_PATH_RE.match(path.replace("{proxy+}", "txt2img")):
                compat.append((method.upper(), path))
                if security != [{COMPAT_AUTHORIZER: []}]:
                    errors.append(f"{key} is a compatibility route: it must be authorized by {COMPAT_AUTHORIZER} "
                                  f"(x-api-key) alone, not {security}")
                if handler != COMPAT_HANDLER:
                    errors.append(f"{key} runs {handler}, but the compatibility routes are lambdas/api.py's "
                                  f"({COMPAT_HANDLER})")
                continue
            if security != [{"AWS_IAM": []}]:
                errors.append(f"{key} does not require IAM authorization: anyone could call it ({security})")
            sample = path.replace("{id}", "job-1")
            matched = [i for i, (verb, pattern, _) in enumerate(api.ROUTES)
                       if verb == method.upper() and pattern.match(sample)]
            if not matched:
                errors.append(f"{key} is not a route of lambdas/api.py")
                continue
            seen.update(matched)
            routed = api.ROUTES[matched[0]][2]
            expected = f"{routed.__module__}.{routed.__name__}"
            if expected != handler:
                errors.append(f"{key} runs {handler}, but lambdas/api.py routes it to {expected}")
    for i, (method, pattern, _) in enumerate(api.ROUTES):
        literal = _literal(pattern)
        if i in seen or any(verb == method and (literal.rstrip("/") == path or (
                path.endswith("/{proxy+}") and literal.startswith(path.removesuffix("{proxy+}"))))
                for verb, path in compat):
            continue
        errors.append(f"lambdas/api.py routes {method} {pattern.pattern}, which the API lacks")
    errors += _check_scheme(transformed, body.get("components", {}).get("securitySchemes", {}))
    return errors


def _check_scheme(transformed: Doc, schemes: Doc) -> list[str]:
    """The API-key authorizer as API Gateway gets it: a REQUEST authorizer on ``x-api-key`` (so a request without
    it is a 401 that invokes nothing), payload 2.0 with simple responses (what lambdas/authorizer.py answers), a
    bounded result TTL, lambdas/authorizer.py as its function, and API Gateway allowed to invoke it."""
    scheme = schemes.get(COMPAT_AUTHORIZER, {}).get("x-amazon-apigateway-authorizer")
    if scheme is None:
        return [f"the HTTP API has no Lambda authorizer {COMPAT_AUTHORIZER}"]
    errors = []
    if scheme.get("type") != "request" or scheme.get("identitySource") != [f"$request.header.{HEADER}"]:
        errors.append(f"{COMPAT_AUTHORIZER} must be a request authorizer on $request.header.{HEADER}, not "
                      f"{scheme.get('type')} on {scheme.get('identitySource')}")
    if scheme.get("authorizerPayloadFormatVersion") != "2.0" or scheme.get("enableSimpleResponses") is not True:
        errors.append(f"{COMPAT_AUTHORIZER} must use payload format 2.0 with simple responses "
                      "(lambdas/authorizer.py answers {isAuthorized, context})")
    ttl = scheme.get("authorizerResultTtlInSeconds", 300)
    if not 0 <= int(ttl) <= MAX_AUTHORIZER_TTL_S:
        errors.append(f"{COMPAT_AUTHORIZER} caches answers for {ttl} s: a revoked key would work that long "
                      f"(at most {MAX_AUTHORIZER_TTL_S})")
    function = re.search(r'"Fn::GetAtt": \["(\w+)", "Arn"\]', json.dumps(scheme.get("authorizerUri")))
    resources = transformed["Resources"]
    name = function.group(1) if function else None
    if name not in resources or resources[name]["Properties"].get("Handler") != "lambdas.authorizer.handler":
        errors.append(f"{COMPAT_AUTHORIZER} does not run lambdas.authorizer.handler ({name})")
    allowed = [r for r in resources.values() if r["Type"] == "AWS::Lambda::Permission"
               and r["Properties"].get("FunctionName") == {"Fn::GetAtt": [name, "Arn"]}
               and r["Properties"].get("Principal") == "apigateway.amazonaws.com"]
    if not allowed:
        errors.append(f"API Gateway may not invoke {name}: every compatibility request would be a 500 "
                      "(EnableFunctionDefaultPermissions)")
    return errors


def ssm_worst_case_s() -> float:
    """The longest the authorizer's SSM call can take: every attempt connecting and answering as late as its
    timeouts allow, with botocore's standard backoff (at most 1, 2, 4... s) between them."""
    attempts = SSM_CONFIG.retries["total_max_attempts"]
    backoff = sum(min(2.0**i, 20.0) for i in range(attempts - 1))
    return attempts * (SSM_CONFIG.connect_timeout + SSM_CONFIG.read_timeout) + backoff


def check_authorizer(tpl: Doc) -> list[str]:
    """The authorizer function reads exactly the API keys parameter (SPOTGEN_API_KEYS_PARAMETER), decrypts it only
    through SSM and only for that parameter, and its timeout outlasts its bounded SSM call, so a slow SSM is a
    logged failure rather than a Lambda timeout."""
    auth = tpl["Resources"]["Api"]["Properties"]["Auth"].get("Authorizers", {}).get(COMPAT_AUTHORIZER)
    if auth is None:
        return [f"the HTTP API has no authorizer {COMPAT_AUTHORIZER}"]
    name = auth["FunctionArn"]["Fn::GetAtt"][0]
    props = tpl["Resources"][name]["Properties"]
    errors = []
    parameter = resolve(props.get("Environment", {}).get("Variables", {}).get(PREFIX + "API_KEYS_PARAMETER"), tpl)
    if not isinstance(parameter, str) or not parameter.startswith("/"):
        errors.append(f"{name} must set {PREFIX}API_KEYS_PARAMETER to the ApiKeysParameterName (got {parameter!r})")
    arn = f"arn:aws:ssm:{EXAMPLE_STACK['AWS::Region']}:{EXAMPLE_STACK['AWS::AccountId']}:parameter{parameter}"
    statements = [s for policy in props.get("Policies", []) for s in resolve(policy, tpl).get("Statement", [])]
    for statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if "ssm:GetParameter" in actions and statement.get("Resource") != arn:
            errors.append(f"{name} may read {statement.get('Resource')}, not just the API keys parameter {arn}")
        if "kms:Decrypt" in actions:
            condition = statement.get("Condition", {}).get("StringEquals", {})
            if condition.get("kms:ViaService") != f"ssm.{EXAMPLE_STACK['AWS::Region']}.amazonaws.com" or \
                    condition.get("kms:EncryptionContext:PARAMETER_ARN") != arn:
                errors.append(f"{name} may use kms:Decrypt beyond SSM's decryption of {arn} (condition {condition})")
    timeout = props.get("Timeout", tpl["Globals"]["Function"].get("Timeout", 3))
    if timeout < ssm_worst_case_s() + 2:
        errors.append(f"{name}'s Timeout ({timeout} s) does not outlast its SSM call ({ssm_worst_case_s():g} s at "
                      "worst, lambdas/authorizer.py SSM_CONFIG) with room to answer")
    return errors
