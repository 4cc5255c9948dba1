"""The checks of tests/infra/test_infra.py. Each takes loaded documents and returns the problems it finds, with a
message that says what to fix, so the tests run it on the real files and on deliberately broken copies.

The code is the source of truth: setting names (runtime/config.py), probe paths and port (runtime/ops/health.py),
the AWS calls the worker makes (tests/harness/infra_docs.py scans runtime/), the shape of queues and subscriptions
(runtime/local/provision.py), the API's routes (lambdas/api.py).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate import utils as kv_utils

from lambdas import api
from runtime.config import PREFIX, Settings
from runtime.local import provision
from tests.harness.infra_docs import (
    EXAMPLE_STACK,
    REPO,
    SCHEMAS,
    WORKER,
    Doc,
    docs_of,
    one,
    output_settings,
    pod_spec,
    policy_actions,
    resolve,
    worker_container,
    worker_env,
    worker_settings,
)

try:  # the health server's own constants (the operations work); the literals are what it serves
    from runtime.ops.health import DEFAULT_PORT, LIVE_PATH, METRICS_PATH, READY_PATH
except ImportError:  # pragma: no cover
    DEFAULT_PORT, LIVE_PATH, READY_PATH, METRICS_PATH = 9400, "/livez", "/readyz", "/metrics"

#: Core kinds are validated for the oldest Kubernetes that EKS still supports and the newest the package knows.
KUBERNETES_VERSIONS = ("1.31", kv_utils.latest_version())
#: Groups whose kinds are custom resources, validated with the npm packages' schemas (tests/schemas).
CRD_GROUPS = ("karpenter.sh", "karpenter.k8s.aws", "keda.sh", "monitoring.coreos.com")

#: EC2 takes a spot instance this long after its notice, whatever the pod's grace period says.
SPOT_NOTICE_S = 120
#: Grace beyond the checkpoint deadline, for Celery's shutdown and the exit (docs/interruptions.md "Sizing").
GRACE_MARGIN_S = 10
#: The node's data volume holds the model cache plus images, logs and emptyDirs.
NODE_DISK_MARGIN_BYTES = 50 * 2**30

#: Settings the worker cannot run in AWS without (the defaults are for the local stack).
REQUIRED_WORKER_SETTINGS = {PREFIX + name for name in (
    "REGION", "QUEUE_NAME", "QUEUE_URL", "DEAD_LETTER_QUEUE_URL", "INPUT_BUCKET", "OUTPUT_BUCKET",
    "RESULTS_TOPIC_ARN", "MODELS_DIR", "NODE_CACHE_DIR", "DEVICE", "MAX_RECEIVE_COUNT")}
#: Settings the API Lambdas cannot run without.
REQUIRED_API_SETTINGS = {PREFIX + name for name in (
    "REGION", "INPUT_BUCKET", "OUTPUT_BUCKET", "JOBS_TOPIC_ARN", "QUEUE_NAME", "MODELS")}

#: What each API function may do: its calls in lambdas/ and the runtime modules they use.
FUNCTION_ACTIONS = {
    "SubmitFunction": {"s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:ListBucket", "sns:Publish"},
    "StatusFunction": {"s3:GetObject", "s3:ListBucket"},
    "CancelFunction": {"s3:GetObject", "s3:PutObject", "s3:ListBucket"},
}


# == checks: each returns the problems it finds ==============================================================
def check_schemas(docs: list[Doc]) -> list[str]:
    """Core kinds against the Kubernetes OpenAPI schemas (strict: unknown fields are errors) for each version
    of KUBERNETES_VERSIONS; custom resources against their packages' schemas (tests/schemas)."""
    errors = []
    custom = [doc for doc in docs if doc.get("apiVersion", "").split("/")[0] in CRD_GROUPS]
    for doc in docs:
        if doc in custom:
            continue
        where = f"{doc.get('apiVersion')} {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kv_utils.SchemaNotFoundError:
                errors.append(f"{where}: Kubernetes {version} has no such kind and apiVersion")
            except kv_utils.ValidationError as exc:
                path = ".".join(str(part) for part in exc.path)
                errors.append(f"{where}: invalid for Kubernetes {version} at {path or '(top)'}: {exc.message}")
    if custom:
        answer = validate_custom(custom)
        for doc, result in zip(custom, answer["results"], strict=True):
            where = f"{doc.get('apiVersion')} {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
            if not result["known"]:
                errors.append(f"{where}: no published schema for this kind and apiVersion (known: "
                              f"{', '.join(answer['supported'])})")
            errors += [f"{where}: {error}" for error in result["errors"]]
    return errors


