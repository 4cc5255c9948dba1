"""The local stack's pool filters (runtime/local/provision.pool_filter_policies) as the emulator (moto's SNS)
applies them: every job, by its `model` and `pool` attributes, reaches exactly one queue, the same one the
template's slots route it to (tests/harness/pool_checks.py compares the policies themselves). `$or` and
`anything-but` beside `exists: false` are operators moto must evaluate as SNS does, so this runs them for real.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import boto3
import pytest
from moto import mock_aws

from runtime.local.provision import add_work_queue, pool_filter_policies, provision

Policies = Callable[[dict[str, list[str]]], tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]]
POOLS = {"sdxl": ["sdxl-base", "sdxl-refiner"], "xl": []}


def misrouted(pools: dict[str, list[str]], policies: Policies = pool_filter_policies,
              pipelines: dict[str, list[str]] | None = None) -> list[str]:
    """Publish a job for each model, pipeline (txt2img and each one a pool lists: ``pipelines``, which ``policies``
    must be given too) and `pool` value; return each one that did not reach exactly its queue."""
    by_pipeline = {pipeline: pool for pool, listed in (pipelines or {}).items() for pipeline in listed}
    with mock_aws():
        s3, sns, sqs = (boto3.client(name, region_name="us-east-1") for name in ("s3", "sns", "sqs"))
        default, local = policies(pools)
        resources = provision(s3, sns, sqs, filter_policy=default)
        queues = {"main": resources.queue_url}
        for pool in pools:
            queues[pool] = add_work_queue(sqs, sns, resources.jobs_topic_arn, f"spotgen-{pool}", local[pool])[1]
        errors = []
        jobs = [(model, pipeline, pool) for model in [*(m for models in pools.values() for m in models), "sd15"]
                for pipeline in ["txt2img", *by_pipeline] for pool in [None, *pools, "no-such-pool"]]
        for model, pipeline, pool in jobs:
            attributes = {"pipeline": pipeline, "model": model, **({"pool": pool} if pool else {})}
            sns.publish(TopicArn=resources.jobs_topic_arn, Message="{}", MessageAttributes={
                key: {"DataType": "String", "StringValue": value} for key, value in attributes.items()})
            got = []
            for name, url in queues.items():
                for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                    got.append(name)
            by_model = next((name for name, models in pools.items() if model in models), "main")
            want = [pool if pool in pools else by_pipeline.get(pipeline, by_model)]
            if sorted(got) != want:
                errors.append(f"{attributes} reached {sorted(got) or 'no queue'}, expected {want}")
        return errors


@pytest.mark.parametrize("pools", [POOLS, {"a": ["m1"], "b": ["m2"], "c": ["m3", "m4", "m5", "m6"]}])
def test_the_emulator_routes_each_job_to_one_queue(pools: dict[str, list[str]]) -> None:
    assert misrouted(pools) == []


def test_the_emulator_routes_a_cpu_pool_by_pipeline() -> None:
    """A CPU pool's pipelines outrank the models of another (issue 34, item 12). moto multiplies the `$or` branches'
    combinations, so locally the model pool beside it holds 2 models (3 are "too complex"; AWS allows far more)."""
    pipelines = {"cpu": ["upscale-lanczos", "upscale-nearest"]}
    pools = {"cpu": [], "sdxl": ["sdxl-base", "sdxl-refiner"]}
    assert misrouted(pools, partial(pool_filter_policies, pipelines=pipelines), pipelines) == []
    # The local filters without the pipeline routing: a CPU job lands on the main (GPU) queue.
    errors = misrouted(pools, pool_filter_policies, pipelines)
    assert any("'upscale-lanczos'" in error and "['main']" in error for error in errors), errors


def test_broken_local_filters() -> None:
    """The local filters before the `pool` attribute was routed: a runtime's pool job lands on the work queue."""
    def old(pools: dict[str, list[str]]) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
        routed = sorted({model for models in pools.values() for model in models})
        default = {"pipeline": [{"exists": True}], "model": [{"anything-but": routed}]}
        return default, {pool: {"pipeline": [{"exists": True}], "model": models or ["-"]}
                         for pool, models in pools.items()}

    errors = misrouted(POOLS, old)
    assert any("'pool': 'xl'" in error and "['main']" in error for error in errors), errors
