"""Reading the ADOT collector (infra/otel) for tests/harness/otel_checks.py: its configuration as the pod sees it,
what each metric looks like after the collector's pipeline, and Prometheus's pod discovery and relabelling replayed
on the pods of a rendering. Replayed rather than trusted: the checks must see a worker that the scrape misses, or a
label that EMF is told to use but that no series carries, before a cluster does.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.infra_docs import REPO, Doc, docs_of, one

OTEL = REPO / "infra/otel"
#: The names lambdas/template.yaml and the workers' settings rely on (the Pod Identity association, the endpoint).
COLLECTOR = "spotgen-otel-collector"
NAMESPACE = "spotgen"
SETTINGS_MAP = "spotgen-otel-settings"
EMF_NAMESPACE = "spotgen"
#: Service port name -> (port, the otlp receiver's protocol behind it).
OTLP_PORTS = {"otlp-grpc": (4317, "grpc"), "otlp-http": (4318, "http")}
#: Labels that would make a CloudWatch metric per job, request, pod or host: never a dimension, never kept.
HIGH_CARDINALITY = frozenset({"job_id", "id", "trace_id", "span_id", "request_id", "instance", "pod", "pod_name",
                              "k8s_pod_name", "node", "host", "hostname", "ip", "address", "prompt", "seed", "key"})


# == the collector's pod and its configuration ===============================================================
def collector(docs: list[Doc]) -> Doc:
    """The collector's Deployment, by name: the overlay renders the workers' too."""
    return one(docs, "Deployment", COLLECTOR)


def collector_container(docs: list[Doc]) -> Doc:
    containers = collector(docs)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"the collector pod has {len(containers)} containers, expected one"
    return containers[0]


def arg(container: Doc, name: str) -> str | None:
    """The value of ``--name=value`` among the container's arguments."""
    values = [a.split("=", 1)[1] for a in container.get("args", []) if a.startswith(f"--{name}=")]
    return values[-1] if values else None


def config_source(docs: list[Doc]) -> tuple[str | None, list[str]]:
    """The text of the configuration the collector reads: the key of the ConfigMap volume mounted at the directory
    its ``--config`` argument names. With the problems that keep it from being found."""
    container = collector_container(docs)
    path = arg(container, "config")
    if path is None:
        return None, ["the collector container has no --config=<file> argument"]
    directory, key = str(PurePosixPath(path).parent), PurePosixPath(path).name
    mounts = [m for m in container.get("volumeMounts", []) if m["mountPath"].rstrip("/") == directory]
    if not mounts:
        return None, [f"--config names {path}, but no volume is mounted at {directory}"]
    volumes = {v["name"]: v for v in collector(docs)["spec"]["template"]["spec"].get("volumes", [])}
    source = volumes.get(mounts[0]["name"], {}).get("configMap", {}).get("name")
    maps = [m for m in docs_of(docs, "ConfigMap") if m["metadata"]["name"] == source]
    if not maps:
        return None, [f"the volume at {directory} is not a ConfigMap that the rendering has ({source})"]
    text = maps[0].get("data", {}).get(key)
    if text is None:
        return None, [f"ConfigMap {source} has no key {key}, which --config={path} reads"]
    return text, []


def collector_config(docs: list[Doc]) -> Doc:
    """The parsed configuration (for the tests: they break copies of it)."""
    text, problems = config_source(docs)
    assert text is not None, problems
    return yaml.safe_load(text)


def kind(component: str) -> str:
    """A component's type: ``filter/spotgen`` is a ``filter``."""
    return component.split("/", 1)[0]


def pipelines(config: Doc, signal: str) -> dict[str, Doc]:
    """The pipelines of one signal (traces, metrics, logs): ``metrics`` and ``metrics/other`` alike."""
    return {name: p for name, p in config.get("service", {}).get("pipelines", {}).items() if kind(name) == signal}


def of_kind(config: Doc, section: str, type_: str) -> dict[str, Doc]:
    """The components of one type in a section, whatever their names (``awsemf``, ``awsemf/other``)."""
    return {name: (c or {}) for name, c in config.get(section, {}).items() if kind(name) == type_}


def port_of(endpoint: str) -> int | None:
    """The port of a ``host:port`` endpoint (None without one: the component's default, which is not checked)."""
    match = re.fullmatch(r"(.*):(\d+)", endpoint or "")
    return int(match.group(2)) if match else None


def host_of(endpoint: str) -> str:
    return (endpoint or "").rsplit(":", 1)[0]


def scrape_configs(config: Doc) -> list[Doc]:
    """Every scrape job of every prometheus receiver."""
    return [job for receiver in of_kind(config, "receivers", "prometheus").values()
            for job in receiver.get("config", {}).get("scrape_configs", [])]


# == the worker's metrics, as the collector names and labels them ===========================================
def collector_metrics(exposition: str) -> dict[str, set[str]]:
    """Metric name -> label names, from a Prometheus exposition, as the Prometheus receiver names the metrics when
    it trims nothing: counters with their ``_total``, histograms by their base name (``le`` is not a label there).
    prometheus_client's parser strips ``_total`` from a counter family's name: it is put back."""
    metrics: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = {label for sample in family.samples for label in sample.labels} - {"le", "quantile"}
        metrics[name] = labels
    return metrics


