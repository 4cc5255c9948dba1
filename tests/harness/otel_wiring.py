"""The check of tests/infra/test_otel.py that ties the ADOT collector (infra/otel) to the rest of a rendering: its
Service, service account, probes and settings against its configuration, its scrape replayed on the rendered pods,
and the workers' OTLP endpoint. Like tests/harness/otel_checks.py, it returns the problems it finds, each saying
what to fix.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import yaml

from tests.harness.infra_checks import METRICS_PATH
from tests.harness.infra_docs import WORKER, Doc, docs_of, one, worker_container, worker_env, worker_settings
from tests.harness.otel_config import (
    COLLECTOR,
    NAMESPACE,
    OTLP_PORTS,
    arg,
    collector,
    collector_container,
    config_source,
    discovered,
    host_of,
    of_kind,
    port_of,
    relabelled,
    scrape_configs,
)

#: The flag that keeps the collector from renaming metrics, and the ADOT release that made it an error (its gate
#: became stable in collector-contrib v0.130).
GATE_FLAG = "-pkg.translator.prometheus.NormalizeName"
GATE_STABLE_IN = (0, 44, 0)


def _container_port(container: Doc, port: int | str | None) -> int | None:
    """A port as a number: Services and probes may name a container port instead."""
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)


def _env(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The container's environment as the pod gets it: its ConfigMaps (envFrom), then its env entries."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        env.update(next((m.get("data", {}) for m in docs_of(docs, "ConfigMap") if m["metadata"]["name"] == name), {}))
    env.update({item["name"]: item["value"] for item in container.get("env", []) if "value" in item})
    return env


def _selects(selector: Doc, labels: dict[str, str]) -> bool:
    """Whether a matchLabels selector picks pods with ``labels`` (an empty one picks nothing here: none is meant)."""
    return bool(selector) and selector.items() <= labels.items()


def check_wiring(docs: list[Doc]) -> list[str]:
    """The collector's manifests, its configuration and the workers agree (``docs``: the overlay's rendering,
    which has both): the Service's OTLP ports lead to the receiver, the service account is the one Pod Identity
    knows, the probes ask the health_check extension, the settings the configuration reads are set, the scrape
    keeps the workers' metrics port (and nothing else), and the workers send their traces to the Service."""
    text, problems = config_source(docs)
    if text is None:
        return problems
    config = yaml.safe_load(text)
    deployment, container = collector(docs), collector_container(docs)
    pod = deployment["spec"]["template"]
    if deployment["metadata"].get("namespace") != NAMESPACE:
        problems.append(f"the collector runs in {deployment['metadata'].get('namespace')}, not {NAMESPACE}")
    account = pod["spec"].get("serviceAccountName")
    if account != COLLECTOR or not any(sa["metadata"]["name"] == COLLECTOR for sa in docs_of(docs, "ServiceAccount")):
        problems.append(f"the collector must run as ServiceAccount {COLLECTOR} (rendered): the stack's Pod Identity "
                        f"association names it; it runs as {account}")
    otlp = next(iter(of_kind(config, "receivers", "otlp").values()), {}).get("protocols", {})
    services = [s for s in docs_of(docs, "Service") if s["metadata"]["name"] == COLLECTOR]
    service = services[0] if services else {"spec": {}}
    if not services or not _selects(service["spec"].get("selector", {}), pod["metadata"]["labels"]):
        problems.append(f"no Service {COLLECTOR} selects the collector pods")
    ports = {p.get("name"): p for p in service["spec"].get("ports", [])}
    for name, (number, protocol) in OTLP_PORTS.items():
        endpoint = (otlp.get(protocol) or {}).get("endpoint", "")
        if port_of(endpoint) != number or host_of(endpoint) in ("localhost", "127.0.0.1", ""):
            problems.append(f"the otlp receiver's {protocol} endpoint is {endpoint or 'its default (localhost)'}, "
                            f"not 0.0.0.0:{number}: other pods could not reach it")
        port = ports.get(name)
        if port is None or port["port"] != number:
            problems.append(f"Service {COLLECTOR} must have port {name} {number}, has {port and port['port']}")
            continue
        target = _container_port(container, port.get("targetPort", port["port"]))
        if target is None or target != port_of(endpoint):
            problems.append(f"Service port {name} leads to container port {port.get('targetPort')} ({target}), not "
                            f"to the otlp {protocol} receiver's port {port_of(endpoint)}")
    health = next(iter(of_kind(config, "extensions", "health_check").values()), {})
    for probe in ("livenessProbe", "readinessProbe"):
        get = container.get(probe, {}).get("httpGet")
        if get is None:
            problems.append(f"the collector has no HTTP {probe} (on the health_check extension)")
        elif _container_port(container, get.get("port")) != port_of(health.get("endpoint", "")) or \
                get.get("path", "/") != health.get("path", "/"):
            problems.append(f"the collector's {probe} asks port {get.get('port')} {get.get('path')}, but health_check "
                            f"serves {health.get('endpoint')} {health.get('path', '/')}")
    env = _env(docs, container)
    problems += [f"config.yaml reads ${{env:{name}}}, which the collector container does not get"
                 for name in sorted(set(re.findall(r"\$\{env:(\w+)\}", text))) if not env.get(name)]
    if env.get("AWS_REGION") != worker_env(docs).get("SPOTGEN_REGION"):
        problems.append(f"the collector's AWS_REGION ({env.get('AWS_REGION')}) is not the workers' SPOTGEN_REGION "
                        f"({worker_env(docs).get('SPOTGEN_REGION')})")
    problems += _check_names_kept(config, container)
    problems += _check_scrape(config, docs)
    problems += _check_endpoint(docs, service)
    return problems


