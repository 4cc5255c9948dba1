"""The deployment files (Dockerfile, infra/, lambdas/template.yaml, docs/deploy.md) checked offline.

Against the code (tests/harness/infra_checks.py: settings, probes, grace period, queue timing, names, the worker's IAM
policy against the AWS calls in runtime/, scheduling, storage, security) and with the ecosystem's own tools:
kustomize (kubectl's), kubernetes-validate, the Karpenter/KEDA/Prometheus Operator schemas (tests/schemas),
cfn-lint, hadolint and checkov. The ``test_broken_*`` tests break a copy of the loaded documents in memory and
require the matching check to say so.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.infra_checks import (
    DOC_PATH,
    LIVE_PATH,
    check_doc_paths,
    check_dockerfile_pins,
    check_probes,
    check_schemas,
    check_security,
    check_settings,
)
from tests.harness.infra_docs import (
    BIN,
    DEPLOY_DOC,
    DOCKERFILE,
    LIBRARY_CALLS,
    OVERLAY,
    REPO,
    TEMPLATE,
    WORKER,
    Doc,
    aws_calls,
    docs_of,
    karpenter,
    loader,
    render,
    required_worker_actions,
    sam_transform,
    template,
    worker_sources,
)
from tests.harness.node_checks import check_disruption, check_grace_period, check_scheduling, check_storage
from tests.harness.template_checks import (
    check_api,
    check_api_settings,
    check_function_policies,
    check_matches_local_stack,
    check_names,
    check_queue,
    check_worker_policy,
)


# == the real files ===========================================================================================
def test_kustomize_renders_every_directory() -> None:
    for directory in ("infra/k8s/base", "infra/k8s/overlays/example", "infra/k8s/loader", "infra/keda",
                      "infra/karpenter", "infra/otel", "infra/k8s/pool", "infra/k8s/overlays/example/pools/sdxl",
                      "infra/k8s/overlays/example-pools"):
        kinds = [doc["kind"] for doc in render(REPO / directory)]
        assert kinds, f"{directory} renders nothing"
    kinds = {doc["kind"] for doc in render(OVERLAY)}
    assert {"Namespace", "ServiceAccount", "ConfigMap", "Deployment", "PodDisruptionBudget", "Service",
            "StorageClass", "PersistentVolume", "PersistentVolumeClaim", "ScaledObject", "TriggerAuthentication",
            "ServiceMonitor"} <= kinds
    assert not any(doc["metadata"]["name"] == "spotgen-deploy" for doc in render(OVERLAY)), \
        "the overlay's replacement values (local-config) must not be applied"


def test_schemas() -> None:
    assert check_schemas(render(OVERLAY) + render(REPO / "infra/k8s/base") + karpenter() + loader()) == []
    assert check_schemas(render(REPO / "infra/k8s/overlays/example-pools")) == []


def test_settings() -> None:
    assert check_settings(render(OVERLAY) + loader()) == []
    assert check_api_settings(template()) == []


def test_probes_and_ports() -> None:
    assert check_probes(render(OVERLAY)) == []  # the collector's NetworkPolicy selects other pods: not checked here


def test_grace_period() -> None:
    assert check_grace_period(render(OVERLAY), docs_of(karpenter(), "NodePool")) == []


def test_queue_fits_lease_and_redrive() -> None:
    assert check_queue(template(), render(OVERLAY)) == []


def test_template_matches_local_stack() -> None:
    assert check_matches_local_stack(template()) == []


def test_names_agree() -> None:
    assert check_names(template(), render(OVERLAY)) == []


def test_worker_policy_is_exactly_the_worker_calls() -> None:
    required = required_worker_actions()
    assert {"s3:GetObject", "s3:PutObject", "sqs:SendMessage", "sns:Publish"} <= required.keys(), \
        "the scan of runtime/ finds no AWS call: is it looking at the right files?"
    assert check_worker_policy(template(), required) == []


def test_library_calls_are_in_kombu() -> None:
    """The calls LIBRARY_CALLS attributes to kombu are still in kombu's SQS transport."""
    import kombu.transport.SQS as transport

    calls = aws_calls({"kombu": Path(transport.__file__).read_text()})
    assert set(LIBRARY_CALLS) <= calls.keys()


def test_function_policies() -> None:
    assert check_function_policies(template()) == []


def test_api_routes_require_iam() -> None:
    assert check_api(sam_transform(template())) == []


