"""The checks of tests/infra/test_otel.py: the ADOT collector (infra/otel) against itself, against the worker's real
metrics (runtime/ops/metrics.py) and manifests (infra/k8s), and against the names lambdas/template.yaml relies on
(the service account of the Pod Identity association, the EMF namespace, the metrics its alarms read). Each check
takes loaded documents and returns the problems it finds, each saying what to fix, so that the tests run it on the
real files and on deliberately broken copies.
"""

from __future__ import annotations

import re

import yaml

from tests.harness.infra_checks import locked_down
from tests.harness.infra_docs import Doc, docs_of
from tests.harness.otel_config import (
    COLLECTOR,
    EMF_NAMESPACE,
    HIGH_CARDINALITY,
    NAMESPACE,
    after_pipeline,
    allowlist,
    collector,
    collector_container,
    config_source,
    kind,
    of_kind,
    pipelines,
    scrape_configs,
)

SECTIONS = ("receivers", "processors", "exporters")
#: Dimension sets the stack's CloudWatch alarms read: the failure ratio sums [state]; the interruption alarm
#: searches over [pool] and [pipeline].
ALARM_DIMENSIONS = {"spotgen_jobs_total": [["state"], ["pipeline", "model", "state"], ["pool", "state"]],
                    "spotgen_interruptions_total": [["pool"], ["pipeline"]]}
#: What the Prometheus receiver's pod discovery reads, and all the collector may do in the Kubernetes API.
DISCOVERY_RULE = {"apiGroups": {""}, "resources": {"pods"}, "verbs": {"get", "list", "watch"}}


def check_structure(docs: list[Doc]) -> list[str]:
    """The configuration the pod reads exists, parses as YAML, and has receivers, processors, exporters and
    service.pipelines."""
    text, problems = config_source(docs)
    if text is None:
        return problems
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [f"the collector's config.yaml does not parse: {exc}"]
    if not isinstance(config, dict):
        return ["the collector's config.yaml is not a mapping"]
    problems += [f"the collector's configuration has no {section}" for section in SECTIONS
                 if not isinstance(config.get(section), dict) or not config[section]]
    if not isinstance(config.get("service", {}).get("pipelines"), dict) or not config["service"]["pipelines"]:
        problems.append("the collector's configuration has no service.pipelines")
    return problems


def check_components(config: Doc) -> list[str]:
    """Pipelines use only defined components, every defined component is used, extensions are defined and
    enabled; memory_limiter comes first in a pipeline and batch last."""
    problems = []
    used: dict[str, set[str]] = {section: set() for section in SECTIONS}
    for name, pipeline in config.get("service", {}).get("pipelines", {}).items():
        if kind(name) not in ("traces", "metrics", "logs"):
            problems.append(f"pipeline {name} is not a traces, metrics or logs pipeline")
        for section in SECTIONS:
            for component in pipeline.get(section, []):
                used[section].add(component)
                if component not in config.get(section, {}):
                    problems.append(f"pipeline {name} uses {section[:-1]} {component}, which {section} does not "
                                    "define")
        if not pipeline.get("receivers") or not pipeline.get("exporters"):
            problems.append(f"pipeline {name} needs at least one receiver and one exporter")
        processors = [kind(p) for p in pipeline.get("processors", [])]
        if processors[:1] != ["memory_limiter"]:
            problems.append(f"pipeline {name} must start with memory_limiter (it refuses data before an OOM kill)")
        if processors[-1:] != ["batch"]:
            problems.append(f"pipeline {name} must end with batch")
    for section in SECTIONS:
        problems += [f"{section[:-1]} {c} is defined but no pipeline uses it" for c in config.get(section, {})
                     if c not in used[section]]
    enabled = config.get("service", {}).get("extensions", [])
    problems += [f"service.extensions lists {e}, which extensions does not define" for e in enabled
                 if e not in config.get("extensions", {})]
    problems += [f"extension {e} is defined but not in service.extensions" for e in config.get("extensions", {})
                 if e not in enabled]
    return problems