def validate_custom(docs: list[Doc]) -> Doc:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the Karpenter and KEDA schemas run on Node.js (tests/schemas/README.md)")
    if not (SCHEMAS / "node_modules/@kubernetes-models/karpenter").is_dir():
        pytest.fail("the schema packages are not installed: run `make install` (npm ci in tests/schemas)")
    out = subprocess.run([node, str(SCHEMAS / "validate-crds.mjs")], input=json.dumps(docs), capture_output=True,
                         text=True, timeout=60, check=False)
    if out.returncode != 0:
        pytest.fail(f"tests/schemas/validate-crds.mjs failed:\n{out.stderr}")
    return json.loads(out.stdout)


def check_settings(docs: list[Doc]) -> list[str]:
    """Every SPOTGEN_* variable a container gets names a field of Settings; the worker has the required ones,
    and its settings validate as the worker would read them."""
    known = {PREFIX + name.upper() for name in Settings.model_fields}
    errors = []
    for maps in docs_of(docs, "ConfigMap"):
        for name in sorted(maps.get("data", {})):
            if name.startswith(PREFIX) and name not in known:
                errors.append(f"ConfigMap {maps['metadata']['name']} sets {name}, but runtime/config.py has no "
                              f"setting {name[len(PREFIX):].lower()!r}")
    specs = [d["spec"]["template"]["spec"] for d in docs_of(docs, "Deployment")]
    specs += [pod["spec"] for pod in docs_of(docs, "Pod")]
    for spec in specs:
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            for item in container.get("env", []):
                if item["name"].startswith(PREFIX) and item["name"] not in known:
                    errors.append(f"container {container['name']} sets {item['name']}, but runtime/config.py has "
                                  f"no setting {item['name'][len(PREFIX):].lower()!r}")
            for source in container.get("envFrom", []):
                name = source.get("configMapRef", {}).get("name")
                if name and not any(doc["metadata"]["name"] == name for doc in docs_of(docs, "ConfigMap")):
                    errors.append(f"container {container['name']} reads ConfigMap {name}, which is not rendered")
    env = worker_env(docs)
    errors += [f"{name} is required by the worker in AWS but not set" for name in
               sorted(REQUIRED_WORKER_SETTINGS - env.keys())]
    try:
        Settings.from_env(env)
    except SystemExit as exc:
        errors.append(f"the worker's settings do not validate: {exc}")
    return errors


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


def _container_port(container: Doc, port: int | str) -> int | None:
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)


#: A worker whose receive chain stopped must be restarted within this long (docs/operations.md "Probes").
RESTART_WEDGED_WITHIN_S = 180


def check_liveness_timing(probe: Doc, poll_wait_s: float) -> list[str]:
    """``/livez`` fails once no receive has finished for ``receive_bound_s`` (runtime/worker/sqs.py); the
    probe's failure window comes on top. Together they must restart a wedged worker within
    ``RESTART_WEDGED_WITHIN_S``, and a probe must not time out sooner than the server can answer."""
    from runtime.worker.sqs import receive_bound_s

    bound = receive_bound_s(poll_wait_s)
    window = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
    errors = []
    if bound + window > RESTART_WEDGED_WITHIN_S:
        errors.append(f"livenessProbe restarts a wedged worker only after {bound:.0f} s (receive bound for "
                      f"SPOTGEN_POLL_WAIT_S={poll_wait_s}) + {window} s (periodSeconds x failureThreshold), more "
                      f"than {RESTART_WEDGED_WITHIN_S} s")
    if probe.get("timeoutSeconds", 1) < 2:
        errors.append("livenessProbe timeoutSeconds must be at least 2: the probe server shares the process "
                      "with the GPU job")
    return errors


def pod_spec_labels(docs: list[Doc]) -> dict[str, str]:
    """The labels of the worker Deployment's pods."""
    worker = one(docs, "Deployment", WORKER)
    return worker["spec"]["template"]["metadata"].get("labels", {})


