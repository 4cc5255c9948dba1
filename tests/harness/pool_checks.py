"""Worker pools in the API stack (issue 34, items 6 and 12): lambdas/template.yaml's pool slots (Pool1Name/
Pool1Models/Pool1Pipelines ... Pool3), evaluated for given parameters, must route every job to exactly one queue (by
its `pool` attribute, which a compatibility runtime sets: a job whose `pool` names a slot goes to that slot; else by
its `pipeline`, a CPU-only pool's; else by its `model`), let SNS deliver to each queue, and let the workers and KEDA
read every queue they are pointed at.

CloudFormation is evaluated here only as far as the slots need: Ref, Fn::GetAtt, Fn::Sub, Fn::Join, Fn::Split,
Fn::If with AWS::NoValue, and the conditions (Fn::Not, Fn::Equals, Fn::Or, Condition). SNS filter policies are
matched only with the operators the stack uses (exact strings, exists, anything-but, and $or across attributes).
"""

from __future__ import annotations

from typing import Any

from runtime.local.provision import pool_filter_policies
from tests.harness.infra_docs import EXAMPLE_STACK, Doc, as_list, resolve, statements

#: Pool slots of the template.
SLOTS = (1, 2, 3)
_NONE = object()  # AWS::NoValue: the key or list item is left out


def pool_parameters(pools: dict[str, list[str]], pipelines: dict[str, list[str]] | None = None) -> dict[str, str]:
    """Stack parameters for ``pools`` (name -> models) and their ``pipelines`` (name -> pipelines), in slot order."""
    if len(pools) > len(SLOTS):
        raise ValueError(f"the template has {len(SLOTS)} pool slots")
    params = {f"Pool{n}{key}": "" for n in SLOTS for key in ("Name", "Models", "Pipelines")}
    for n, (name, models) in zip(SLOTS, pools.items(), strict=False):
        params[f"Pool{n}Name"], params[f"Pool{n}Models"] = name, ",".join(models)
        params[f"Pool{n}Pipelines"] = ",".join((pipelines or {}).get(name, []))
    return params


class Stack:
    """The template as CloudFormation would create it for ``params`` (the others at their defaults)."""

    def __init__(self, tpl: Doc, params: dict[str, str]) -> None:
        self.tpl = tpl
        self.values = {**EXAMPLE_STACK, **params}

    def condition(self, name: str) -> bool:
        def holds(expr: Any) -> bool:
            if "Fn::Not" in expr:
                return not holds(expr["Fn::Not"][0])
            if "Fn::Or" in expr:
                return any(holds(item) for item in expr["Fn::Or"])
            if "Fn::And" in expr:
                return all(holds(item) for item in expr["Fn::And"])
            if "Fn::Equals" in expr:
                left, right = (self.value(side) for side in expr["Fn::Equals"])
                return str(left) == str(right)
            if "Condition" in expr:
                return self.condition(expr["Condition"])
            raise ValueError(f"condition {name}: cannot evaluate {expr}")

        return holds(self.tpl["Conditions"][name])

    def value(self, value: Any) -> Any:
        if isinstance(value, list):
            return [item for item in (self.value(item) for item in value) if item is not _NONE]
        if not isinstance(value, dict):
            return value
        if value.get("Ref") == "AWS::NoValue":
            return _NONE
        if "Fn::If" in value:
            name, yes, no = value["Fn::If"]
            return self.value(yes if self.condition(name) else no)
        if "Fn::Split" in value:
            separator, text = value["Fn::Split"]
            return str(self.value(text)).split(separator)
        if "Fn::Join" in value:
            separator, items = value["Fn::Join"]
            return separator.join(str(item) for item in self.value(items))
        if {"Ref", "Fn::GetAtt", "Fn::Sub"} & value.keys():
            return resolve(value, self.tpl, self.values)
        evaluated = {key: self.value(item) for key, item in value.items()}
        return {key: item for key, item in evaluated.items() if item is not _NONE}

    def resources(self, kind: str) -> dict[str, Doc]:
        """The resources of ``kind`` this stack creates, their properties evaluated."""
        return {name: self.value(res.get("Properties", {})) for name, res in self.tpl["Resources"].items()
                if res["Type"] == kind and ("Condition" not in res or self.condition(res["Condition"]))}

    def arn(self, logical_id: str) -> str:
        return resolve({"Fn::GetAtt": [logical_id, "Arn"]}, self.tpl, self.values)


