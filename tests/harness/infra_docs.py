"""Loading the deployment files for tests/infra/test_infra.py: kustomize's renders, the SAM template (with just
enough CloudFormation evaluation to name the stack's resources), and the AWS calls in the worker's code."""

from __future__ import annotations

import ast
import copy
import functools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import botocore.session
import pytest
import yaml
from botocore import xform_name

from runtime.config import Settings

Doc = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
OVERLAY = REPO / "infra/k8s/overlays/example"
TEMPLATE = REPO / "lambdas/template.yaml"
DOCKERFILE = REPO / "Dockerfile"
DEPLOY_DOC = REPO / "docs/deploy.md"
SCHEMAS = REPO / "tests/schemas"

#: The stack the example overlay's .env files were written from, and the cluster name put into infra/karpenter.
EXAMPLE_STACK = {"AWS::StackName": "spotgen", "AWS::AccountId": "123456789012", "AWS::Region": "us-east-1",
                 "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com"}
EXAMPLE_CLUSTER = "example-cluster"
#: The worker Deployment (infra/k8s/base/deployment.yaml).
WORKER = "spotgen-worker"

#: Code under runtime/ that never runs in a worker pod: the local stack's room (its AWS calls build or serve the
#: emulator) and the tiny models' builder.
NOT_WORKER_CODE = ("runtime/local/", "runtime/models/tiny.py")
#: Calls the worker makes through kombu's SQS transport, which a scan of runtime/ cannot see. Each must still
#: appear in kombu's source (checked), so a kombu that stops making one shows up here.
LIBRARY_CALLS = {
    "sqs:ReceiveMessage": "kombu: receiving messages",
    "sqs:DeleteMessage": "kombu: acknowledging a message",
    "sqs:ChangeMessageVisibility": "kombu: releasing received messages when the consumer stops",
    "sqs:GetQueueAttributes": "kombu: the queue size when declaring it, the redrive policy when rejecting",
}
#: Permissions the worker needs that are not calls of their own.
IMPLIED_PERMISSIONS = {
    "s3:ListBucket": "S3 answers a GetObject of a missing key (first status read, checkpoint lookup) with "
                     "404 NoSuchKey only to a caller with ListBucket, else with 403",
    "s3:GetObject": "the presigned output URLs of a webhook (runtime/worker/webhooks.py) are GETs signed by the "
                    "worker's role",
}


# == loading ===============================================================================================
@functools.cache
def _render(directory: str) -> str:
    if shutil.which("kustomize"):
        command = ["kustomize", "build", directory]
    elif shutil.which("kubectl"):
        command = ["kubectl", "kustomize", directory]
    else:
        pytest.fail("neither kustomize nor kubectl is on PATH: install one (kubectl has kustomize built in)")
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        pytest.fail(f"`{' '.join(command)}` failed:\n{out.stderr}")
    return json.dumps([doc for doc in yaml.safe_load_all(out.stdout) if doc])


def render(directory: Path) -> list[Doc]:
    """The documents `kustomize build` makes of ``directory`` (a fresh copy each time: tests mutate them)."""
    return json.loads(_render(str(directory)))


def karpenter() -> list[Doc]:
    """infra/karpenter as applied: rendered, with the cluster name filled in as `envsubst` does."""
    return json.loads(_render(str(REPO / "infra/karpenter")).replace("${CLUSTER_NAME}", EXAMPLE_CLUSTER))


def loader() -> list[Doc]:
    """infra/k8s/loader as applied: rendered, with the image and EFS access point filled in by `envsubst`."""
    text = _render(str(REPO / "infra/k8s/loader"))
    env = read_env(OVERLAY / "deploy.env")
    return json.loads(text.replace("${IMAGE}", env["IMAGE"]).replace("${EFS_VOLUME_HANDLE}", env["EFS_VOLUME_HANDLE"]))


