"""The ADOT collector (infra/otel) checked offline: its configuration's structure and destinations, the EMF
metric declarations against the worker's real exposition (runtime/ops/metrics.py, as tests/ops/test_observe.py
makes it), its manifests against the workers' (the overlay's rendering), and its RBAC. Like
tests/infra/test_infra.py, the ``test_broken_*`` tests break a copy of the loaded documents and require the
matching check to say so.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from datetime import UTC, datetime

import yaml
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from runtime.ops.metrics import Metrics, QueueDepth
from runtime.ops.observe import JobInfo, Phase
from tests.harness.infra_checks import check_schemas
from tests.harness.infra_docs import OVERLAY, WORKER, Doc, docs_of, one, render
from tests.harness.otel_checks import (
    check_components,
    check_destinations,
    check_emf,
    check_labels,
    check_pod,
    check_rbac,
    check_structure,
)
from tests.harness.otel_config import COLLECTOR, OTEL, collector_config, collector_metrics, config_source
from tests.harness.otel_wiring import check_wiring
from tests.infra.test_infra import _only
from tests.ops.test_observe import fresh_exposition, sample_names

#: Device memory has samples only on a CUDA worker; no EMF declaration uses it.
WITHOUT_SAMPLES_ON_CPU = {"spotgen_device_memory_used_bytes", "spotgen_device_memory_reserved_bytes",
                          "spotgen_device_memory_total_bytes"}


def busy_exposition() -> str:
    """fresh_exposition() has no sample of a labelled metric before its first use, hence no label names: this is
    the exposition of a worker's metrics after one job went through every hook, so each series shows its labels."""
    metrics = Metrics(device="cpu", queue="q", version="test", model_memory=lambda: 0)
    queue = QueueDepth(None, {})
    queue.values = {("work", "visible"): 3.0}
    metrics.registry.register(queue)
    job = JobInfo(id="j1", pipeline="txt2img", model="tiny-sd", attempt=1, submitted_at=datetime.now(UTC))
    metrics.job_begin(job)
    metrics.job_started(job)
    metrics.step(job, 1, 1, 0.01)
    metrics.phases(job, [Phase("denoise", 0, 1_000_000)])
    metrics.checkpoint_written(job, 1024, 0.1)
    metrics.resumed(job, True, 1)
    metrics.model_loaded("tiny-sd", 1.0)
    metrics.model_copied("tiny-sd", 1024, 0.5)
    metrics.dead_lettered("invalid_request")
    metrics.aws_error("s3", "GetObject", "SlowDown")
    metrics.job_failure(job, "infrastructure", "retried")
    job.outcome, job.images = "succeeded", 1
    metrics.job_end(job)
    retried = JobInfo(id="j2", pipeline="txt2img", model="tiny-sd", attempt=1)
    metrics.job_begin(retried)
    retried.outcome = "error"
    metrics.job_end(retried)
    return generate_latest(metrics.registry).decode()


@functools.cache
def _worker_metrics() -> dict[str, set[str]]:
    return collector_metrics(busy_exposition())


def worker_metrics() -> dict[str, set[str]]:
    """Metric name (as the collector names it) -> its labels, for every metric of a fresh worker."""
    return copy.deepcopy(_worker_metrics())


def config() -> Doc:
    return collector_config(render(OTEL))


# == the real files ===========================================================================================
def test_the_exposition_is_the_workers() -> None:
    """The names the checks use are the fresh worker's, as the collector names them, and every labelled metric
    shows its labels."""
    fresh = fresh_exposition()
    assert set(collector_metrics(fresh)) == set(worker_metrics()), "busy_exposition() must be the same registry"
    assert set(worker_metrics()) <= sample_names(fresh)
    silent = {f.name for f in text_string_to_metric_families(busy_exposition())
              if f.name.startswith("spotgen_") and not f.samples}
    assert silent <= WITHOUT_SAMPLES_ON_CPU, f"give these a sample in busy_exposition(): {silent}"
    assert {"pipeline", "model", "state"} == worker_metrics()["spotgen_jobs_total"]