def matches(policy: Doc, attributes: dict[str, str]) -> bool:
    """Whether an SNS filter policy (message attributes scope) selects a message with ``attributes``."""
    for key, rules in policy.items():
        if key == "$or":  # SNS: at least one of the policies in the list matches, besides the other keys
            if not any(matches(branch, attributes) for branch in rules):
                return False
            continue
        value = attributes.get(key)
        hit = False
        for rule in rules:
            if isinstance(rule, dict) and "exists" in rule:
                hit |= (value is not None) == rule["exists"]
            elif isinstance(rule, dict) and "anything-but" in rule:
                hit |= value is not None and value not in as_list(rule["anything-but"])
            elif isinstance(rule, dict):
                raise ValueError(f"filter operator {rule} is not evaluated here")
            else:
                hit |= value == rule
        if not hit:
            return False
    return True


def routes(stack: Stack) -> dict[str, str]:
    """Subscription of the jobs topic -> the logical id of the queue it delivers to."""
    queues = {stack.arn(name): name for name in stack.resources("AWS::SQS::Queue")}
    return {name: queues[props["Endpoint"]] for name, props in stack.resources("AWS::SNS::Subscription").items()
            if props.get("TopicArn") == resolve({"Ref": "JobsTopic"}, stack.tpl, stack.values)}


def check_routing(tpl: Doc, pools: dict[str, list[str]], other_models: list[str],
                  pipelines: dict[str, list[str]] | None = None) -> list[str]:
    """Each job reaches exactly one queue: a job whose `pool` attribute names a pool reaches that pool's queue, any
    other job the queue of the pool that lists its pipeline, else of the pool that lists its model, else the work
    queue. A job two queues receive runs twice, one none receive never runs. Every model is tried with txt2img and
    every listed pipeline, without a `pool`, with each pool's name and with a name no pool has (a runtime whose
    pool has no slot: routed by pipeline, then model)."""
    pipelines = pipelines or {}
    stack = Stack(tpl, pool_parameters(pools, pipelines))
    subscriptions = stack.resources("AWS::SNS::Subscription")
    targets = routes(stack)
    names = {stack.value(props["QueueName"]): name for name, props in stack.resources("AWS::SQS::Queue").items()}
    queue_of = {pool: f"{EXAMPLE_STACK['AWS::StackName']}-{pool}" for pool in pools}
    expected = {model: names.get(queue_of[pool], f"a queue named {queue_of[pool]}") for pool, models in pools.items()
                for model in models}
    by_pipeline = {pipeline: names.get(queue_of[pool], f"a queue named {queue_of[pool]}")
                   for pool, listed in pipelines.items() for pipeline in listed}
    errors = []
    for model in [*expected, *other_models]:
        for pipeline in ["txt2img", *by_pipeline]:
            for pool in [None, *pools, "no-such-pool"]:
                message = {"pipeline": pipeline, "model": model, **({"pool": pool} if pool else {})}
                got = sorted(targets[sub] for sub in targets if matches(subscriptions[sub]["FilterPolicy"], message))
                want = [names.get(queue_of[pool], f"a queue named {queue_of[pool]}") if pool in pools
                        else by_pipeline.get(pipeline) or expected.get(model, "WorkQueue")]
                if got != want:
                    errors.append(f"a {pipeline} job for model {model!r} with pool {pool!r} reaches "
                                  f"{got or 'no queue'}, expected {want}")
    return errors