def check_probes(docs: list[Doc]) -> list[str]:
    """Probes, ports and the metrics Service agree with the health server (runtime/ops/health.py) and the port the
    worker's settings give it."""
    errors = []
    port = worker_settings(docs).metrics_port
    if Settings().metrics_port != DEFAULT_PORT:
        errors.append(f"Settings.metrics_port defaults to {Settings().metrics_port}, the health server to "
                      f"{DEFAULT_PORT}")
    container = worker_container(docs)
    if _container_port(container, "metrics") != port:
        errors.append(f"the worker container's port 'metrics' is {_container_port(container, 'metrics')}, but "
                      f"SPOTGEN_METRICS_PORT is {port}")
    for probe, path in (("startupProbe", LIVE_PATH), ("livenessProbe", LIVE_PATH), ("readinessProbe", READY_PATH)):
        get = container.get(probe, {}).get("httpGet")
        if get is None:
            errors.append(f"the worker has no HTTP {probe} (expected GET {path})")
            continue
        if get.get("path") != path:
            errors.append(f"{probe} asks {get.get('path')}, but the health server serves it on {path}")
        if _container_port(container, get.get("port")) != port:
            errors.append(f"{probe} asks port {get.get('port')}, but the worker serves probes on {port}")
    errors += check_liveness_timing(container.get("livenessProbe", {}), worker_settings(docs).poll_wait_s)
    labels = one(docs, "Deployment", WORKER)["spec"]["template"]["metadata"]["labels"]
    annotations = one(docs, "Deployment", WORKER)["spec"]["template"]["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/port", str(port)) != str(port):
        errors.append(f"annotation prometheus.io/port is {annotations['prometheus.io/port']}, not {port}")
    if annotations.get("prometheus.io/path", METRICS_PATH) != METRICS_PATH:
        errors.append(f"annotation prometheus.io/path is {annotations['prometheus.io/path']}, not {METRICS_PATH}")
    services = [s for s in docs_of(docs, "Service")
                if s["spec"].get("selector") and s["spec"]["selector"].items() <= labels.items()]
    if not services:
        errors.append("no Service selects the worker pods (Prometheus needs one)")
    for service in services:
        for service_port in service["spec"]["ports"]:
            if _container_port(container, service_port.get("targetPort", service_port["port"])) != port:
                errors.append(f"Service {service['metadata']['name']} port {service_port.get('name')} does not "
                              f"lead to the metrics port {port}")
    for monitor in docs_of(docs, "ServiceMonitor"):
        names = {p.get("name") for s in services for p in s["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint.get("port") not in names:
                errors.append(f"ServiceMonitor scrapes port {endpoint.get('port')}, which the Service lacks")
            if endpoint.get("path", "/metrics") != METRICS_PATH:
                errors.append(f"ServiceMonitor scrapes {endpoint.get('path')}, not {METRICS_PATH}")
    labels = pod_spec_labels(docs)
    for policy in docs_of(docs, "NetworkPolicy"):
        selector = policy["spec"].get("podSelector", {}).get("matchLabels", {})
        if not selector.items() <= labels.items():
            continue  # another component's pods (the collector's)
        allowed = {p.get("port") for rule in policy["spec"].get("ingress", []) for p in rule.get("ports", [])}
        if allowed and port not in allowed and "metrics" not in allowed:
            errors.append(f"NetworkPolicy {policy['metadata']['name']} blocks the metrics port {port}")
    return errors


def _seconds(duration: str) -> float:
    """A Kubernetes/Go duration such as 1h30m or 90s."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", duration))


def check_grace_period(docs: list[Doc], pools: list[Doc]) -> list[str]:
    """SIGTERM -> checkpoint within SPOTGEN_INTERRUPT_DEADLINE_S -> exit must fit the pod's grace period, which
    must fit the spot notice and the NodePools' drain limit."""
    deadline = worker_settings(docs).interrupt_deadline_s
    grace = pod_spec(docs).get("terminationGracePeriodSeconds", 30)
    errors = []
    if grace < deadline + GRACE_MARGIN_S:
        errors.append(f"terminationGracePeriodSeconds is {grace}, below SPOTGEN_INTERRUPT_DEADLINE_S ({deadline:g}) "
                      f"+ {GRACE_MARGIN_S} s: the kubelet would kill workers before they checkpoint")
    if grace > SPOT_NOTICE_S:
        errors.append(f"terminationGracePeriodSeconds is {grace}, longer than the {SPOT_NOTICE_S} s of a spot notice: "
                      "lower SPOTGEN_INTERRUPT_DEADLINE_S and the grace period together")
    for pool in pools:
        drain = pool["spec"]["template"]["spec"].get("terminationGracePeriod")
        if drain and _seconds(drain) < grace:
            errors.append(f"NodePool {pool['metadata']['name']} drains nodes within {drain}, less than the pod's "
                          f"grace period ({grace} s)")
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
    if subscription.get("FilterPolicy") != json.loads(expected.get("FilterPolicy", "null")):
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
    role = tpl["Resources"]["WorkerRole"]["Properties"]
    if role.get("ManagedPolicyArns") != [{"Ref": "WorkerPolicy"}] or role.get("Policies"):
        errors.append("WorkerRole must have WorkerPolicy and nothing else")
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


def check_api(transformed: Doc) -> list[str]:
    """Every route of the HTTP API requires IAM auth, and the routes are those of lambdas/api.py with the same
    handlers."""
    errors = []
    apis = [r for r in transformed["Resources"].values() if r["Type"] == "AWS::ApiGatewayV2::Api"]
    routes = [r for r in transformed["Resources"].values() if r["Type"] == "AWS::ApiGatewayV2::Route"]
    if len(apis) != 1:
        return [f"expected one HTTP API, found {len(apis)}"]
    errors += [f"route {r['Properties'].get('RouteKey')} is not IAM-authorized" for r in routes
               if r["Properties"].get("AuthorizationType") != "AWS_IAM"]
    seen: set[int] = set()
    for path, methods in apis[0]["Properties"]["Body"]["paths"].items():
        for method, operation in methods.items():
            key = f"{method.upper()} {path}"
            if {"AWS_IAM": []} not in operation.get("security", []):
                errors.append(f"{key} does not require IAM authorization: anyone could call it")
            uri = json.dumps(operation.get("x-amazon-apigateway-integration", {}).get("uri"))
            function = re.search(r"\$\{(\w+)\.Arn\}", uri)
            handler = transformed["Resources"][function.group(1)]["Properties"]["Handler"] if function else None
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
    errors += [f"lambdas/api.py routes {method} {pattern.pattern}, which the API lacks"
               for i, (method, pattern, _) in enumerate(api.ROUTES) if i not in seen]
    return errors


def _tolerated(taint: Doc, tolerations: list[Doc]) -> bool:
    for toleration in tolerations:
        key_ok = toleration.get("key") == taint["key"] or (not toleration.get("key")
                                                            and toleration.get("operator") == "Exists")
        effect_ok = toleration.get("effect") in (None, "", taint["effect"])
        value_ok = toleration.get("operator") == "Exists" or toleration.get("value") == taint.get("value")
        if key_ok and effect_ok and value_ok:
            return True
    return False


def check_scheduling(docs: list[Doc], pools: list[Doc]) -> list[str]:
    """The worker fits every NodePool: it tolerates their taints and selects their labels; one GPU per pod;
    a spot pool outweighs an on-demand one; KEDA's maximum fits the pools' GPU limits."""
    spec = pod_spec(docs)
    errors = []
    for pool in pools:
        name, template_ = pool["metadata"]["name"], pool["spec"]["template"]
        labels = template_.get("metadata", {}).get("labels", {})
        for key, value in spec.get("nodeSelector", {}).items():
            if labels.get(key) != value:
                errors.append(f"the worker selects nodes with {key}={value}, which NodePool {name} does not label")
        for taint in template_["spec"].get("taints", []):
            if not _tolerated(taint, spec.get("tolerations", [])):
                errors.append(f"NodePool {name} taints its nodes {taint['key']}={taint.get('value', '')}:"
                              f"{taint['effect']}, which the worker does not tolerate")
        if not any(t["key"] == "nvidia.com/gpu" for t in template_["spec"].get("taints", [])):
            errors.append(f"NodePool {name} does not taint its GPU nodes nvidia.com/gpu: other pods would land there")
    container = worker_container(docs)
    for part in ("requests", "limits"):
        if str(container.get("resources", {}).get(part, {}).get("nvidia.com/gpu")) != "1":
            errors.append(f"the worker must have nvidia.com/gpu: 1 in its resource {part} (one job per GPU)")

    def capacity(pool: Doc) -> set[str]:
        return {v for r in pool["spec"]["template"]["spec"]["requirements"]
                if r["key"] == "karpenter.sh/capacity-type" for v in r.get("values", [])}

    spot = [p for p in pools if capacity(p) == {"spot"}]
    on_demand = [p for p in pools if "on-demand" in capacity(p)]
    if not spot:
        errors.append("no NodePool is spot only")
    if spot and on_demand and max(p["spec"].get("weight", 0) for p in on_demand) >= \
            min(p["spec"].get("weight", 0) for p in spot):
        errors.append("the on-demand NodePool must weigh less than the spot one (it is the fallback)")
    gpus = sum(int(p["spec"].get("limits", {}).get("nvidia.com/gpu", 0)) for p in pools)
    for scaled in docs_of(docs, "ScaledObject"):
        if scaled["spec"].get("maxReplicaCount", 100) > gpus:
            errors.append(f"ScaledObject {scaled['metadata']['name']} may scale to "
                          f"{scaled['spec'].get('maxReplicaCount')} replicas, but the NodePools allow {gpus} GPUs")
    return errors


def check_disruption(docs: list[Doc], pools: list[Doc]) -> list[str]:
    """Karpenter never consolidates a node with a running worker: WhenEmpty, or pods marked do-not-disrupt."""
    annotations = one(docs, "Deployment", WORKER)["spec"]["template"]["metadata"].get("annotations", {})
    protected = annotations.get("karpenter.sh/do-not-disrupt") == "true"
    return [f"NodePool {p['metadata']['name']} consolidates nodes that run workers "
            f"({p['spec'].get('disruption', {}).get('consolidationPolicy')}); use WhenEmpty or mark the pods "
            "karpenter.sh/do-not-disrupt"
            for p in pools if p["spec"].get("disruption", {}).get("consolidationPolicy") != "WhenEmpty"
            and not protected]


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(quantity))
    assert match, f"unexpected quantity {quantity}"
    return int(match.group(1)) * units.get(match.group(2) or "", 1)


def check_storage(docs: list[Doc], node_classes: list[Doc]) -> list[str]:
    """The models volume (EFS, read-only) is at SPOTGEN_MODELS_DIR, the node cache (hostPath) at
    SPOTGEN_NODE_CACHE_DIR, and the nodes' data volume holds the cache."""
    settings = worker_settings(docs)
    spec = pod_spec(docs)
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in worker_container(docs).get("volumeMounts", [])}
    errors = []
    models = mounts.get(str(settings.models_dir))
    claim = volumes.get(models["name"], {}).get("persistentVolumeClaim", {}).get("claimName") if models else None
    if claim is None:
        errors.append(f"SPOTGEN_MODELS_DIR ({settings.models_dir}) is not a mounted PersistentVolumeClaim")
    else:
        if not models.get("readOnly"):
            errors.append("the models volume must be mounted read-only")
        pvc = one(docs, "PersistentVolumeClaim", claim)
        pv = one(docs, "PersistentVolume", pvc["spec"].get("volumeName"))
        if pvc["spec"]["accessModes"] != ["ReadOnlyMany"] or pv["spec"]["accessModes"] != ["ReadOnlyMany"]:
            errors.append("the models PV and PVC must be ReadOnlyMany")
        if pv["spec"].get("csi", {}).get("driver") != "efs.csi.aws.com":
            errors.append("the models PV is not an EFS (efs.csi.aws.com) volume")
    cache = mounts.get(str(settings.node_cache_dir))
    if cache is None or "hostPath" not in volumes.get(cache["name"], {}):
        errors.append(f"SPOTGEN_NODE_CACHE_DIR ({settings.node_cache_dir}) is not a mounted hostPath volume")
    elif cache.get("readOnly"):
        errors.append("the node cache must be writable")
    for node_class in node_classes:
        data = [d for d in node_class["spec"].get("blockDeviceMappings", []) if d["deviceName"] == "/dev/xvdb"]
        size = _bytes(data[0]["ebs"]["volumeSize"]) if data else 0
        if size < settings.node_cache_bytes + NODE_DISK_MARGIN_BYTES:
            errors.append(f"EC2NodeClass {node_class['metadata']['name']}: the data volume ({size / 2**30:g} GiB) "
                          f"must hold SPOTGEN_NODE_CACHE_BYTES ({settings.node_cache_bytes / 2**30:g} GiB) plus "
                          f"{NODE_DISK_MARGIN_BYTES / 2**30:g} GiB for images and /tmp")
        if not any(t.get("alias", "").startswith("bottlerocket@") for t in node_class["spec"]["amiSelectorTerms"]):
            errors.append(f"EC2NodeClass {node_class['metadata']['name']} is not Bottlerocket")
    return errors