def test_the_collector_renders_and_validates() -> None:
    docs = render(OTEL)
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} >= {
        ("ServiceAccount", COLLECTOR), ("Role", COLLECTOR), ("RoleBinding", COLLECTOR), ("Deployment", COLLECTOR),
        ("Service", COLLECTOR), ("NetworkPolicy", COLLECTOR)}
    assert check_schemas(docs) == []
    assert config_source(render(OVERLAY))[0] == config_source(docs)[0], "the overlay must not change config.yaml"


def test_structure_and_components() -> None:
    assert check_structure(render(OTEL)) == []
    assert check_components(config()) == []


def test_destinations() -> None:
    assert check_destinations(config()) == []


def test_emf_declarations_match_the_worker_metrics() -> None:
    assert check_emf(config(), worker_metrics()) == []
    assert check_labels(config(), worker_metrics()) == []


def test_wiring_with_the_workers() -> None:
    assert check_wiring(render(OVERLAY)) == []


def test_rbac_and_pod() -> None:
    assert check_rbac(render(OTEL), config()) == []
    assert check_pod(render(OTEL)) == []


# == deliberately broken copies: each check must catch its fault and say so ===================================
def _broken(change: Callable[[Doc], None]) -> Doc:
    broken = copy.deepcopy(config())
    change(broken)
    return broken


def _with_config(docs: list[Doc], change: Callable[[Doc], None]) -> list[Doc]:
    """``docs`` with the collector's ConfigMap holding a changed copy of its configuration."""
    docs = copy.deepcopy(docs)
    text, _ = config_source(docs)
    target = next(m for m in docs_of(docs, "ConfigMap") if text in m.get("data", {}).values())
    changed = yaml.safe_load(text)
    change(changed)
    target["data"]["config.yaml"] = yaml.safe_dump(changed)
    return docs


def _collector_pod(docs: list[Doc]) -> Doc:
    return one(docs, "Deployment", COLLECTOR)["spec"]["template"]


def test_broken_structure() -> None:
    docs = copy.deepcopy(render(OTEL))
    target = next(m for m in docs_of(docs, "ConfigMap") if "config.yaml" in m.get("data", {}))
    target["data"]["config.yaml"] = "receivers: [otlp\n"
    _only(check_structure(docs), "does not parse")
    _only(check_structure(_with_config(render(OTEL), lambda c: c.pop("exporters"))), "no exporters")
    docs = copy.deepcopy(render(OTEL))
    _collector_pod(docs)["spec"]["containers"][0]["args"][0] = "--config=/etc/otel/config.yaml"
    _only(check_structure(docs), "/etc/otel/config.yaml", "no volume is mounted at /etc/otel")


def test_broken_components() -> None:
    undefined = _broken(lambda c: c["service"]["pipelines"]["traces"]["exporters"].append("otlphttp"))
    _only(check_components(undefined), "pipeline traces", "exporter otlphttp", "does not define")
    unused = _broken(lambda c: c["exporters"].update({"debug": {}}))
    _only(check_components(unused), "exporter debug is defined but no pipeline uses it")
    order = _broken(lambda c: c["service"]["pipelines"]["metrics"]["processors"].reverse())
    _only(check_components(order), "pipeline metrics", "memory_limiter")
    extension = _broken(lambda c: c["service"]["extensions"].append("pprof"))
    _only(check_components(extension), "pprof", "extensions does not define")


def test_broken_destinations() -> None:
    def to_otlp(c: Doc) -> None:
        c["exporters"]["otlphttp"] = {"endpoint": "http://elsewhere:4318"}
        c["service"]["pipelines"]["traces"]["exporters"] = ["otlphttp"]

    _only(check_destinations(_broken(to_otlp)), "pipeline traces does not export to awsxray")
    _only(check_destinations(_broken(lambda c: c["exporters"]["awsemf"].update(namespace="SpotGen"))),
          "namespace: spotgen", "SpotGen")
    _only(check_destinations(_broken(lambda c: c["exporters"]["awsemf"].update(log_retention=30))),
          "log_retention", "PutRetentionPolicy")


