"""Extra worker pools (issue 34, item 6): the API stack's pool slots and the kustomize pools, checked together.

The example (infra/k8s/overlays/example-pools: the example overlay with the pool ../example/pools/sdxl) names its
pools by their Deployments' spotgen.io/worker-pool label and their models by SPOTGEN_PRELOAD; the template is
evaluated for exactly those Pool1Name/Pool1Models parameters (tests/harness/pool_checks.py). Each
``test_broken_*`` test breaks a copy and requires the check to say so.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

from tests.harness.infra_docs import OVERLAY, REPO, Doc, docs_of, read_env, render, template
from tests.harness.pool_checks import (
    Stack,
    check_alarmed,
    check_complexity,
    check_delivery,
    check_matches_local_pools,
    check_readers,
    check_routing,
    matches,
    pool_parameters,
    routes,
)

EXAMPLE_POOLS = REPO / "infra/k8s/overlays/example-pools"
POOL_LABEL = "spotgen.io/worker-pool"
#: Models no pool takes: the work queue's.
OTHER_MODELS = ["sd15", "some-model-no-pool-names"]
#: Every slot filled; a slot with models beside one that only a compatibility runtime's `pool` reaches; none.
#: The pipelines the example's CPU pool (overlays/example/pools/cpu) is deployed with: Pool2Pipelines.
EXAMPLE_PIPELINES = {"cpu": ["upscale-lanczos", "upscale-nearest"]}
CASES = [{"a": ["m1"], "b": ["m2", "m3"], "c": ["m4.v2"]}, {"sdxl": ["sdxl-base"], "xl": []}, {}]


def workers(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs_of(docs, "Deployment")
            if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"]


def env_of(deployment: Doc, docs: list[Doc]) -> dict[str, str]:
    """A worker Deployment's environment: its ConfigMaps (envFrom), then its env entries."""
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "worker")
    maps = {doc["metadata"]["name"]: doc.get("data", {}) for doc in docs_of(docs, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps.get(source.get("configMapRef", {}).get("name"), {}))
    env.update({item["name"]: item["value"] for item in container.get("env", []) if "value" in item})
    return env


def example_pools(docs: list[Doc]) -> dict[str, list[str]]:
    """Pool name -> its models, from the rendered pool Deployments."""
    pools = {}
    for deployment in workers(docs):
        name = deployment["spec"]["template"]["metadata"]["labels"].get(POOL_LABEL)
        if name:
            env = env_of(deployment, docs)
            pools[name] = [model for model in env["SPOTGEN_PRELOAD"].split(",") if model]
    return pools


def reader_queues(docs: list[Doc]) -> tuple[list[dict[str, str]], list[str]]:
    """The workers' environments (their queues) and the queues KEDA watches."""
    envs = [env_of(deployment, docs) for deployment in workers(docs)]
    keda = [trigger["metadata"]["queueURL"] for scaled in docs_of(docs, "ScaledObject")
            for trigger in scaled["spec"]["triggers"] if trigger["type"] == "aws-sqs-queue"]
    return envs, keda


# == the real files ===========================================================================================
def test_the_example_has_a_pool() -> None:
    docs = render(EXAMPLE_POOLS)
    assert example_pools(docs) == {"sdxl": ["sdxl-base", "sdxl-refiner"], "cpu": []}
    envs, keda = reader_queues(docs)
    assert len({env["SPOTGEN_QUEUE_URL"] for env in envs}) == len(envs) == 3, "each pool reads its own queue"
    assert sorted(keda) == sorted(env["SPOTGEN_QUEUE_URL"] for env in envs), "one ScaledObject per pool, on its queue"
    assert not any(doc["metadata"]["name"].startswith("spotgen-deploy") for doc in docs)


def test_the_example_pool_files_are_the_stack_outputs() -> None:
    """What docs/deploy.md section 6 writes into a pool's .env files, from the stack deployed with that pool."""
    pools = example_pools(render(EXAMPLE_POOLS))
    in_slots = {name: pools[name] for name in ("sdxl", "cpu")}  # slot 1, slot 2: the kustomize output's order aside
    stack = Stack(template(), pool_parameters(in_slots, EXAMPLE_PIPELINES))
    outputs = stack.tpl["Outputs"]
    main = dict(item.split("=", 1) for item in stack.value(outputs["WorkerSettings"]["Value"]).split())
    for slot, name in ((1, "sdxl"), (2, "cpu")):
        pool = dict(item.split("=", 1) for item in stack.value(outputs[f"Pool{slot}Settings"]["Value"]).split())
        directory = OVERLAY / f"pools/{name}"
        written = {key: value for key, value in main.items() if "_QUEUE_" not in key} | pool
        assert {k: v for k, v in read_env(directory / "settings.env").items() if k != "SPOTGEN_PRELOAD"} == written
        assert read_env(directory / "deploy.env")["QUEUE_URL"] == stack.value(outputs[f"Pool{slot}QueueUrl"]["Value"])
        assert read_env(directory / "deploy.env")["IMAGE"] == read_env(OVERLAY / "deploy.env")["IMAGE"]


@pytest.mark.parametrize("pools", [*CASES, "example"])
def test_every_model_reaches_one_queue(pools: dict[str, list[str]] | str) -> None:
    pipelines = EXAMPLE_PIPELINES if pools == "example" else {}
    pools = example_pools(render(EXAMPLE_POOLS)) if pools == "example" else pools
    assert check_routing(template(), pools, OTHER_MODELS, pipelines) == []
    assert check_matches_local_pools(template(), pools, pipelines) == []
    assert check_delivery(template(), pools) == []
    assert check_alarmed(template(), pools) == []


def test_every_queue_read_is_allowed() -> None:
    docs = render(EXAMPLE_POOLS)
    envs, keda = reader_queues(docs)
    assert check_readers(template(), example_pools(docs), envs, keda) == []


def test_slots_are_all_wired() -> None:
    """Each slot alone: a copy-paste slip in slot 2 or 3 shows up although the example fills only slot 1."""
    for slot in (1, 2, 3):
        filler = {f"unused{n}": [f"x{n}"] for n in range(1, slot)}
        pools = {**filler, "p": ["pm"]}
        assert pool_parameters(pools)[f"Pool{slot}Name"] == "p"
        assert check_routing(template(), pools, OTHER_MODELS) == []
        assert check_delivery(template(), pools) == []
        assert check_alarmed(template(), pools) == []
        url = "https://sqs.us-east-1.amazonaws.com/123456789012/spotgen-p"
        env = {"SPOTGEN_QUEUE_URL": url, "SPOTGEN_DEAD_LETTER_QUEUE_URL": f"{url}-dlq"}
        assert check_readers(template(), pools, [env], [url]) == []


# == broken copies ============================================================================================
def _broken(change: Callable[[Doc], None]) -> Doc:
    tpl = copy.deepcopy(template())
    change(tpl["Resources"])
    return tpl


def _only(errors: list[str], *words: str) -> None:
    assert errors, "the broken copy passed"
    assert any(all(word in error for word in words) for error in errors), errors


SDXL = {"sdxl": ["sdxl-base", "sdxl-refiner"]}


def test_broken_routing() -> None:
    # The work queue's filter as it was: every pool job also lands on the work queue and runs twice.
    twice = _broken(lambda res: res["WorkQueueSubscription"]["Properties"]["FilterPolicy"].pop("model"))
    _only(check_routing(twice, SDXL, OTHER_MODELS), "'sdxl-base'", "Pool1Queue", "WorkQueue")
    _only(check_matches_local_pools(twice, SDXL), "work queue's filter")
    # A pool's filter on the pipeline only: it takes every model.
    greedy = _broken(lambda res: res["Pool1Subscription"]["Properties"]["FilterPolicy"]["Fn::If"][1].pop("$or"))
    _only(check_routing(greedy, SDXL, OTHER_MODELS), "'sd15'", "Pool1Queue")
    _only(check_matches_local_pools(greedy, SDXL), "pool sdxl's filter")
    # Slot 2's models left out of the work queue's exclusions.
    def forget_slot2(res: Doc) -> None:
        res["WorkQueueSubscription"]["Properties"]["FilterPolicy"]["model"]["Fn::If"][1][0]["anything-but"][
            "Fn::Split"][1]["Fn::Join"][1].pop(1)
    _only(check_routing(_broken(forget_slot2), CASES[0], OTHER_MODELS), "'m2'", "WorkQueue")


def test_broken_delivery() -> None:
    _only(check_delivery(_broken(lambda res: res.pop("Pool1QueuePolicy")), SDXL), "Pool1Queue", "deliver")
    other_topic = _broken(lambda res: res["Pool1QueuePolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
                          ["Condition"]["ArnEquals"].update({"aws:SourceArn": {"Ref": "ResultsTopic"}}))
    _only(check_delivery(other_topic, SDXL), "Pool1Queue", "deliver")
    no_dlq = _broken(lambda res: res["Pool1Queue"]["Properties"].pop("RedrivePolicy"))
    _only(check_delivery(no_dlq, SDXL), "Pool1Queue", "dead-letter")
    short = _broken(lambda res: res["Pool1Queue"]["Properties"].update({"MessageRetentionPeriod": 345600}))
    _only(check_delivery(short, SDXL), "Pool1Queue", "shaped")


def test_broken_readers() -> None:
    docs = render(EXAMPLE_POOLS)
    envs, keda = reader_queues(docs)
    pools = example_pools(docs)

    def main_queue_only(policy: str, sid: str | None) -> Callable[[Doc], None]:
        def change(res: Doc) -> None:
            for statement in res[policy]["Properties"]["PolicyDocument"]["Statement"]:
                if statement.get("Sid") == sid:
                    statement["Resource"] = statement["Resource"][0]
        return change

    _only(check_readers(_broken(main_queue_only("WorkerPolicy", "ConsumeWorkQueue")), pools, envs, keda),
          "spotgen-sdxl", "sqs:ReceiveMessage")
    _only(check_readers(_broken(main_queue_only("WorkerPolicy", "DeadLetter")), pools, envs, keda),
          "spotgen-sdxl-dlq", "sqs:SendMessage")
    _only(check_readers(_broken(main_queue_only("KedaScalerPolicy", None)), pools, envs, keda),
          "KEDA", "spotgen-sdxl")


def test_broken_alarms() -> None:
    _only(check_alarmed(_broken(lambda res: res.pop("Pool1OldestJobAlarm")), SDXL), "oldest", "spotgen-sdxl")
    _only(check_alarmed(_broken(lambda res: res.pop("Pool1DeadLetterAlarm")), SDXL), "spotgen-sdxl-dlq")


RUNTIME_POOL = {"sdxl": ["sdxl-base"], "xl": []}


def test_a_runtime_pool_reaches_only_its_slot() -> None:
    """docs/deploy.md section 8: CompatRuntimes '{"r": {"model": "sd15", "pool": "xl"}}' with Pool2Name=xl. The
    submit API sets the `pool` attribute "xl"; slot 2's subscription takes the job, the work queue's does not."""
    stack = Stack(template(), pool_parameters(RUNTIME_POOL))
    subscriptions = stack.resources("AWS::SNS::Subscription")
    job = {"pipeline": "txt2img", "model": "sd15", "pool": "xl"}
    assert [routes(stack)[sub] for sub in routes(stack) if matches(subscriptions[sub]["FilterPolicy"], job)] == [
        "Pool2Queue"]


def test_broken_pool_attribute_routing() -> None:
    # The filters before the `pool` attribute was routed (deploy.md then said: edit the stack's subscription by
    # hand, which the next deploy reverts): a runtime's pool jobs reach only the work queue.
    def old_filters(res: Doc) -> None:
        res["WorkQueueSubscription"]["Properties"]["FilterPolicy"].pop("pool")
        for slot in (1, 2):
            res[f"Pool{slot}Subscription"]["Properties"]["FilterPolicy"] = {
                "pipeline": [{"exists": True}], "model": {"Fn::Split": [",", {"Ref": f"Pool{slot}Models"}]}}
    _only(check_routing(_broken(old_filters), RUNTIME_POOL, OTHER_MODELS), "pool 'xl'", "['WorkQueue']",
          "Pool2Queue")
    # The work queue does not leave out the pools' names: a runtime's pool jobs run twice.
    twice = _broken(lambda res: res["WorkQueueSubscription"]["Properties"]["FilterPolicy"].pop("pool"))
    _only(check_routing(twice, RUNTIME_POOL, OTHER_MODELS), "pool 'xl'", "['Pool2Queue', 'WorkQueue']")
    _only(check_matches_local_pools(twice, RUNTIME_POOL), "work queue's filter")
    # A slot's models taken whatever the `pool`: model m1 (slot a) sent to pool b runs on both.
    def models_win(res: Doc) -> None:
        res["Pool1Subscription"]["Properties"]["FilterPolicy"]["Fn::If"][1]["$or"][0]["Fn::If"][1].pop("pool")
    _only(check_routing(_broken(models_win), CASES[0], OTHER_MODELS), "'m1' with pool 'b'",
          "['Pool1Queue', 'Pool2Queue']")
    # A slot that ignores its own name: the runtime's jobs reach no queue at all.
    def deaf(res: Doc) -> None:
        res["Pool2Subscription"]["Properties"]["FilterPolicy"]["Fn::If"][2]["pool"] = ["someone-else"]
    _only(check_routing(_broken(deaf), RUNTIME_POOL, OTHER_MODELS), "pool 'xl'", "no queue")


# == a CPU-only pool: routed by pipeline (issue 34, item 12) ==================================================
#: Slot 1 takes two pipelines and no model (the CPU pool of overlays/example/pools/cpu); slot 2 takes a model.
CPU = {"cpu": [], "sdxl": ["sdxl-base"]}
CPU_PIPELINES = EXAMPLE_PIPELINES


def test_a_listed_pipeline_reaches_only_its_slot() -> None:
    """Its pipeline outranks the model another slot lists (an SDXL image upscaled with lanczos runs on the CPU pool),
    and a `pool` naming a slot outranks both."""
    stack = Stack(template(), pool_parameters(CPU, CPU_PIPELINES))
    subscriptions, targets = stack.resources("AWS::SNS::Subscription"), routes(stack)

    def queues(job: dict[str, str]) -> list[str]:
        return sorted(targets[sub] for sub in targets if matches(subscriptions[sub]["FilterPolicy"], job))

    assert queues({"pipeline": "upscale-lanczos", "model": "sd15"}) == ["Pool1Queue"]
    assert queues({"pipeline": "upscale-nearest", "model": "sdxl-base"}) == ["Pool1Queue"]
    assert queues({"pipeline": "upscale-lanczos", "model": "sdxl-base", "pool": "sdxl"}) == ["Pool2Queue"]
    assert queues({"pipeline": "txt2img", "model": "sdxl-base"}) == ["Pool2Queue"]
    assert queues({"pipeline": "txt2img", "model": "sd15"}) == ["WorkQueue"]
    for pools in (CPU, {"sdxl": ["sdxl-base"], "cpu": ["tiny"], "xl": []}):
        assert check_routing(template(), pools, OTHER_MODELS, CPU_PIPELINES) == []
        assert check_matches_local_pools(template(), pools, CPU_PIPELINES) == []
        assert check_delivery(template(), pools) == []
        assert check_complexity(template(), pools, CPU_PIPELINES) == []


def test_filters_stay_within_the_sns_limit() -> None:
    """A model branch counts 2 (`pool` absent or unclaimed) per model beside a CPU pool: 74 models fit, 75 do not."""
    assert check_complexity(template(), {"cpu": [], "big": [f"m{i}" for i in range(74)]}, CPU_PIPELINES) == []
    _only(check_complexity(template(), {"cpu": [], "big": [f"m{i}" for i in range(75)]}, CPU_PIPELINES),
          "Pool2Subscription", "151 combinations")


def test_broken_pipeline_routing() -> None:
    # The work queue still takes every pipeline: a CPU job also runs on a GPU worker.
    def every_pipeline(res: Doc) -> None:
        res["WorkQueueSubscription"]["Properties"]["FilterPolicy"]["pipeline"] = [{"exists": True}]
    _only(check_routing(_broken(every_pipeline), CPU, OTHER_MODELS, CPU_PIPELINES), "upscale-lanczos job",
          "['Pool1Queue', 'WorkQueue']")
    _only(check_matches_local_pools(_broken(every_pipeline), CPU, CPU_PIPELINES), "work queue's filter")
    # A model branch that does not leave the listed pipelines out: an SDXL upscale runs on both pools.
    def model_wins(res: Doc) -> None:
        res["Pool2Subscription"]["Properties"]["FilterPolicy"]["Fn::If"][1]["$or"][0]["Fn::If"][1].pop("pipeline")
    _only(check_routing(_broken(model_wins), CPU, OTHER_MODELS, CPU_PIPELINES),
          "upscale-lanczos job for model 'sdxl-base' with pool None", "['Pool1Queue', 'Pool2Queue']")
    # A pipeline branch that ignores the `pool` attribute: a runtime's pool job runs twice.
    def pipeline_wins(res: Doc) -> None:
        res["Pool1Subscription"]["Properties"]["FilterPolicy"]["Fn::If"][1]["$or"][1]["Fn::If"][1].pop("pool")
    _only(check_routing(_broken(pipeline_wins), CPU, OTHER_MODELS, CPU_PIPELINES), "with pool 'sdxl'",
          "['Pool1Queue', 'Pool2Queue']")
    # The slot's pipelines never routed to it: they reach no queue.
    def deaf(res: Doc) -> None:
        res["Pool1Subscription"]["Properties"]["FilterPolicy"]["Fn::If"][1]["$or"].pop(1)
    _only(check_routing(_broken(deaf), CPU, OTHER_MODELS, CPU_PIPELINES), "upscale-nearest job", "no queue")