def dockerfile_final_stage(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile's last stage, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]
    stages: list[list[tuple[str, str]]] = []
    for line in lines:
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), arguments.strip()))
    return stages[-1] if stages else []


def check_security(docs: list[Doc], dockerfile: str) -> list[str]:
    """The worker runs as the image's non-root user with a read-only root filesystem, no privilege escalation,
    no capability and seccomp RuntimeDefault; it writes only to emptyDirs and the node cache."""
    spec = pod_spec(docs)
    container = worker_container(docs)
    pod_ctx, ctx = spec.get("securityContext", {}), container.get("securityContext", {})

    def setting(key: str) -> Any:
        return ctx.get(key, pod_ctx.get(key))

    errors = []
    if setting("runAsNonRoot") is not True:
        errors.append("the worker must set runAsNonRoot: true")
    if ctx.get("readOnlyRootFilesystem") is not True:
        errors.append("the worker must set readOnlyRootFilesystem: true")
    if ctx.get("allowPrivilegeEscalation") is not False:
        errors.append("the worker must set allowPrivilegeEscalation: false")
    if "ALL" not in ctx.get("capabilities", {}).get("drop", []) or ctx.get("capabilities", {}).get("add"):
        errors.append("the worker must drop ALL capabilities and add none")
    if (setting("seccompProfile") or {}).get("type") != "RuntimeDefault":
        errors.append("the worker must use seccompProfile RuntimeDefault")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    cache_dir = str(worker_settings(docs).node_cache_dir)
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if not mount.get("readOnly") and "emptyDir" not in volume and mount["mountPath"] != cache_dir:
            errors.append(f"the worker writes to {mount['mountPath']}, which is neither an emptyDir nor the node cache")
    if not any(m["mountPath"] == "/tmp" and "emptyDir" in volumes[m["name"]]
               for m in container.get("volumeMounts", [])):
        errors.append("/tmp must be an emptyDir: the root filesystem is read-only")
    final = dict(dockerfile_final_stage(dockerfile))
    user = final.get("USER", "root").split(":")[0]
    if not user.isdigit() or int(user) == 0:
        errors.append(f"the image's final USER is {user!r}: use a numeric non-root uid (runAsNonRoot checks it)")
    elif setting("runAsUser") not in (None, int(user)):
        errors.append(f"the pod runs as uid {setting('runAsUser')}, the image as {user}")
    if final.get("ENTRYPOINT") != '["spotgen", "worker"]':
        errors.append(f"the image's ENTRYPOINT is {final.get('ENTRYPOINT')}, not [\"spotgen\", \"worker\"]")
    if final.get("EXPOSE") != str(DEFAULT_PORT):
        errors.append(f"the image exposes {final.get('EXPOSE')}, not the metrics port {DEFAULT_PORT}")
    return errors


