"""Create the AWS resources of one deployment, shaped as production has them.

Used by the embedded local stack against the emulator; the production equivalent is the SAM template.
Buckets for inputs and outputs; a jobs topic; a work queue with a dead-letter queue (redrive policy)
subscribed to the jobs topic with raw delivery and a filter policy; a results topic, and for local use a
results queue subscribed to it so a client can watch notifications.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from runtime.contract.jobs import QUEUE_RETENTION_S

#: Messages received this many times without being deleted move to the dead-letter queue. Interruptions
#: do not count (the worker sends an interrupted job back as a new message); crashes and failures do.
MAX_RECEIVE_COUNT = 5
#: Work-queue visibility timeout: covers receive-to-start, then the worker's lease takes over. No longer than
#: the lease (SPOTGEN_LEASE_S, 60 in infra/k8s/base), so a crashed worker's job is back as soon as a lease
#: would bring it, and a short job needs no visibility extension at all (runtime/worker/app.py first_beat_s).
VISIBILITY_TIMEOUT_S = 60


@dataclass(frozen=True)
class Resources:
    input_bucket: str
    output_bucket: str
    jobs_topic_arn: str
    results_topic_arn: str
    queue_name: str
    queue_url: str
    dead_letter_queue_url: str
    results_queue_url: str


def create_queue(sqs: Any, name: str, attributes: dict[str, str] | None = None) -> tuple[str, str]:
    url = sqs.create_queue(QueueName=name, Attributes=attributes or {})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def allow_topic(sqs: Any, queue_url: str, queue_arn: str, topic_arn: str) -> None:
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "sns.amazonaws.com"}, "Action": "sqs:SendMessage",
        "Resource": queue_arn, "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}}}]}
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)})


def pool_filter_policies(pools: dict[str, list[str]], pipelines: dict[str, list[str]] | None = None,
                         ) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """The filter policies of the work queue and of each pool's queue (pool name -> its models; ``pipelines``: pool
    name -> the pipelines it takes, such as a CPU-only pool's), on the message attributes the submit Lambda sets:
    ``pipeline``, ``model``, and ``pool`` (a compatibility runtime's pool, SPOTGEN_RUNTIMES). A job whose ``pool``
    names a pool goes to that pool whatever else (the runtime chose it); any other job goes to the pool that lists
    its pipeline, else to the pool that lists its model, else to the work queue. Exactly one queue takes each job:
    two would run it twice. lambdas/template.yaml's pool slots build the same (tests/harness/pool_checks.py
    compares them)."""
    pipelines = {pool: list(names) for pool, names in (pipelines or {}).items() if names}
    routed = sorted({model for models in pools.values() for model in models})
    claimed = sorted({name for names in pipelines.values() for name in names})
    names = sorted(pools)
    # {"anything-but"} needs the attribute present (moto, SNS), so "no pool attribute" is a rule of its own.
    unclaimed = [{"exists": False}, {"anything-but": names}]
    # A listed pipeline outranks a listed model, so the model branches and the work queue leave those pipelines out.
    pipeline_rule = [{"anything-but": claimed}] if claimed else [{"exists": True}]
    default = None
    if pools:
        default = {"pipeline": pipeline_rule, **({"model": [{"anything-but": routed}]} if routed else {}),
                   "pool": unclaimed}
    local = {}
    for pool, models in pools.items():
        # "$or": SNS's OR across attributes, its branches in the template's order; a pool with neither models nor
        # pipelines takes its pool's jobs only (no "$or", as the template's slots).
        branches: list[dict[str, Any]] = []
        if models:
            branches.append({"model": list(models), "pool": unclaimed, **({"pipeline": pipeline_rule} if claimed
                                                                           else {})})
        if pool in pipelines:
            branches.append({"pipeline": pipelines[pool], "pool": unclaimed})
        mine: dict[str, Any] = {"$or": [*branches, {"pool": [pool]}]} if branches else {"pool": [pool]}
        local[pool] = {"pipeline": [{"exists": True}], **mine}
    return default, local


def add_work_queue(sqs: Any, sns: Any, jobs_topic: str, queue_name: str, filter_policy: dict[str, Any] | None,
                   max_receive_count: int = MAX_RECEIVE_COUNT,
                   visibility_timeout_s: int = VISIBILITY_TIMEOUT_S) -> tuple[str, str, str]:
    """A work queue with its dead-letter queue, subscribed to the jobs topic with raw delivery and a filter
    policy on the message attributes (``pipeline``, ``model``): one per worker pool. Returns the queue's
    name, URL and dead-letter queue URL."""
    # Both keep messages as long as SQS allows: a dead-lettered message keeps its first enqueue time.
    dlq_url, dlq_arn = create_queue(sqs, f"{queue_name}-dlq", {"MessageRetentionPeriod": str(QUEUE_RETENTION_S)})
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count})
    queue_url, queue_arn = create_queue(sqs, queue_name, {
        "VisibilityTimeout": str(visibility_timeout_s), "RedrivePolicy": redrive,
        "MessageRetentionPeriod": str(QUEUE_RETENTION_S)})
    allow_topic(sqs, queue_url, queue_arn, jobs_topic)
    policy = filter_policy or {"pipeline": [{"exists": True}]}
    sns.subscribe(TopicArn=jobs_topic, Protocol="sqs", Endpoint=queue_arn, ReturnSubscriptionArn=True,
                  Attributes={"RawMessageDelivery": "true", "FilterPolicy": json.dumps(policy),
                              "FilterPolicyScope": "MessageAttributes"})
    return queue_name, queue_url, dlq_url


def provision(
    s3: Any,
    sns: Any,
    sqs: Any,
    prefix: str = "spotgen",
    queue: str = "jobs",
    filter_policy: dict[str, Any] | None = None,
    max_receive_count: int = MAX_RECEIVE_COUNT,
    visibility_timeout_s: int = VISIBILITY_TIMEOUT_S,
) -> Resources:
    """Idempotent: AWS create calls return the existing resource when it matches."""
    input_bucket, output_bucket = f"{prefix}-inputs", f"{prefix}-outputs"
    for bucket in (input_bucket, output_bucket):
        s3.create_bucket(Bucket=bucket)
        s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True})
    traced = {"TracingConfig": "Active"}  # as the template's topics: SQS gets the publisher's X-Ray trace header
    jobs_topic = sns.create_topic(Name=f"{prefix}-jobs", Attributes=traced)["TopicArn"]
    results_topic = sns.create_topic(Name=f"{prefix}-results", Attributes=traced)["TopicArn"]

    queue_name, queue_url, dlq_url = add_work_queue(sqs, sns, jobs_topic, f"{prefix}-{queue}", filter_policy,
                                                    max_receive_count, visibility_timeout_s)

    results_url, results_arn = create_queue(sqs, f"{prefix}-results")
    allow_topic(sqs, results_url, results_arn, results_topic)
    sns.subscribe(TopicArn=results_topic, Protocol="sqs", Endpoint=results_arn,
                  Attributes={"RawMessageDelivery": "true"})
    return Resources(input_bucket, output_bucket, jobs_topic, results_topic, queue_name, queue_url, dlq_url,
                     results_url)