def check_destinations(config: Doc) -> list[str]:
    """Traces go from OTLP to X-Ray, metrics from the scrape to CloudWatch EMF in namespace spotgen, with the region
    and log group of the collector's settings and no automatic dimension rollups."""
    problems = []
    if not pipelines(config, "traces") or not pipelines(config, "metrics"):
        problems.append("the collector needs a traces and a metrics pipeline")
    for name, pipeline in pipelines(config, "traces").items():
        if not any(kind(e) == "awsxray" for e in pipeline.get("exporters", [])):
            problems.append(f"pipeline {name} does not export to awsxray: the traces would not reach X-Ray")
        if not any(kind(r) == "otlp" for r in pipeline.get("receivers", [])):
            problems.append(f"pipeline {name} does not receive otlp, which the workers send")
    for name, pipeline in pipelines(config, "metrics").items():
        if not any(kind(e) == "awsemf" for e in pipeline.get("exporters", [])):
            problems.append(f"pipeline {name} does not export to awsemf: the metrics would not reach CloudWatch")
        if not any(kind(r) == "prometheus" for r in pipeline.get("receivers", [])):
            problems.append(f"pipeline {name} does not receive from prometheus, which scrapes the workers")
    for name, exporter in of_kind(config, "exporters", "awsxray").items():
        if exporter.get("region") != "${env:AWS_REGION}":
            problems.append(f"exporter {name} must set region: ${{env:AWS_REGION}}, not {exporter.get('region')}")
    for name, exporter in of_kind(config, "exporters", "awsemf").items():
        expected = {"namespace": EMF_NAMESPACE, "region": "${env:AWS_REGION}",
                    "log_group_name": "${env:EMF_LOG_GROUP}", "dimension_rollup_option": "NoDimensionRollup"}
        problems += [f"exporter {name} must set {key}: {value}, not {exporter.get(key)}"
                     for key, value in expected.items() if exporter.get(key) != value]
        if "log_retention" in exporter:
            problems.append(f"exporter {name} sets log_retention, which needs logs:PutRetentionPolicy: the stack "
                            "sets the log group's retention, and the collector's role may not")
    return problems


def check_emf(config: Doc, metrics: dict[str, set[str]]) -> list[str]:
    """Every EMF metric declaration names metrics the worker exposes (each selector, anchored, matches one) and
    uses as dimensions only labels those metrics carry when they reach the exporter, none of them high-cardinality;
    the dimension sets the stack's alarms read are declared."""
    problems = []
    declared: dict[str, list[set[str]]] = {}
    for name, exporter in of_kind(config, "exporters", "awsemf").items():
        for declaration in exporter.get("metric_declarations", []):
            matched = []
            for selector in declaration.get("metric_name_selectors", []):
                if not (selector.startswith("^") and selector.endswith("$")):
                    problems.append(f"{name} selector {selector!r} must be anchored (^...$): awsemf finds it "
                                    "anywhere in a name")
                found = [metric for metric in metrics if re.fullmatch(selector, metric)]
                if not found:
                    problems.append(f"{name} declares {selector!r}, which matches no metric the worker exposes "
                                    "(counters end in _total, histograms have their base name)")
                matched += found
            for dimensions in declaration.get("dimensions", []):
                if len(dimensions) > 10:
                    problems.append(f"{name} dimension set {dimensions} has more than 10 dimensions: awsemf drops it")
                problems += [f"{name} uses {label} as a dimension, a high-cardinality label: one CloudWatch metric "
                             "per value" for label in dimensions if label in HIGH_CARDINALITY]
                for metric in matched:
                    declared.setdefault(metric, []).append(set(dimensions))
                    labels = after_pipeline(config, metric, metrics[metric])
                    if labels is None:
                        problems.append(f"{name} declares {metric}, which a processor of the metrics pipeline "
                                        "drops")
                        continue
                    problems += [f"{name} declares {metric} with dimensions {dimensions}, but {label} is not a "
                                 f"label of it at the exporter (it has {sorted(labels)})"
                                 for label in dimensions if label not in labels]
    for metric, sets in ALARM_DIMENSIONS.items():
        problems += [f"{metric} must be declared with dimensions {dimensions}: the stack's alarms read it"
                     for dimensions in sets if set(dimensions) not in declared.get(metric, [])]
    return problems