def _canonical(policy: Any) -> Any:
    """A filter policy with its anything-but lists sorted: their order means nothing to SNS."""
    if isinstance(policy, dict):
        return {key: sorted(value) if key == "anything-but" else _canonical(value) for key, value in policy.items()}
    if isinstance(policy, list):
        return [_canonical(item) for item in policy]
    return policy


def check_matches_local_pools(tpl: Doc, pools: dict[str, list[str]],
                              pipelines: dict[str, list[str]] | None = None) -> list[str]:
    """The stack's filter policies are the ones runtime/local/provision.pool_filter_policies gives the local
    stack (`spotgen dev`, DevStack(pools=...)): local and AWS route alike."""
    stack = Stack(tpl, pool_parameters(pools, pipelines))
    default, local = pool_filter_policies(pools, pipelines)
    subscriptions, targets = stack.resources("AWS::SNS::Subscription"), routes(stack)
    by_queue = {targets[sub]: subscriptions[sub]["FilterPolicy"] for sub in targets}
    queue_names = {name: stack.value(props["QueueName"]) for name, props in stack.resources("AWS::SQS::Queue").items()}
    errors = []
    if _canonical(by_queue.get("WorkQueue")) != _canonical(default or {"pipeline": [{"exists": True}]}):
        errors.append(f"the work queue's filter {by_queue.get('WorkQueue')} is not the local stack's {default}")
    for queue, policy in by_queue.items():
        pool = queue_names[queue].removeprefix(f"{EXAMPLE_STACK['AWS::StackName']}-")
        if queue != "WorkQueue" and _canonical(policy) != _canonical(local.get(pool)):
            errors.append(f"pool {pool}'s filter {policy} is not the local stack's {local.get(pool)}")
    return errors


def check_delivery(tpl: Doc, pools: dict[str, list[str]]) -> list[str]:
    """Every queue subscribed to the jobs topic lets that topic (and only it) send to it, and is shaped like the
    work queue (visibility, retention, long polling, encryption, a dead-letter queue after MaxReceiveCount)."""
    stack = Stack(tpl, pool_parameters(pools))
    queues, topic = stack.resources("AWS::SQS::Queue"), resolve({"Ref": "JobsTopic"}, tpl, stack.values)
    allowed: set[str] = set()
    for props in stack.resources("AWS::SQS::QueuePolicy").values():
        for statement in statements(props["PolicyDocument"]):
            if (statement.get("Principal") == {"Service": "sns.amazonaws.com"} and statement.get("Effect") == "Allow"
                    and "sqs:SendMessage" in as_list(statement["Action"])
                    and statement.get("Condition", {}).get("ArnEquals", {}).get("aws:SourceArn") == topic):
                allowed |= {arn for arn in as_list(statement["Resource"])
                            if any(arn == stack.arn(queue) for queue in queues
                                   if resolve({"Ref": queue}, tpl, stack.values) in props["Queues"])}
    errors = []
    shape = {key: queues["WorkQueue"][key] for key in queues["WorkQueue"] if key not in ("QueueName", "RedrivePolicy")}
    for queue in set(routes(stack).values()):
        if stack.arn(queue) not in allowed:
            errors.append(f"no queue policy lets the jobs topic deliver to {queue}: SNS drops its jobs")
        props = queues[queue]
        if {key: props.get(key) for key in shape} != shape:
            errors.append(f"{queue} is not shaped like the work queue: {props}")
        redrive = props.get("RedrivePolicy", {})
        if redrive.get("deadLetterTargetArn") not in {stack.arn(q) for q in queues if q != queue} or \
                str(redrive.get("maxReceiveCount")) != str(stack.value({"Ref": "MaxReceiveCount"})):
            errors.append(f"{queue} has no dead-letter queue after MaxReceiveCount deliveries")
    return errors


def queue_arn(url: str) -> str:
    """arn:aws:sqs:REGION:ACCOUNT:NAME of https://sqs.REGION.amazonaws.com/ACCOUNT/NAME."""
    host, account, name = url.removeprefix("https://").split("/")
    return f"arn:aws:sqs:{host.split('.')[1]}:{account}:{name}"