def _check_names_kept(config: Doc, container: Doc) -> list[str]:
    """The collector renames no metric (the EMF declarations name them as exposed), with a flag this image takes."""
    problems = []
    gates = (arg(container, "feature-gates") or "").split(",")
    if GATE_FLAG not in gates:
        problems.append(f"the collector needs --feature-gates={GATE_FLAG}: the EMF declarations and the stack's "
                        "alarms use the names as exposed (spotgen_jobs_total)")
    tag = re.search(r":v(\d+)\.(\d+)\.(\d+)$", container["image"])
    if tag is None:
        problems.append(f"the collector image {container['image']} is not pinned to a release tag vX.Y.Z")
    elif GATE_FLAG in gates and tuple(int(n) for n in tag.groups()) >= GATE_STABLE_IN:
        problems.append(f"{container['image']}: from ADOT v0.44 the NormalizeName gate is stable and the collector "
                        f"refuses {GATE_FLAG}; drop the flag and check the metric names")
    problems += [f"receiver {name} trims metric suffixes: the EMF declarations name spotgen_jobs_total"
                 for name, receiver in of_kind(config, "receivers", "prometheus").items()
                 if receiver.get("trim_metric_suffixes")]
    return problems


def _check_scrape(config: Doc, docs: list[Doc]) -> list[str]:
    """Replays the pod discovery on the rendered pods: the workers' metrics port is scraped on /metrics with a
    pool label, every other port (the collector's own too) is not."""
    problems = []
    worker = one(docs, "Deployment", WORKER)
    namespace, port = worker["metadata"].get("namespace"), worker_settings(docs).metrics_port
    jobs = scrape_configs(config)
    if not jobs:
        return ["the prometheus receiver has no scrape_configs"]
    for job in jobs:
        name, sd = job.get("job_name"), job.get("kubernetes_sd_configs", [])
        if job.get("metrics_path", "/metrics") != METRICS_PATH:
            problems.append(f"scrape job {name} asks {job.get('metrics_path')}, the worker serves {METRICS_PATH}")
        if not sd or any(s.get("namespaces", {}).get("names") != [namespace] for s in sd):
            problems.append(f"scrape job {name} must discover pods in {namespace} only (kubernetes_sd_configs "
                            "namespaces.names), which the collector's Role allows")
        kept = {}
        for deployment in docs_of(docs, "Deployment"):
            for target, labels in discovered(deployment["spec"]["template"], namespace):
                after = relabelled(job.get("relabel_configs", []), labels)
                if after is not None:
                    kept[f"{deployment['metadata']['name']} {target}"] = after
        expected = next((f"{WORKER} worker/{p.get('name', p['containerPort'])}" for p in
                         worker_container(docs).get("ports", []) if p["containerPort"] == port), None)
        if expected not in kept:
            problems.append(f"scrape job {name} drops the worker's metrics port {port}: check its keep rules "
                            "against the pod labels of infra/k8s/base/deployment.yaml")
        problems += [f"scrape job {name} also scrapes {target}: keep only the workers' port {port}"
                     for target in sorted(kept) if target != expected]
        if expected in kept and not kept[expected].get("pool"):
            problems.append(f"scrape job {name} gives the workers' series no pool label: relabel their "
                            "spotgen.io/pool pod label to pool")
    return problems


def _check_endpoint(docs: list[Doc], service: Doc) -> list[str]:
    """The workers export OTLP over HTTP to the collector Service's DNS name and OTLP/HTTP port, which its
    NetworkPolicy opens to them."""
    endpoint = worker_env(docs).get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    url = urlsplit(endpoint)
    http = next((p["port"] for p in service["spec"].get("ports", []) if p.get("name") == "otlp-http"), None)
    problems = []
    if url.scheme != "http" or url.hostname not in (f"{COLLECTOR}.{NAMESPACE}.svc",
                                                    f"{COLLECTOR}.{NAMESPACE}.svc.cluster.local") or url.port != http:
        problems.append(f"the workers' OTEL_EXPORTER_OTLP_ENDPOINT is {endpoint!r}, not "
                        f"http://{COLLECTOR}.{NAMESPACE}.svc:{http} (the collector Service's OTLP/HTTP port)")
    if worker_env(docs).get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") != "http/protobuf":
        problems.append("the workers' OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf (runtime/ops/tracing.py)")
    worker_labels = one(docs, "Deployment", WORKER)["spec"]["template"]["metadata"]["labels"]
    collector_labels = collector(docs)["spec"]["template"]["metadata"]["labels"]
    policies = [p for p in docs_of(docs, "NetworkPolicy") if _selects(p["spec"]["podSelector"].get("matchLabels", {}),
                                                                      collector_labels)]
    for policy in policies:
        opened = {p.get("port") for rule in policy["spec"].get("ingress", [])
                  if any(_selects(peer.get("podSelector", {}).get("matchLabels", {}), worker_labels)
                         for peer in rule.get("from", [])) for p in rule.get("ports", [])}
        if http not in opened and "otlp-http" not in opened:
            problems.append(f"NetworkPolicy {policy['metadata']['name']} does not let the workers reach the "
                            f"collector on {http}")
    if not policies:
        problems.append("no NetworkPolicy selects the collector pods: any pod could send to it")
    return problems