def _declarations(c: Doc) -> list[Doc]:
    return c["exporters"]["awsemf"]["metric_declarations"]


def test_broken_emf_declarations() -> None:
    metrics = worker_metrics()
    unknown = _broken(lambda c: _declarations(c)[0]["metric_name_selectors"].append("^spotgen_jobs_failed_total$"))
    _only(check_emf(unknown, metrics), "^spotgen_jobs_failed_total$", "matches no metric the worker exposes")
    normalized = _broken(lambda c: _declarations(c)[0].update(metric_name_selectors=["^spotgen_jobs$"]))
    errors = check_emf(normalized, metrics)
    _only(errors, "^spotgen_jobs$", "matches no metric")
    _only(errors, "spotgen_jobs_total must be declared with dimensions ['state']")
    _only(check_emf(_broken(lambda c: _declarations(c)[0]["dimensions"].append(["job_id"])), metrics),
          "job_id", "high-cardinality")
    _only(check_emf(_broken(lambda c: _declarations(c)[1]["dimensions"].append(["model"])), metrics),
          "spotgen_interruptions_total", "model is not a label of it")
    unanchored = _broken(lambda c: _declarations(c)[2]["metric_name_selectors"].append("spotgen_images"))
    _only(check_emf(unanchored, metrics), "'spotgen_images' must be anchored")
    no_pool = _broken(lambda c: c["receivers"]["prometheus"]["config"]["scrape_configs"][0]["relabel_configs"].pop())
    _only(check_emf(no_pool, metrics), "spotgen_jobs_total", "['pool', 'state']", "pool is not a label")
    filtered = _broken(lambda c: c["processors"]["filter/spotgen"]["metrics"]["include"].update(
        metric_names=["^spotgen_job_.*$"]))
    _only(check_emf(filtered, metrics), "spotgen_jobs_total", "a processor of the metrics pipeline drops")


def test_broken_label_allowlist() -> None:
    metrics = worker_metrics()
    operation = ["processors", "metricstransform/bounded-labels", "transforms", 0, "operations", 0]

    def label_set(c: Doc) -> list[str]:
        node = c
        for key in operation:
            node = node[key]
        return node["label_set"]

    _only(check_labels(_broken(lambda c: label_set(c).remove("state")), metrics),
          "drops label state of spotgen_jobs_total")
    _only(check_labels(_broken(lambda c: label_set(c).append("job_id")), metrics), "keeps job_id")
    _only(check_labels(_broken(lambda c: c["service"]["pipelines"]["metrics"]["processors"].remove(
        "metricstransform/bounded-labels")), metrics), "no label allowlist", "spotgen_jobs_total")
    # and the EMF check sees what a dropped label does to a declaration
    _only(check_emf(_broken(lambda c: label_set(c).remove("pool")), metrics), "pool is not a label")