def check_dockerfile_pins(dockerfile: str, constraints: str) -> list[str]:
    """The image installs torch at the version constraints.txt pins, and everything with those pins."""
    pin = re.search(r"^torch==(\S+)$", constraints, re.M)
    errors = []
    if pin is None or f"torch=={pin.group(1)}" not in dockerfile:
        errors.append(f"the Dockerfile must install torch=={pin.group(1) if pin else '?'} (constraints.txt)")
    for line in re.sub(r"\\\n", " ", dockerfile).splitlines():
        if "pip install" in line and not line.lstrip().startswith("#") and "-c constraints.txt" not in line:
            errors.append(f"pip install without -c constraints.txt: {line.strip()}")
    if re.search(r"^\s*(COPY|ADD)\b.*models", dockerfile, re.M | re.I):
        errors.append("models are not baked into the image: they come from EFS")
    return errors


#: Repository paths named in docs/deploy.md: under a top-level directory of the project, or a root file.
DOC_PATH = re.compile(r"(?<![\w./$-])((?:infra|lambdas|docs|tests|runtime|pipelines)/[\w./-]*[\w-]"
                      r"|Dockerfile|constraints\.txt|pyproject\.toml|Makefile|README\.md)(?![\w$])")


def check_doc_paths(text: str) -> list[str]:
    """Every repository path docs/deploy.md names exists (paths with a shell variable are the user's own)."""
    return [f"docs/deploy.md names {path}, which does not exist" for path in sorted(set(DOC_PATH.findall(text)))
            if not (REPO / path).exists()]