def check_readers(tpl: Doc, pools: dict[str, list[str]], worker_envs: list[dict[str, str]],
                  keda_urls: list[str]) -> list[str]:
    """Every queue a worker reads (each Deployment's SPOTGEN_QUEUE_URL, and the dead-letter queue it moves failing
    jobs to) is in WorkerPolicy, and every queue a ScaledObject watches is in KedaScalerPolicy: else that pool's
    workers get AccessDenied, or KEDA never scales it from zero."""
    stack = Stack(tpl, pool_parameters(pools))
    policies = stack.resources("AWS::IAM::ManagedPolicy")

    def allowed(policy: str, action: str) -> set[str]:
        return {arn for statement in statements(policies[policy]["PolicyDocument"])
                if statement["Effect"] == "Allow" and action in as_list(statement["Action"])
                for arn in as_list(statement["Resource"])}

    errors = []
    for env in worker_envs:
        for key, actions in (("SPOTGEN_QUEUE_URL", ("sqs:ReceiveMessage", "sqs:DeleteMessage",
                                                    "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes")),
                             ("SPOTGEN_DEAD_LETTER_QUEUE_URL", ("sqs:SendMessage",))):
            for action in actions:
                if queue_arn(env[key]) not in allowed("WorkerPolicy", action):
                    errors.append(f"workers of {env[key]} ({key}) may not {action}: WorkerPolicy does not name it")
    for url in keda_urls:
        if queue_arn(url) not in allowed("KedaScalerPolicy", "sqs:GetQueueAttributes"):
            errors.append(f"KEDA watches {url}, which KedaScalerPolicy does not allow")
    return errors


def check_alarmed(tpl: Doc, pools: dict[str, list[str]]) -> list[str]:
    """Every work queue the stack creates has an alarm on its oldest message (nobody serves it) and its dead-letter
    queue one on the messages in it, as the work queue's have: a pool whose workers never start is seen."""
    stack = Stack(tpl, pool_parameters(pools))
    watched = {(props["MetricName"], dim["Value"]) for props in stack.resources("AWS::CloudWatch::Alarm").values()
               if props.get("Namespace") == "AWS/SQS" for dim in props.get("Dimensions", [])
               if dim["Name"] == "QueueName"}
    queues = stack.resources("AWS::SQS::Queue")
    errors = []
    for queue in set(routes(stack).values()):
        name = queues[queue]["QueueName"]
        if ("ApproximateAgeOfOldestMessage", name) not in watched:
            errors.append(f"no alarm on the oldest message of {name}")
        dead = next((props["QueueName"] for other, props in queues.items()
                     if stack.arn(other) == queues[queue].get("RedrivePolicy", {}).get("deadLetterTargetArn")), None)
        if dead and ("ApproximateNumberOfMessagesVisible", dead) not in watched:
            errors.append(f"no alarm on the messages in {dead}")
    return errors


#: SNS refuses a filter policy of more combinations than this (AWS's "filter policy constraints").
MAX_COMBINATIONS = 150


def combinations(policy: Doc) -> int:
    """SNS's count of a filter policy's combinations: the product of each key's number of values, an `$or` counting
    as the sum of its branches' counts (moto multiplies those instead, so it refuses smaller policies)."""
    count = 1
    for key, rules in policy.items():
        count *= sum(combinations(branch) for branch in rules) if key == "$or" else len(rules)
    return count


def check_complexity(tpl: Doc, pools: dict[str, list[str]], pipelines: dict[str, list[str]] | None = None) -> list[str]:
    """Every subscription's filter stays within SNS's limit: else `sam deploy` fails on it."""
    stack = Stack(tpl, pool_parameters(pools, pipelines))
    return [f"{name}'s filter has {combinations(props['FilterPolicy'])} combinations, more than SNS's "
            f"{MAX_COMBINATIONS}" for name, props in stack.resources("AWS::SNS::Subscription").items()
            if "FilterPolicy" in props and combinations(props["FilterPolicy"]) > MAX_COMBINATIONS]