def test_broken_wiring() -> None:
    overlay = render(OVERLAY)
    docs = copy.deepcopy(overlay)
    one(docs, "Service", COLLECTOR)["spec"]["ports"][1]["port"] = 4319
    _only(check_wiring(docs), "otlp-http 4318", "4319")
    docs = copy.deepcopy(overlay)
    one(docs, "Service", COLLECTOR)["spec"]["ports"][1]["targetPort"] = "otlp-grpc"
    _only(check_wiring(docs), "otlp-http leads to container port otlp-grpc", "4318")
    docs = copy.deepcopy(overlay)
    settings = next(m for m in docs_of(docs, "ConfigMap") if "OTEL_EXPORTER_OTLP_ENDPOINT" in m.get("data", {}))
    settings["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://otel-collector.monitoring.svc:4318"
    _only(check_wiring(docs), "OTEL_EXPORTER_OTLP_ENDPOINT", "otel-collector.monitoring.svc")
    settings["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://{COLLECTOR}.spotgen.svc:4317"
    _only(check_wiring(docs), "OTLP/HTTP port")
    docs = copy.deepcopy(overlay)
    _collector_pod(docs)["spec"]["serviceAccountName"] = "default"
    _only(check_wiring(docs), "ServiceAccount spotgen-otel-collector", "runs as default")
    docs = copy.deepcopy(overlay)
    _collector_pod(docs)["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = "otlp-http"
    _only(check_wiring(docs), "livenessProbe", "health_check")
    _only(check_wiring(_with_config(overlay, lambda c: c["receivers"]["otlp"]["protocols"]["http"].pop("endpoint"))),
          "http endpoint", "localhost")


def test_broken_scrape() -> None:
    overlay = render(OVERLAY)

    def rules(c: Doc) -> list[Doc]:
        return c["receivers"]["prometheus"]["config"]["scrape_configs"][0]["relabel_configs"]

    _only(check_wiring(_with_config(overlay, lambda c: rules(c)[0].update(regex="spotgen;gpu-worker"))),
          "drops the worker's metrics port 9400")
    _only(check_wiring(_with_config(overlay, lambda c: rules(c).pop(1))), "also scrapes", "node-cache-owner")
    _only(check_wiring(_with_config(overlay, lambda c: rules(c).__delitem__(slice(0, 2)))),
          "also scrapes spotgen-otel-collector otel-collector/otlp-http")
    docs = copy.deepcopy(overlay)
    one(docs, "Deployment", WORKER)["spec"]["template"]["metadata"]["labels"].pop("spotgen.io/pool")
    _only(check_wiring(docs), "no pool label")
    _only(check_wiring(_with_config(overlay, lambda c: c["receivers"]["prometheus"]["config"]["scrape_configs"][0]
                                    ["kubernetes_sd_configs"][0].pop("namespaces"))), "spotgen only")
    docs = copy.deepcopy(overlay)
    container = _collector_pod(docs)["spec"]["containers"][0]
    container["args"] = [a for a in container["args"] if not a.startswith("--feature-gates")]
    _only(check_wiring(docs), "--feature-gates=-pkg.translator.prometheus.NormalizeName")
    docs = copy.deepcopy(overlay)
    image = "public.ecr.aws/aws-observability/aws-otel-collector:v0.44.0"
    _collector_pod(docs)["spec"]["containers"][0]["image"] = image
    _only(check_wiring(docs), "v0.44", "refuses")


def test_broken_rbac() -> None:
    docs = copy.deepcopy(render(OTEL))
    one(docs, "Role", COLLECTOR)["rules"][0]["verbs"].append("create")
    _only(check_rbac(docs, config()), "Role spotgen-otel-collector grants verbs 'create'")
    docs = copy.deepcopy(render(OTEL))
    one(docs, "Role", COLLECTOR)["rules"][0]["resources"].append("secrets")
    _only(check_rbac(docs, config()), "grants resources 'secrets'")
    docs = copy.deepcopy(render(OTEL))
    role, binding = one(docs, "Role", COLLECTOR), one(docs, "RoleBinding", COLLECTOR)
    role["kind"], binding["kind"], binding["roleRef"]["kind"] = "ClusterRole", "ClusterRoleBinding", "ClusterRole"
    errors = check_rbac(docs, config())
    _only(errors, "ClusterRole spotgen-otel-collector", "no cluster-wide permission")
    _only(errors, "no RoleBinding gives ServiceAccount spotgen-otel-collector a Role")
    attached = _broken(lambda c: c["receivers"]["prometheus"]["config"]["scrape_configs"][0]["kubernetes_sd_configs"]
                       [0].update(attach_metadata={"node": True}))
    _only(check_rbac(render(OTEL), attached), "attach_metadata")


def test_broken_pod() -> None:
    docs = copy.deepcopy(render(OTEL))
    container = _collector_pod(docs)["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFilesystem"] = False
    container["resources"]["limits"].pop("memory")
    errors = check_pod(docs)
    _only(errors, "readOnlyRootFilesystem")
    _only(errors, "memory limits")