def added_labels(config: Doc) -> set[str]:
    """Labels the scrape's relabelling puts on every series of a target (``pool``, say)."""
    return {rule["target_label"] for job in scrape_configs(config) for rule in job.get("relabel_configs", [])
            if rule.get("action", "replace") == "replace" and not rule.get("target_label", "__").startswith("__")}


def metrics_processors(config: Doc) -> list[tuple[str, Doc]]:
    """(name, settings) of the processors of the metrics pipelines, in their order."""
    names = [p for pipeline in pipelines(config, "metrics").values() for p in pipeline.get("processors", [])]
    return [(name, config.get("processors", {}).get(name) or {}) for name in dict.fromkeys(names)]


def _matches(match_type: str | None, pattern: str, name: str) -> bool:
    # The collector's regexp matching (Go's MatchString) finds a match anywhere in the name, as re.search does.
    return bool(re.search(pattern, name)) if match_type == "regexp" else pattern == name


def allowlist(config: Doc, name: str) -> set[str] | None:
    """The labels metricstransform's aggregate_labels operations let through for metric ``name`` (the
    intersection of their label sets), or None when none applies to it."""
    kept: set[str] | None = None
    for processor, settings in metrics_processors(config):
        if kind(processor) != "metricstransform":
            continue
        for transform in settings.get("transforms", []):
            if transform.get("action") != "update" or \
                    not _matches(transform.get("match_type"), transform.get("include", ""), name):
                continue
            for operation in transform.get("operations", []):
                if operation.get("action") == "aggregate_labels":
                    label_set = set(operation.get("label_set", []))
                    kept = label_set if kept is None else kept & label_set
    return kept


def after_pipeline(config: Doc, name: str, labels: set[str]) -> set[str] | None:
    """The labels a worker metric has when it reaches the exporters, or None when a processor drops it: the
    relabelling's labels added, a filter processor's include/exclude lists applied, the label allowlist kept."""
    for processor, settings in metrics_processors(config):
        rules = settings.get("metrics", {}) if kind(processor) == "filter" else {}
        include, exclude = rules.get("include"), rules.get("exclude")
        if include and not any(_matches(include.get("match_type"), p, name) for p in include["metric_names"]):
            return None
        if exclude and any(_matches(exclude.get("match_type"), p, name) for p in exclude["metric_names"]):
            return None
    labels = labels | added_labels(config)
    kept = allowlist(config, name)
    return labels if kept is None else labels & kept


# == Prometheus's pod discovery and relabelling, replayed =====================================================
def _sanitized(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def discovered(pod: Doc, namespace: str) -> list[tuple[str, dict[str, str]]]:
    """The targets ``role: pod`` makes of a pod template: one per container port, one per container without a
    port; each with the meta labels Prometheus gives it. Named "container/port" (or "container")."""
    meta = {"__meta_kubernetes_namespace": namespace}
    for key, value in pod["metadata"].get("labels", {}).items():
        meta[f"__meta_kubernetes_pod_label_{_sanitized(key)}"] = value
        meta[f"__meta_kubernetes_pod_labelpresent_{_sanitized(key)}"] = "true"
    for key, value in pod["metadata"].get("annotations", {}).items():
        meta[f"__meta_kubernetes_pod_annotation_{_sanitized(key)}"] = value
    targets = []
    spec = pod["spec"]
    for init, container in [(False, c) for c in spec.get("containers", [])] + \
            [(True, c) for c in spec.get("initContainers", [])]:
        base = {**meta, "__meta_kubernetes_pod_container_name": container["name"],
                "__meta_kubernetes_pod_container_init": str(init).lower(), "__address__": "10.0.0.1"}
        ports = container.get("ports", [])
        if not ports:
            targets.append((container["name"], base))
        for port in ports:
            targets.append((f"{container['name']}/{port.get('name', port['containerPort'])}", {
                **base, "__address__": f"10.0.0.1:{port['containerPort']}",
                "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                "__meta_kubernetes_pod_container_port_protocol": port.get("protocol", "TCP")}))
    return targets


def relabelled(rules: list[Doc], labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus's relabelling (replace, keep, drop) of one target: its labels after, or None when dropped.
    Regular expressions are anchored at both ends, as Prometheus anchors them."""
    labels = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace")
        value = rule.get("separator", ";").join(labels.get(name, "") for name in rule.get("source_labels", []))
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if action == "keep" and not match:
            return None
        if action == "drop" and match:
            return None
        if action == "replace" and match:
            replacement = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", rule.get("replacement", "$1"))
            result = match.expand(replacement)
            if result:
                labels[rule["target_label"]] = result
            else:
                labels.pop(rule["target_label"], None)
        if action not in ("replace", "keep", "drop"):
            raise ValueError(f"relabel action {action} is not replayed here: add it to relabelled()")
    return labels
