"""The example's CPU-only worker pool (issue 34, item 12; infra/k8s/overlays/example/pools/cpu), from the rendered
manifests: its jobs must never wake a GPU node, and it must be able to run on EKS Fargate.

* no container requests a GPU, and the pod tolerates no GPU taint;
* its node affinity refuses every node a GPU NodePool of infra/karpenter can make (by their labels, as if their
  taint were tolerated), and any node with a GPU;
* no hostPath (Fargate refuses it) and the worker runs on the CPU (SPOTGEN_DEVICE=cpu).

(tests/infra/test_capacity.py checks that it is not held to the spot GPU limit; test_pools.py routes its jobs.)
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from tests.harness.infra_docs import REPO, Doc, docs_of, karpenter, one, render
from tests.infra.test_capacity import CPU_POOL, GPU_COUNT, _could_match, _node_labels, _only
from tests.infra.test_pools import env_of

EXAMPLE_POOLS = REPO / "infra/k8s/overlays/example-pools"
GPU = "nvidia.com/gpu"


def _terms(spec: Doc) -> list[Doc]:
    return (spec.get("affinity", {}).get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution", {})
            .get("nodeSelectorTerms", [{}]))


def check_cpu_pool(docs: list[Doc], nodepools: list[Doc], name: str = CPU_POOL) -> list[str]:
    """The problems that would let Deployment ``name``'s pods take a GPU, or keep them off Fargate."""
    deployment = one(docs, "Deployment", name)
    spec = deployment["spec"]["template"]["spec"]
    errors = []
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        resources = container.get("resources", {})
        if GPU in resources.get("requests", {}) or GPU in resources.get("limits", {}):
            errors.append(f"{name}: container {container['name']} requests a GPU")
    for toleration in spec.get("tolerations", []):
        if toleration.get("key") in (GPU, None) and toleration.get("operator") == "Exists":
            errors.append(f"{name} tolerates the GPU nodes' taint ({toleration})")

    def could_run_on(labels: dict[str, set[str]]) -> bool:
        selected = all(key not in labels or value in labels[key] for key, value in spec.get("nodeSelector", {}).items())
        return selected and any(all(_could_match(e, labels) for e in term.get("matchExpressions", []))
                                for term in _terms(spec))

    errors += [f"{name} could run on a node of NodePool {pool['metadata']['name']}: a GPU node" for pool in nodepools
               if could_run_on(_node_labels(pool))]
    if could_run_on({GPU_COUNT: {"1"}}):  # a GPU node of another NodePool, or none
        errors.append(f"{name}'s affinity does not refuse nodes with a GPU ({GPU_COUNT})")
    errors += [f"{name} mounts hostPath volume {v['name']}, which Fargate refuses" for v in spec["volumes"]
               if "hostPath" in v]
    device = env_of(deployment, docs).get("SPOTGEN_DEVICE")
    if device != "cpu":
        errors.append(f"{name}'s workers do not run on the CPU (SPOTGEN_DEVICE={device})")
    return errors


def test_the_cpu_pool_never_takes_a_gpu() -> None:
    assert check_cpu_pool(render(EXAMPLE_POOLS), docs_of(karpenter(), "NodePool")) == []


def _broken(change: Callable[[Doc], None]) -> list[Doc]:
    docs = copy.deepcopy(render(EXAMPLE_POOLS))
    change(one(docs, "Deployment", CPU_POOL)["spec"]["template"]["spec"])
    return docs


def test_broken_cpu_pool() -> None:
    nodepools = docs_of(karpenter(), "NodePool")
    # The pool directory without its patches, as pools/sdxl is: GPU request, toleration, nodeSelector, hostPath.
    gpu = render(REPO / "infra/k8s/overlays/example/pools/sdxl")
    errors = check_cpu_pool(gpu, nodepools, "spotgen-worker-sdxl")
    for words in (("container worker", "requests a GPU"), ("tolerates",), ("hostPath",), ("SPOTGEN_DEVICE=cuda",)):
        _only(errors, *words)
    # Without its affinity it could land on either GPU NodePool (were their taint tolerated).
    anywhere = _broken(lambda spec: spec.pop("affinity"))
    _only(check_cpu_pool(anywhere, nodepools), "NodePool spotgen-gpu-spot")
    _only(check_cpu_pool(anywhere, nodepools), "NodePool spotgen-gpu-on-demand")
    _only(check_cpu_pool(anywhere, nodepools), "does not refuse nodes with a GPU")
    # Refusing the spotgen.io/pool label alone still lets it onto any other node with a GPU.
    label_only = _broken(lambda spec: spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                         ["nodeSelectorTerms"][0]["matchExpressions"].pop(1))
    errors = check_cpu_pool(label_only, nodepools)
    _only(errors, "does not refuse nodes with a GPU")
    assert not any("could run on" in error for error in errors), errors