def check_labels(config: Doc, metrics: dict[str, set[str]]) -> list[str]:
    """A label allowlist (metricstransform aggregate_labels) bounds the labels of every worker metric that reaches
    the exporter; it keeps all of the worker's own labels (dropping one would sum series that differ in it) and
    no high-cardinality one."""
    problems = []
    for metric, labels in sorted(metrics.items()):
        after = after_pipeline(config, metric, labels)
        if after is None:
            continue  # filtered out: never exported
        kept = allowlist(config, metric)
        if kept is None:
            problems.append(f"no label allowlist (metricstransform aggregate_labels) applies to {metric}: any "
                            "label, a job id or a pod name, would reach EMF")
            continue
        problems += [f"the label allowlist keeps {label}, a high-cardinality label" for label in
                     sorted(kept & HIGH_CARDINALITY)]
        problems += [f"the label allowlist drops label {label} of {metric}: series that differ in it would be "
                     "summed" for label in sorted(labels - after)]
    return list(dict.fromkeys(problems))



def check_rbac(docs: list[Doc], config: Doc) -> list[str]:
    """The collector's service account may read pods in its namespace and nothing else: bound by a RoleBinding to
    a Role (never a ClusterRole), with get/list/watch on pods only; and the discovery stays within that namespace,
    the only place the Role lets it look."""
    problems = [f"{doc['kind']} {doc['metadata']['name']}: the collector needs no cluster-wide permission (a Role "
                f"in {NAMESPACE} does)" for doc in docs if doc.get("kind") in ("ClusterRole", "ClusterRoleBinding")]
    bindings = [b for b in docs_of(docs, "RoleBinding") if any(
        s.get("kind") == "ServiceAccount" and s.get("name") == COLLECTOR and s.get("namespace", NAMESPACE) == NAMESPACE
        for s in b.get("subjects", []))]
    if not bindings:
        problems.append(f"no RoleBinding gives ServiceAccount {COLLECTOR} a Role: the pod discovery cannot list pods")
    for binding in bindings:
        ref = binding["roleRef"]
        if binding["metadata"].get("namespace") != NAMESPACE or ref.get("kind") != "Role":
            problems.append(f"RoleBinding {binding['metadata']['name']} must bind a Role in {NAMESPACE}, binds "
                            f"{ref.get('kind')} {ref.get('name')} in {binding['metadata'].get('namespace')}")
            continue
        roles = [r for r in docs_of(docs, "Role") if r["metadata"]["name"] == ref["name"]
                 and r["metadata"].get("namespace") == NAMESPACE]
        if not roles:
            problems.append(f"RoleBinding {binding['metadata']['name']} binds Role {ref['name']}, which is not "
                            "rendered")
        for role in roles:
            for rule in role.get("rules", []):
                for field, allowed in DISCOVERY_RULE.items():
                    problems += [f"Role {ref['name']} grants {field} {value!r}: the pod discovery needs only "
                                 f"{sorted(allowed)}" for value in rule.get(field, []) if value not in allowed]
                problems += [f"Role {ref['name']} grants {field}, which the pod discovery does not need"
                             for field in ("resourceNames", "nonResourceURLs") if field in rule]
    for job in scrape_configs(config):
        for sd in job.get("kubernetes_sd_configs", []):
            if sd.get("namespaces", {}).get("names") != [NAMESPACE]:
                problems.append(f"scrape job {job.get('job_name')} discovers outside {NAMESPACE}, where its Role "
                                "does not reach: restrict kubernetes_sd_configs namespaces.names")
            if sd.get("role") != "pod" or sd.get("attach_metadata"):
                problems.append(f"scrape job {job.get('job_name')}: only role pod without attach_metadata fits the "
                                "Role (other roles and node metadata need more permissions)")
    return problems


def check_pod(docs: list[Doc]) -> list[str]:
    """The collector's pod is locked down like the worker's (non-root, read-only root filesystem, no privilege
    escalation, no capability, seccomp RuntimeDefault) and has CPU and memory requests and limits; memory_limiter
    can only work within a memory limit."""
    spec = collector(docs)["spec"]["template"]["spec"]
    container = collector_container(docs)
    pod_ctx, ctx = spec.get("securityContext", {}), container.get("securityContext", {})
    problems = []
    if ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is not True or \
            not ctx.get("runAsUser", pod_ctx.get("runAsUser")):
        problems.append("the collector must set runAsNonRoot: true and a numeric non-root runAsUser (the image's "
                        "user is a name, which runAsNonRoot cannot check)")
    problems += locked_down("collector", pod_ctx, ctx)
    resources = container.get("resources", {})
    problems += [f"the collector needs a {resource} {part}" for part in ("requests", "limits")
                 for resource in ("cpu", "memory") if resource not in resources.get(part, {})]
    return problems
