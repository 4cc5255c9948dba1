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

import kubernetes_validate
import pytest
from kubernetes_validate import utils as kv_utils

from runtime.config import PREFIX, Settings
from tests.harness.infra_docs import (
    REPO,
    SCHEMAS,
    WORKER,
    Doc,
    docs_of,
    one,
    pod_spec,
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


#: Settings the worker cannot run in AWS without (the defaults are for the local stack).
REQUIRED_WORKER_SETTINGS = {PREFIX + name for name in (
    "REGION", "QUEUE_NAME", "QUEUE_URL", "DEAD_LETTER_QUEUE_URL", "INPUT_BUCKET", "OUTPUT_BUCKET",
    "RESULTS_TOPIC_ARN", "MODELS_DIR", "NODE_CACHE_DIR", "DEVICE", "MAX_RECEIVE_COUNT")}



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


def locked_down(who: str, pod_ctx: Doc, ctx: Doc) -> list[str]:
    """What a container's securityContext (over its pod's) lacks of the lock-down every spotgen pod has:
    read-only root filesystem, no privilege escalation, no capability, seccomp RuntimeDefault."""
    errors = []
    if ctx.get("readOnlyRootFilesystem") is not True:
        errors.append(f"the {who} must set readOnlyRootFilesystem: true")
    if ctx.get("allowPrivilegeEscalation") is not False:
        errors.append(f"the {who} must set allowPrivilegeEscalation: false")
    if "ALL" not in ctx.get("capabilities", {}).get("drop", []) or ctx.get("capabilities", {}).get("add"):
        errors.append(f"the {who} must drop ALL capabilities and add none")
    if (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        errors.append(f"the {who} must use seccompProfile RuntimeDefault")
    return errors


def check_security(docs: list[Doc], dockerfile: str) -> list[str]:
    """The worker runs as the image's non-root user with a read-only root filesystem, no privilege escalation,
    no capability and seccomp RuntimeDefault; it writes only to emptyDirs and the node cache."""
    spec = pod_spec(docs)
    container = worker_container(docs)
    pod_ctx, ctx = spec.get("securityContext", {}), container.get("securityContext", {})

    errors = []
    if ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is not True:
        errors.append("the worker must set runAsNonRoot: true")
    errors += locked_down("worker", pod_ctx, ctx)
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
    elif (uid := ctx.get("runAsUser", pod_ctx.get("runAsUser"))) not in (None, int(user)):
        errors.append(f"the pod runs as uid {uid}, the image as {user}")
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