def read_env(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


@functools.cache
def _template() -> str:
    from cfnlint.decode import decode  # here: cfn-lint imports sympy, half a second in each test process's collection

    loaded, problems = decode(str(TEMPLATE))
    if problems:
        pytest.fail(f"{TEMPLATE} does not parse: {problems}")
    return json.dumps(loaded)


def template() -> Doc:
    """lambdas/template.yaml with intrinsic functions in their long form ({"Ref": ...}, {"Fn::Sub": ...})."""
    return json.loads(_template())


def sam_transform(tpl: Doc) -> Doc:
    """The template as CloudFormation sees it after the SAM transform (what creates the API's routes)."""
    from samtranslator.translator.transform import transform

    class NoManagedPolicies:  # the template names no AWS managed policy by name: nothing to look up
        def load(self) -> dict[str, str]:
            return {}

    tpl = copy.deepcopy(tpl)
    tpl["Globals"]["Function"]["CodeUri"] = "s3://example-bucket/lambda.zip"  # what `sam deploy` uploads
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_DEFAULT_REGION", EXAMPLE_STACK["AWS::Region"])
        return transform(tpl, {"ClusterName": EXAMPLE_CLUSTER}, NoManagedPolicies())


def docs_of(docs: Iterable[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc.get("kind") == kind]


def one(docs: Iterable[Doc], kind: str, name: str | None = None) -> Doc:
    found = [doc for doc in docs_of(docs, kind) if name is None or doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}{' ' + name if name else ''}, found {len(found)}"
    return found[0]


def pod_spec(docs: list[Doc]) -> Doc:
    return one(docs, "Deployment", WORKER)["spec"]["template"]["spec"]


def worker_container(docs: list[Doc]) -> Doc:
    return next(c for c in pod_spec(docs)["containers"] if c["name"] == "worker")


def worker_env(docs: list[Doc]) -> dict[str, str]:
    """The worker container's environment: its ConfigMaps (envFrom) and its env entries."""
    container = worker_container(docs)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        maps = [doc for doc in docs_of(docs, "ConfigMap") if doc["metadata"]["name"] == name]
        env.update(maps[0].get("data", {}) if maps else {})
    env.update({item["name"]: item["value"] for item in container.get("env", []) if "value" in item})
    return env


def worker_settings(docs: list[Doc]) -> Settings:
    return Settings.from_env(worker_env(docs))


# == CloudFormation: just enough of the intrinsic functions to name the stack's resources ====================
def resolve(value: Any, tpl: Doc, stack: dict[str, str] = EXAMPLE_STACK) -> Any:
    """A template value with Ref, Fn::Sub, Fn::GetAtt and Fn::Join evaluated for the example stack (parameter
    defaults; queue URLs, topic ARNs and bucket names as AWS forms them)."""
    if isinstance(value, list):
        return [resolve(item, tpl, stack) for item in value]
    if not isinstance(value, dict):
        return value
    if "Ref" in value:
        return _ref(value["Ref"], tpl, stack)
    if "Fn::GetAtt" in value:
        target = value["Fn::GetAtt"]
        name, attribute = target if isinstance(target, list) else target.split(".", 1)
        return _attribute(name, attribute, tpl, stack)
    if "Fn::If" in value:
        condition, yes, no = value["Fn::If"]
        return resolve(yes if _condition(condition, tpl, stack) else no, tpl, stack)
    if "Fn::Join" in value:
        separator, items = value["Fn::Join"]
        return separator.join(str(resolve(item, tpl, stack)) for item in items)
    if "Fn::Sub" in value:
        text, names = (value["Fn::Sub"], {}) if isinstance(value["Fn::Sub"], str) else value["Fn::Sub"]

        def substitute(match: re.Match[str]) -> str:
            key = match.group(1)
            if key in names:
                return str(resolve(names[key], tpl, stack))
            if "." in key and not key.startswith("AWS::"):
                return str(_attribute(*key.split(".", 1), tpl, stack))
            return str(_ref(key, tpl, stack))

        return re.sub(r"\$\{([^}!]+)\}", substitute, text)
    return {key: resolve(item, tpl, stack) for key, item in value.items()}


def _condition(name: str, tpl: Doc, stack: dict[str, str]) -> bool:
    """A condition of the template, for the example stack (parameter defaults)."""
    def evaluate(expr: Any) -> Any:
        if isinstance(expr, dict) and "Fn::Not" in expr:
            return not evaluate(expr["Fn::Not"][0])
        if isinstance(expr, dict) and "Fn::Equals" in expr:
            left, right = (resolve(side, tpl, stack) for side in expr["Fn::Equals"])
            return str(left) == str(right)
        if isinstance(expr, dict) and "Condition" in expr:
            return _condition(expr["Condition"], tpl, stack)
        raise ValueError(f"condition {name}: cannot evaluate {expr}")

    return bool(evaluate(tpl["Conditions"][name]))


def _ref(name: str, tpl: Doc, stack: dict[str, str]) -> Any:
    if name == "AWS::NoValue":
        return None
    if name in stack:
        return stack[name]
    if name in tpl.get("Parameters", {}):
        return tpl["Parameters"][name].get("Default", f"<{name}>")
    resource = tpl["Resources"][name]
    props = resource.get("Properties", {})
    region, account = stack["AWS::Region"], stack["AWS::AccountId"]
    kind = resource["Type"]
    if kind == "AWS::SQS::Queue":
        return f"https://sqs.{region}.amazonaws.com/{account}/{resolve(props['QueueName'], tpl, stack)}"
    if kind == "AWS::SNS::Topic":
        return f"arn:aws:sns:{region}:{account}:{resolve(props['TopicName'], tpl, stack)}"
    if kind == "AWS::S3::Bucket":
        return resolve(props["BucketName"], tpl, stack)
    if kind == "AWS::Logs::LogGroup":
        return resolve(props["LogGroupName"], tpl, stack)
    return f"<{name}>"


def _attribute(name: str, attribute: str, tpl: Doc, stack: dict[str, str]) -> Any:
    props = tpl["Resources"][name].get("Properties", {})
    kind = tpl["Resources"][name]["Type"]
    region, account = stack["AWS::Region"], stack["AWS::AccountId"]
    if kind == "AWS::SQS::Queue":
        queue = resolve(props["QueueName"], tpl, stack)
        return {"QueueName": queue, "Arn": f"arn:aws:sqs:{region}:{account}:{queue}"}[attribute]
    if kind == "AWS::S3::Bucket" and attribute == "Arn":
        return f"arn:aws:s3:::{resolve(props['BucketName'], tpl, stack)}"
    if kind == "AWS::SNS::Topic" and attribute == "TopicName":
        return resolve(props["TopicName"], tpl, stack)
    return f"<{name}.{attribute}>"


def output_settings(tpl: Doc) -> dict[str, str]:
    """The WorkerSettings output (what docs/deploy.md writes into settings.env) as a dict."""
    text = resolve(tpl["Outputs"]["WorkerSettings"]["Value"], tpl)
    return dict(item.split("=", 1) for item in text.split())


def statements(policy: Doc) -> list[Doc]:
    found = policy["Statement"]
    return found if isinstance(found, list) else [found]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def policy_actions(policy: Doc) -> tuple[set[str], list[str]]:
    """Allowed actions of a policy document, and its wildcards (actions or resources of "*")."""
    actions, wildcards = set(), []
    for statement in statements(policy):
        if statement.get("Effect") != "Allow":
            continue
        for action in as_list(statement.get("Action", [])):
            actions.add(action)
            if "*" in action:
                wildcards.append(f"action {action}")
        for resource in as_list(statement.get("Resource", [])):
            if resource == "*":
                wildcards.append(f"resource * in statement {statement.get('Sid', '?')}")
    return actions, wildcards


# == the AWS calls in the code ================================================================================
@functools.cache
def _operations() -> dict[str, set[str]]:
    """boto3 method name -> IAM actions, for the services the runtime uses (S3, SQS, SNS; Secrets Manager and SSM
    for the webhook signing secret)."""
    session = botocore.session.get_session()
    methods: dict[str, set[str]] = {}
    for service in ("s3", "sqs", "sns", "secretsmanager", "ssm"):
        for operation in session.get_service_model(service).operation_names:
            action = IAM_ACTIONS.get(f"{service}:{operation}", f"{service}:{operation}")
            methods.setdefault(xform_name(operation), set()).add(action)
    return methods


#: Operations whose IAM action has another name than the operation.
IAM_ACTIONS = {"s3:ListObjectsV2": "s3:ListBucket", "s3:ListObjects": "s3:ListBucket", "s3:HeadBucket": "s3:ListBucket",
               "s3:HeadObject": "s3:GetObject"}


def aws_calls(sources: dict[str, str]) -> dict[str, set[str]]:
    """IAM action -> the files whose code calls it, found by parsing ``sources`` (file name -> Python code)
    for calls of boto3 S3/SQS/SNS client methods (``self.sqs.change_message_visibility(...)``)."""
    methods = _operations()
    found: dict[str, set[str]] = {}
    for name, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in methods:
                actions = methods[node.func.attr]
                if len(actions) > 1:  # a name several services share: the client's name says which
                    receiver = ast.unparse(node.func.value).rsplit(".", 1)[-1]
                    actions = {action for action in actions if action.startswith(receiver + ":")}
                for action in actions:
                    found.setdefault(action, set()).add(name)
    return found


def worker_sources() -> dict[str, str]:
    files = [*sorted((REPO / "runtime").rglob("*.py")), *sorted((REPO / "pipelines").rglob("*.py"))]
    return {rel: path.read_text() for path in files
            if not (rel := path.relative_to(REPO).as_posix()).startswith(NOT_WORKER_CODE)}


def required_worker_actions(sources: dict[str, str] | None = None) -> dict[str, str]:
    """Every permission the worker needs -> why (the files that call it, or the library or reason)."""
    calls = aws_calls(worker_sources() if sources is None else sources)
    needed = {action: ", ".join(sorted(files)) for action, files in calls.items()}
    for action, why in {**LIBRARY_CALLS, **IMPLIED_PERMISSIONS}.items():
        needed[action] = f"{needed[action]}; {why}" if action in needed else why
    return needed
