"""The checks of tests/infra/test_infra.py on how worker pods meet the GPU nodes: the grace period against the
spot notice and the NodePools' drain limit, scheduling onto the pools, disruption, and the node's disk. Each takes
loaded documents and returns the problems it finds, so the tests run it on the real files and on broken copies.
"""

from __future__ import annotations

import re

from tests.harness.infra_docs import WORKER, Doc, docs_of, one, pod_spec, worker_container, worker_settings

#: EC2 takes a spot instance this long after its notice, whatever the pod's grace period says.
SPOT_NOTICE_S = 120


#: Grace beyond the checkpoint deadline, for Celery's shutdown and the exit (docs/interruptions.md "Sizing").
GRACE_MARGIN_S = 10


#: The node's data volume holds the model cache plus images, logs and emptyDirs.
NODE_DISK_MARGIN_BYTES = 50 * 2**30


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
    """Karpenter consolidates a node with a running worker only within a budget for reason Underutilized (each
    eviction checkpoints a job), unless the policy is WhenEmpty or the pods are marked do-not-disrupt. The settings
    chosen (issue 34 item 4) are checked in tests/infra/test_capacity.py."""
    annotations = one(docs, "Deployment", WORKER)["spec"]["template"]["metadata"].get("annotations", {})
    protected = annotations.get("karpenter.sh/do-not-disrupt") == "true"

    def bounded(pool: Doc) -> bool:
        return any("Underutilized" in b.get("reasons", []) for b in pool["spec"]["disruption"].get("budgets", []))

    return [f"NodePool {p['metadata']['name']} consolidates nodes that run workers "
            f"({p['spec'].get('disruption', {}).get('consolidationPolicy')}) with no budget for reason "
            "Underutilized: bound it, use WhenEmpty or mark the pods karpenter.sh/do-not-disrupt"
            for p in pools if p["spec"].get("disruption", {}).get("consolidationPolicy") != "WhenEmpty"
            and not protected and not bounded(p)]


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