def test_scheduling_and_disruption() -> None:
    pools = docs_of(karpenter(), "NodePool")
    assert len(pools) == 2
    assert check_scheduling(render(OVERLAY), pools) == []
    assert check_disruption(render(OVERLAY), pools) == []


def test_storage() -> None:
    assert check_storage(render(OVERLAY), docs_of(karpenter(), "EC2NodeClass")) == []


def test_security() -> None:
    assert check_security(render(OVERLAY), DOCKERFILE.read_text()) == []
    assert check_dockerfile_pins(DOCKERFILE.read_text(), (REPO / "constraints.txt").read_text()) == []


def test_deploy_doc_paths() -> None:
    text = DEPLOY_DOC.read_text()
    assert len(set(DOC_PATH.findall(text))) >= 5, "docs/deploy.md names hardly any file: is the pattern right?"
    assert check_doc_paths(text) == []


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make install` (the infra extra)")
    return found


def test_cfn_lint() -> None:
    out = subprocess.run([_tool("cfn-lint"), str(TEMPLATE)], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint() -> None:
    out = subprocess.run([_tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_checkov() -> None:
    """No failed check on infra/, the Dockerfile and the template; every skip says why, in place."""
    checkov = Path(sys.prefix) / "checkov/bin/checkov"  # its own venv (Makefile): its pins clash with ours
    if not checkov.exists():
        found = shutil.which("checkov")
        if found is None:
            pytest.fail("checkov is not installed: run `make install`")
        checkov = Path(found)
    reports = []
    for targets in (["-d", "infra", "--framework", "kubernetes", "kustomize"],
                    ["-f", "Dockerfile", "-f", "lambdas/template.yaml", "--framework", "dockerfile", "cloudformation"]):
        out = subprocess.run([str(checkov), "--compact", "--skip-download", "--output", "json", *targets],
                             cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
                             env={"PATH": f"{checkov.parent}:/usr/local/bin:/usr/bin:/bin", "HOME": str(REPO / ".venv"),
                                  "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "ERROR"})
        try:
            answer = json.loads(out.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"checkov said no JSON (exit {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        reports += answer if isinstance(answer, list) else [answer]
    assert {r["check_type"] for r in reports} >= {"kubernetes", "kustomize", "dockerfile", "cloudformation"}
    unread = [f"{r['check_type']}: {r['summary']['parsing_errors']} files" for r in reports
              if r["summary"]["parsing_errors"] or not r["summary"]["resource_count"]]
    assert unread == [], "checkov could not read some files (or found nothing to check)"
    failed = [f"{r['check_type']}: {c['check_id']} {c['check_name']} - {c['resource']} ({c['file_path']})"
              for r in reports for c in r["results"]["failed_checks"]]
    assert failed == []
    unexplained = [f"{c['check_id']} {c['resource']}" for r in reports for c in r["results"]["skipped_checks"]
                   if len(c["check_result"].get("suppress_comment", "").strip()) < 15]
    assert unexplained == [], "every checkov skip needs its reason next to it"


# == deliberately broken copies: each check must catch its fault and say so ===================================
#: Unless named, the document to break is the worker's: the overlay also renders the collector (infra/otel).
WORKER_DOCS = {"Deployment": WORKER, "ConfigMap": "spotgen-settings"}


def _mutated(docs: list[Doc], kind: str, change: Callable[[Doc], None], name: str | None = None) -> list[Doc]:
    """A copy of ``docs`` with ``change`` made to the one ``kind`` called ``name`` (kustomize's hash suffix
    aside), by default the worker's."""
    docs = copy.deepcopy(docs)
    name = name or WORKER_DOCS.get(kind)
    found = [d for d in docs_of(docs, kind)
             if name is None or re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    change(found[0])
    return docs


def _only(errors: list[str], *words: str) -> None:
    """At least one error, and one naming all of ``words`` (the message must say what is wrong)."""
    assert errors, "the broken copy passed"
    assert any(all(word in error for word in words) for error in errors), errors


def test_broken_api_version() -> None:
    nodepool = _mutated(karpenter(), "NodePool", lambda d: d.update(apiVersion="karpenter.sh/v1beta1"),
                        "spotgen-gpu-spot")
    _only(check_schemas(nodepool), "karpenter.sh/v1beta1", "NodePool", "no published schema")
    overlay = render(OVERLAY)
    scaled = _mutated(docs_of(overlay, "ScaledObject"), "ScaledObject",
                      lambda d: d["spec"].update(minReplicaCount="zero"))
    _only(check_schemas(scaled), "ScaledObject", "minReplicaCount")
    deployment = _mutated(docs_of(overlay, "Deployment"), "Deployment", lambda d: d.update(apiVersion="apps/v1beta2"))
    _only(check_schemas(deployment), "apps/v1beta2", "Deployment", "no such kind")
    typo = _mutated(docs_of(overlay, "Deployment"), "Deployment", lambda d: d["spec"].update(replica=2))
    _only(check_schemas(typo), "Deployment", "replica")


def test_broken_grace_period() -> None:
    docs = _mutated(render(OVERLAY), "Deployment",
                    lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=60))
    _only(check_grace_period(docs, []), "terminationGracePeriodSeconds is 60", "SPOTGEN_INTERRUPT_DEADLINE_S")
    docs = _mutated(render(OVERLAY), "Deployment",
                    lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=300))
    _only(check_grace_period(docs, []), "spot notice")


def test_broken_worker_policy() -> None:
    tpl = template()
    statement = next(s for s in tpl["Resources"]["WorkerPolicy"]["Properties"]["PolicyDocument"]["Statement"]
                     if s["Sid"] == "ConsumeWorkQueue")
    statement["Action"].remove("sqs:ChangeMessageVisibility")
    _only(check_worker_policy(tpl, required_worker_actions()), "lacks sqs:ChangeMessageVisibility",
          "runtime/worker/lease.py")
    tpl = template()
    tpl["Resources"]["WorkerPolicy"]["Properties"]["PolicyDocument"]["Statement"].append(
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"})
    errors = check_worker_policy(tpl, required_worker_actions())
    _only(errors, "grants s3:*")
    _only(errors, "wildcard", "resource *")


def test_broken_new_aws_call_in_code() -> None:
    sources = {**worker_sources(), "runtime/new.py": "def f(s3):\n    s3.copy_object(Bucket='b', Key='k')\n"}
    _only(check_worker_policy(template(), required_worker_actions(sources)), "lacks s3:CopyObject", "runtime/new.py")


def test_broken_settings() -> None:
    docs = _mutated(render(OVERLAY), "ConfigMap", lambda d: d["data"].update(SPOTGEN_QUEUE_URLS="x"))
    _only(check_settings(docs), "SPOTGEN_QUEUE_URLS", "no setting")
    docs = _mutated(render(OVERLAY), "ConfigMap", lambda d: d["data"].pop("SPOTGEN_QUEUE_URL"))
    _only(check_settings(docs), "SPOTGEN_QUEUE_URL is required")
    docs = _mutated(render(OVERLAY), "ConfigMap", lambda d: d["data"].update(SPOTGEN_HEARTBEAT_S="90"))
    _only(check_settings(docs), "do not validate", "heartbeat")
    tpl = template()
    tpl["Globals"]["Function"]["Environment"]["Variables"]["SPOTGEN_JOB_TOPIC"] = "x"
    _only(check_api_settings(tpl), "SPOTGEN_JOB_TOPIC")


def test_broken_probes() -> None:
    docs = _mutated(render(OVERLAY), "Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0]
                    ["livenessProbe"]["httpGet"].update(path="/healthz"))
    _only(check_probes(docs), "livenessProbe", "/healthz", LIVE_PATH)
    docs = _mutated(render(OVERLAY), "ConfigMap", lambda d: d["data"].update(SPOTGEN_METRICS_PORT="9500"))
    _only(check_probes(docs), "9500")
    docs = _mutated(render(OVERLAY), "Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0]
                    ["livenessProbe"].update(periodSeconds=60, failureThreshold=3))
    _only(check_probes(docs), "livenessProbe restarts a wedged worker only after", "180 s")


def test_broken_queue_timing() -> None:
    tpl = template()
    tpl["Resources"]["WorkQueue"]["Properties"]["VisibilityTimeout"] = 15
    _only(check_queue(tpl, render(OVERLAY)), "SPOTGEN_HEARTBEAT_S", "VisibilityTimeout")
    tpl = template()
    tpl["Parameters"]["MaxReceiveCount"]["Default"] = 3
    _only(check_queue(tpl, render(OVERLAY)), "maxReceiveCount is 3")


def test_broken_local_stack_shape() -> None:
    tpl = template()
    tpl["Resources"]["WorkQueueSubscription"]["Properties"]["RawMessageDelivery"] = False
    _only(check_matches_local_stack(tpl), "raw delivery")
    tpl = template()
    tpl["Resources"]["WorkQueueSubscription"]["Properties"]["FilterPolicy"] = {"model": ["sd15"]}
    _only(check_matches_local_stack(tpl), "FilterPolicy")


def test_broken_names() -> None:
    docs = _mutated(render(OVERLAY), "ScaledObject",
                    lambda d: d["spec"]["triggers"][0]["metadata"].update(queueURL="https://sqs/other"))
    _only(check_names(template(), docs), "ScaledObject watches https://sqs/other")
    docs = _mutated(render(OVERLAY), "ConfigMap", lambda d: d["data"].update(SPOTGEN_OUTPUT_BUCKET="elsewhere"))
    _only(check_names(template(), docs), "SPOTGEN_OUTPUT_BUCKET", "elsewhere")
    tpl = template()
    tpl["Parameters"]["WorkerServiceAccount"]["Default"] = "worker"
    _only(check_names(tpl, render(OVERLAY)), "WorkerServiceAccount")


def test_broken_api_auth() -> None:
    tpl = template()
    tpl["Resources"]["StatusFunction"]["Properties"]["Events"]["Status"]["Properties"]["Auth"] = {
        "Authorizer": "NONE"}
    _only(check_api(sam_transform(tpl)), "GET /v1/jobs/{id}", "anyone could call it")
    tpl = template()
    tpl["Resources"]["CancelFunction"]["Properties"]["Handler"] = "lambdas.status.handler"
    _only(check_api(sam_transform(tpl)), "POST /v1/jobs/{id}/cancel", "lambdas.cancel.handler")


def test_broken_function_policy() -> None:
    tpl = template()
    tpl["Resources"]["StatusFunction"]["Properties"]["Policies"][0]["Statement"].append(
        {"Effect": "Allow", "Action": "s3:DeleteObject", "Resource": "arn:aws:s3:::b/*"})
    _only(check_function_policies(tpl), "StatusFunction grants s3:DeleteObject")


def test_broken_scheduling() -> None:
    pools = docs_of(karpenter(), "NodePool")
    docs = _mutated(render(OVERLAY), "Deployment", lambda d: d["spec"]["template"]["spec"]["tolerations"][0]
                    .update(key="gpu"))
    _only(check_scheduling(docs, pools), "nvidia.com/gpu=true:NoSchedule", "does not tolerate")
    docs = _mutated(render(OVERLAY), "Deployment", lambda d: d["spec"]["template"]["spec"]["nodeSelector"]
                    .update({"spotgen.io/pool": "cpu"}))
    _only(check_scheduling(docs, pools), "spotgen.io/pool=cpu")
    docs = _mutated(render(OVERLAY), "ScaledObject", lambda d: d["spec"].update(maxReplicaCount=100))
    _only(check_scheduling(docs, pools), "100", "GPUs")
    unbounded = copy.deepcopy(pools)
    unbounded[0]["spec"]["disruption"]["budgets"] = [{"nodes": "20%"}]
    _only(check_disruption(render(OVERLAY), unbounded), "WhenEmptyOrUnderutilized", "Underutilized")


def test_broken_storage_and_security() -> None:
    node_classes = docs_of(karpenter(), "EC2NodeClass")
    docs = _mutated(render(OVERLAY), "ConfigMap", lambda d: d["data"].update(SPOTGEN_MODELS_DIR="/data"))
    _only(check_storage(docs, node_classes), "SPOTGEN_MODELS_DIR (/data)")
    small = copy.deepcopy(node_classes)
    small[0]["spec"]["blockDeviceMappings"][1]["ebs"]["volumeSize"] = "100Gi"
    _only(check_storage(render(OVERLAY), small), "data volume (100 GiB)")
    docs = _mutated(render(OVERLAY), "Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0]
                    ["securityContext"].update(readOnlyRootFilesystem=False))
    _only(check_security(docs, DOCKERFILE.read_text()), "readOnlyRootFilesystem")
    root_image = DOCKERFILE.read_text().replace("USER 10001:10001", "USER root")
    _only(check_security(render(OVERLAY), root_image), "USER is 'root'")
    _only(check_dockerfile_pins(DOCKERFILE.read_text().replace("torch==2.13.0", "torch"), "torch==2.13.0\n"),
          "torch==2.13.0")


def test_broken_doc_path() -> None:
    _only(check_doc_paths("kubectl apply -k infra/k8s/overlays/prod\n"), "infra/k8s/overlays/prod")
    assert check_doc_paths("cp -r infra/k8s/overlays/example \"$OVERLAY\"") == []
