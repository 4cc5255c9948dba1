"""ComfyUI's ``/ws`` messages on AWS: when a prompt ends, what its client's sockets are told, through API Gateway's
Management API (``post_to_connection``).

The worker announces every finished job on the results topic (``runtime/worker/outputs.py``); this function is
subscribed to it (the sample's notifications, ``format`` set, are filtered out by the subscription). A job that is a
ComfyUI prompt has what ``POST /prompt`` kept (``comfy/prompts/{id}.json``: the caller, the graph, the
``client_id``); for one with a ``client_id``, its final status document goes through ``lambdas.comfy_events.Watch``
as ``spotgen dev``'s socket shows a prompt that ended between two looks: ``execution_start``, the last sampler's
``executing`` and ``progress``, ``executing`` and ``executed`` with the images for each output node,
``execution_success`` (or ``execution_error`` / ``execution_interrupted``), then ``executing`` with node null,
which is what ComfyUI's scripts wait for. Each is one JSON text frame, in that order, to every connection the
client registered (``lambdas.comfy_ws``).

The steps in between (``progress`` per step) are not streamed: the worker writes them to the status document in
S3 and publishes nothing until the end, so streaming them would need either a publish per step (an SNS message and
a Lambda run per step of every job, most of them for nobody) or a poller per socket, which a WebSocket API has no
place to run. ``/history`` and the socket tell the same end; a client that wants the steps reads the job's status (the
``prompt_id`` is its job id: ``GET /sdapi/v1/spotgen/jobs/{id}`` with the same key).

A connection that is gone (410) is dropped from the registry; one that keeps failing after botocore's retries (5xx,
throttling) is logged and skipped, and the others are still served. The handler never raises for a socket: SNS
would run it again and every other socket would get the messages twice, for a channel that is best effort anyway.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError

from lambdas.comfy_events import Message, Watch
from lambdas.comfy_history import PROMPT_ID, prompt_key
from lambdas.comfy_ws import CLIENT_ID, connections, forget
from lambdas.common import Deployment, deployment, function_timeout_s
from runtime.contract import Notification
from runtime.storage import aws

#: The WebSocket API's Management API endpoint, ``https://{api}.execute-api.{region}.amazonaws.com/{stage}``
#: (the template sets it; not a SPOTGEN_ setting, since only this function has it).
ENDPOINT_VARIABLE = "COMFY_WS_ENDPOINT"
#: One post's bounds: 3 tries (botocore's standard mode retries 5xx and LimitExceededException) of at most 1 + 2 s,
#: about 12 s at worst, so a dead connection costs one bounded call, not the function's whole timeout.
POST_CONFIG = Config(retries={"total_max_attempts": 3, "mode": "standard"}, connect_timeout=1, read_timeout=2)

#: The share of the function's timeout by which every post has ended (a post starts only if it can).
DEADLINE_SHARE = 0.9

log = logging.getLogger("spotgen.comfy_ws_notify")


@functools.lru_cache(maxsize=1)
def management() -> Any:
    """The Management API client, built on first use and kept across warm invocations."""
    endpoint = os.environ.get(ENDPOINT_VARIABLE, "")
    if not endpoint:
        raise SystemExit(f"{ENDPOINT_VARIABLE} is not set: the notifier does not know the WebSocket API")
    return aws.session().client("apigatewaymanagementapi", region_name=deployment().settings.region,
                                endpoint_url=endpoint, config=POST_CONFIG)


def messages_for(dep: Deployment, note: Notification) -> tuple[str, str, list[Message]] | None:
    """(caller, client_id, messages) for a finished ComfyUI prompt with a client; None for any other job."""
    if not PROMPT_ID.match(note.id):
        return None
    kept = dep.store.get_json(dep.store.output_bucket, prompt_key(note.id))
    if not isinstance(kept, dict) or not CLIENT_ID.match(str(kept.get("client_id") or "")):
        return None
    doc = dep.store.read_status(note.id)
    if doc is None or not doc.state.final:
        return None
    return str(kept.get("caller", "")), str(kept["client_id"]), Watch().messages(kept, doc)


def _code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def deliver(dep: Deployment, client: Any, caller: str, client_id: str, messages: list[Message],
            deadline: float) -> dict[str, int]:
    """Post ``messages`` to each of the client's connections in order; counts of those served, gone and failed."""
    counts = {"served": 0, "gone": 0, "failed": 0, "skipped": 0}
    frames = [json.dumps(message).encode() for message in messages]
    for connection_id in connections(dep, caller, client_id):
        try:
            for frame in frames:
                if time.monotonic() + aws.worst_case_s(POST_CONFIG) > deadline:
                    raise TimeoutError  # no time left for a post that may hang: the client has /history
                client.post_to_connection(ConnectionId=connection_id, Data=frame)
        except TimeoutError:
            counts["skipped"] += 1
            log.warning("websocket %s of client %s: not (all) sent, the function is out of time", connection_id,
                        client_id)
            continue
        except ClientError as exc:
            if _code(exc) in ("GoneException", "410"):
                counts["gone"] += 1
                forget(dep, connection_id, caller, client_id)
                continue
            counts["failed"] += 1
            log.warning("websocket %s of client %s: %s after retries; the others are still sent to",
                        connection_id, client_id, _code(exc))
            continue
        except BotoCoreError as exc:  # refused, cut, timed out
            counts["failed"] += 1
            log.warning("websocket %s of client %s: %s; the others are still sent to", connection_id, client_id,
                        type(exc).__name__)
            continue
        counts["served"] += 1
    return counts


def handler(event: dict[str, Any], context: Any = None) -> dict[str, int]:
    """One SNS delivery (a record per notification)."""
    # a post starts only if it can end before this, whatever the endpoint does; the rest is left to answer
    deadline = time.monotonic() + function_timeout_s() * DEADLINE_SHARE
    dep, total = deployment(), {"served": 0, "gone": 0, "failed": 0, "skipped": 0}
    for record in event.get("Records", []):
        sns = record.get("Sns") or {}
        if "format" in (sns.get("MessageAttributes") or {}):  # the sample's notification: not a ComfyUI prompt
            continue
        try:
            note = Notification.model_validate_json(sns.get("Message") or "")
        except ValidationError:
            log.warning("a results notification that is not spotgen's: ignored")
            continue
        found = messages_for(dep, note)
        if found is None:
            continue
        caller, client_id, messages = found
        counts = deliver(dep, management(), caller, client_id, messages, deadline)
        log.info("prompt %s: %d messages to client %s: %s", note.id, len(messages), client_id, counts)
        total = {key: total[key] + counts[key] for key in total}
    return total
